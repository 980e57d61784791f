//! What the endpoints answer when they succeed: the token response, and the headers
//! that keep tokens out of caches. Errors answer through [`crate::error::OAuthError`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The successful token response (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Debug, serde::Serialize)]
pub(crate) struct TokenResponse {
    pub(crate) access_token: String,
    pub(crate) token_type: &'static str,
    pub(crate) expires_in: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) issued_token_type: Option<&'static str>,
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1): a response that
/// carries a token.
pub(crate) fn no_store(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A JSON body with `Cache-Control: no-store` (RFC 7662 §2.2: introspection answers).
pub(crate) fn json_no_store(body: &serde_json::Value) -> Response {
    let mut r = (StatusCode::OK, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
