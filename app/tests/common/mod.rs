//! Test harness: starts the app on 127.0.0.1:0 with a given config and talks to it over real
//! sockets with a tiny HTTP/1.1 client (one connection per request, hyper's `client::conn`).

#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod process;
pub mod redis_server;

use std::net::SocketAddr;
use std::time::Duration;

use app::{AppError, Config};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, SET_COOKIE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const DEMO_USER: &str = "behai_nguyen@hotmail.com";
pub const DEMO_PASSWORD: &str = "password";
pub const JSON_FORMAT: (&str, &str) = ("x-expected-format", "application/json");
pub const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// A running app; dropping it without `stop` leaves the task to the runtime's end.
pub struct TestApp {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AppError>>,
}

/// Binds 127.0.0.1:0 first (so requests can be sent at once), then runs the app on it.
pub async fn start(config: Config) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app::run(listener, config, async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        shutdown: Some(tx),
        task,
    }
}

/// The default config with test-friendly timeouts.
pub fn config() -> Config {
    Config {
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    }
}

impl TestApp {
    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), AppError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.expect("run task")
    }

    /// Starts building a request to this app.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        RequestBuilder {
            addr: self.addr,
            method,
            path: path.to_owned(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    /// Logs the demo user in through `/api/login` and returns the token.
    pub async fn login_token(&self) -> String {
        let response = self
            .post("/api/login")
            .header(FORM.0, FORM.1)
            .body(format!("username={DEMO_USER}&password={DEMO_PASSWORD}"))
            .send()
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        response.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }
}

pub struct RequestBuilder {
    addr: SocketAddr,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl RequestBuilder {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn cookie(self, token: &str) -> Self {
        self.header("cookie", &format!("session={token}"))
    }

    pub fn json_format(self) -> Self {
        self.header(JSON_FORMAT.0, JSON_FORMAT.1)
    }

    pub fn form(self, body: &str) -> Self {
        self.header(FORM.0, FORM.1).body(body.to_owned())
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the request on a fresh connection and reads the whole response.
    pub async fn send(self) -> TestResponse {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(self.method)
            .uri(&self.path)
            .header("host", self.addr.to_string())
            .body(Full::new(self.body))
            .expect("request");
        request.headers_mut().extend(self.headers);
        let response = sender.send_request(request).await.expect("send");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        TestResponse {
            status,
            headers,
            body,
        }
    }
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }

    /// All `Set-Cookie` values.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("cookie").to_owned())
            .collect()
    }

    /// The session token set by this response, if any.
    pub fn session_cookie(&self) -> Option<String> {
        self.set_cookies().iter().find_map(|c| {
            let value = c.strip_prefix("session=")?.split(';').next()?;
            (!value.is_empty()).then(|| value.to_owned())
        })
    }

    /// Asserts a JSON error body `{"detail": detail}` with this status.
    pub fn assert_detail(&self, status: u16, detail: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(self.json(), serde_json::json!({ "detail": detail }));
    }

    pub fn assert_redirect(&self, location: &str) {
        assert_eq!(self.status, StatusCode::SEE_OTHER, "{}", self.text());
        assert_eq!(self.location(), Some(location));
    }

    pub fn assert_html(&self) {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("text/html; charset=utf-8")
        );
    }
}

/// A fresh, empty folder for one test's files; removed by the test when done.
pub fn temp_dir(test: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("app-test-{}-{test}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
