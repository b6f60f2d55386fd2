//! The dashboard: server-rendered pages (maud) on the admin service's
//! address, for people signed in with e-mail and password. Pages read
//! through the same loaders as the JSON API, under the same row-level
//! security; every change a page makes goes through the JSON API itself
//! (a few lines of `app.js` send its forms with the session's CSRF token),
//! so the browser and a program are held to the same rules and errors.
//!
//! Sign-in is rate-limited per client address and per e-mail address; the
//! sign-in form carries a token matched against a cookie set with it
//! (login CSRF), the sign-out form the session's CSRF token.

mod pages;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use alphadome_core::limiter::KeyedLimiter;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use governor::Quota;
use maud::{html, Markup, DOCTYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::api::auth::{cookie, session_cookie, SESSION_COOKIE};
use crate::api::{Api, Problem};
use crate::people::{self, Role, Session};

/// The cookie holding the sign-in form's token.
const LOGIN_COOKIE: &str = "__Host-alphadome-login";

/// The dashboard's state: the API's, and the sign-in limits.
pub struct Web {
    pub api: Arc<Api>,
    by_source: KeyedLimiter<IpAddr>,
    by_email: KeyedLimiter<String>,
}

/// Sign-in attempts allowed per client address: 10 at once, then one
/// every 6 s.
const LOGINS_PER_SOURCE: u32 = 10;
/// Per e-mail address: 5 at once, then one every 12 s.
const LOGINS_PER_EMAIL: u32 = 5;

impl Web {
    pub fn new(api: Arc<Api>) -> Arc<Self> {
        let per_minute = |n: u32| {
            Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
        };
        Arc::new(Self {
            api,
            by_source: KeyedLimiter::new(per_minute(LOGINS_PER_SOURCE)),
            by_email: KeyedLimiter::new(per_minute(LOGINS_PER_EMAIL)),
        })
    }
}

/// The dashboard's routes.
pub fn routes(web: Arc<Web>) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/static/app.js", get(script))
        .route("/static/app.css", get(style))
        .merge(pages::routes())
        .with_state(web)
        .layer(axum::middleware::map_response(protect))
}

/// What every dashboard response tells the browser: run only this site's
/// script, never inside another site's frame, send no referrer elsewhere,
/// keep no copy of a page.
async fn protect(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("app.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("app.css"),
    )
        .into_response()
}

/// The signed-in person viewing a page; anyone else is sent to sign in.
pub struct Viewer(pub Session);

impl FromRequestParts<Arc<Web>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Arc<Web>) -> Result<Self, Response> {
        let id = cookie(&parts.headers, SESSION_COOKIE);
        let session = match id {
            Some(id) => people::session(&web.api.db, id)
                .await
                .map_err(|e| error_page(&Problem::from(e)))?,
            None => None,
        };
        session.map(Viewer).ok_or_else(|| {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            Redirect::to(&format!("/login?next={}", encode(next))).into_response()
        })
    }
}

/// `s` percent-encoded for a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A page: the layout around `body`, for `viewer` (nothing of theirs on
/// the sign-in page).
pub fn page(title: &str, viewer: Option<&Session>, nav: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = viewer { meta name="csrf" content=(s.csrf); }
                title { (title) " · Alphadome" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Alphadome" }
                    nav { (nav) }
                    @if let Some(s) = viewer {
                        span.muted { (s.principal.actor.trim_start_matches("user:")) " · " (s.principal.role.as_str()) }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button.secondary type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A problem as a page.
pub fn error_page(p: &Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = page(
        p.title,
        None,
        html! {},
        html! {
            div.card {
                h1 { (p.title) }
                p { (p.detail) }
                p { a href="/" { "Back to the dashboard" } }
            }
        },
    );
    (status, body).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct Next {
    next: Option<String>,
}

/// Where to go after signing in: a path of this site only (a path of
/// plain URL characters, so no browser reads it as another host).
fn safe_next(next: Option<&str>) -> String {
    let plain = |n: &str| {
        n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.~?=&%-".contains(&b))
    };
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && plain(n) => n.to_owned(),
        _ => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn sign_in_returns_only_to_this_site() {
        assert_eq!(safe_next(Some("/t/abc/inbox?x=1")), "/t/abc/inbox?x=1");
        for bad in [
            "//evil.example",
            "/\t/evil.example",
            "/\\evil.example",
            "https://evil.example",
            "/a\r\nSet-Cookie: x",
            "/%09/x\t",
            "evil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}

fn login_form(next: &str, token: &str, problem: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {},
        html! {
            div.card.login {
                h1 { "Sign in" }
                form method="post" action="/login" {
                    input type="hidden" name="token" value=(token);
                    input type="hidden" name="next" value=(next);
                    label for="email" { "E-mail" }
                    input #email type="email" name="email" autocomplete="username" required;
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                    p.problem { @if let Some(p) = problem { (p) } }
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// The sign-in page, with a fresh form token in its cookie.
async fn login_page(Query(q): Query<Next>) -> Response {
    let token = people::generate_password();
    let next = safe_next(q.next.as_deref());
    login_response(StatusCode::OK, &next, token.expose_secret(), None)
}

fn login_response(status: StatusCode, next: &str, token: &str, problem: Option<&str>) -> Response {
    let mut r = (status, login_form(next, token, problem)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LOGIN_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=3600"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct LoginForm {
    email: String,
    password: String,
    token: String,
    next: Option<String>,
}

async fn login(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    let fresh = people::generate_password();
    let retry =
        |status, problem: &str| login_response(status, &next, fresh.expose_secret(), Some(problem));
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(f.token.as_bytes())) {
        return retry(
            StatusCode::FORBIDDEN,
            "The sign-in form expired; please sign in again.",
        );
    }
    let source = web.api.guard.source(peer, &headers);
    let email = f.email.trim().to_lowercase();
    if web.by_source.check_key(&source).is_err() || web.by_email.check_key(&email).is_err() {
        tracing::warn!(%source, "sign-in attempts over the limit");
        return retry(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts; wait a minute and try again.",
        );
    }
    let password = SecretString::from(f.password);
    match people::sign_in(&web.api.db, &email, &password).await {
        Ok(Some((id, _))) => {
            let mut r = Redirect::to(&next).into_response();
            r.headers_mut()
                .append(header::SET_COOKIE, session_cookie(id.expose_secret()));
            if let Ok(v) =
                HeaderValue::from_str(&format!("{LOGIN_COOKIE}=; Path=/; Secure; Max-Age=0"))
            {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Ok(None) => {
            tracing::info!(%source, "sign-in refused");
            retry(StatusCode::UNAUTHORIZED, "Wrong e-mail or password.")
        }
        Err(e) => error_page(&Problem::from(e)),
    }
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: String,
}

async fn logout(
    State(web): State<Arc<Web>>,
    Viewer(session): Viewer,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    if !crate::api::auth::csrf_matches(&session, &f.csrf) {
        return error_page(&Problem::forbidden("the form's CSRF token is wrong"));
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        if let Err(e) = people::sign_out(&web.api.db, id).await {
            return error_page(&Problem::from(e));
        }
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(""));
    r
}

/// Whether `role` may change a tenant's configuration.
pub fn manages(role: Role) -> bool {
    matches!(role, Role::PlatformAdmin | Role::TenantAdmin)
}
