//! Connection lifecycle: the named timeouts (idle keep-alive / header read, body read) and graceful
//! shutdown (an in-flight request finishes, no new connections are accepted, and a stalled request
//! does not hold shutdown past the grace period).

mod common;

use std::time::{Duration, Instant};

use app::Config;
use common::start;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const LOGIN_FORM: &str = "username=behai_nguyen%40hotmail.com&password=password";

/// Sends the head of a login request with `Expect: 100-continue` and waits for the interim
/// response: once it arrives, the handler is reading the body, so the request is in flight.
async fn in_flight_login(addr: std::net::SocketAddr) -> BufReader<TcpStream> {
    let mut stream = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let head = format!(
        "POST /api/login HTTP/1.1\r\nhost: test\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        LOGIN_FORM.len()
    );
    stream.get_mut().write_all(head.as_bytes()).await.unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 100 "), "{line}");
    line.clear();
    stream.read_line(&mut line).await.unwrap();
    assert_eq!(line, "\r\n");
    stream
}

#[tokio::test]
async fn in_flight_request_finishes_after_shutdown() {
    let app = start(common::config()).await;
    let addr = app.addr;
    let mut stream = in_flight_login(addr).await;
    let stopped = tokio::spawn(app.stop());
    // Shutdown has begun once new connections are refused (the listener is dropped first).
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener still open");
        tokio::task::yield_now().await;
    }
    stream
        .get_mut()
        .write_all(LOGIN_FORM.as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.contains("access_token"), "{response}");
    stopped.await.unwrap().unwrap();
}

#[tokio::test]
async fn stalled_request_is_dropped_after_the_grace_period() {
    const GRACE: Duration = Duration::from_millis(200);
    let app = start(Config {
        shutdown_grace: GRACE,
        ..common::config()
    })
    .await;
    let mut stream = in_flight_login(app.addr).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("run returned within the deadline")
        .unwrap();
    assert!(started.elapsed() >= GRACE, "waited for the grace period");
    // The stalled connection was closed without a response.
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest).await;
    assert!(
        read.is_err() || rest.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_closes_after_the_header_read_timeout() {
    const HEADER_READ: Duration = Duration::from_millis(300);
    let app = start(Config {
        header_read_timeout: HEADER_READ,
        ..common::config()
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /api/me HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 401 "));
    // Kept alive, then closed by the server once idle for the header read timeout.
    let idle_since = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("closed within the deadline")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(idle_since.elapsed() >= HEADER_READ - Duration::from_millis(50));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn slow_body_gets_408_after_the_body_read_timeout() {
    let app = start(Config {
        body_read_timeout: Duration::from_millis(200),
        ..common::config()
    })
    .await;
    let mut stream = in_flight_login(app.addr).await;
    // Send only part of the declared body, then nothing.
    stream.get_mut().write_all(b"username=").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
    assert!(
        response.contains(r#"{"detail":"Request body timed out"}"#),
        "{response}"
    );
    app.stop().await.unwrap();
}
