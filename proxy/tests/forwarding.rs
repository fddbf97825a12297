//! Forwarding through a real proxy over real TLS: HTTP/1.1 and HTTP/2, forwarded headers,
//! hop-by-hop stripping, upgrades, HSTS, and the error statuses (502, 504, recovery, retry).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{collect, get, h1, h2, TestPki, TestProxy, TestUpstream};
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

/// Sends a WebSocket-style upgrade through the proxy (HTTP/1.1) and returns the joined tunnel.
async fn open_tunnel(
    pki: &TestPki,
    proxy: std::net::SocketAddr,
) -> hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {
    let mut client = h1::<Empty<Bytes>>(pki, proxy).await;
    let request = Request::builder()
        .uri("/ws")
        .header("host", "localhost")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(Empty::new())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["upgrade"], "websocket");
    let upgraded = hyper::upgrade::on(response)
        .await
        .expect("client side upgraded");
    hyper_util::rt::TokioIo::new(upgraded)
}

#[tokio::test]
async fn upgrade_is_joined_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let mut io = open_tunnel(&pki, proxy.addr).await;
    let seen = upstream.last().headers;
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["connection"], "upgrade");
    for message in [&b"ping"[..], &b"a second message"[..]] {
        io.write_all(message).await.unwrap();
        let mut echoed = vec![0; message.len()];
        io.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_open_tunnel_runs_on_through_the_shutdown_grace_period() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let mut proxy = TestProxy::start(&pki, upstream.addr, &["--shutdown-grace", "1s"]).await;
    let mut io = open_tunnel(&pki, proxy.addr).await;
    let began = std::time::Instant::now();
    proxy.begin_shutdown();
    // Still joined while the server drains.
    io.write_all(b"during the drain").await.unwrap();
    let mut echoed = [0u8; 16];
    io.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"during the drain");
    // The drain waits for the tunnel, up to the grace period.
    tokio::time::timeout(Duration::from_secs(10), proxy.join())
        .await
        .expect("run() returns after the grace period");
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_and_counts_against_the_connection_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(
        &pki,
        upstream.addr,
        &["--max-connections", "1", "--client-idle-timeout", "1s"],
    )
    .await;
    let mut io = open_tunnel(&pki, proxy.addr).await;
    io.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    io.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");

    // While the tunnel is open it holds the only connection slot: a second client is not served.
    let opened = std::time::Instant::now();
    let second = tokio::spawn({
        // The TCP connect lands in the kernel's backlog; the TLS handshake needs the proxy to accept.
        let config = pki.client_config_alpn(&[b"http/1.1"]);
        let addr = proxy.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .expect("the second client's handshake");
            std::time::Instant::now()
        }
    });
    // Without traffic the tunnel is closed after the idle timeout: the client's read ends (EOF or
    // a reset, either means closed) instead of hanging.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut rest))
        .await
        .expect("the idle tunnel is closed within the test's limit");
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        opened.elapsed()
    );
    // ...and only then does the second client get its slot.
    let served_at = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second client is served once the tunnel is gone")
        .unwrap();
    assert!(served_at.duration_since(opened) >= Duration::from_millis(900));
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

#[tokio::test]
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
    let started = std::time::Instant::now();
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

/// A request body whose chunks the test sends through a channel, at its own pace.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
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
/// (nothing else wakes it), both get their `504` on time.
#[tokio::test]
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
            // request starts a new hyper connection and reuses the pooled one.
            let (status, _, _) = collect(client.send_request(get("/ok")).await.unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let started = std::time::Instant::now();
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

/// A raw upstream whose first connection answers one request with keep-alive, then closes as the
/// second request arrives (the race a pooled connection meets when the backend's keep-alive
/// expires); later connections answer normally.
async fn flaky_keepalive_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn read_head(tcp: &mut tokio::net::TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match tcp.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let stale = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                while read_head(&mut tcp).await {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    if stale {
                        // Wait for the next request, then drop the connection unanswered.
                        read_head(&mut tcp).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn stale_pooled_connection_is_retried_for_idempotent_requests() {
    let pki = TestPki::new();
    let upstream = flaky_keepalive_upstream().await;
    let proxy = TestProxy::start(&pki, upstream, &[]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    for _ in 0..2 {
        let (status, _, body) = collect(client.send_request(get("/")).await.unwrap()).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    proxy.shutdown().await;

    // A POST is not idempotent: the same failure is a 502, never a silent second delivery.
    let upstream = flaky_keepalive_upstream().await;
    let proxy = TestProxy::start(&pki, upstream, &[]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let post = || {
        Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap()
    };
    let (status, _, _) = collect(client.send_request(post()).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = collect(client.send_request(post()).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    proxy.shutdown().await;
}

/// Reads a request head from a raw test upstream's socket: the request line and the
/// `Content-Length` (0 without one); `None` at the end of the stream.
async fn read_request_head(
    tcp: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> Option<(String, usize)> {
    use tokio::io::AsyncBufReadExt;

    let (mut request, mut length) = (String::new(), 0);
    loop {
        let mut line = String::new();
        if tcp.read_line(&mut line).await.unwrap_or(0) == 0 {
            return None;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        if request.is_empty() {
            request = line.trim().to_string();
        }
        if line == "\r\n" {
            return Some((request, length));
        }
    }
}

/// A raw upstream that answers each connection's one request with keep-alive, echoing its body,
/// and closes the connection when told to (`close`), then reports the close. `GET /ws` gets a
/// `101` instead, and the connection then echoes what comes.
async fn closing_keepalive_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<tokio::sync::Notify>,
    tokio::sync::mpsc::UnboundedReceiver<&'static str>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let close = std::sync::Arc::new(tokio::sync::Notify::new());
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    let told = close.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (events, told) = (events.clone(), told.clone());
            tokio::spawn(async move {
                let mut tcp = tokio::io::BufReader::new(tcp);
                let Some((request, length)) = read_request_head(&mut tcp).await else {
                    return;
                };
                if request.starts_with("GET /ws ") {
                    let head = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
                                upgrade: websocket\r\n\r\n";
                    tcp.get_mut().write_all(head.as_bytes()).await.unwrap();
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                        tcp.get_mut().write_all(&buf[..n]).await.unwrap();
                    }
                    return;
                }
                let mut body = vec![0; length];
                tcp.read_exact(&mut body).await.unwrap();
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
                let mut tcp = tcp.into_inner();
                tcp.write_all(head.as_bytes()).await.unwrap();
                tcp.write_all(&body).await.unwrap();
                told.notified().await;
                tcp.shutdown().await.unwrap();
                drop(tcp);
                let _ = events.send("closed");
            });
        }
    });
    (addr, close, received)
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_used_even_for_a_post() {
    let pki = TestPki::new();
    let (upstream, close, mut events) = closing_keepalive_upstream().await;
    let proxy = TestProxy::start(&pki, upstream, &[]).await;
    let mut client = h1::<http_body_util::Full<Bytes>>(&pki, proxy.addr).await;
    let post = |body: &'static str| {
        Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "localhost")
            .body(http_body_util::Full::new(Bytes::from_static(
                body.as_bytes(),
            )))
            .unwrap()
    };
    // Each response says keep-alive, so the proxy pools the connection; the upstream closes it
    // before the next request. Not idempotent, a POST must not be sent on it (that would be a
    // 502), nor lost: it goes out on a new connection, body and all.
    for body in ["first", "second", "third"] {
        let (status, _, echoed) = collect(client.send_request(post(body)).await.unwrap()).await;
        assert_eq!((status, &echoed[..]), (StatusCode::OK, body.as_bytes()));
        close.notify_one();
        assert_eq!(next_event(&mut events).await, "closed");
    }
    proxy.shutdown().await;
}

/// The upstream answers a POST as soon as its head is in, before the body; the proxy sends the
/// rest of the body as the client sends it, and then the same upstream connection serves the next
/// request (it went back to the pool once the exchange had really ended).
#[tokio::test]
async fn a_connection_answered_early_is_reused_once_the_body_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = events.send("accepted".to_string());
            let events = events.clone();
            tokio::spawn(async move {
                let mut tcp = tokio::io::BufReader::new(tcp);
                while let Some((request, length)) = read_request_head(&mut tcp).await {
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    tcp.get_mut().write_all(answer).await.unwrap();
                    let mut body = vec![0; length];
                    tcp.read_exact(&mut body).await.unwrap();
                    let body = String::from_utf8(body).unwrap();
                    let _ = events.send(format!("{request} {body}").trim().to_string());
                }
            });
        }
    });
    let pki = TestPki::new();
    let proxy = TestProxy::start(&pki, upstream, &[]).await;
    let mut tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    let head = "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n01234";
    tls.write_all(head.as_bytes()).await.unwrap();
    assert!(read_ok_response(&mut tls).await.starts_with("HTTP/1.1 200"));
    tls.write_all(b"56789").await.unwrap();
    assert_eq!(next_event(&mut received).await, "accepted");
    assert_eq!(
        next_event(&mut received).await,
        "POST /upload HTTP/1.1 0123456789"
    );
    tls.write_all(b"GET /next HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(read_ok_response(&mut tls).await.starts_with("HTTP/1.1 200"));
    // On the same connection: no second "accepted" before it.
    assert_eq!(next_event(&mut received).await, "GET /next HTTP/1.1");
    proxy.shutdown().await;
}

/// Reads one response whose body is `ok` from a raw TLS client connection.
async fn read_ok_response(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> String {
    use tokio::io::AsyncReadExt;

    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while !received.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert_ne!(n, 0, "closed: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(received).unwrap()
}

/// A hyper upstream that reads each request's body to its end before it answers `ok`, and reports
/// each connection it accepts and each request (`METHOD /path body`).
async fn body_reading_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use http_body_util::BodyExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = events.send("accepted".to_string());
            let events = events.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let events = events.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let body = String::from_utf8_lossy(&body);
                    let event = format!("{} {} {body}", parts.method, parts.uri.path());
                    let _ = events.send(event.trim().to_string());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"ok")),
                    ))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    (addr, received)
}

/// A chunked HTTP/1.1 upload with trailers: hyper takes the trailers and drops the body without
/// its end being polled. The connection that carried it still serves the next request.
#[tokio::test]
async fn a_chunked_upload_with_trailers_leaves_its_connection_reusable() {
    use tokio::io::AsyncWriteExt;

    let (upstream, mut events) = body_reading_upstream().await;
    let pki = TestPki::new();
    let proxy = TestProxy::start(&pki, upstream, &[]).await;
    let mut tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    let upload = "POST /up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
                  Trailer: x-check\r\n\r\n5\r\nhello\r\n0\r\nx-check: 1\r\n\r\n";
    tls.write_all(upload.as_bytes()).await.unwrap();
    assert!(read_ok_response(&mut tls).await.starts_with("HTTP/1.1 200"));
    assert_eq!(next_event(&mut events).await, "accepted");
    assert_eq!(next_event(&mut events).await, "POST /up hello");
    tls.write_all(b"GET /next HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(read_ok_response(&mut tls).await.starts_with("HTTP/1.1 200"));
    // On the same upstream connection: no second "accepted" before it.
    assert_eq!(next_event(&mut events).await, "GET /next");
    drop(tls);
    proxy.shutdown().await;
}

/// An HTTP/2 upload with a `content-length` whose END_STREAM comes in an empty DATA frame after
/// the last byte: hyper's upstream side has its length and drops the body unfinished. The
/// connection that carried it still serves the next request.
#[tokio::test]
async fn an_http2_upload_ended_by_an_empty_data_frame_leaves_its_connection_reusable() {
    let (upstream, mut events) = body_reading_upstream().await;
    let pki = TestPki::new();
    let proxy = TestProxy::start(&pki, upstream, &[]).await;
    let mut client = h2::<ChannelBody>(&pki, proxy.addr).await;
    let port = proxy.addr.port();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let request = Request::builder()
        .method("POST")
        .version(Version::HTTP_2)
        .uri(format!("https://localhost:{port}/up"))
        .header("content-length", "5")
        .body(ChannelBody(rx))
        .unwrap();
    let response = tokio::spawn(client.send_request(request));
    tx.send(Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(next_event(&mut events).await, "accepted");
    assert_eq!(next_event(&mut events).await, "POST /up hello");
    drop(tx); // the client now ends the stream with an empty DATA frame
    let (status, _, body) = collect(response.await.unwrap().unwrap()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let request = Request::builder()
        .version(Version::HTTP_2)
        .uri(format!("https://localhost:{port}/next"))
        .body(ChannelBody(tokio::sync::mpsc::channel(1).1))
        .unwrap();
    let (status, _, _) = collect(client.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    // On the same upstream connection: no second "accepted" before it.
    assert_eq!(next_event(&mut events).await, "GET /next");
    proxy.shutdown().await;
}

/// A WebSocket upgrade whose pooled connection the upstream had closed goes out on a new
/// connection, and that one is joined to the client's too (it must be able to hand its socket
/// over, as the pooled one could).
#[tokio::test]
async fn an_upgrade_sent_again_on_a_new_connection_still_tunnels() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (upstream, close, mut received) = closing_keepalive_upstream().await;
    let pki = TestPki::new();
    let proxy = TestProxy::start(&pki, upstream, &[]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let (status, _, _) = collect(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    close.notify_one();
    assert_eq!(next_event(&mut received).await, "closed");

    let mut tunnel = open_tunnel(&pki, proxy.addr).await;
    tunnel.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut echoed))
        .await
        .expect("an echo within 5 s")
        .expect("the tunnel open");
    assert_eq!(&echoed, b"ping");
    drop(tunnel); // else the shutdown waits out its grace period for it
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
                let Some((_, length)) = read_request_head(&mut read).await else {
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
    let proxy = TestProxy::start(&pki, upstream, &[]).await;
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

/// An upstream that reports each connection it accepts and each one that ends. `/slow` answers
/// after 300 ms, so that concurrent requests need one connection each.
async fn observed_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<&'static str>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let events = events.clone();
            let _ = events.send("accepted");
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"ok")),
                        ))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
                let _ = events.send("closed");
            });
        }
    });
    (addr, received)
}

/// Waits for the next upstream event, failing after 5 s.
async fn next_event<T>(events: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an upstream event within 5 s")
        .expect("upstream running")
}

#[tokio::test]
async fn upstream_connections_are_reused_then_closed_after_the_idle_timeout() {
    let pki = TestPki::new();
    let (upstream, mut events) = observed_upstream().await;
    let proxy = TestProxy::start(&pki, upstream, &["--upstream-idle-timeout", "300ms"]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    for _ in 0..3 {
        let (status, _, _) = collect(client.send_request(get("/")).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
    }
    let idle_from = std::time::Instant::now();
    assert_eq!(next_event(&mut events).await, "accepted");
    // The one pooled connection served all three, and is closed once idle for the timeout.
    assert_eq!(next_event(&mut events).await, "closed");
    assert!(
        idle_from.elapsed() >= Duration::from_millis(250),
        "{:?}",
        idle_from.elapsed()
    );
    // The next request opens a new connection.
    let (status, _, _) = collect(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(next_event(&mut events).await, "accepted");
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_max_idle_bounds_the_pool() {
    let pki = TestPki::new();
    let (upstream, mut events) = observed_upstream().await;
    let proxy = TestProxy::start(&pki, upstream, &["--upstream-max-idle", "1"]).await;
    let client = h2::<Empty<Bytes>>(&pki, proxy.addr).await;
    // Three at once need three upstream connections.
    let port = proxy.addr.port();
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let request = Request::builder()
                    .version(Version::HTTP_2)
                    .uri(format!("https://localhost:{port}/slow"))
                    .body(Empty::new())
                    .unwrap();
                collect(client.send_request(request).await.unwrap()).await.0
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(next_event(&mut events).await, "accepted");
    }
    // Only one may stay idle: the other two are closed at once (the idle timeout is 4 s).
    for _ in 0..2 {
        assert_eq!(next_event(&mut events).await, "closed");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err(),
        "the one idle connection is kept"
    );
    proxy.shutdown().await;
}
