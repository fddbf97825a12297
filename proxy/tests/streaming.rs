//! A 10 MiB body streamed both ways through the proxy (HTTP/1.1 and HTTP/2) while the process's
//! peak memory stays far below the body size: nothing is buffered whole. Kept in its own test
//! binary so no other test's allocations move the high-water mark.

mod common;

use common::{h1, h2, Repeat, TestPki, TestProxy, TestUpstream};
use http::{Request, StatusCode};
use http_body_util::BodyExt;

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

/// Reads a response body to the end, counting bytes and checking they are the `Repeat` pattern.
async fn drain(mut body: hyper::body::Incoming) -> u64 {
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
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
