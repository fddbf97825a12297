//! The pooled upstream connections: reuse, the idle timeout and the idle bound, a stale pooled
//! connection (retried for idempotent requests only, never used once the upstream closed it),
//! and connections that go back to the pool only once their exchange has really ended.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{
    collect, get, h1, h2, next_event, open_tunnel, read_request_head, ChannelBody, TestPki,
    TestProxy, TestUpstream,
};
use http::{Request, StatusCode, Version};
use http_body_util::Empty;

/// Concurrent `/slow` requests [`observed_upstream`] waits for before it answers them.
const SLOW_TOGETHER: usize = 3;

/// An upstream that reports each connection it accepts and each one that ends. `/slow` answers
/// only once [`SLOW_TOGETHER`] `/slow` requests are in at the same time, so they need one
/// connection each.
async fn observed_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<&'static str>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    let together = std::sync::Arc::new(tokio::sync::Barrier::new(SLOW_TOGETHER));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let events = events.clone();
            let _ = events.send("accepted");
            let together = together.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let together = together.clone();
                        async move {
                            if req.uri().path() == "/slow" {
                                together.wait().await;
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
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
    let requests: Vec<_> = (0..SLOW_TOGETHER)
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
        let status = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("the three requests reach the upstream at the same time");
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    for _ in 0..SLOW_TOGETHER {
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

/// A raw upstream whose first connection answers one request with keep-alive, then closes as the
/// second request arrives (the race a pooled connection meets when the backend's keep-alive
/// expires); later connections answer normally.
async fn flaky_keepalive_upstream() -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let stale = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let mut tcp = tokio::io::BufReader::new(tcp);
                while read_request_head(&mut tcp).await.is_some() {
                    let _ = tcp
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    if stale {
                        // Wait for the next request, then drop the connection unanswered.
                        read_request_head(&mut tcp).await;
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

/// `PROXY_UPSTREAM_MAX_CONNECTIONS`: a request that needs one more upstream connection than the
/// cap waits for one, up to the connect timeout, then gets 503; a freed connection serves again.
#[tokio::test]
async fn upstream_connections_are_capped_then_503() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(
        &pki,
        upstream.addr,
        &[
            "--upstream-max-connections",
            "1",
            "--upstream-connect-timeout",
            "300ms",
        ],
    )
    .await;
    // The only upstream connection is held by a request the upstream does not answer yet.
    let mut first = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let held = tokio::spawn(first.send_request(get("/held")));
    tokio::time::timeout(Duration::from_secs(5), upstream.arrived.notified())
        .await
        .expect("the held request reached the upstream");
    let mut second = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let (status, _, _) = collect(second.send_request(get("/second")).await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    // Once the held request is answered, its connection serves the next one.
    upstream.release_held();
    let (status, _, body) = collect(held.await.unwrap().unwrap()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"held"[..]));
    let (status, _, _) = collect(second.send_request(get("/third")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    proxy.shutdown().await;
}

/// An HTTP/2 client that resets a stream cancels its upstream exchange: the proxy drops the
/// request (hyper drops the service future on RST_STREAM), and with it the upstream connection,
/// which the upstream sees closed at once rather than at the upstream response timeout. Both
/// for a request without a body (a connection the request polls) and with one (a connection in
/// a task of its own).
#[tokio::test]
async fn a_reset_http2_stream_cancels_its_upstream_exchange() {
    use tokio::io::AsyncReadExt;

    // An upstream that never answers and reports when a connection is closed by the proxy.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let mut tcp = tokio::io::BufReader::new(tcp);
                if read_request_head(&mut tcp).await.is_none() {
                    return;
                }
                let _ = events.send("request");
                let mut rest = [0u8; 4096];
                while tcp.read(&mut rest).await.unwrap_or(0) != 0 {}
                let _ = events.send("closed");
            });
        }
    });
    let pki = TestPki::new();
    let proxy = TestProxy::start(&pki, upstream, &[]).await;
    let authority = format!("localhost:{}", proxy.addr.port());

    let mut client = h2::<Empty<Bytes>>(&pki, proxy.addr).await;
    let request = Request::builder()
        .version(Version::HTTP_2)
        .uri(format!("https://{authority}/never"))
        .body(Empty::new())
        .unwrap();
    let pending = tokio::spawn(client.send_request(request));
    assert_eq!(next_event(&mut received).await, "request");
    // Dropping the response future resets the stream (RST_STREAM CANCEL).
    pending.abort();
    assert_eq!(next_event(&mut received).await, "closed");

    let mut client = h2::<ChannelBody>(&pki, proxy.addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let request = Request::builder()
        .method("POST")
        .version(Version::HTTP_2)
        .uri(format!("https://{authority}/never"))
        .body(ChannelBody(rx))
        .unwrap();
    let pending = tokio::spawn(client.send_request(request));
    tx.send(Bytes::from_static(b"part")).await.unwrap();
    assert_eq!(next_event(&mut received).await, "request");
    pending.abort();
    drop(tx);
    assert_eq!(next_event(&mut received).await, "closed");
    proxy.shutdown().await;
}
