//! The business routes of the original tutorial app: the path/method table and one handler per route.
//!
//! | path | method | handler |
//! |------|--------|---------|
//! | `/`, `/auth/login` | GET | login page (redirects home when logged in) |
//! | `/auth/token`, `/api/login` | POST | log in (form), JSON or HTML / always JSON |
//! | `/auth/logout`, `/api/logout` | POST | log out, HTML redirect or JSON / always JSON |
//! | `/auth/home` | GET | home page |
//! | `/admin/me`, `/api/me` | GET | the user's details, JSON or HTML / always JSON |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::client::{client_address, TrustedProxies};
use crate::pages;
use crate::request::{self, Format};
use crate::response::{self, ApiError, AppResponse};
use crate::sessions::{SessionStore, SessionToken, StoreError};
use crate::throttle::Throttle;
use crate::users::{Authenticator, User};

/// State shared by every request.
#[derive(Debug)]
pub struct AppState {
    /// Who can log in.
    pub auth: Authenticator,
    /// Live sessions.
    pub sessions: Arc<SessionStore>,
    /// A session unused this long is gone; also the cookie's `Max-Age`.
    pub session_idle_timeout: Duration,
    /// Failed-login counters.
    pub throttle: Throttle,
    /// Peers whose forwarding headers name the client.
    pub trusted_proxies: TrustedProxies,
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

    /// Whether the route always answers JSON (the `/api/` flavours).
    fn json_only(self) -> bool {
        matches!(
            self,
            Self::Login { json_only: true }
                | Self::Logout { json_only: true }
                | Self::Me { json_only: true }
        )
    }
}

/// Where a known route's trailing-slash form redirects, keeping the query: `/auth/login/?a=1` →
/// `/auth/login?a=1`, as the original (Starlette's `redirect_slashes`) did, but relative, so it is
/// right behind any proxy. Only known routes redirect, so no path can make an open redirect.
fn slash_redirect(path: &str, query: Option<&str>) -> Option<String> {
    let trimmed = path.strip_suffix('/').filter(|p| !p.is_empty())?;
    Route::find(trimmed)?;
    Some(match query {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_owned(),
    })
}

/// Answers one request from `peer`; never fails (errors become responses here).
pub async fn handle(state: &AppState, peer: SocketAddr, request: Request<Incoming>) -> AppResponse {
    let uri = request.uri();
    let Some(route) = Route::find(uri.path()) else {
        return match slash_redirect(uri.path(), uri.query()) {
            Some(location) => response::temporary_redirect(&location),
            None => ApiError::NotFound.into_response(),
        };
    };
    let format = if route.json_only() {
        Format::Json
    } else {
        request::format(request.headers())
    };
    let (method, allow) = route.method();
    let result = if request.method() != method {
        Err(ApiError::MethodNotAllowed(allow))
    } else {
        dispatch(state, route, format, peer, request).await
    };
    result.unwrap_or_else(|error| error.into_response_for(format))
}

async fn dispatch(
    state: &AppState,
    route: Route,
    format: Format,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<AppResponse, ApiError> {
    match route {
        Route::LoginPage => login_page(state, &request).await,
        Route::Login { .. } => login(state, format, peer, request).await,
        Route::Logout { .. } => logout(state, format, &request).await,
        Route::Home => home(state, &request).await,
        Route::Me { .. } => me(state, format, &request).await,
    }
}

/// How a request's credential stands against the session store.
enum Session {
    /// No token at all.
    Absent,
    /// A token naming no live session.
    Invalid,
    /// A live session of this user.
    Valid(User, SessionToken),
}

fn unavailable(error: StoreError) -> ApiError {
    match error {
        StoreError::Unavailable { .. } => {
            tracing::warn!(%error, "session store unavailable");
            ApiError::StoreUnavailable(error.to_string())
        }
        StoreError::Rng(_) => ApiError::Internal(error.to_string()),
    }
}

async fn session<B>(state: &AppState, request: &Request<B>) -> Result<Session, ApiError> {
    let Some(credential) = request::credential(request.headers()) else {
        return Ok(Session::Absent);
    };
    let Some(token) = SessionToken::parse(&credential) else {
        return Ok(Session::Invalid);
    };
    let username = state.sessions.touch(&token).await.map_err(unavailable)?;
    Ok(username
        .and_then(|username| state.auth.user(&username).cloned())
        .map_or(Session::Invalid, |user| Session::Valid(user, token)))
}

/// A response of a live session: its cookie is set again (sliding the browser's expiry with the
/// server's idle timeout) and no cache may keep it.
fn live<B>(
    state: &AppState,
    request: &Request<B>,
    token: &SessionToken,
    mut response: AppResponse,
) -> AppResponse {
    let secure = request::origin(request.headers()).https;
    response::set_session_cookie(
        &mut response,
        token.as_str(),
        secure,
        state.session_idle_timeout,
    );
    response::no_store(response)
}

async fn login_page<B>(state: &AppState, request: &Request<B>) -> Result<AppResponse, ApiError> {
    let login_state =
        request::login_state(request.uri().query()).map_err(|e| ApiError::Validation(vec![e]))?;
    if let Session::Valid(_, token) = session(state, request).await? {
        return Ok(live(
            state,
            request,
            &token,
            response::see_other("/auth/home"),
        ));
    }
    Ok(response::html(pages::login(pages::login_message(
        login_state,
    ))))
}

async fn login(
    state: &AppState,
    format: Format,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<AppResponse, ApiError> {
    if let Session::Valid(_, token) = session(state, &request).await? {
        let response = match format {
            Format::Json => response::json(StatusCode::OK, &json!({"detail": "Already logged in"})),
            Format::Html => response::see_other("/auth/home"),
        };
        return Ok(live(state, &request, &token, response));
    }
    let secure = request::origin(request.headers()).https;
    let client = client_address(peer.ip(), request.headers(), &state.trusted_proxies);
    let (parts, body) = request.into_parts();
    let body = read_body(state, &parts.headers, body).await?;
    let form = request::login_form(&parts.headers, &body).map_err(ApiError::Validation)?;
    let now = tokio::time::Instant::now().into_std();
    let attempt = state
        .throttle
        .begin(&form.username, client, now)
        .map_err(|wait| {
            tracing::info!(username = ?form.username, %client, ?wait, "login throttled");
            ApiError::Throttled(wait)
        })?;
    let Some(user) = state.auth.verify(&form.username, &form.password).await else {
        state
            .throttle
            .failed(attempt, tokio::time::Instant::now().into_std());
        tracing::info!(username = ?form.username, %client, "login failed");
        return match format {
            Format::Json => Err(ApiError::BadCredentials),
            Format::Html => Ok(response::see_other("/auth/login?state=3")),
        };
    };
    state.throttle.succeeded(attempt);
    let token = state
        .sessions
        .create(&user.username)
        .await
        .map_err(unavailable)?;
    tracing::info!(username = %user.username, %client, "logged in");
    let mut response = match format {
        Format::Json => response::json(
            StatusCode::OK,
            &json!({"access_token": token.as_str(), "token_type": "bearer"}),
        ),
        Format::Html => response::see_other("/auth/home"),
    };
    response::set_session_cookie(
        &mut response,
        token.as_str(),
        secure,
        state.session_idle_timeout,
    );
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

async fn logout<B>(
    state: &AppState,
    format: Format,
    request: &Request<B>,
) -> Result<AppResponse, ApiError> {
    let credential = request::credential(request.headers());
    let was_logged_in = match credential.as_deref().and_then(SessionToken::parse) {
        Some(token) => state.sessions.revoke(&token).await.map_err(unavailable)?,
        None => false,
    };
    let mut response = match (format, was_logged_in) {
        (Format::Json, true) => response::json(StatusCode::OK, &json!({"detail": "Logged out"})),
        (Format::Json, false) if credential.is_none() => ApiError::NotAuthenticated.into_response(),
        (Format::Json, false) => ApiError::InvalidCredentials.into_response(),
        (Format::Html, true) => response::see_other("/auth/login?state=0"),
        (Format::Html, false) => response::see_other("/auth/login?state=1"),
    };
    // Clear the cookie even when the session was already gone, so a stale one stops being sent.
    response::clear_session_cookie(&mut response, request::origin(request.headers()).https);
    Ok(response)
}

async fn home<B>(state: &AppState, request: &Request<B>) -> Result<AppResponse, ApiError> {
    Ok(match session(state, request).await? {
        Session::Valid(user, token) => {
            let api_url = request::origin(request.headers()).url("/api/me");
            let page = response::html(pages::home(&user, api_url.as_deref()));
            live(state, request, &token, page)
        }
        Session::Absent | Session::Invalid => response::see_other("/auth/login?state=2"),
    })
}

async fn me<B>(
    state: &AppState,
    format: Format,
    request: &Request<B>,
) -> Result<AppResponse, ApiError> {
    match (session(state, request).await?, format) {
        (Session::Valid(user, token), Format::Json) => {
            let body = json!({
                "username": user.username,
                "first_name": user.first_name,
                "last_name": user.last_name,
            });
            Ok(live(
                state,
                request,
                &token,
                response::json(StatusCode::OK, &body),
            ))
        }
        (Session::Valid(user, token), Format::Html) => Ok(live(
            state,
            request,
            &token,
            response::html(pages::me(&user)),
        )),
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

    #[test]
    fn trailing_slash_redirects() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("/auth/login/", None, Some("/auth/login")),
            (
                "/auth/login/",
                Some("state=2&x=%2F"),
                Some("/auth/login?state=2&x=%2F"),
            ),
            ("/api/me/", None, Some("/api/me")),
            ("/auth/token/", None, Some("/auth/token")),
            ("/", None, None),
            ("/auth/login//", None, None),
            ("/nope/", None, None),
            ("//evil.example/", None, None),
            ("/auth/login", None, None),
        ];
        for (path, query, want) in cases {
            assert_eq!(
                slash_redirect(path, *query).as_deref(),
                *want,
                "{path} {query:?}"
            );
        }
    }
}
