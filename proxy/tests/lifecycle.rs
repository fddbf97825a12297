//! Connection lifecycle through a real proxy: graceful drain on shutdown, the handshake and idle
//! timeouts, and configuration reload (swap and refusal).

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{collect, get, h1, TestPki, TestProxy, TestUpstream};
use http::StatusCode;
use http_body_util::Empty;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn in_flight_request_completes_during_shutdown() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let mut proxy = TestProxy::start(&pki, upstream.addr, &["--shutdown-grace", "10s"]).await;
    let addr = proxy.addr;
    let mut client = h1::<Empty<Bytes>>(&pki, addr).await;
    let in_flight = tokio::spawn(async move { client.send_request(get("/sleep/400")).await });
    upstream.arrived.notified().await;

    let started = Instant::now();
    proxy.begin_shutdown();
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    let (status, _, body) = collect(response).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"slept"[..]));
    proxy.join().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain waited for the grace period"
    );
    // The listener is closed: new clients are refused.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn drain_is_bounded_by_the_grace_period() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let mut proxy = TestProxy::start(&pki, upstream.addr, &["--shutdown-grace", "300ms"]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let _hung = tokio::spawn(async move { client.send_request(get("/hang")).await });
    upstream.arrived.notified().await;
    let started = Instant::now();
    proxy.begin_shutdown();
    proxy.join().await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--tls-handshake-timeout", "200ms"]).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the proxy closed the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    proxy.shutdown().await;
}

#[tokio::test]
async fn idle_client_connection_is_closed() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--client-idle-timeout", "300ms"]).await;
    let tls = common::tls_connect(&pki, proxy.addr, &[b"h2"])
        .await
        .unwrap();
    let (mut client, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::builder()
        .uri(format!("https://localhost:{}/", proxy.addr.port()))
        .body(Empty::new())
        .unwrap();
    let (status, _, _) = collect(client.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the proxy closed the idle connection")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    proxy.shutdown().await;
}

fn without_upstream_flag(argv: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for arg in argv {
        if std::mem::take(&mut skip) {
            continue;
        }
        if arg == "--upstream" {
            skip = true;
            continue;
        }
        out.push(arg.clone());
    }
    out
}

#[tokio::test]
async fn reload_swaps_the_upstream_and_refuses_invalid_configuration() {
    let pki = TestPki::new();
    let blue = TestUpstream::start().await;
    let green = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, blue.addr, &[]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    collect(client.send_request(get("/one")).await.unwrap()).await;
    assert_eq!(blue.seen().len(), 1);

    // The environment now names another upstream (and there is no --upstream flag).
    let argv = without_upstream_flag(&proxy.argv);
    let env = |upstream: &str| HashMap::from([("PROXY_UPSTREAM".to_owned(), upstream.to_owned())]);
    proxy
        .proxy
        .reload(&argv, &env(&format!("http://{}", green.addr)))
        .expect("valid reload");
    collect(client.send_request(get("/two")).await.unwrap()).await;
    assert_eq!(green.last().uri.path(), "/two");
    assert_eq!(blue.seen().len(), 1);

    // An invalid upstream is refused; requests keep going to the current one.
    let err = proxy
        .proxy
        .reload(&argv, &env("https://blue:1"))
        .unwrap_err();
    assert!(err.to_string().contains("PROXY_UPSTREAM"), "{err}");
    // A valid upstream with a broken certificate file: nothing is applied.
    std::fs::write(&pki.cert_path, "not a certificate").unwrap();
    proxy
        .proxy
        .reload(&argv, &env(&format!("http://{}", blue.addr)))
        .expect_err("a broken certificate refuses the whole reload");
    collect(client.send_request(get("/three")).await.unwrap()).await;
    assert_eq!(green.last().uri.path(), "/three");
    assert_eq!(blue.seen().len(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn client_that_sends_nothing_after_the_handshake_is_dropped() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--header-read-timeout", "300ms"]).await;
    let mut tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("the proxy closed the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    proxy.shutdown().await;
}
