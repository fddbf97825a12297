//! Building responses: JSON bodies, HTML pages, redirects, the session cookie, and the one place
//! where request errors become HTTP statuses ([`ApiError::into_response`]).

use bytes::Bytes;
use std::time::Duration;

use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, RETRY_AFTER, SET_COOKIE,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::pages;
use crate::request::{FieldError, Format, SESSION_COOKIE};

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

/// A `307 Temporary Redirect` (method and body kept) to a relative `location`.
pub fn temporary_redirect(location: &str) -> AppResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

/// Marks a response as personal: no cache may keep it (RFC 6749 §5.1 asks this of token responses).
pub fn no_store(mut response: AppResponse) -> AppResponse {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Sets the session cookie: `HttpOnly; SameSite=Lax; Path=/`, `Max-Age` the session idle timeout,
/// plus `Secure` when the outside scheme is https. Sent again on every response of a live session,
/// so the browser's expiry slides with the server's.
pub fn set_session_cookie(response: &mut AppResponse, token: &str, secure: bool, idle: Duration) {
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{}",
        idle.as_secs().max(1),
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
    /// Too many failed logins from this address (for this username); try again after the wait.
    #[error("login throttled for {0:?}")]
    Throttled(Duration),
    /// The session store cannot answer (e.g. Redis is down); details are logged, not sent.
    #[error("{0}")]
    StoreUnavailable(String),
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
            Self::Throttled(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!(format!(
                    "Too many failed logins; try again in {} seconds",
                    retry_after_secs(*wait)
                )),
            ),
            Self::StoreUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!("Session store unavailable; try again shortly"),
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
        if let Some(wait) = self.retry_after() {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
        }
        response
    }

    /// The response in the wanted format: the errors a browser user can meet on a page (throttled,
    /// store down) get an HTML page with the same status; everything else stays JSON, as FastAPI's.
    pub fn into_response_for(self, format: Format) -> AppResponse {
        let (status, heading) = match (&self, format) {
            (Self::Throttled(_), Format::Html) => {
                (StatusCode::TOO_MANY_REQUESTS, "Too many failed logins")
            }
            (Self::StoreUnavailable(_), Format::Html) => {
                (StatusCode::SERVICE_UNAVAILABLE, "Sessions are unavailable")
            }
            _ => return self.into_response(),
        };
        let retry_after = self.retry_after();
        let json = self.into_response();
        let message = match retry_after {
            Some(wait) if status == StatusCode::TOO_MANY_REQUESTS => {
                format!(
                    "Please wait {} seconds before trying again.",
                    retry_after_secs(wait)
                )
            }
            _ => "The session store cannot be reached. Please try again shortly.".to_owned(),
        };
        let mut response = html(pages::error(heading, &message));
        *response.status_mut() = status;
        if let Some(value) = json.headers().get(RETRY_AFTER) {
            response.headers_mut().insert(RETRY_AFTER, value.clone());
        }
        response
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled(wait) => Some(*wait),
            Self::StoreUnavailable(_) => Some(STORE_RETRY_AFTER),
            _ => None,
        }
    }
}

/// `Retry-After` for a session store that is down: a guess, long enough to reconnect.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Whole seconds to wait, rounded up (RFC 9110 §10.2.3: delay-seconds), at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
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
                ApiError::Throttled(Duration::from_millis(1500)),
                429,
                json!("Too many failed logins; try again in 2 seconds"),
            ),
            (
                ApiError::StoreUnavailable("redis down".into()),
                503,
                json!("Session store unavailable; try again shortly"),
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

    #[tokio::test]
    async fn throttled_and_store_errors_come_as_html_or_json_with_retry_after() {
        for (error, status, retry) in [
            (ApiError::Throttled(Duration::from_secs(4)), 429, "4"),
            (ApiError::StoreUnavailable("down".into()), 503, "5"),
        ] {
            let detail = body_json(ApiError::into_response(match &error {
                ApiError::Throttled(w) => ApiError::Throttled(*w),
                _ => ApiError::StoreUnavailable(String::new()),
            }))
            .await;
            assert!(detail["detail"].is_string());
            let page = error.into_response_for(Format::Html);
            assert_eq!(page.status().as_u16(), status);
            assert_eq!(page.headers()[RETRY_AFTER], retry);
            assert_eq!(page.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        }
        let json = ApiError::Throttled(Duration::from_secs(4)).into_response_for(Format::Json);
        assert_eq!(json.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(json.headers()[RETRY_AFTER], "4");
        let not_a_page = ApiError::NotFound.into_response_for(Format::Html);
        assert_eq!(not_a_page.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn cookie_flags() {
        let mut response = see_other("/");
        set_session_cookie(&mut response, "abc", false, Duration::from_secs(1800));
        clear_session_cookie(&mut response, true);
        let cookies: Vec<_> = response.headers().get_all(SET_COOKIE).iter().collect();
        assert_eq!(
            cookies[0],
            "session=abc; HttpOnly; SameSite=Lax; Path=/; Max-Age=1800"
        );
        assert_eq!(
            cookies[1],
            "session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0; Secure"
        );
    }
}
