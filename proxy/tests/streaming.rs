//! Streaming through the proxy: a 10 MiB body both ways (HTTP/1.1 and HTTP/2) while the
//! process's peak memory stays far below the body size, and backpressure: a client that stops
//! reading a 64 MiB download stops the upstream's writing too. Kept in its own test binary so no
//! other test's allocations move the high-water mark; the tests here take turns (`SERIAL`).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{h1, h2, Repeat, TestPki, TestProxy, TestUpstream};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

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
) -> hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(TEST_SOCKET_BUFFER).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(pki.client_config_alpn(&[alpn]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    hyper_util::rt::TokioIo::new(connector.connect(name, tcp).await.unwrap())
}

/// The upstream counts as settled when it has let go of no byte for this long. Real time:
/// "stopped" is the absence of progress, which only a quiet period shows; a paused clock would
/// move on whenever the runtime waits for the kernel's sockets and could call a moving transfer
/// settled.
const SETTLED: Duration = Duration::from_millis(500);
/// The longest the upstream may keep writing before the test gives up.
const SETTLE_DEADLINE: Duration = Duration::from_secs(20);

/// Waits until the upstream stops writing (no body progress for [`SETTLED`]) and returns what it
/// has written.
async fn settled(upstream: &TestUpstream) -> u64 {
    let deadline = tokio::time::Instant::now() + SETTLE_DEADLINE;
    while tokio::time::timeout(SETTLED, upstream.body_progress.notified())
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream kept writing ({} bytes so far) while the client read nothing",
            upstream.body_bytes_sent.load(Ordering::SeqCst)
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

    let written = settled(upstream).await;
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
    let io = small_buffer_tls(&pki, proxy.addr, b"http/1.1").await;
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
    let io = small_buffer_tls(&pki, proxy.addr, b"h2").await;
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
