//! What the proxy says about HTTPS itself: the `Strict-Transport-Security` header when enabled,
//! and the plain-HTTP listener that answers every request with a 308 to the HTTPS URL.

mod common;

use bytes::Bytes;
use common::{collect, get, h1, TestPki, TestProxy, TestUpstream};
use http::{Request, StatusCode};
use http_body_util::Empty;

#[tokio::test]
async fn hsts_is_added_when_enabled() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--hsts", "31536000"]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let (_, headers, _) = collect(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    proxy.shutdown().await;

    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let (_, headers, _) = collect(client.send_request(get("/")).await.unwrap()).await;
    assert!(!headers.contains_key("strict-transport-security"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn plain_http_listener_redirects_to_https() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(proxy::server::serve_redirect(
        listener,
        8443,
        std::time::Duration::from_secs(5),
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = common::plain_h1(addr).await;
    let request = Request::builder()
        .uri("/login?next=%2F")
        .header("host", "example.com:8080")
        .body(Empty::new())
        .unwrap();
    let (status, headers, _) = collect(client.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        headers["location"],
        "https://example.com:8443/login?next=%2F"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
