//! The business routes of the original tutorial app: the path/method table and one handler per route.
//!
//! | path | method | handler |
//! |------|--------|---------|
//! | `/`, `/auth/login` | GET | login page (redirects home when logged in) |
//! | `/auth/token`, `/api/login` | POST | log in (form), JSON or HTML / always JSON |
//! | `/auth/logout`, `/api/logout` | POST | log out, HTML redirect or JSON / always JSON |
//! | `/auth/home` | GET | home page |
//! | `/admin/me`, `/api/me` | GET | the user's details, JSON or HTML / always JSON |

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::pages;
use crate::request::{self, Format};
use crate::response::{self, ApiError, AppResponse};
use crate::sessions::Sessions;
use crate::users::{Authenticator, User};

/// State shared by every request.
#[derive(Debug)]
pub struct AppState {
    /// Who can log in.
    pub auth: Arc<Authenticator>,
    /// Live sessions.
    pub sessions: Sessions,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
    /// Time allowed to receive a body.
    pub body_read_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    LoginPage,
    Login { json_only: bool },
    Logout { json_only: bool },
    Home,
    Me { json_only: bool },
}

impl Route {
    fn find(path: &str) -> Option<Self> {
        Some(match path {
            "/" | "/auth/login" => Self::LoginPage,
            "/auth/token" => Self::Login { json_only: false },
            "/api/login" => Self::Login { json_only: true },
            "/auth/logout" => Self::Logout { json_only: false },
            "/api/logout" => Self::Logout { json_only: true },
            "/auth/home" => Self::Home,
            "/admin/me" => Self::Me { json_only: false },
            "/api/me" => Self::Me { json_only: true },
            _ => return None,
        })
    }

    /// The one method each route takes, and the matching `Allow` value.
    fn method(self) -> (Method, &'static str) {
        match self {
            Self::LoginPage | Self::Home | Self::Me { .. } => (Method::GET, "GET"),
            Self::Login { .. } | Self::Logout { .. } => (Method::POST, "POST"),
        }
    }
}

/// Answers one request; never fails (errors become responses here).
pub async fn handle(state: &AppState, request: Request<Incoming>) -> AppResponse {
    let result = match Route::find(request.uri().path()) {
        None => Err(ApiError::NotFound),
        Some(route) => {
            let (method, allow) = route.method();
            if request.method() != method {
                Err(ApiError::MethodNotAllowed(allow))
            } else {
                dispatch(state, route, request).await
            }
        }
    };
    result.unwrap_or_else(ApiError::into_response)
}

async fn dispatch(
    state: &AppState,
    route: Route,
    request: Request<Incoming>,
) -> Result<AppResponse, ApiError> {
    let wanted = |json_only: bool| {
        if json_only {
            Format::Json
        } else {
            request::format(request.headers())
        }
    };
    match route {
        Route::LoginPage => login_page(state, &request),
        Route::Login { json_only } => login(state, wanted(json_only), request).await,
        Route::Logout { json_only } => Ok(logout(state, wanted(json_only), &request)),
        Route::Home => Ok(home(state, &request)),
        Route::Me { json_only } => me(state, wanted(json_only), &request),
    }
}

/// How a request's credential stands against the session store.
enum Session {
    /// No token at all.
    Absent,
    /// A token naming no live session.
    Invalid,
    /// A live session of this user.
    Valid(User),
}

fn session<B>(state: &AppState, request: &Request<B>) -> Session {
    let Some(token) = request::credential(request.headers()) else {
        return Session::Absent;
    };
    state
        .sessions
        .touch(&token, Instant::now())
        .and_then(|username| state.auth.user(&username).cloned())
        .map_or(Session::Invalid, Session::Valid)
}

fn login_page<B>(state: &AppState, request: &Request<B>) -> Result<AppResponse, ApiError> {
    let login_state =
        request::login_state(request.uri().query()).map_err(|e| ApiError::Validation(vec![e]))?;
    if let Session::Valid(_) = session(state, request) {
        return Ok(response::see_other("/auth/home"));
    }
    Ok(response::html(pages::login(pages::login_message(
        login_state,
    ))))
}

async fn login(
    state: &AppState,
    format: Format,
    request: Request<Incoming>,
) -> Result<AppResponse, ApiError> {
    if let Session::Valid(_) = session(state, &request) {
        return Ok(match format {
            Format::Json => response::json(StatusCode::OK, &json!({"detail": "Already logged in"})),
            Format::Html => response::see_other("/auth/home"),
        });
    }
    let secure = request::origin(request.headers()).https;
    let (parts, body) = request.into_parts();
    let body = read_body(state, &parts.headers, body).await?;
    let form = request::login_form(&parts.headers, &body).map_err(ApiError::Validation)?;
    let Some(user) = state.auth.verify(&form.username, &form.password).await else {
        tracing::info!(username = ?form.username, "login failed");
        return match format {
            Format::Json => Err(ApiError::BadCredentials),
            Format::Html => Ok(response::see_other("/auth/login?state=3")),
        };
    };
    let token = state
        .sessions
        .create(&user.username, Instant::now())
        .map_err(|e| ApiError::Internal(format!("session token: {e}")))?;
    tracing::info!(username = %user.username, "logged in");
    let mut response = match format {
        Format::Json => response::json(
            StatusCode::OK,
            &json!({"access_token": token.as_str(), "token_type": "bearer"}),
        ),
        Format::Html => response::see_other("/auth/home"),
    };
    response::set_session_cookie(&mut response, token.as_str(), secure);
    Ok(response::no_store(response))
}

/// Reads the whole body within the size limit and the body read timeout.
async fn read_body(
    state: &AppState,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Bytes, ApiError> {
    // Refuse a declared oversize body before reading any of it.
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let limited = Limited::new(body, state.max_body_bytes);
    match tokio::time::timeout(state.body_read_timeout, limited.collect()).await {
        Err(_) => {
            tracing::info!(phase = "body read", timeout = ?state.body_read_timeout, "timed out");
            Err(ApiError::BodyTimeout)
        }
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge),
        Ok(Err(e)) => Err(ApiError::BodyRead(e.to_string())),
    }
}

fn logout<B>(state: &AppState, format: Format, request: &Request<B>) -> AppResponse {
    let token = request::credential(request.headers());
    let was_logged_in = token
        .as_deref()
        .is_some_and(|t| state.sessions.revoke(t, Instant::now()));
    let mut response = match (format, was_logged_in) {
        (Format::Json, true) => response::json(StatusCode::OK, &json!({"detail": "Logged out"})),
        (Format::Json, false) if token.is_none() => ApiError::NotAuthenticated.into_response(),
        (Format::Json, false) => ApiError::InvalidCredentials.into_response(),
        (Format::Html, true) => response::see_other("/auth/login?state=0"),
        (Format::Html, false) => response::see_other("/auth/login?state=1"),
    };
    // Clear the cookie even when the session was already gone, so a stale one stops being sent.
    response::clear_session_cookie(&mut response, request::origin(request.headers()).https);
    response
}

fn home<B>(state: &AppState, request: &Request<B>) -> AppResponse {
    match session(state, request) {
        Session::Valid(user) => {
            let api_url = request::origin(request.headers()).url("/api/me");
            response::no_store(response::html(pages::home(&user, api_url.as_deref())))
        }
        Session::Absent | Session::Invalid => response::see_other("/auth/login?state=2"),
    }
}

fn me<B>(state: &AppState, format: Format, request: &Request<B>) -> Result<AppResponse, ApiError> {
    match (session(state, request), format) {
        (Session::Valid(user), Format::Json) => Ok(response::no_store(response::json(
            StatusCode::OK,
            &json!({
                "username": user.username,
                "first_name": user.first_name,
                "last_name": user.last_name,
            }),
        ))),
        (Session::Valid(user), Format::Html) => {
            Ok(response::no_store(response::html(pages::me(&user))))
        }
        (Session::Absent, Format::Json) => Err(ApiError::NotAuthenticated),
        (Session::Invalid, Format::Json) => Err(ApiError::InvalidCredentials),
        (_, Format::Html) => Ok(response::see_other("/auth/login?state=2")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        assert_eq!(Route::find("/"), Some(Route::LoginPage));
        assert_eq!(Route::find("/api/me"), Some(Route::Me { json_only: true }));
        assert_eq!(Route::find("/api/me/"), None);
        assert_eq!(
            Route::find("/auth/token").map(|r| r.method().1),
            Some("POST")
        );
        assert_eq!(Route::find("/auth/home").map(|r| r.method().1), Some("GET"));
    }
}
