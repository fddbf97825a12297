//! The recording plain-HTTP/1.1 test upstream (on TCP or a UNIX socket), and the bodies it
//! streams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proxy::upstream::stream::UpstreamStream;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// What the test upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

type UpstreamBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A plain-HTTP/1.1 upstream that records every request head. Routes:
/// - `/echo`: streams the request body back;
/// - `/bytes/N`: streams N bytes (counted in `body_bytes_sent`);
/// - `/collect`: answers, once the whole request body is in, with its length (counting the bytes
///   in `body_bytes_received` as they come, holding none);
/// - `/hang`: never answers;
/// - `/held`: answers `held` once the test calls [`TestUpstream::release_held`];
/// - `/held-stream`: answers at once with a body of `first `, and `last` once the test calls
///   [`TestUpstream::release_held`] (a slow streaming body, like server-sent events);
/// - `/sleep/MS`: answers `slept` after MS milliseconds (a backend that takes its time);
/// - `/ws`: accepts an upgrade (101) and echoes bytes on the upgraded connection;
/// - `/switch/PROTO`: answers 101 naming PROTO, whatever the request asked for (a lenient
///   backend), and echoes like `/ws`;
/// - anything else: 200 `hello` with hop-by-hop headers the proxy must strip.
pub struct TestUpstream {
    /// The TCP address (`0.0.0.0:0` for a socket upstream, which has none: use `url`).
    pub addr: SocketAddr,
    /// What `--upstream` names: `http://ADDR` or `unix:/PATH`.
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Number of TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Notified (one permit per request) whenever a request head has been recorded.
    pub arrived: Arc<Notify>,
    /// Bytes of `/bytes/N` bodies handed to hyper so far (what the upstream has "written").
    pub body_bytes_sent: Arc<AtomicU64>,
    /// Notified whenever `body_bytes_sent` grows.
    pub body_progress: Arc<Notify>,
    /// Bytes of `/collect` request bodies received so far.
    pub body_bytes_received: Arc<AtomicU64>,
    /// Notified whenever `body_bytes_received` grows.
    pub body_received: Arc<Notify>,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What a test upstream accepts connections on.
enum Listener {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<UpstreamStream> {
        match self {
            Listener::Tcp(listener) => Ok(UpstreamStream::Tcp(listener.accept().await?.0)),
            Listener::Unix(listener) => Ok(UpstreamStream::Unix(listener.accept().await?.0)),
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What every request handler of one [`TestUpstream`] shares.
#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<Notify>,
    sent: Arc<AtomicU64>,
    progress: Arc<Notify>,
    received: Arc<AtomicU64>,
    received_progress: Arc<Notify>,
    released: watch::Receiver<bool>,
}

impl TestUpstream {
    /// Binds 127.0.0.1:0 and serves.
    pub async fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        TestUpstream::serve(listener)
    }

    /// Binds a UNIX socket at `path` (in a test's temp dir) and serves on it.
    pub fn start_unix(path: &std::path::Path) -> TestUpstream {
        let listener = tokio::net::UnixListener::bind(path).expect("bind upstream socket");
        TestUpstream::serve_on(
            Listener::Unix(listener),
            SocketAddr::from(([0, 0, 0, 0], 0)),
            format!("unix:{}", path.display()),
        )
    }

    /// Serves on an already bound listener.
    pub fn serve(listener: TcpListener) -> TestUpstream {
        let addr = listener.local_addr().expect("upstream addr");
        TestUpstream::serve_on(Listener::Tcp(listener), addr, format!("http://{addr}"))
    }

    fn serve_on(listener: Listener, addr: SocketAddr, url: String) -> TestUpstream {
        let (release, released) = watch::channel(false);
        let shared = Shared {
            seen: Arc::new(Mutex::new(Vec::new())),
            arrived: Arc::new(Notify::new()),
            sent: Arc::new(AtomicU64::new(0)),
            progress: Arc::new(Notify::new()),
            received: Arc::new(AtomicU64::new(0)),
            received_progress: Arc::new(Notify::new()),
            released,
        };
        let connections = Arc::new(AtomicUsize::new(0));
        let task = {
            let shared = shared.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(stream) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| upstream_service(req, shared.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            })
        };
        TestUpstream {
            addr,
            url,
            seen: shared.seen,
            connections,
            arrived: shared.arrived,
            body_bytes_sent: shared.sent,
            body_progress: shared.progress,
            body_bytes_received: shared.received,
            body_received: shared.received_progress,
            release,
            task,
        }
    }

    /// Request heads received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// The last request head received.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received a request")
    }

    /// Lets every `/held` request, waiting now or arriving later, be answered.
    pub fn release_held(&self) {
        self.release.send_replace(true);
    }
}

fn full(body: impl Into<Bytes>) -> UpstreamBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

async fn upstream_service(
    mut req: Request<Incoming>,
    shared: Shared,
) -> Result<Response<UpstreamBody>, Infallible> {
    shared.seen.lock().expect("lock").push(Seen {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    shared.arrived.notify_one();
    let path = req.uri().path().to_owned();
    let response = if path == "/echo" {
        Response::new(req.into_body().map_err(Into::into).boxed())
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().expect("byte count");
        Response::new(
            Counted {
                inner: Repeat { remaining: n },
                sent: shared.sent,
                progress: shared.progress,
            }
            .boxed(),
        )
    } else if path == "/collect" {
        // Answers only once the whole request body has arrived: its length. Counted, not kept, so
        // that many uploads do not grow the test process's memory.
        let mut body = req.into_body();
        let mut length = 0;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                // As before: a body that failed counts as none.
                length = 0;
                break;
            };
            if let Some(data) = frame.data_ref() {
                length += data.len();
                shared
                    .received
                    .fetch_add(data.len() as u64, Ordering::SeqCst);
                shared.received_progress.notify_one();
            }
        }
        Response::new(full(length.to_string()))
    } else if path == "/hang" {
        std::future::pending::<()>().await;
        unreachable!()
    } else if path == "/held" {
        let mut released = shared.released;
        // An error means the upstream is gone; the response no longer matters.
        let _ = released.wait_for(|released| *released).await;
        Response::new(full("held"))
    } else if path == "/held-stream" {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let _ = tx.try_send(Bytes::from_static(b"first "));
        let mut released = shared.released;
        tokio::spawn(async move {
            // An error means the upstream is gone; the body no longer matters.
            let _ = released.wait_for(|released| *released).await;
            let _ = tx.send(Bytes::from_static(b"last")).await;
        });
        Response::new(super::ChannelBody(rx).map_err(|e| match e {}).boxed())
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        // Real time: backend latency under load, which no test waits out (`/held` is the event).
        tokio::time::sleep(Duration::from_millis(ms.parse().expect("ms"))).await;
        Response::new(full("slept"))
    } else if path == "/ws" || path.starts_with("/switch/") {
        let protocol = path
            .strip_prefix("/switch/")
            .unwrap_or("websocket")
            .to_owned();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .body(full(Bytes::new()))
            .expect("101")
    } else {
        Response::builder()
            .header("connection", "x-hop")
            .header("x-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-end", "1")
            .body(full("hello"))
            .expect("200")
    };
    Ok(response)
}

/// A body of `remaining` bytes, sent in 64 KiB chunks of one shared buffer.
pub struct Repeat {
    pub remaining: u64,
}

const CHUNK: usize = 64 * 1024;

fn chunk() -> Bytes {
    static DATA: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    DATA.get_or_init(|| Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>()))
        .clone()
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(chunk().slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// A body that adds the size of every data frame it yields to `sent` (and notifies `progress`):
/// hyper polls the next frame only when it has room to write it, so the count is what the sender
/// has let go of.
pub struct Counted<B> {
    pub inner: B,
    pub sent: Arc<AtomicU64>,
    pub progress: Arc<Notify>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent.fetch_add(data.len() as u64, Ordering::SeqCst);
                self.progress.notify_one();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
