//! Streaming through the proxy: a 10 MiB body both ways (HTTP/1.1 and HTTP/2) while the
//! process's peak memory stays far below the body size, and backpressure: a client that stops
//! reading a 64 MiB download stops the upstream's writing too; and 48 clients at once that read
//! nothing of their responses, or stall their uploads, hold bounded memory until their timeouts
//! close them. Kept in its own test binary so no other test's allocations move the high-water
//! mark; the tests here take turns (`SERIAL`).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use bytes::Bytes;
use common::{h1, h2, Repeat, TestPki, TestProxy, TestUpstream};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// One test at a time: the memory test reads the process-wide peak RSS.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BODY: u64 = 10 * 1024 * 1024;
/// Peak-memory growth allowed for the whole test process (client, proxy and upstream share it)
/// while 10 MiB go up and 10 MiB come back. Buffering either direction whole would exceed it on
/// its own; what legitimately remains is bounded per stream: socket and TLS buffers and HTTP/2
/// flow-control windows (hyper's client allows 2 MiB per stream, 5 MiB per connection; measured
/// growth is about 5.5 MiB).
const MAX_GROWTH: u64 = 8 * 1024 * 1024;

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value");
    kib * 1024
}

/// Resets the peak RSS to the current RSS, so earlier tests in this process do not count.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM (Linux 4.0+)");
}

/// Reads a response body to the end, counting bytes and checking they are the `Repeat` pattern.
async fn drain(mut body: Incoming) -> u64 {
    read_until(&mut body, 0, u64::MAX).await
}

/// Reads frames of `body` (of which `total` bytes were read before) until at least `limit` bytes
/// in all or the end, checking the `Repeat` pattern; returns the new total.
async fn read_until(body: &mut Incoming, mut total: u64, limit: u64) -> u64 {
    while total < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.expect("body frame");
        if let Some(data) = frame.data_ref() {
            for (i, byte) in data.iter().enumerate() {
                let offset = (total + i as u64) % (64 * 1024);
                assert_eq!(
                    u64::from(*byte),
                    offset % 251,
                    "corrupt byte at {}",
                    total + i as u64
                );
            }
            total += data.len() as u64;
        }
    }
    total
}

#[tokio::test]
async fn ten_mib_streams_both_ways_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;

    // Warm up (TLS, pools, runtime) so the baseline includes the fixed costs.
    let mut client = h1::<Repeat>(&pki, proxy.addr).await;
    let warm = Request::builder()
        .method("POST")
        .uri("/echo")
        .header("host", "localhost")
        .body(Repeat {
            remaining: 256 * 1024,
        })
        .unwrap();
    let response = client.send_request(warm).await.unwrap();
    assert_eq!(drain(response.into_body()).await, 256 * 1024);
    reset_peak_rss();
    let baseline = peak_rss();

    let upload = Request::builder()
        .method("POST")
        .uri("/echo")
        .header("host", "localhost")
        .body(Repeat { remaining: BODY })
        .unwrap();
    let response = client.send_request(upload).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(drain(response.into_body()).await, BODY);

    let mut client = h2::<Repeat>(&pki, proxy.addr).await;
    let upload = Request::builder()
        .method("POST")
        .uri(format!("https://localhost:{}/echo", proxy.addr.port()))
        .body(Repeat { remaining: BODY })
        .unwrap();
    let response = client.send_request(upload).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(drain(response.into_body()).await, BODY);

    let download = Request::builder()
        .uri(format!(
            "https://localhost:{}/bytes/{BODY}",
            proxy.addr.port()
        ))
        .body(Repeat { remaining: 0 })
        .unwrap();
    let response = client.send_request(download).await.unwrap();
    assert_eq!(drain(response.into_body()).await, BODY);

    let growth = peak_rss().saturating_sub(baseline);
    assert!(
        growth < MAX_GROWTH,
        "peak memory grew by {growth} bytes while streaming {BODY} bytes each way"
    );
    proxy.shutdown().await;
}

/// The download a paused client leaves unread.
const LARGE: u64 = 64 * 1024 * 1024;
/// What the client reads before it pauses.
const READ_FIRST: u64 = 1024 * 1024;
/// The most the upstream may have written while the client reads no more than `READ_FIRST`:
/// half the body. What may legitimately sit between them is bounded but not small: the proxy's
/// two sockets' kernel buffers (autotuned on loopback: measured 12 MiB over HTTP/1.1 with
/// `tcp_rmem` max 32 MiB), hyper's read and write buffers, TLS records, and with HTTP/2 the
/// client's 2 MiB stream window. Without backpressure the upstream would write all 64 MiB.
const MAX_IN_TRANSIT: u64 = LARGE / 2;
/// How much the process's peak memory may grow while the client pauses: what the proxy holds in
/// user space (the kernel's socket buffers are not in it). Holding the unread body would take
/// up to 63 MiB.
const MAX_HELD: u64 = 8 * 1024 * 1024;
/// SO_SNDBUF of the upstream's sockets and SO_RCVBUF of the client's (setting them also turns
/// off the kernel's autotuning, which on loopback grows them to many MiB).
const TEST_SOCKET_BUFFER: u32 = 64 * 1024;

/// A test upstream whose accepted sockets inherit a small send buffer.
async fn small_buffer_upstream() -> TestUpstream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(TEST_SOCKET_BUFFER).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    TestUpstream::serve(socket.listen(64).unwrap())
}

/// A TLS connection to the proxy offering `alpn`, from a socket with a small receive buffer.
async fn small_buffer_tls(
    pki: &TestPki,
    addr: std::net::SocketAddr,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(TEST_SOCKET_BUFFER).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(pki.client_config_alpn(&[alpn]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// The upstream counts as settled when it has let go of no byte for this long. Real time:
/// "stopped" is the absence of progress, which only a quiet period shows; a paused clock would
/// move on whenever the runtime waits for the kernel's sockets and could call a moving transfer
/// settled.
const SETTLED: Duration = Duration::from_millis(500);
/// The longest the upstream may keep writing before the test gives up.
const SETTLE_DEADLINE: Duration = Duration::from_secs(20);

/// Waits until the upstream stops writing (no body progress for [`SETTLED`]) and returns what it
/// has written, failing as soon as that reaches `limit` (without backpressure it would go on
/// until the process runs out of memory).
async fn settled(upstream: &TestUpstream, limit: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + SETTLE_DEADLINE;
    while tokio::time::timeout(SETTLED, upstream.body_progress.notified())
        .await
        .is_ok()
    {
        let sent = upstream.body_bytes_sent.load(Ordering::SeqCst);
        assert!(
            sent < limit && tokio::time::Instant::now() < deadline,
            "the upstream kept writing ({sent} bytes so far) while the clients read nothing"
        );
    }
    upstream.body_bytes_sent.load(Ordering::SeqCst)
}

/// Reads a little of `response`, pauses, checks the upstream was throttled, then reads the rest.
/// `baseline` is the peak RSS, reset, just before the request was sent.
async fn throttled_then_complete(
    upstream: &TestUpstream,
    response: http::Response<Incoming>,
    baseline: u64,
) {
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let read = read_until(&mut body, 0, READ_FIRST).await;
    assert!(read >= READ_FIRST, "the body ended after {read} bytes");

    let written = settled(upstream, MAX_IN_TRANSIT).await;
    assert!(
        written < MAX_IN_TRANSIT,
        "the upstream wrote {written} bytes while the client had read {read}: no backpressure"
    );
    assert!(written >= read, "{written} < {read}");
    let held = peak_rss().saturating_sub(baseline);
    assert!(
        held < MAX_HELD,
        "peak memory grew by {held} bytes while {} bytes were unread",
        written - read
    );

    assert_eq!(read_until(&mut body, read, u64::MAX).await, LARGE);
    assert_eq!(upstream.body_bytes_sent.load(Ordering::SeqCst), LARGE);
}

#[tokio::test]
async fn paused_http1_client_throttles_the_upstream_then_gets_every_byte() {
    let _serial = SERIAL.lock().await;
    let pki = TestPki::new();
    let upstream = small_buffer_upstream().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let io = TokioIo::new(small_buffer_tls(&pki, proxy.addr, b"http/1.1").await);
    let (mut client, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    reset_peak_rss();
    let baseline = peak_rss();
    let response = client
        .send_request(common::get(&format!("/bytes/{LARGE}")))
        .await
        .unwrap();
    throttled_then_complete(&upstream, response, baseline).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn paused_http2_client_throttles_the_upstream_then_gets_every_byte() {
    let _serial = SERIAL.lock().await;
    let pki = TestPki::new();
    let upstream = small_buffer_upstream().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let io = TokioIo::new(small_buffer_tls(&pki, proxy.addr, b"h2").await);
    let (mut client, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        io,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .uri(format!(
            "https://localhost:{}/bytes/{LARGE}",
            proxy.addr.port()
        ))
        .body(Empty::new())
        .unwrap();
    reset_peak_rss();
    let baseline = peak_rss();
    let response = client.send_request(request).await.unwrap();
    throttled_then_complete(&upstream, response, baseline).await;
    proxy.shutdown().await;
}

/// Slow clients at once: HTTP/1.1 connections, and HTTP/2 connections carrying
/// [`SLOW_H2_STREAMS`] streams each.
const SLOW_H1: usize = 32;
const SLOW_H2_CONNECTIONS: usize = 2;
const SLOW_H2_STREAMS: usize = 8;
const SLOW_TOTAL: usize = SLOW_H1 + SLOW_H2_CONNECTIONS * SLOW_H2_STREAMS;
/// The flow-control window of each slow HTTP/2 client's streams (h2's default), never opened.
const SLOW_H2_WINDOW: u32 = 65_535;

/// How much the upstream may write in all to [`SLOW_TOTAL`] clients that read nothing of their
/// 64 MiB responses (3 GiB in all): 16 MiB per response. What may sit between a response's
/// upstream and its client is mostly kernel memory: the upstream's 64 KiB send buffer, the
/// proxy's receive buffer from it and its send buffer to the client (autotuned on loopback, up
/// to `tcp_rmem` and `tcp_wmem` maxima of 32 and 4 MiB here: measured about 5 MiB a response),
/// the client's 64 KiB receive buffer (over HTTP/2: the 64 KiB window); plus what the proxy
/// holds, bounded below. Without backpressure the upstream writes everything, and [`settled`]
/// fails as soon as it passes this.
const SLOW_READERS_MAX_SENT: u64 = SLOW_TOTAL as u64 * 16 * 1024 * 1024;
/// Peak-memory growth allowed while the slow readers hold their responses: what of the above is
/// in user space (hyper's buffers, rustls's records, the HTTP/2 client's unread window), at most
/// about 1 MiB a response; measured 33 MiB (about 700 KiB a response). A proxy that read its upstream ahead of the client
/// would hold what the upstream wrote beyond this, and one buffering responses whole 3 GiB.
const SLOW_READERS_MAX_GROWTH: u64 = SLOW_TOTAL as u64 * 1024 * 1024;
/// The send timeout that closes the slow readers once the test has measured them: long enough
/// that none is closed before the upstream has settled on a loaded machine.
const SLOW_SEND_TIMEOUT: &str = "10s";

#[tokio::test]
async fn many_clients_that_read_nothing_hold_bounded_memory_until_the_send_timeout() {
    let _serial = SERIAL.lock().await;
    let pki = TestPki::new();
    let upstream = small_buffer_upstream().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--send-timeout", SLOW_SEND_TIMEOUT]).await;
    // Handshakes first: the baseline includes every connection, the growth is the responses'.
    let mut h1_clients = Vec::new();
    for _ in 0..SLOW_H1 {
        h1_clients.push(small_buffer_tls(&pki, proxy.addr, b"http/1.1").await);
    }
    let mut h2_clients = Vec::new();
    for _ in 0..SLOW_H2_CONNECTIONS {
        let tls = common::tls_connect(&pki, proxy.addr, &[b"h2"])
            .await
            .unwrap();
        let window = SLOW_H2_WINDOW * SLOW_H2_STREAMS as u32;
        h2_clients.push(common::raw_h2(tls, SLOW_H2_WINDOW, window).await);
    }
    reset_peak_rss();
    let baseline = peak_rss();

    let head = format!("GET /bytes/{LARGE} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    for tls in &mut h1_clients {
        tls.write_all(head.as_bytes()).await.unwrap();
    }
    let mut h2_bodies = Vec::new();
    for client in &h2_clients {
        for _ in 0..SLOW_H2_STREAMS {
            h2_bodies.push(common::raw_h2_get(client, &format!("/bytes/{LARGE}")).await);
        }
    }

    let sent = settled(&upstream, SLOW_READERS_MAX_SENT).await;
    let growth = peak_rss().saturating_sub(baseline);
    eprintln!(
        "{SLOW_TOTAL} slow readers: upstream sent {sent} bytes, peak memory grew by {growth}"
    );
    assert!(
        growth < SLOW_READERS_MAX_GROWTH,
        "peak memory grew by {growth} bytes while {SLOW_TOTAL} clients read nothing"
    );

    // The send timeout closes every HTTP/1.1 connection and resets every HTTP/2 stream.
    common::until_metric_within(
        &proxy,
        &format!("proxy_client_timeouts_total{{phase=\"send\"}} {SLOW_TOTAL}\n"),
        Duration::from_secs(60),
    )
    .await;
    let open = format!("proxy_client_connections_open {SLOW_H2_CONNECTIONS}\n");
    common::until_metric(&proxy, &open).await;
    for body in h2_bodies {
        let mut body = body;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(chunk) = body.data().await {
                if let Err(e) = chunk {
                    return Some(e);
                }
            }
            None
        })
        .await
        .expect("the stream ended");
        let reset = ended.expect("a reset, not the end");
        assert_eq!(reset.reason(), Some(h2::Reason::CANCEL), "{reset}");
    }
    drop((h1_clients, h2_clients));
    proxy.shutdown().await;
}

/// What each slow upload sends of its declared [`LARGE`] body before it stalls.
const UPLOAD_SENT: u64 = 2 * 1024 * 1024;
/// Peak-memory growth allowed while [`SLOW_TOTAL`] uploads stall: per upload, hyper's read
/// buffer (it grows to about 400 KiB while the client sends), rustls's records and the HTTP/2
/// windows on either side; measured 25 MiB (about 550 KiB an upload, whether 1 or 2 MiB were
/// sent). A proxy that buffered request bodies instead of streaming them would hold the 96 MiB
/// sent (and the upstream would not receive them: the test waits for that first).
const SLOW_UPLOADS_MAX_GROWTH: u64 = SLOW_TOTAL as u64 * 1024 * 1024;
/// The body-read timeout of the slow uploads: short, but long enough that all of them stall at
/// once on a loaded machine.
const SLOW_BODY_TIMEOUT: &str = "1s";

#[tokio::test]
async fn many_stalled_uploads_hold_bounded_memory_and_each_gets_408() {
    let _serial = SERIAL.lock().await;
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let max_body = (2 * LARGE).to_string();
    let proxy = TestProxy::start(
        &pki,
        upstream.addr,
        &[
            "--body-read-timeout",
            SLOW_BODY_TIMEOUT,
            "--max-body-bytes",
            &max_body,
        ],
    )
    .await;
    let mut h1_clients = Vec::new();
    for _ in 0..SLOW_H1 {
        h1_clients.push(
            common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
                .await
                .unwrap(),
        );
    }
    let mut h2_clients = Vec::new();
    for _ in 0..SLOW_H2_CONNECTIONS {
        h2_clients.push(h2::<common::ChannelBody>(&pki, proxy.addr).await);
    }
    let piece = Bytes::from(vec![b'x'; 64 * 1024]);
    reset_peak_rss();
    let baseline = peak_rss();

    // HTTP/1.1: the head declaring 64 MiB, 1 MiB of it, then nothing.
    let head =
        format!("POST /collect HTTP/1.1\r\nHost: localhost\r\nContent-Length: {LARGE}\r\n\r\n");
    for tls in &mut h1_clients {
        tls.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..UPLOAD_SENT / piece.len() as u64 {
            tls.write_all(&piece).await.unwrap();
        }
        tls.flush().await.unwrap();
    }
    // HTTP/2: the same on streams whose senders the test keeps (so the bodies never end).
    let mut h2_uploads = Vec::new();
    for client in &mut h2_clients {
        for _ in 0..SLOW_H2_STREAMS {
            let pieces = (UPLOAD_SENT / piece.len() as u64) as usize;
            let (tx, rx) = tokio::sync::mpsc::channel(pieces);
            for _ in 0..pieces {
                tx.try_send(piece.clone()).unwrap();
            }
            let request = Request::builder()
                .method("POST")
                .uri(format!("https://localhost:{}/collect", proxy.addr.port()))
                .header("content-length", LARGE)
                .body(common::ChannelBody(rx))
                .unwrap();
            h2_uploads.push((tokio::spawn(client.send_request(request)), tx));
        }
    }

    // Streamed, not stored: every byte sent reaches the upstream before the bodies time out.
    let all = SLOW_TOTAL as u64 * UPLOAD_SENT;
    let deadline = tokio::time::Instant::now() + SETTLE_DEADLINE;
    loop {
        let received = upstream.body_bytes_received.load(Ordering::SeqCst);
        if received >= all {
            break;
        }
        let waited = tokio::time::timeout_at(deadline, upstream.body_received.notified()).await;
        assert!(
            waited.is_ok(),
            "the upstream received {received} of {all} bytes"
        );
    }

    let line = format!("proxy_client_timeouts_total{{phase=\"body_read\"}} {SLOW_TOTAL}\n");
    common::until_metric_within(&proxy, &line, Duration::from_secs(60)).await;
    for mut tls in h1_clients {
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut received))
            .await
            .expect("the connection is closed")
            .unwrap();
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
    for (response, tx) in h2_uploads {
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("answered once the body stalls")
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        drop(tx);
    }
    let growth = peak_rss().saturating_sub(baseline);
    eprintln!("{SLOW_TOTAL} stalled uploads: peak memory grew by {growth}");
    assert!(
        growth < SLOW_UPLOADS_MAX_GROWTH,
        "peak memory grew by {growth} bytes while {SLOW_TOTAL} uploads stalled"
    );
    proxy.shutdown().await;
}
