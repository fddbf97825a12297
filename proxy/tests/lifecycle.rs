//! A client connection's deadlines through a real proxy: the handshake, header-read and idle
//! timeouts, HTTP/1.1 keep-alive connections parked while idle (pipelining, a stray CRLF, a stalled
//! upload), the send timeout (HTTP/1.1, HTTP/2 streams and connections), and configuration reload
//! (swap and refusal).

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{
    collect, get, h1, raw_h2, raw_h2_get, until_metric, TestPki, TestProxy, TestUpstream,
};
use http::StatusCode;
use http_body_util::Empty;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

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

/// An idle HTTP/1.1 keep-alive connection is parked, and its idle time is not a slow request head:
/// only the client idle timeout ends it, and the next request is served on the same TLS
/// connection. On a paused clock: the idle time passes in virtual time.
#[tokio::test(start_paused = true)]
async fn parked_keep_alive_connection_serves_the_next_request_until_the_idle_timeout() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(
        &pki,
        upstream.addr,
        &[
            "--header-read-timeout",
            "200ms",
            "--client-idle-timeout",
            "1500ms",
        ],
    )
    .await;
    let tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut client, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let (status, _, _) = collect(client.send_request(get("/one")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    // Idle for longer than the header-read timeout, which runs only from a head's first byte
    // (virtual time: the clock moves on once everything in flight has settled).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _, _) = collect(client.send_request(get("/two")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    // Then the client idle timeout closes it.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the proxy closed the idle connection")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    proxy.shutdown().await;
}

/// Requests that arrive pipelined, or split around the moment the connection is parked, are all
/// answered in order on the one connection. On a paused clock: the pause is virtual time.
#[tokio::test(start_paused = true)]
async fn pipelined_and_split_requests_are_served_across_parking() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let mut tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    let head =
        |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost{extra}\r\n\r\n");
    let pipelined = head("/p1", "") + &head("/p2", "");
    tls.write_all(pipelined.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    read_until(&mut tls, &mut received, deadline, |r| {
        count(r, b"HTTP/1.1 200") == 2
    })
    .await;
    // Half a request head, a pause (the idle connection is parked by now), then the rest.
    let last = head("/p3", "\r\nConnection: close");
    let (first, rest) = last.split_at(20);
    tls.write_all(first.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    // The pause between the halves is the point of the test (virtual time).
    tokio::time::sleep(Duration::from_millis(100)).await;
    tls.write_all(rest.as_bytes()).await.unwrap();
    tokio::time::timeout_at(deadline, tls.read_to_end(&mut received))
        .await
        .expect("the last response and the close")
        .ok();
    assert_eq!(
        count(&received, b"HTTP/1.1 200"),
        3,
        "{}",
        String::from_utf8_lossy(&received)
    );
    let paths: Vec<String> = upstream
        .seen()
        .iter()
        .map(|s| s.uri.path().to_owned())
        .collect();
    assert_eq!(paths, ["/p1", "/p2", "/p3"]);
    proxy.shutdown().await;
}

/// A CRLF after a request body (some clients send one, with the body or on its own) neither keeps
/// the connection from being parked nor starts the header-read timeout: the connection stays open
/// past that timeout and serves the next request. On a paused clock: the wait is virtual time.
#[tokio::test(start_paused = true)]
async fn a_crlf_after_a_body_does_not_stop_parking() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(
        &pki,
        upstream.addr,
        &[
            "--header-read-timeout",
            "200ms",
            "--client-idle-timeout",
            "5s",
        ],
    )
    .await;
    let mut tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    let post = "POST /collect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nab\r\n";
    tls.write_all(post.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // `/collect` answers with the body's length: "2".
    read_until(&mut tls, &mut received, deadline, |r| {
        r.ends_with(b"\r\n\r\n2")
    })
    .await;
    // Another CRLF on its own, after the response.
    tls.write_all(b"\r\n").await.unwrap();
    tls.flush().await.unwrap();
    // Longer than the header-read timeout: neither CRLF counted as the start of a head (virtual
    // time).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let get = "GET /after HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    tls.write_all(get.as_bytes()).await.unwrap();
    tokio::time::timeout_at(deadline, tls.read_to_end(&mut received))
        .await
        .expect("the GET's response and the close")
        .ok();
    assert_eq!(
        count(&received, b"HTTP/1.1 200"),
        2,
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(upstream.last().uri.path(), "/after");
    proxy.shutdown().await;
}

/// A client that stops sending a request body the upstream did not wait for (it answered early)
/// does not hold its connection for ever: it is closed after the client idle timeout.
#[tokio::test]
async fn a_stalled_upload_after_an_early_response_is_closed() {
    // An upstream that answers as soon as the head is in and keeps the connection open without
    // closing it, so the proxy goes on waiting for the rest of the client's body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Reads the body as it comes, never closing first.
                let mut sink = [0u8; 4096];
                while tcp.read(&mut sink).await.unwrap_or(0) != 0 {}
            });
        }
    });
    let pki = TestPki::new();
    let proxy = TestProxy::start(&pki, upstream, &["--client-idle-timeout", "500ms"]).await;
    let mut tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    // The client sends 10 of 100,000 bytes and stalls.
    let head = "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n0123456789";
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut received)).await;
    assert!(
        closed.is_ok(),
        "still open: {}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(
        count(&received, b"HTTP/1.1 200"),
        1,
        "{}",
        String::from_utf8_lossy(&received)
    );
    proxy.shutdown().await;
}

/// Reads from `tls` into `received` until `done` says so; fails on EOF or after `deadline`.
async fn read_until(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    received: &mut Vec<u8>,
    deadline: Instant,
    done: impl Fn(&[u8]) -> bool,
) {
    let mut buf = [0u8; 4096];
    while !done(received) {
        let n = tokio::time::timeout_at(deadline, tls.read(&mut buf))
            .await
            .expect("the response before the deadline")
            .unwrap();
        assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(received));
        received.extend_from_slice(&buf[..n]);
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
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

/// A request head that does not arrive within the header-read timeout (counted from its first
/// byte, not reset by more bytes trickling in) is answered `408` and the connection closed: on a
/// new connection, and on a keep-alive one whose idle time (longer than the timeout) does not
/// count. On a paused clock: the slow client's pauses and the idle time are virtual time.
#[tokio::test(start_paused = true)]
async fn a_request_head_that_trickles_in_past_the_header_read_timeout_gets_408() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(
        &pki,
        upstream.addr,
        &[
            "--header-read-timeout",
            "400ms",
            "--client-idle-timeout",
            "20s",
        ],
    )
    .await;
    type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
    // Writes a head in pieces 100 ms apart, never finishing it, while reading what comes back
    // until the proxy closes: returns that and the time from the first piece to the close.
    async fn slow_head(tls: Tls) -> (Vec<u8>, Duration) {
        let (mut read, mut write) = tokio::io::split(tls);
        let first = Instant::now();
        // 1.6 s of pieces: a timeout restarted by each would answer after 1.9 s at the earliest.
        let pieces = [
            "GET /slow HTTP/1.1\r\n".to_owned(),
            "Host: localhost\r\n".to_owned(),
        ]
        .into_iter()
        .chain((0..14).map(|i| format!("X-{i}: {i}\r\n")));
        let writer = async {
            for piece in pieces {
                if write.write_all(piece.as_bytes()).await.is_err() || write.flush().await.is_err()
                {
                    // Closed by the proxy: what it answered is read below.
                    std::future::pending::<()>().await;
                }
                // The client's slowness is the point of the test (virtual time).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let reader = async {
            let mut received = Vec::new();
            let _ = read.read_to_end(&mut received).await;
            (received, first.elapsed())
        };
        tokio::select! {
            biased;
            out = reader => out,
            () = writer => panic!("the whole slow head went out and the proxy neither answered nor closed"),
        }
    }
    let check = |(received, waited): (Vec<u8>, Duration)| {
        assert!(
            received.starts_with(b"HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&received)
        );
        assert!(waited >= TIMEOUT - Duration::from_millis(20), "{waited:?}");
    };

    // A new connection.
    let tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    check(slow_head(tls).await);

    // A keep-alive connection: one request, idle for longer than the timeout, then a slow head.
    let mut tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    read_until(&mut tls, &mut received, deadline, |r| {
        count(r, b"HTTP/1.1 200") == 1 && r.ends_with(b"hello")
    })
    .await;
    // Idle for twice the timeout before the slow head (virtual time).
    tokio::time::sleep(TIMEOUT * 2).await;
    check(slow_head(tls).await);
    assert_eq!(upstream.seen().len(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_the_connection_closes() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--body-read-timeout", "300ms"]).await;
    let mut tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    // 2 of 10 announced bytes, then nothing.
    let began = Instant::now();
    tls.write_all(b"POST /collect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n12")
        .await
        .unwrap();
    let mut received = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(closed.is_ok(), "still open: {text}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(began.elapsed() >= Duration::from_millis(300));
    // The upstream got the head; its request was aborted, never completed.
    assert_eq!(upstream.seen().len(), 1);
    until_metric(&proxy, "proxy_client_timeouts_total{phase=\"body_read\"} 1").await;

    // HTTP/2: the same, per stream.
    let mut client = common::h2::<common::ChannelBody>(&pki, proxy.addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let request = http::Request::builder()
        .method("POST")
        .version(http::Version::HTTP_2)
        .uri(format!("https://localhost:{}/collect", proxy.addr.port()))
        .body(common::ChannelBody(rx))
        .unwrap();
    let response = tokio::spawn(client.send_request(request));
    tx.send(Bytes::from_static(b"12")).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered once the body stalls")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    drop(tx);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_after_the_send_timeout() {
    const SIZE: u64 = 256 << 20;
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--send-timeout", "300ms"]).await;
    let mut tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
        .await
        .unwrap();
    let request = format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    // The client reads nothing: the proxy's writes stall, and after the send timeout it closes.
    until_metric(&proxy, "proxy_client_timeouts_total{phase=\"send\"} 1").await;
    let sent = upstream.body_bytes_sent.load(Ordering::SeqCst);
    assert!(sent < SIZE, "the whole body went: {sent}");
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut received))
        .await
        .expect("the connection is closed");
    assert!((received.len() as u64) < SIZE);
    // The upstream connection was released with it, not kept: the upstream's body stops.
    let after = upstream.body_bytes_sent.load(Ordering::SeqCst);
    assert!(after < SIZE, "{after}");
    proxy.shutdown().await;
}

/// Reads a body to its end, opening the window as it goes; its length.
async fn raw_h2_read_all(mut body: h2::RecvStream) -> usize {
    let mut read = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        read += chunk.len();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    read
}

/// Reads what has arrived of a body whose window the client keeps shut, up to the error that
/// ends it (`None` if it ended well).
async fn raw_h2_error(mut body: h2::RecvStream) -> Option<h2::Error> {
    let ended = async {
        while let Some(chunk) = body.data().await {
            if let Err(e) = chunk {
                return Some(e);
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the stream ended")
}

#[tokio::test]
async fn an_http2_stream_whose_window_stays_shut_is_reset_after_the_send_timeout() {
    const SIZE: u64 = 256 << 20;
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--send-timeout", "300ms"]).await;
    let tls = common::tls_connect(&pki, proxy.addr, &[b"h2"])
        .await
        .unwrap();
    let client = raw_h2(tls, 16 * 1024, i32::MAX as u32).await;
    // This stream's window is never opened: its response stalls after the first 16 KiB.
    let stalled = raw_h2_get(&client, &format!("/bytes/{SIZE}")).await;
    // Meanwhile, another stream on the connection that reads is served.
    let body = raw_h2_get(&client, "/bytes/262144").await;
    assert_eq!(raw_h2_read_all(body).await, 262_144);

    until_metric(&proxy, "proxy_client_timeouts_total{phase=\"send\"} 1").await;
    let reset = raw_h2_error(stalled).await.expect("a reset, not the end");
    assert_eq!(reset.reason(), Some(h2::Reason::CANCEL), "{reset}");
    // The upstream connection was released with the stream: its body stops.
    let sent = upstream.body_bytes_sent.load(Ordering::SeqCst);
    assert!(sent < SIZE, "the whole body went: {sent}");
    // The connection goes on.
    let body = raw_h2_get(&client, "/bytes/262144").await;
    assert_eq!(raw_h2_read_all(body).await, 262_144);
    let metrics = proxy.proxy.metrics().encode().unwrap();
    assert!(metrics.contains("proxy_client_timeouts_total{phase=\"send\"} 1\n"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_http2_stream_waiting_on_a_slow_upstream_is_not_cut_by_the_send_timeout() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--send-timeout", "300ms"]).await;
    let tls = common::tls_connect(&pki, proxy.addr, &[b"h2"])
        .await
        .unwrap();
    let client = raw_h2(tls, 16 * 1024, i32::MAX as u32).await;
    let mut slow = raw_h2_get(&client, "/held-stream").await;
    let first = slow.data().await.unwrap().unwrap();
    assert_eq!(first, "first ");
    // A stream the client stalls, started after: its reset marks that the slow stream has waited
    // on its upstream for longer than the send timeout.
    let stalled = raw_h2_get(&client, "/bytes/268435456").await;
    until_metric(&proxy, "proxy_client_timeouts_total{phase=\"send\"} 1").await;
    assert!(raw_h2_error(stalled).await.is_some());

    upstream.release_held();
    let mut rest = Vec::new();
    while let Some(chunk) = slow.data().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"last");
    let metrics = proxy.proxy.metrics().encode().unwrap();
    assert!(metrics.contains("proxy_client_timeouts_total{phase=\"send\"} 1\n"));
    proxy.shutdown().await;
}

/// A client stream that stops reading (at the TCP level) once `reading` is cleared: its reads
/// never complete after that, while its writes go on.
struct StopReading<T> {
    io: T,
    reading: Arc<AtomicBool>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StopReading<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.reading.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for StopReading<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn an_http2_client_that_reads_nothing_is_closed_after_the_send_timeout() {
    const SIZE: u64 = 256 << 20;
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--send-timeout", "300ms"]).await;
    let tls = common::tls_connect(&pki, proxy.addr, &[b"h2"])
        .await
        .unwrap();
    let reading = Arc::new(AtomicBool::new(true));
    let io = StopReading {
        io: tls,
        reading: reading.clone(),
    };
    // Windows wide open: only the socket holds the proxy's writes back.
    let client = raw_h2(io, i32::MAX as u32, i32::MAX as u32).await;
    let _body = raw_h2_get(&client, &format!("/bytes/{SIZE}")).await;
    reading.store(false, Ordering::SeqCst);
    // The proxy's writes stall; after the send timeout the connection is closed.
    until_metric(&proxy, "proxy_client_connections_open 0").await;
    let metrics = proxy.proxy.metrics().encode().unwrap();
    assert!(
        !metrics.contains("proxy_client_timeouts_total{phase=\"send\"} 0\n"),
        "{metrics}"
    );
    let sent = upstream.body_bytes_sent.load(Ordering::SeqCst);
    assert!(sent < SIZE, "the whole body went: {sent}");
    proxy.shutdown().await;
}
