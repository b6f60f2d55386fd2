//! Who is calling: a bearer token (the configured `ALPHADOME_ADMIN_TOKEN`,
//! or a stored API token) or a signed-in person's session cookie. A client
//! address that keeps presenting wrong credentials is refused for a while,
//! as the webhook's failing sources are. A change made with a session
//! (anything but GET and HEAD) must carry the session's CSRF token in
//! `X-CSRF-Token` (a form, in its `csrf` field: the pages check that), so
//! another site can't make a signed-in browser change anything; bearer
//! calls need none (a browser never adds that header by itself).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use alphadome_core::guard::{Refusal, BLOCK_FOR};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::{Api, Problem};
use crate::people::{self, Principal, Role, Session};

/// The session cookie. `__Host-`: only ever set by this host, over HTTPS
/// (browsers treat `http://localhost` as secure), for every path.
pub const SESSION_COOKIE: &str = "__Host-alphadome";

/// The authenticated caller of a request.
pub struct Caller {
    pub principal: Principal,
    /// The session, when the caller is a signed-in person.
    pub session: Option<Session>,
}

/// The value of cookie `name` in `headers`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value that stores session `id` (or, empty, removes
/// it).
pub fn session_cookie(id: &str) -> HeaderValue {
    let age = if id.is_empty() {
        0
    } else {
        people::SESSION_MAX_DAYS * 86_400
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("__Host-alphadome=; Path=/; Max-Age=0"))
}

/// Whether a request with `method` changes something.
pub fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether `given` is the session's CSRF token.
pub fn csrf_matches(session: &Session, given: &str) -> bool {
    !given.is_empty() && bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes()))
}

fn peer(parts: &Parts) -> SocketAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
}

impl Api {
    /// The caller of a request with `headers` from `peer`, or the answer
    /// refusing it.
    pub async fn authenticate(
        &self,
        peer: SocketAddr,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Caller, Response> {
        let source = self.guard.source(peer, headers);
        match self.guard.admit(source) {
            Ok(flight) => flight.finish(),
            Err(Refusal::Blocked | Refusal::Busy) => {
                let mut r =
                    Problem::too_many("too many failed requests from this address; retry later")
                        .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(BLOCK_FOR.as_secs()));
                return Err(r);
            }
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let found = match (bearer, cookie(headers, SESSION_COOKIE)) {
            (Some(token), _) => self.bearer(token).await?,
            (None, Some(id)) => {
                let session = people::session(&self.db, id)
                    .await
                    .map_err(|e| Problem::from(e).into_response())?;
                match session {
                    Some(s) if changes(method) => {
                        let given = headers
                            .get("x-csrf-token")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        if !csrf_matches(&s, given) {
                            return Err(Problem::forbidden(
                                "missing or wrong X-CSRF-Token for this session",
                            )
                            .into_response());
                        }
                        Some(s.into())
                    }
                    Some(s) => Some(s.into()),
                    None => None,
                }
            }
            (None, None) => None,
        };
        found.ok_or_else(|| {
            self.guard.record_failure(source);
            tracing::warn!(%source, "API request with a missing, wrong or revoked credential");
            Problem::unauthorized("sign in, or send Authorization: Bearer with a live API token")
                .into_response()
        })
    }

    async fn bearer(&self, given: &str) -> Result<Option<Caller>, Response> {
        let configured = self.admin_token.as_ref().is_some_and(|t| {
            !given.is_empty() && bool::from(given.as_bytes().ct_eq(t.expose_secret().as_bytes()))
        });
        if configured {
            return Ok(Some(Caller {
                principal: Principal {
                    actor: "admin-token".to_owned(),
                    role: Role::PlatformAdmin,
                    tenant: None,
                },
                session: None,
            }));
        }
        match people::authenticate_token(&self.db, given).await {
            Ok(p) => Ok(p.map(|principal| Caller {
                principal,
                session: None,
            })),
            Err(e) => Err(Problem::from(e).into_response()),
        }
    }
}

impl From<Session> for Caller {
    fn from(s: Session) -> Self {
        Caller {
            principal: s.principal.clone(),
            session: Some(s),
        }
    }
}

impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, Response> {
        api.authenticate(peer(parts), &parts.method, &parts.headers)
            .await
    }
}
