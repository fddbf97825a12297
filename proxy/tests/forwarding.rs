//! Forwarding through a real proxy over real TLS: HTTP/1.1 and HTTP/2 reach the upstream, the
//! forwarded and hop-by-hop headers, request and response bodies, and the error statuses (502 and
//! recovery, 504).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{collect, get, h1, h2, next_event, ChannelBody, TestPki, TestProxy, TestUpstream};
use http::{Request, StatusCode, Version};
use http_body_util::Empty;

#[tokio::test]
async fn http1_and_http2_reach_the_upstream() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;

    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let (status, _, body) = collect(client.send_request(get("/h1?q=1")).await.unwrap()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    let seen = upstream.last();
    assert_eq!(seen.uri.to_string(), "/h1?q=1");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers["host"], "localhost");

    let mut client = h2::<Empty<Bytes>>(&pki, proxy.addr).await;
    let request = Request::builder()
        .version(Version::HTTP_2)
        .uri(format!("https://localhost:{}/h2", proxy.addr.port()))
        .body(Empty::new())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    let (status, _, body) = collect(response).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    let seen = upstream.last();
    assert_eq!(seen.uri.to_string(), "/h2");
    assert_eq!(seen.version, Version::HTTP_11);
    // `:authority` becomes `Host`.
    assert_eq!(
        seen.headers["host"],
        format!("localhost:{}", proxy.addr.port())
    );
    assert_eq!(seen.headers["via"], "2 proxy");
    proxy.shutdown().await;
}

#[tokio::test]
async fn spoofed_forwarding_headers_are_replaced() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let request = Request::builder()
        .uri("/who")
        .header("host", "app.example:8443")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .body(Empty::new())
        .unwrap();
    let (status, _, _) = collect(client.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.last().headers;
    assert_eq!(
        seen.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
        ["127.0.0.1"]
    );
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "app.example:8443");
    assert_eq!(seen["host"], "app.example:8443");
    assert_eq!(
        seen.get_all("forwarded").iter().collect::<Vec<_>>(),
        ["for=127.0.0.1;host=\"app.example:8443\";proto=https"]
    );
    assert!(!seen.contains_key("x-real-ip"));
    assert_eq!(seen["via"], "1.1 proxy");
    proxy.shutdown().await;
}

#[tokio::test]
async fn trusted_peer_forwarding_headers_are_kept() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--trusted-proxies", "127.0.0.0/8"]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let request = Request::builder()
        .uri("/who")
        .header("host", "localhost")
        .header("x-forwarded-for", "198.51.100.9")
        .header("x-forwarded-host", "front.example")
        .body(Empty::new())
        .unwrap();
    collect(client.send_request(request).await.unwrap()).await;
    let seen = upstream.last().headers;
    assert_eq!(seen["x-forwarded-for"], "198.51.100.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "front.example");
    proxy.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let request = Request::builder()
        .uri("/hop")
        .header("host", "localhost")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "1")
        .header("keep-alive", "timeout=30")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers, gzip")
        .header("upgrade", "h2c")
        .header("x-end-to-end", "kept")
        .body(Empty::new())
        .unwrap();
    let (status, headers, _) = collect(client.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.last().headers;
    for name in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(!seen.contains_key(name), "{name} reached the upstream");
    }
    // The upstream client may add its own `connection` for its pooled connection, never ours.
    assert!(seen
        .get_all("connection")
        .iter()
        .all(|v| !v.to_str().unwrap().contains("x-secret")));
    assert_eq!(seen["te"], "trailers");
    assert_eq!(seen["x-end-to-end"], "kept");

    assert!(
        !headers.contains_key("x-hop"),
        "a header named by the upstream's Connection leaked"
    );
    assert!(!headers.contains_key("keep-alive"));
    assert_eq!(headers["x-end"], "1");
    proxy.shutdown().await;
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_recovers() {
    let pki = TestPki::new();
    let down = common::closed_port().await;
    let proxy = TestProxy::start(&pki, down, &[]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;

    let (status, headers, body) = collect(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(&body[..], b"502 Bad Gateway\n");

    let request = Request::builder()
        .uri("/")
        .header("host", "localhost")
        .header("x-expected-format", "application/json")
        .body(Empty::new())
        .unwrap();
    let (status, headers, body) = collect(client.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "upstream_unreachable");

    // The backend comes back on the same address: the next request succeeds.
    let listener = tokio::net::TcpListener::bind(down)
        .await
        .expect("rebind the upstream port");
    let upstream = TestUpstream::serve(listener);
    let (status, _, body) = collect(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    drop(upstream);
    proxy.shutdown().await;
}

/// On a paused clock: the upload's pace and the proxy's timers run in virtual time.
#[tokio::test(start_paused = true)]
async fn the_response_timeout_starts_after_a_slow_upload() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(
        &pki,
        upstream.addr,
        &["--upstream-response-timeout", "300ms"],
    )
    .await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut client = h1::<ChannelBody>(&pki, proxy.addr).await;
    let request = Request::builder()
        .method("POST")
        .uri("/collect")
        .header("host", "localhost")
        .body(ChannelBody(rx))
        .unwrap();
    let response =
        tokio::spawn(async move { collect(client.send_request(request).await.unwrap()).await });
    // The upload takes about three times the response timeout; the upstream answers only after it.
    // The client's pace is the point of the test (virtual time).
    let started = tokio::time::Instant::now();
    for _ in 0..4 {
        tx.send(Bytes::from_static(&[7u8; 1000])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(tx);
    let (status, _, body) = response.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(&body[..], b"4000");
    proxy.shutdown().await;
}

#[tokio::test]
async fn hung_upstream_is_504() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(
        &pki,
        upstream.addr,
        &["--upstream-response-timeout", "300ms"],
    )
    .await;
    let mut client = h2::<Empty<Bytes>>(&pki, proxy.addr).await;
    let request = Request::builder()
        .uri(format!("https://localhost:{}/hang", proxy.addr.port()))
        .header("accept", "application/json")
        .body(Empty::new())
        .unwrap();
    let started = std::time::Instant::now();
    let (status, headers, body) = collect(client.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "upstream_timeout");

    // The same connection keeps working for a request the upstream answers.
    let request = Request::builder()
        .uri(format!("https://localhost:{}/ok", proxy.addr.port()))
        .body(Empty::new())
        .unwrap();
    let (status, _, _) = collect(client.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    proxy.shutdown().await;
}

/// The same over HTTP/1.1, where the response timer is armed late (the connection's own timer
/// polls the request again): the first request of a new connection, and one on a keep-alive
/// connection that was idle (parked) meanwhile and goes out on a pooled upstream connection
/// (nothing else wakes it), both get their `504` on time. On a paused clock: the idle time and
/// the timeout pass in virtual time.
#[tokio::test(start_paused = true)]
async fn hung_upstream_is_504_over_http1() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(
        &pki,
        upstream.addr,
        &["--upstream-response-timeout", "300ms"],
    )
    .await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    for round in 0..2 {
        if round == 1 {
            // An upstream connection for the pool, then idle long enough to be parked: the next
            // request starts a new hyper connection and reuses the pooled one (virtual time).
            let (status, _, _) = collect(client.send_request(get("/ok")).await.unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let started = tokio::time::Instant::now();
        let (status, _, _) = collect(client.send_request(get("/hang")).await.unwrap()).await;
        let waited = started.elapsed();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "round {round}");
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        // The timeout plus at most one tick of the connection's timer (0.25 s), with room for
        // a loaded machine; a timer never armed would leave it to the client idle timeout.
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    proxy.shutdown().await;
}

/// The upstream answers a large upload at once with a large body while it goes on reading the
/// upload; the client sends its whole body before it reads anything. The upload must not wait for
/// the client to take the response (it would wait for ever).
#[tokio::test]
async fn an_upload_goes_on_while_its_response_waits_for_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Well past what the sockets and the proxy buffer on each path.
    const UP: usize = 32 << 20;
    const DOWN: usize = 32 << 20;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut read = tokio::io::BufReader::new(read);
                let Some((_, length)) = common::read_request_head(&mut read).await else {
                    return;
                };
                tokio::spawn(async move {
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {DOWN}\r\n\r\n");
                    let _ = write.write_all(head.as_bytes()).await;
                    let chunk = vec![b'd'; 64 * 1024];
                    for _ in 0..DOWN / chunk.len() {
                        if write.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                });
                let mut body = vec![0; length];
                read.read_exact(&mut body).await.unwrap();
                let _ = events.send("body received");
            });
        }
    });
    let pki = TestPki::new();
    // Over the default body limit.
    let limit = (UP * 2).to_string();
    let proxy = TestProxy::start(&pki, upstream, &["--max-body-bytes", &limit]).await;
    let mut tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {UP}\r\n\r\n");
    let upload = async {
        tls.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..UP / chunk.len() {
            tls.write_all(&chunk).await.unwrap();
        }
        tls.flush().await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(20), upload)
        .await
        .expect("the upload stalled while its response waited for the client");
    assert_eq!(next_event(&mut received).await, "body received");
    drop(tls); // else the shutdown waits out its grace period for the unread response
    proxy.shutdown().await;
}
