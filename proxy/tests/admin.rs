//! The admin listener through a real proxy: `/metrics` counts a known mix of requests exactly,
//! `/readyz` follows the upstream and the shutdown drain, and the router's 404/405.

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    closed_port, collect, get, h1, h2, plain_get, proxy_argv, start_with_admin, tls_connect,
    TestPki, TestUpstream,
};
use http::{Request, StatusCode};
use http_body_util::Empty;
use proxy::cli::HealthcheckArgs;
use proxy::cmd::healthcheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a test waits for the proxy to reach a state before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Scrapes until every line of `expected` is in the exposition (a request is counted when its
/// response body is dropped, just after the client has the response), then returns it.
async fn scrape_until(admin: SocketAddr, expected: &[String]) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        let (status, text) = plain_get(admin, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let missing: Vec<&String> = expected
            .iter()
            .filter(|line| !text.lines().any(|l| l == line.as_str()))
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(Instant::now() < until, "missing {missing:?} in\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks `/readyz` until it answers `want`; returns the body.
async fn readyz_until(admin: SocketAddr, want: StatusCode) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        let (status, body) = plain_get(admin, "/readyz").await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < until, "/readyz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_origin(path: &str, origin: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .header("origin", origin)
        .body(Empty::new())
        .unwrap()
}

fn reload_to(argv: &[OsString], upstream: SocketAddr) -> Vec<OsString> {
    let mut argv = argv.to_vec();
    argv.extend(["--upstream".into(), format!("http://{upstream}").into()]);
    argv
}

#[tokio::test]
async fn metrics_count_a_known_mix_of_requests_exactly() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let (proxy, admin) = start_with_admin(
        &pki,
        upstream.addr,
        &[
            "--allow-origins",
            "https://ok.test",
            "--upstream-response-timeout",
            "300ms",
            "--header-read-timeout",
            "2s",
        ],
    )
    .await;

    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    // Response body bytes the clients received, the proxy's own answers included.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = received.clone();
    let mut send = |req| {
        let response = client.send_request(req);
        let counted = counted.clone();
        async move {
            let (status, _, body) = collect(response.await.unwrap()).await;
            counted.fetch_add(body.len(), std::sync::atomic::Ordering::SeqCst);
            status
        }
    };
    // Allowed: without an Origin, and from the allowed origin (on the pooled connection).
    assert_eq!(send(get("/")).await, StatusCode::OK);
    assert_eq!(
        send(with_origin("/", "https://ok.test")).await,
        StatusCode::OK
    );
    // Refused by CORS: never forwarded.
    assert_eq!(
        send(with_origin("/", "https://evil.test")).await,
        StatusCode::FORBIDDEN
    );
    // 504: the upstream never answers (on the pooled connection, which is then dropped).
    assert_eq!(send(get("/hang")).await, StatusCode::GATEWAY_TIMEOUT);
    // 502: the upstream is a closed port (a reload there and back).
    let closed = closed_port().await;
    proxy
        .proxy
        .reload(&reload_to(&proxy.argv, closed), &HashMap::new())
        .unwrap();
    assert_eq!(send(get("/")).await, StatusCode::BAD_GATEWAY);
    proxy
        .proxy
        .reload(&reload_to(&proxy.argv, upstream.addr), &HashMap::new())
        .unwrap();
    // HTTP/2, on a new upstream connection.
    let mut h2_client = h2::<Empty<Bytes>>(&pki, proxy.addr).await;
    let response = h2_client
        .send_request(
            Request::get(format!("https://localhost:{}/", proxy.addr.port()))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, _, body) = collect(response).await;
    assert_eq!(status, StatusCode::OK);
    received.fetch_add(body.len(), std::sync::atomic::Ordering::SeqCst);
    // A request head that stops half-way: closed at the header-read timeout with a 408.
    let mut tls = tls_connect(&pki, proxy.addr, &[b"http/1.1"]).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    let received = received.load(std::sync::atomic::Ordering::SeqCst);
    let mut expected: Vec<String> = [
        r#"proxy_requests_total{protocol="h1",method="GET",status="2xx"} 2"#,
        r#"proxy_requests_total{protocol="h1",method="GET",status="4xx"} 1"#,
        r#"proxy_requests_total{protocol="h1",method="GET",status="5xx"} 2"#,
        r#"proxy_requests_total{protocol="h2",method="GET",status="2xx"} 1"#,
        "proxy_request_duration_seconds_count 6",
        "proxy_upstream_response_duration_seconds_count 3",
        "proxy_request_body_bytes_total 0",
        "proxy_upstream_connections_opened_total 2",
        "proxy_upstream_connections_reused_total 2",
        r#"proxy_upstream_connect_failures_total{cause="refused"} 1"#,
        r#"proxy_upstream_connect_failures_total{cause="timeout"} 0"#,
        r#"proxy_upstream_errors_total{status="502"} 1"#,
        r#"proxy_upstream_errors_total{status="504"} 1"#,
        "proxy_upstream_retries_total 0",
        "proxy_client_connections_total 3",
        r#"proxy_tls_handshakes_total{version="tls1.3",outcome="success"} 3"#,
        r#"proxy_tls_handshakes_total{version="none",outcome="failure"} 0"#,
        r#"proxy_client_timeouts_total{phase="header_read"} 1"#,
        r#"proxy_client_timeouts_total{phase="idle"} 0"#,
        r#"proxy_cors_decisions_total{outcome="forwarded"} 5"#,
        r#"proxy_cors_decisions_total{outcome="refused"} 1"#,
        r#"proxy_cors_decisions_total{outcome="preflight_allowed"} 0"#,
        r#"proxy_cors_refusals_total{reason="origin"} 1"#,
        r#"proxy_reloads_total{kind="config",outcome="success"} 2"#,
        r#"proxy_reloads_total{kind="config",outcome="failure"} 0"#,
        r#"proxy_reloads_total{kind="certificate",outcome="success"} 2"#,
        "proxy_client_connection_slot_waits_total 0",
    ]
    .map(String::from)
    .to_vec();
    expected.push(format!("proxy_response_body_bytes_total {received}"));
    let text = scrape_until(admin, &expected).await;
    // Exactly these request label sets, nothing else counted.
    assert_eq!(text.matches("proxy_requests_total{").count(), 4, "{text}");
    assert!(text.contains(&format!(
        "proxy_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    let expiry = text
        .lines()
        .find_map(|l| l.strip_prefix("proxy_tls_certificate_expiry_seconds "))
        .expect("the certificate's expiry");
    assert!(expiry.parse::<i64>().unwrap() > 86_400, "{expiry}");
    proxy.shutdown().await;
}

fn ready_args(admin: SocketAddr) -> HealthcheckArgs {
    HealthcheckArgs {
        addr: None,
        listen: None,
        timeout: Duration::from_secs(3),
        http: false,
        ready: true,
        admin_listen: Some(admin.to_string()),
    }
}

async fn healthcheck_ready(admin: SocketAddr) -> Result<(), healthcheck::HealthError> {
    tokio::task::spawn_blocking(move || healthcheck::run(&ready_args(admin)))
        .await
        .unwrap()
}

#[tokio::test]
async fn readiness_follows_the_upstream_and_the_router_answers_404_and_405() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let upstream_addr = upstream.addr;
    let (proxy, admin) = start_with_admin(&pki, upstream_addr, &[]).await;

    assert_eq!(plain_get(admin, "/healthz").await.0, StatusCode::OK);
    assert_eq!(plain_get(admin, "/readyz").await.0, StatusCode::OK);
    healthcheck_ready(admin).await.expect("ready");
    assert_eq!(plain_get(admin, "/nope").await.0, StatusCode::NOT_FOUND);
    let mut sender = common::plain_h1(admin).await;
    let post = Request::post("/metrics")
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, HEAD");

    // The upstream stops: not ready, with the reason.
    drop(upstream);
    let body = readyz_until(admin, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(body.contains("does not accept connections"), "{body}");
    let err = healthcheck_ready(admin).await.expect_err("not ready");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(plain_get(admin, "/healthz").await.0, StatusCode::OK);

    // It comes back on the same address: ready again.
    let listener = tokio::net::TcpListener::bind(upstream_addr).await.unwrap();
    let _upstream = TestUpstream::serve(listener);
    readyz_until(admin, StatusCode::OK).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn readiness_is_503_during_the_drain_while_a_request_finishes() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let (mut proxy, admin) =
        start_with_admin(&pki, upstream.addr, &["--shutdown-grace", "10s"]).await;
    readyz_until(admin, StatusCode::OK).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let in_flight = tokio::spawn(async move { client.send_request(get("/sleep/1500")).await });
    upstream.arrived.notified().await;

    proxy.begin_shutdown();
    let body = readyz_until(admin, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(body.contains("shutting down"), "{body}");
    assert!(!in_flight.is_finished(), "the request is still in flight");
    assert_eq!(plain_get(admin, "/healthz").await.0, StatusCode::OK);
    let response = in_flight.await.unwrap().expect("answered during the drain");
    let (status, _, body) = collect(response).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"slept"[..]));
    proxy.join().await;
}

#[test]
fn the_admin_listener_is_refused_on_the_public_address() {
    let pki = TestPki::new();
    let argv = proxy_argv(
        &pki,
        "127.0.0.1:8000".parse().unwrap(),
        &[
            "--listen",
            "127.0.0.1:9443",
            "--admin-listen",
            "0.0.0.0:9443",
        ],
    );
    let cli = proxy::cli::parse(&argv, &HashMap::new()).unwrap();
    let err = proxy::build(&cli).err().expect("refused");
    assert!(err.to_string().contains("PROXY_ADMIN_LISTEN"), "{err}");
}
