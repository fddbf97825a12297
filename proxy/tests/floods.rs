//! Floods against the limits of docs/security.md ("Slow and abusive clients"). HTTP/2: rapid
//! reset, streams the proxy resets for protocol errors, and an endless header block, each sent as
//! raw frames ([`common::frames`]) one connection after another while a legitimate client is
//! served; each test asserts the proxy's GOAWAY, that it closed the connection after a bounded part
//! of the attack, and what the upstream got. A PING flood that reads nothing is closed by the send
//! timeout. HTTP/1.1: slowloris heads on many connections.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::frames::{self, Frame};
use common::{collect, h2, TestPki, TestProxy, TestUpstream};
use http::{Request, StatusCode, Version};
use http_body_util::Empty;
use tokio::io::AsyncWriteExt;

/// Streams a client may reset before the proxy accepts them (`Builders::new`).
const MAX_PENDING_ACCEPT_RESETS: u32 = 20;

/// Streams the proxy may reset for a client's protocol errors (`Builders::new`).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The path every attacking request names; the legitimate client asks for `/legit`.
const FLOOD_PATH: &str = "/flood";

/// What one round of an attack (one connection) came to.
#[derive(Debug)]
struct Round {
    /// The proxy's GOAWAY.
    goaway: Option<Frame>,
    /// RST_STREAM frames the proxy sent.
    resets: usize,
    /// Their error codes.
    reset_codes: BTreeSet<u32>,
    /// Bytes the attacker had written (after the handshake) when it learnt that the connection was
    /// closed, or when it gave up.
    sent: usize,
    /// Whether the proxy closed the connection within 10 s.
    closed: bool,
}

impl Round {
    /// Asserts that the proxy answered GOAWAY with ENHANCE_YOUR_CALM, naming `limit` (h2's name
    /// for the limit, in the debug data), and closed the connection.
    fn assert_calmed(&self, limit: &str) {
        let goaway = self.goaway.as_ref();
        assert_eq!(
            goaway.and_then(Frame::error_code),
            Some(frames::ENHANCE_YOUR_CALM),
            "{self:?}"
        );
        assert_eq!(goaway.and_then(Frame::debug_data).as_deref(), Some(limit));
        assert!(self.closed, "the connection stayed open: {self:?}");
    }
}

/// One round on a new connection: writes `batch(0)`, `batch(1)`, … (each in one write, so the
/// proxy reads a batch's frames together) until the proxy has closed the connection or `batches`
/// have gone out, reading what the proxy answers meanwhile. With `resets_per_batch`, each batch
/// waits until the proxy has reset the streams of the ones before it (the proxy's answers are
/// then counted exactly, none lost in the queue a GOAWAY drops).
async fn attack(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    batches: usize,
    resets_per_batch: Option<usize>,
    mut batch: impl FnMut(usize) -> Vec<u8>,
) -> Round {
    let tls = frames::handshake(config, addr).await;
    let (mut read, mut write) = tokio::io::split(tls);
    // What the reader has seen: RST_STREAM frames, and whether the connection is over.
    let (seen, mut seen_rx) = tokio::sync::watch::channel((0, false));
    let writer = async {
        let mut sent = 0;
        for i in 0..batches {
            let wanted = resets_per_batch.map_or(0, |n| n * i);
            let waited = seen_rx.wait_for(|&(resets, over)| over || resets >= wanted);
            if waited.await.map_or(true, |state| state.1) {
                break;
            }
            let bytes = batch(i);
            if write.write_all(&bytes).await.is_err() {
                break;
            }
            sent += bytes.len();
            // Lets the proxy and the reader (on this test's one thread) run before the next batch,
            // so `sent` stops soon after the proxy closes.
            tokio::task::yield_now().await;
        }
        sent
    };
    let reader = async {
        let (mut goaway, mut resets, mut reset_codes) = (None, 0, BTreeSet::new());
        let read_all = async {
            while let Some(frame) = frames::read_frame(&mut read).await {
                match frame.kind {
                    frames::GOAWAY => goaway = Some(frame),
                    frames::RST_STREAM => {
                        resets += 1;
                        reset_codes.extend(frame.error_code());
                        seen.send_replace((resets, false));
                    }
                    _ => {}
                }
            }
        };
        let closed = tokio::time::timeout(Duration::from_secs(10), read_all)
            .await
            .is_ok();
        seen.send_replace((resets, true));
        (goaway, resets, reset_codes, closed)
    };
    let (sent, (goaway, resets, reset_codes, closed)) = tokio::join!(writer, reader);
    Round {
        goaway,
        resets,
        reset_codes,
        sent,
        closed,
    }
}

/// Runs `round` over and over in a task while a legitimate HTTP/2 client, once the first round is
/// over, sends `GET /legit`, which must be answered 200; stops the attack then, and returns every
/// round's outcome.
async fn served_during<F, Fut>(pki: &TestPki, proxy: &TestProxy, round: F) -> Vec<Round>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Round> + Send,
{
    let (rounds, mut done) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.load(Ordering::SeqCst) {
                if rounds.send(round().await).is_err() {
                    break;
                }
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(30), done.recv())
        .await
        .expect("a first round within 30 s")
        .expect("the attacker runs");
    let mut client = h2::<Empty<Bytes>>(pki, proxy.addr).await;
    let request = Request::builder()
        .version(Version::HTTP_2)
        .uri(format!("https://localhost:{}/legit", proxy.addr.port()))
        .body(Empty::new())
        .unwrap();
    let response = client.send_request(request).await.expect("a response");
    let (status, _, body) = collect(response).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the legitimate client during the flood"
    );
    assert_eq!(&body[..], b"hello");
    stop.store(true, Ordering::SeqCst);
    attacker.await.expect("the attacker did not panic");
    let mut all = vec![first];
    while let Ok(round) = done.try_recv() {
        all.push(round);
    }
    // The attack went on while the legitimate client was served: the next round began as soon
    // as the first was over.
    assert!(
        all.len() >= 2,
        "the attack stopped before the legitimate request"
    );
    all
}

/// The attacking requests the upstream got, after checking that it got nothing else than those
/// and the legitimate one.
fn flood_requests_upstream(upstream: &TestUpstream) -> usize {
    let seen = upstream.seen();
    let legit = seen.iter().filter(|s| s.uri.path() == "/legit").count();
    assert_eq!(legit, 1, "{seen:?}");
    let flood = seen.iter().filter(|s| s.uri.path() == FLOOD_PATH);
    assert!(
        flood.clone().all(|s| s.method == http::Method::GET),
        "{seen:?}"
    );
    assert_eq!(flood.clone().count() + legit, seen.len(), "{seen:?}");
    flood.count()
}

/// Rapid reset (CVE-2023-44487): streams opened and reset at once, faster than the proxy accepts
/// them. After 20 such streams the proxy answers GOAWAY (ENHANCE_YOUR_CALM) and closes.
#[tokio::test]
async fn rapid_reset_gets_goaway_after_the_configured_count() {
    const PER_BATCH: u32 = 50;
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let (config, addr) = (pki.client_config_alpn(&[b"h2"]), proxy.addr);
    let block = frames::request_block(&format!("localhost:{}", addr.port()), FLOOD_PATH, &[]);
    let rounds = served_during(&pki, &proxy, move || {
        let block = block.clone();
        // Up to 500 streams: far more than the limit, were it not in force.
        attack(config.clone(), addr, 10, None, move |i| {
            let mut out = Vec::new();
            for n in 0..PER_BATCH {
                let stream = 1 + 2 * (PER_BATCH * i as u32 + n);
                let flags = frames::END_STREAM | frames::END_HEADERS;
                frames::push_frame(&mut out, frames::HEADERS, flags, stream, &block);
                frames::push_reset(&mut out, stream, frames::CANCEL);
            }
            out
        })
    })
    .await;
    let mut opened = 0;
    for round in &rounds {
        round.assert_calmed("too_many_resets");
        // The streams the proxy took in before it stopped (client streams are odd).
        let last = round.goaway.as_ref().and_then(Frame::last_stream_id);
        let streams = last.map_or(0, |id| id.div_ceil(2));
        assert!(
            (MAX_PENDING_ACCEPT_RESETS..=2 * MAX_PENDING_ACCEPT_RESETS).contains(&streams),
            "{streams} streams before GOAWAY: {round:?}"
        );
        opened += streams as usize;
    }
    let forwarded = flood_requests_upstream(&upstream);
    eprintln!(
        "rapid reset: {} rounds, {opened} streams, {forwarded} forwarded",
        rounds.len()
    );
    // Each batch is one TLS record, so the proxy reads every stream's RST_STREAM together with
    // its HEADERS, before it could accept the stream: none is forwarded.
    assert_eq!(forwarded, 0, "{forwarded} of {opened} forwarded");
    proxy.shutdown().await;
}

/// A client whose every stream is malformed (a connection-specific field, RFC 9113 §8.2.2): the
/// proxy resets each with PROTOCOL_ERROR, and after 1024 of them answers GOAWAY
/// (ENHANCE_YOUR_CALM) and closes. Nothing is forwarded.
#[tokio::test]
async fn streams_reset_for_protocol_errors_get_goaway_after_the_configured_count() {
    const PER_BATCH: u32 = 256;
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let (config, addr) = (pki.client_config_alpn(&[b"h2"]), proxy.addr);
    let authority = format!("localhost:{}", addr.port());
    let block = frames::request_block(&authority, FLOOD_PATH, &[("connection", "close")]);
    let rounds = served_during(&pki, &proxy, move || {
        let block = block.clone();
        // Up to 4096 streams: four times the limit.
        attack(
            config.clone(),
            addr,
            16,
            Some(PER_BATCH as usize),
            move |i| {
                let mut out = Vec::new();
                for n in 0..PER_BATCH {
                    let stream = 1 + 2 * (PER_BATCH * i as u32 + n);
                    let flags = frames::END_STREAM | frames::END_HEADERS;
                    frames::push_frame(&mut out, frames::HEADERS, flags, stream, &block);
                }
                out
            },
        )
    })
    .await;
    for round in &rounds {
        round.assert_calmed("too_many_internal_resets");
        assert_eq!(round.reset_codes, BTreeSet::from([frames::PROTOCOL_ERROR]));
        assert_eq!(round.resets, MAX_LOCAL_ERROR_RESETS, "resets before GOAWAY");
    }
    eprintln!(
        "local error resets: {} rounds, resets {:?}",
        rounds.len(),
        rounds.iter().map(|r| r.resets).collect::<Vec<_>>()
    );
    assert_eq!(flood_requests_upstream(&upstream), 0);
    proxy.shutdown().await;
}

/// A CONTINUATION flood (CVE-2024-27316's kind): a HEADERS frame without END_HEADERS, then
/// CONTINUATION frames without end, by turns empty (work for nothing) and carrying 1 KiB each of a
/// field value announced as 16 MiB long (memory). The proxy answers GOAWAY (ENHANCE_YOUR_CALM) and
/// closes after a few of them: h2 allows as many as it takes to carry the configured header list
/// size (64 KiB, `PROXY_MAX_HEADER_BYTES`), so the attacker has sent well under 1 MiB. Nothing is
/// forwarded.
#[tokio::test]
async fn an_endless_header_block_is_cut_short() {
    /// Bytes of CONTINUATION frames per write.
    const BATCH_BYTES: usize = 8 << 10;
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let (config, addr) = (pki.client_config_alpn(&[b"h2"]), proxy.addr);
    let mut block = frames::request_block(&format!("localhost:{}", addr.port()), FLOOD_PATH, &[]);
    // A literal field with a new name 16 MiB long (RFC 7541 §5.1: 127, then the rest in 7-bit
    // groups): the decoder waits for the rest of it.
    block.extend_from_slice(&[0x00, 0x7f]);
    let mut rest = (16 << 20) - 127;
    while rest >= 0x80 {
        block.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    block.push(rest as u8);
    let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rounds = served_during(&pki, &proxy, move || {
        let block = block.clone();
        let fragment = vec![b'a'; 1024 * (turn.fetch_add(1, Ordering::SeqCst) % 2)];
        let per_batch = BATCH_BYTES / (9 + fragment.len());
        // Up to 64 MiB of frames, were the block never cut.
        attack(
            config.clone(),
            addr,
            (64 << 20) / BATCH_BYTES,
            None,
            move |i| {
                let mut out = Vec::new();
                if i == 0 {
                    frames::push_frame(&mut out, frames::HEADERS, frames::END_STREAM, 1, &block);
                } else {
                    for _ in 0..per_batch {
                        frames::push_frame(&mut out, frames::CONTINUATION, 0, 1, &fragment);
                    }
                }
                out
            },
        )
    })
    .await;
    for round in &rounds {
        round.assert_calmed("too_many_continuations");
        assert!(round.sent < 1 << 20, "{} bytes sent: {round:?}", round.sent);
    }
    eprintln!(
        "continuation: {} rounds, sent {:?}",
        rounds.len(),
        rounds.iter().map(|r| r.sent).collect::<Vec<_>>()
    );
    assert_eq!(flood_requests_upstream(&upstream), 0);
    proxy.shutdown().await;
}

/// A PING flood from a client that never reads: h2 acknowledges each PING before it reads on, so
/// the unread acknowledgements fill the socket, the proxy's writes stall, and the send timeout
/// closes the connection (a GOAWAY could never reach such a client). A legitimate client is
/// served meanwhile.
#[tokio::test]
async fn a_ping_flood_that_reads_nothing_is_closed_after_the_send_timeout() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--send-timeout", "300ms"]).await;
    let tls = frames::handshake(pki.client_config_alpn(&[b"h2"]), proxy.addr).await;
    // From here on nothing is read.
    let (_unread, mut write) = tokio::io::split(tls);
    let mut batch = Vec::new();
    for i in 0..1024u64 {
        frames::push_frame(&mut batch, frames::PING, 0, 0, &i.to_be_bytes());
    }
    let flood = async {
        let mut sent = 0usize;
        while write.write_all(&batch).await.is_ok() {
            sent += batch.len();
        }
        sent
    };
    let mut legit = h2::<Empty<Bytes>>(&pki, proxy.addr).await;
    let request = Request::builder()
        .version(Version::HTTP_2)
        .uri(format!("https://localhost:{}/legit", proxy.addr.port()))
        .body(Empty::new())
        .unwrap();
    let (sent, response) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(30), flood),
        legit.send_request(request)
    );
    let sent = sent.expect("the flooding connection was closed");
    let (status, _, _) = collect(response.expect("the legitimate client's response")).await;
    assert_eq!(status, StatusCode::OK);
    common::until_metric(&proxy, "proxy_client_timeouts_total{phase=\"send\"} 1").await;
    // Bounded by the socket buffers, not by the flood.
    assert!(sent < 64 << 20, "{sent} bytes of PINGs taken");
    proxy.shutdown().await;
}

/// Slowloris over HTTP/1.1: many connections, each trickling a request head in a byte at a time.
/// Each is answered `408` and closed once the header-read timeout is over, however steadily its
/// bytes come, and a legitimate client is served meanwhile. (tests/lifecycle.rs times one such
/// head exactly.)
#[tokio::test]
async fn slowloris_heads_get_408_while_others_are_served() {
    const CONNECTIONS: usize = 32;
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--header-read-timeout", "1s"]).await;
    let (started, mut all_started) = tokio::sync::mpsc::unbounded_channel();
    let mut slow = Vec::new();
    for _ in 0..CONNECTIONS {
        let tls = common::tls_connect(&pki, proxy.addr, &[b"http/1.1"])
            .await
            .expect("TLS");
        slow.push(tokio::spawn(trickle(tls, started.clone())));
    }
    for _ in 0..CONNECTIONS {
        all_started.recv().await.expect("a slow client started");
    }

    let mut client = common::h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let response = client.send_request(common::get("/legit")).await;
    let (status, _, body) = collect(response.expect("a response")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the legitimate client during the flood"
    );
    assert_eq!(&body[..], b"hello");

    for slow in slow {
        let (received, sent) = slow.await.expect("the slow client did not panic");
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        // At 20 bytes a second, a 1 s timeout: well under 5 s of bytes.
        assert!(sent < 100, "{sent} bytes trickled in before the 408");
    }
    let timeouts = format!("proxy_client_timeouts_total{{phase=\"header_read\"}} {CONNECTIONS}");
    let metrics = proxy.proxy.metrics().encode().unwrap();
    assert!(metrics.contains(&timeouts), "no {timeouts} in:\n{metrics}");
    assert_eq!(flood_requests_upstream(&upstream), 0);
    proxy.shutdown().await;
}

/// Writes a request head a byte every 50 ms, without end, until the proxy closes the connection
/// (panics after 20 s); says on `started` when its first byte is out. Returns what the proxy sent
/// and the bytes written.
async fn trickle(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    started: tokio::sync::mpsc::UnboundedSender<()>,
) -> (Vec<u8>, usize) {
    use tokio::io::AsyncReadExt;

    let (mut read, mut write) = tokio::io::split(tls);
    let head = format!("GET {FLOOD_PATH} HTTP/1.1\r\nHost: localhost\r\nX-Slow: ");
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let writer = async {
        // The client's slowness is the attack; nothing here waits for the proxy.
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        for n in 0..400 {
            pace.tick().await;
            let byte = head.as_bytes().get(n).copied().unwrap_or(b'a');
            if write.write_all(&[byte]).await.is_err() || write.flush().await.is_err() {
                // Closed by the proxy: what it answered is read below.
                std::future::pending::<()>().await;
            }
            sent.store(n + 1, Ordering::SeqCst);
            if n == 0 {
                let _ = started.send(());
            }
        }
    };
    let reader = async {
        let mut received = Vec::new();
        let _ = read.read_to_end(&mut received).await;
        received
    };
    let received = tokio::select! {
        biased;
        received = reader => received,
        () = writer => panic!("20 s of a head, and the proxy neither answered nor closed"),
    };
    (received, sent.load(Ordering::SeqCst))
}
