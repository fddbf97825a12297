//! Connection lifecycle through a real proxy: graceful drain on shutdown (one request, and steady
//! HTTP/1.1 + HTTP/2 load), the handshake and idle timeouts, and configuration reload (swap and
//! refusal).

mod common;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{collect, get, h1, try_h1, try_h2, TestPki, TestProxy, TestUpstream};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// An idle HTTP/1.1 keep-alive connection is parked, and its idle time is not a slow request head:
/// only the client idle timeout ends it, and the next request is served on the same TLS
/// connection.
#[tokio::test]
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
    // Idle for longer than the header-read timeout, which runs only from a head's first byte.
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
/// answered in order on the one connection.
#[tokio::test]
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    tls.write_all(rest.as_bytes()).await.unwrap();
    tokio::time::timeout_at(deadline.into(), tls.read_to_end(&mut received))
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
/// past that timeout and serves the next request.
#[tokio::test]
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
    // Longer than the header-read timeout: neither CRLF counted as the start of a head.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let get = "GET /after HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    tls.write_all(get.as_bytes()).await.unwrap();
    tokio::time::timeout_at(deadline.into(), tls.read_to_end(&mut received))
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
        let n = tokio::time::timeout_at(deadline.into(), tls.read(&mut buf))
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
/// count.
#[tokio::test]
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
    tokio::time::sleep(TIMEOUT * 2).await;
    check(slow_head(tls).await);
    assert_eq!(upstream.seen().len(), 1);
    proxy.shutdown().await;
}

/// Client tasks per protocol in the steady-load drain test.
const LOAD_TASKS_PER_PROTOCOL: usize = 3;
/// Responses completed before the shutdown is triggered, so it lands mid-load.
const COMPLETED_BEFORE_SHUTDOWN: u64 = 30;
/// Size of the streamed responses in the load (a truncated one is caught by its length).
const LOAD_BODY: usize = 256 * 1024;
/// Ids of the slow requests in flight at the shutdown (far above the load's ids).
const SLOW_H1: u64 = 1_000_000;
const SLOW_H2: u64 = 1_000_001;
/// The whole drain test, load included, must finish within this.
const LOAD_TEST_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Protocol {
    Http1,
    Http2,
}

/// A client connection of either protocol.
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// A new connection, or the error of a connect or handshake the closing proxy refused.
    async fn connect(
        pki: &TestPki,
        addr: SocketAddr,
        protocol: Protocol,
    ) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
        Ok(match protocol {
            Protocol::Http1 => Sender::Http1(try_h1(pki, addr).await?),
            Protocol::Http2 => Sender::Http2(try_h2(pki, addr).await?),
        })
    }

    /// Waits until the connection can take a request; an error means the server closed it
    /// (before this request was sent).
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Sender::Http1(s) => s.ready().await,
            Sender::Http2(s) => s.ready().await,
        }
    }

    async fn send(
        &mut self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::Http1(s) => s.send_request(get(path)).await,
            Sender::Http2(s) => {
                let uri = format!("https://localhost:{}{path}", addr.port());
                let request = Request::builder().uri(uri).body(Empty::new()).unwrap();
                s.send_request(request).await
            }
        }
    }
}

/// What happened to the load's requests, by request id.
#[derive(Default)]
struct Outcomes {
    /// Answered 200 with the whole body.
    completed: Vec<u64>,
    /// Failed before any response head (`id`, protocol, error).
    failed: Vec<(u64, Protocol, String)>,
    /// Answered with something else, or a body that broke off (`id`, what).
    wrong: Vec<(u64, String)>,
    /// Connections the proxy refused (connect, TLS or HTTP/2 handshake).
    refused_connections: u64,
}

/// One client task: keep-alive requests in a loop, a new connection whenever the proxy closes
/// one, until the proxy refuses a new connection (it stopped listening).
async fn client_loop(
    pki: Arc<TestPki>,
    addr: SocketAddr,
    protocol: Protocol,
    next_id: Arc<AtomicU64>,
    outcomes: Arc<Mutex<Outcomes>>,
) {
    loop {
        let mut sender = match Sender::connect(&pki, addr, protocol).await {
            Ok(sender) => sender,
            Err(_) => {
                outcomes.lock().unwrap().refused_connections += 1;
                return;
            }
        };
        while sender.ready().await.is_ok() {
            let id = next_id.fetch_add(1, Ordering::SeqCst);
            // Alternate a short wait upstream (in flight at the shutdown) with a streamed body.
            let streamed = id % 2 == 0;
            let path = if streamed {
                format!("/bytes/{LOAD_BODY}?id={id}")
            } else {
                format!("/sleep/20?id={id}")
            };
            let response = match sender.send(addr, &path).await {
                Ok(response) => response,
                Err(e) => {
                    outcomes
                        .lock()
                        .unwrap()
                        .failed
                        .push((id, protocol, e.to_string()));
                    break;
                }
            };
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            let mut outcomes = outcomes.lock().unwrap();
            match body {
                Ok(body)
                    if status == StatusCode::OK
                        && body.len() == if streamed { LOAD_BODY } else { 5 } =>
                {
                    outcomes.completed.push(id)
                }
                Ok(body) => outcomes
                    .wrong
                    .push((id, format!("{status} with {} body bytes", body.len()))),
                Err(e) => outcomes
                    .wrong
                    .push((id, format!("{status}, body broke off: {e}"))),
            }
        }
    }
}

/// The id in a request's `?id=N` query.
fn request_id(uri: &http::Uri) -> Option<u64> {
    uri.query()?.strip_prefix("id=")?.parse().ok()
}

#[tokio::test]
async fn shutdown_under_steady_load_fails_no_accepted_request() {
    let pki = Arc::new(TestPki::new());
    let upstream = TestUpstream::start().await;
    let mut proxy = TestProxy::start(&pki, upstream.addr, &["--shutdown-grace", "20s"]).await;
    let addr = proxy.addr;
    let next_id = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));

    tokio::time::timeout(LOAD_TEST_DEADLINE, async {
        let mut clients = Vec::new();
        for protocol in [Protocol::Http1, Protocol::Http2] {
            for _ in 0..LOAD_TASKS_PER_PROTOCOL {
                clients.push(tokio::spawn(client_loop(
                    pki.clone(),
                    addr,
                    protocol,
                    next_id.clone(),
                    outcomes.clone(),
                )));
            }
        }
        // Mid-load: enough answers have come back, and requests are arriving at the upstream.
        while (outcomes.lock().unwrap().completed.len() as u64) < COMPLETED_BEFORE_SHUTDOWN {
            upstream.arrived.notified().await;
        }
        // One slow request per protocol that is surely in flight when the shutdown begins.
        let mut slow = Vec::new();
        for (protocol, id) in [(Protocol::Http1, SLOW_H1), (Protocol::Http2, SLOW_H2)] {
            let mut sender = Sender::connect(&pki, addr, protocol).await.unwrap();
            slow.push(tokio::spawn(async move {
                let response = sender.send(addr, &format!("/sleep/300?id={id}")).await;
                collect(response.expect("the slow request is answered")).await
            }));
        }
        let slow_forwarded = || {
            let ids: HashSet<u64> = upstream
                .seen()
                .iter()
                .filter_map(|s| request_id(&s.uri))
                .collect();
            ids.contains(&SLOW_H1) && ids.contains(&SLOW_H2)
        };
        while !slow_forwarded() {
            upstream.arrived.notified().await;
        }
        proxy.begin_shutdown();
        for slow in slow {
            let (status, _, body) = slow.await.expect("slow request task did not panic");
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"slept"[..]));
        }
        for client in clients {
            client.await.expect("client task did not panic");
        }
        proxy.join().await;
    })
    .await
    .expect("load and drain finished in time");

    let outcomes = outcomes.lock().unwrap();
    let forwarded: HashSet<u64> = upstream
        .seen()
        .iter()
        .filter_map(|seen| request_id(&seen.uri))
        .collect();
    assert!(outcomes.wrong.is_empty(), "{:?}", outcomes.wrong);
    // A failure is acceptable only for a request the proxy had not taken on: a client may retry
    // those. One the upstream saw was accepted and must have been answered.
    let accepted_then_failed: Vec<_> = outcomes
        .failed
        .iter()
        .filter(|(id, _, _)| forwarded.contains(id))
        .collect();
    assert!(
        accepted_then_failed.is_empty(),
        "accepted requests failed during the drain: {accepted_then_failed:?}"
    );
    for id in &outcomes.completed {
        assert!(
            forwarded.contains(id),
            "request {id} answered without the upstream"
        );
    }
    // Every client ended by being refused a new connection: the listener closed.
    assert_eq!(
        outcomes.refused_connections,
        2 * LOAD_TASKS_PER_PROTOCOL as u64
    );
}
