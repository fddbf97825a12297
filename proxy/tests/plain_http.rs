//! Plain HTTP sent to the HTTPS port is answered in plain HTTP: a redirect to https when the
//! redirect listener is on, else a 400 that says to use https. TLS on the same port is unaffected.

mod common;

use bytes::Bytes;
use common::{collect, get, h1, plain_h1, TestPki, TestProxy, TestUpstream};
use http::{header, StatusCode};
use http_body_util::Empty;

#[tokio::test]
async fn plain_http_on_the_https_port_is_told_to_use_https() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let port = proxy.addr.port();

    let mut plain = plain_h1(proxy.addr).await;
    let request = http::Request::get("/a?b=1")
        .header(header::HOST, format!("localhost:{port}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (status, _, body) = collect(plain.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains(&format!("use https://localhost:{port}/a?b=1")),
        "{body}"
    );
    assert!(upstream.seen().is_empty(), "nothing reaches the app");

    // TLS on the same port still works.
    let mut tls = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let (status, _, _) = collect(tls.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    proxy.shutdown().await;
}

#[tokio::test]
async fn plain_http_on_the_https_port_is_redirected_when_the_redirect_listener_is_on() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--redirect-http", "127.0.0.1:0"]).await;
    let port = proxy.addr.port();
    let mut plain = plain_h1(proxy.addr).await;
    let request = http::Request::get("/x")
        .header(header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (status, headers, _) = collect(plain.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        headers[header::LOCATION],
        format!("https://localhost:{port}/x").as_str()
    );
    proxy.shutdown().await;
}
