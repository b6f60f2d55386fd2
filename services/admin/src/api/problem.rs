//! Errors as JSON problem details (RFC 9457, `application/problem+json`):
//! what went wrong, and for bad input the field it was in.

use alphadome_core::Report;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field, as a path into the request (`rows[3].question`).
    pub field: String,
    pub detail: String,
}

/// A problem detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A short name of the kind of problem: `not-found`, `invalid`, ...
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every bad field, when there are several (an import's rows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            title: status.canonical_reason().unwrap_or("error"),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            errors: Vec::new(),
        }
    }

    /// No such resource, or not one the caller may see (the same answer).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// A field of the request is wrong.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        let detail = detail.into();
        Self {
            field: Some(field.clone()),
            errors: vec![FieldError {
                field,
                detail: detail.clone(),
            }],
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", detail)
        }
    }

    /// Several fields are wrong.
    pub fn invalid_fields(errors: Vec<FieldError>) -> Self {
        let detail = match errors.len() {
            1 => format!("{}: {}", errors[0].field, errors[0].detail),
            n => format!("{n} fields are invalid; nothing was written"),
        };
        Self {
            field: errors.first().map(|e| e.field.clone()),
            errors,
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", detail)
        }
    }

    /// The request conflicts with what is stored (a name already taken).
    pub fn conflict(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::CONFLICT, "conflict", detail)
        }
    }

    /// A message the business may not send now: the customer's last
    /// message is more than 24 hours old (Meta's customer service window).
    pub fn outside_window(detail: impl Into<String>) -> Self {
        Self {
            field: Some("text".to_owned()),
            ..Self::new(StatusCode::CONFLICT, "outside-window", detail)
        }
    }

    /// The body is not what the endpoint takes.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn too_many(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too-many-requests", detail)
    }

    /// Something the caller can't fix failed; the cause is logged, not
    /// shown.
    pub fn unavailable(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %Report(cause), "API request failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the service could not complete the request; try again",
        )
    }
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        Problem::unavailable(&e)
    }
}

impl From<crate::AdminError> for Problem {
    fn from(e: crate::AdminError) -> Self {
        match e {
            crate::AdminError::NotFound(x) => Problem::not_found(format!("no tenant {x:?}")),
            other => Problem::unavailable(&other),
        }
    }
}

impl From<crate::people::PeopleError> for Problem {
    fn from(e: crate::people::PeopleError) -> Self {
        Problem::unavailable(&e)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(&self)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        r
    }
}

/// Parses a JSON body into `T`, naming the field at fault when it can't.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return Problem::bad_request(format!("the body is not valid JSON: {inner}"));
        }
        let message = strip_position(&inner.to_string());
        if path == "." {
            Problem::bad_request(message)
        } else {
            Problem::invalid(path, message)
        }
    })
}

/// serde_json's message without its " at line L column C" suffix (the
/// field's path says where).
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// A PATCH field that can't be cleared: absent (leave it) or a value;
/// `null` is refused. Use with `#[serde(default, deserialize_with =
/// "present")]`.
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A PATCH field: absent (leave it), `null` (clear it) or a value. Use
/// with `#[serde(default, deserialize_with = "nullable")]`.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Patch {
        #[serde(default, deserialize_with = "nullable")]
        note: Option<Option<String>>,
        #[serde(default)]
        limit: Option<i32>,
    }

    #[test]
    fn absent_null_and_value_are_told_apart() {
        let p: Patch = parse_json(b"{}").unwrap();
        assert_eq!(p.note, None);
        let p: Patch = parse_json(br#"{"note": null}"#).unwrap();
        assert_eq!(p.note, Some(None));
        let p: Patch = parse_json(br#"{"note": "x", "limit": 3}"#).unwrap();
        assert_eq!(p.note, Some(Some("x".into())));
        assert_eq!(p.limit, Some(3));
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_json::<Patch>(br#"{"limit": "many"}"#).unwrap_err();
        assert_eq!(e.status, 422);
        assert_eq!(e.field.as_deref(), Some("limit"));
        assert!(!e.detail.contains("line"), "{}", e.detail);
        let e = parse_json::<Patch>(br#"{"colour": 1}"#).unwrap_err();
        assert!(e.detail.contains("unknown field `colour`"), "{}", e.detail);
        let e = parse_json::<Patch>(b"{").unwrap_err();
        assert_eq!(e.status, 400);
    }
}
