//! Building responses: JSON bodies, HTML pages, redirects, the session cookie, and the one place
//! where request errors become HTTP statuses ([`ApiError::into_response`]).

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, SET_COOKIE,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::pages;
use crate::request::{FieldError, SESSION_COOKIE};

/// The response type of every route.
pub type AppResponse = Response<Full<Bytes>>;

/// A JSON response.
pub fn json(status: StatusCode, body: &serde_json::Value) -> AppResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// An HTML page.
pub fn html(page: String) -> AppResponse {
    let mut response = Response::new(Full::new(Bytes::from(page)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(csp) = HeaderValue::from_str(&pages::CONTENT_SECURITY_POLICY) {
        headers.insert(CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// A `303 See Other` to a path on this origin (relative, so it stays right behind any proxy).
pub fn see_other(location: &'static str) -> AppResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static(location));
    response
}

/// Marks a response as personal: no cache may keep it (RFC 6749 §5.1 asks this of token responses).
pub fn no_store(mut response: AppResponse) -> AppResponse {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Sets the session cookie: `HttpOnly; SameSite=Lax; Path=/`, plus `Secure` when the outside
/// scheme is https. No `Max-Age`: the server's idle timeout decides how long a session lives.
pub fn set_session_cookie(response: &mut AppResponse, token: &str, secure: bool) {
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/{}",
        secure_suffix(secure)
    );
    append_cookie(response, &cookie);
}

/// Clears the session cookie in the browser.
pub fn clear_session_cookie(response: &mut AppResponse, secure: bool) {
    let cookie = format!(
        "{SESSION_COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{}",
        secure_suffix(secure)
    );
    append_cookie(response, &cookie);
}

fn secure_suffix(secure: bool) -> &'static str {
    if secure {
        "; Secure"
    } else {
        ""
    }
}

fn append_cookie(response: &mut AppResponse, cookie: &str) {
    // Tokens are hex, so the value is always a valid header.
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

/// Every way a request can fail; all render as JSON `{"detail": ...}` like FastAPI's errors.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No route has this path.
    #[error("no route for the path")]
    NotFound,
    /// The path exists, the method does not; carries the `Allow` value.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// The body is larger than the configured limit.
    #[error("request body over the limit")]
    PayloadTooLarge,
    /// The body did not arrive within the body read timeout.
    #[error("request body read timed out")]
    BodyTimeout,
    /// The connection failed while the body was read.
    #[error("reading the request body: {0}")]
    BodyRead(String),
    /// Request fields failed validation.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// Wrong username or password.
    #[error("incorrect username or password")]
    BadCredentials,
    /// No token in the request.
    #[error("not authenticated")]
    NotAuthenticated,
    /// A token that names no live session.
    #[error("invalid authentication credentials")]
    InvalidCredentials,
    /// A server-side failure (e.g. the OS RNG); details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The response for this error: the only place errors map to statuses.
    pub fn into_response(self) -> AppResponse {
        let (status, detail) = match &self {
            Self::NotFound => (StatusCode::NOT_FOUND, json!("Not Found")),
            Self::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, json!("Method Not Allowed"))
            }
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!("Request body too large"),
            ),
            Self::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, json!("Request body timed out")),
            Self::BodyRead(_) => (
                StatusCode::BAD_REQUEST,
                json!("Could not read the request body"),
            ),
            Self::Validation(errors) => (StatusCode::UNPROCESSABLE_ENTITY, json!(errors)),
            Self::BadCredentials => (
                StatusCode::BAD_REQUEST,
                json!("Incorrect username or password"),
            ),
            Self::NotAuthenticated => (StatusCode::UNAUTHORIZED, json!("Not authenticated")),
            Self::InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                json!("Invalid authentication credentials"),
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!("Internal Server Error"),
            ),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = json(status, &json!({ "detail": detail }));
        let headers = response.headers_mut();
        match self {
            Self::MethodNotAllowed(allow) => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            Self::NotAuthenticated | Self::InvalidCredentials => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(response: AppResponse) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn error_statuses_and_bodies() {
        let cases = [
            (ApiError::NotFound, 404, json!("Not Found")),
            (
                ApiError::MethodNotAllowed("GET"),
                405,
                json!("Method Not Allowed"),
            ),
            (
                ApiError::PayloadTooLarge,
                413,
                json!("Request body too large"),
            ),
            (
                ApiError::BadCredentials,
                400,
                json!("Incorrect username or password"),
            ),
            (ApiError::NotAuthenticated, 401, json!("Not authenticated")),
            (
                ApiError::InvalidCredentials,
                401,
                json!("Invalid authentication credentials"),
            ),
            (
                ApiError::Internal("rng".into()),
                500,
                json!("Internal Server Error"),
            ),
        ];
        for (error, status, detail) in cases {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(body_json(response).await, json!({ "detail": detail }));
        }
    }

    #[test]
    fn cookie_flags() {
        let mut response = see_other("/");
        set_session_cookie(&mut response, "abc", false);
        clear_session_cookie(&mut response, true);
        let cookies: Vec<_> = response.headers().get_all(SET_COOKIE).iter().collect();
        assert_eq!(
            cookies[0],
            "app_session=abc; HttpOnly; SameSite=Lax; Path=/"
        );
        assert_eq!(
            cookies[1],
            "app_session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0; Secure"
        );
    }
}
