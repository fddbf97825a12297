//! One upstream connection and how it is polled while a request uses it. Every polling trick of
//! the request path is in this file.
//!
//! The invariant: an upstream connection is polled by exactly one party at a time. A new
//! connection has no task of its own: hyper's connection future is polled by the task of the
//! request that has it checked out, beside that request's response future ([`await_response`])
//! and then by its response body (`pool::PooledBody`). The upstream socket wakes the request's
//! task directly, and request and response pass between hyper's two halves without waking a
//! second task. A connection idle in the pool is polled by nobody: an upstream's close that
//! arrived meanwhile is read by the next request's first poll, and hyper then hands that request
//! back unsent. A request with a body, or one asking for an upgrade, hands its connection to a task
//! of its own for good ([`UpstreamConn::detach`] says why).
//!
//! Polls made without a waker ([`UpstreamConn::settle`], the response future while the connection
//! is polled) are made only where another poll is guaranteed: by the connection's own wake-up.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::debug;

use super::body::UpstreamBody;
use super::stream::UpstreamStream;

/// hyper's half of an HTTP/1.1 client connection that does the I/O.
pub(super) type HyperConnection = Connection<TokioIo<UpstreamStream>, UpstreamBody>;

/// One HTTP/1.1 connection to the upstream: the handle requests are sent with, and hyper's
/// connection future that does the work (see the module's overview for who polls it).
pub struct UpstreamConn {
    pub sender: SendRequest<UpstreamBody>,
    poller: Poller,
    /// A task's waker may be registered with the connection (it was polled with one since it
    /// last settled).
    registered: bool,
    /// The pool's slot for this connection, freed when it ends (see [`UpstreamConn::detach`]).
    permit: Option<OwnedSemaphorePermit>,
}

/// hyper's connection future, and who polls it.
enum Poller {
    /// Whoever holds the `UpstreamConn`. Boxed: an `UpstreamConn` moves with its request's future
    /// (into the pool and out, into the response body), and hyper's connection state is large.
    Holder(Box<HyperConnection>),
    /// A task of its own (see [`UpstreamConn::detach`]).
    OwnTask,
    /// The connection has ended.
    Ended,
}

impl UpstreamConn {
    /// A connection just set up, polled by whoever holds it.
    pub(super) fn new(
        sender: SendRequest<UpstreamBody>,
        connection: HyperConnection,
    ) -> UpstreamConn {
        UpstreamConn {
            sender,
            poller: Poller::Holder(Box::new(connection)),
            registered: false,
            permit: None,
        }
    }

    /// The connection with the pool's slot it takes.
    pub(super) fn holding(mut self, permit: OwnedSemaphorePermit) -> UpstreamConn {
        self.permit = Some(permit);
        self
    }

    /// Lets the connection do what it can (write the request, read the response) and registers
    /// `cx` for what it waits on. Ready when there is nothing for the caller to poll: the
    /// connection has ended (a request in flight then gets hyper's error through its response
    /// future) or runs in a task of its own (which wakes the caller through hyper's channels).
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.registered = true;
        self.poll_connection(cx)
    }

    /// Polls the connection without a task to wake. [`await_response`] calls this before it
    /// registers a task's waker: when the connection has the response head, it takes it without
    /// handing hyper a waker (which would wake the request's task once more when the response
    /// body is taken). The pool calls it for a returned connection: it makes an exchange that
    /// ended ready for the next, notices an upstream that closed, and leaves no waker of a task
    /// that no longer uses the connection. Ready as [`UpstreamConn::poll_io`] is.
    pub fn settle(&mut self) -> Poll<()> {
        let poll = self.poll_connection(&mut Context::from_waker(Waker::noop()));
        self.registered = false;
        poll
    }

    fn poll_connection(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Poller::Holder(connection) = &mut self.poller else {
            return Poll::Ready(());
        };
        let Poll::Ready(result) = Pin::new(&mut **connection).poll(cx) else {
            return Poll::Pending;
        };
        if let Err(e) = result {
            debug!(error = %e, "upstream connection ended with an error");
        }
        self.poller = Poller::Ended;
        Poll::Ready(())
    }

    /// Whether a task's waker may be registered with the connection.
    pub(super) fn is_registered(&self) -> bool {
        self.registered
    }

    /// Open and free for a request.
    pub(super) fn is_idle(&self) -> bool {
        !matches!(self.poller, Poller::Ended) && self.sender.is_ready()
    }

    pub(super) fn has_ended(&self) -> bool {
        matches!(self.poller, Poller::Ended)
    }

    /// Hands the connection to a task of its own, for good, with upgrades enabled. For a request
    /// that asks for a WebSocket upgrade: hyper hands the socket to the tunnel only from a
    /// connection future that runs to its end. For a request with a body: the body must go on
    /// streaming to the upstream while the response body waits for the client (a client that
    /// sends its whole body before reading must not stall), and only a task of its own keeps the
    /// connection going then. Such a connection is pooled as any other; its task sees the
    /// upstream's close, so its `sender` says whether it is idle. (Lending it to a task only until
    /// the body has gone does not work: hyper may drop a body without its end being seen, and
    /// may still hold unflushed request bytes when it has.)
    pub fn detach(&mut self) {
        match std::mem::replace(&mut self.poller, Poller::OwnTask) {
            Poller::Holder(connection) => {
                // The slot goes with the connection's task: it is free when the connection ends
                // (or hands its socket to a tunnel), not when this handle is dropped.
                let permit = self.permit.take();
                tokio::spawn(async move {
                    if let Err(e) = (*connection).with_upgrades().await {
                        debug!(error = %e, "upstream connection ended with an error");
                    }
                    drop(permit);
                });
            }
            other => self.poller = other,
        }
    }
}

/// Resolves when the upstream response timeout has passed: `timeout` after the request body was
/// sent in full (`body_sent`), or at `deadline` for a request without a body.
pub async fn response_timeout(
    body_sent: Option<oneshot::Receiver<()>>,
    deadline: Instant,
    timeout: Duration,
) {
    match body_sent {
        None => tokio::time::sleep_until(deadline).await,
        Some(body_sent) => {
            // A dropped sender (the body went away unfinished) starts the timer too.
            let _ = body_sent.await;
            tokio::time::sleep(timeout).await;
        }
    }
}

/// Awaits `response` (a request's response head) while polling `conn`, the connection it went out
/// on, unless that runs in a task of its own.
///
/// With `batch`, the first poll only asks for the next one, at the back of the scheduler's queue:
/// the request is written after the other tasks that are ready now have run, so a burst of
/// requests (the clients' requests that one wake-up of the runtime found) reaches the upstream as
/// a burst of writes, not as writes spread between the parsing of the next requests: each write
/// to an upstream that is asleep wakes it across cores, and in a burst the later writes find it
/// awake. Not for HTTP/2, whose streams are tasks of their own.
pub async fn await_response<F: Future>(
    conn: &mut UpstreamConn,
    response: F,
    batch: bool,
) -> F::Output {
    // Outside tokio's budget: polled without a waker (below), a future that ran out of budget
    // would ask for a wake-up nobody receives.
    let mut response = std::pin::pin!(tokio::task::unconstrained(response));
    let mut deferred = batch;
    let mut first = true;
    std::future::poll_fn(|cx| {
        if std::mem::take(&mut deferred) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut no_wake = Context::from_waker(Waker::noop());
        // Only the connection can complete the response, so the response is polled without a
        // waker as long as the connection is. From the second poll on, the connection is polled
        // without one first too (see `UpstreamConn::settle`), and with this task's waker only
        // when it then waits; the first poll only writes the request (nothing can have come back
        // yet).
        let first = std::mem::take(&mut first);
        if first || conn.settle().is_pending() {
            if !first {
                if let Poll::Ready(response) = response.as_mut().poll(&mut no_wake) {
                    return Poll::Ready(response);
                }
            }
            if conn.poll_io(cx).is_pending() {
                return response.as_mut().poll(&mut no_wake);
            }
        }
        // Ended (the response is then an error) or in a task of its own (`detach`).
        response.as_mut().poll(cx)
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{header, Request};
    use http_body_util::{Either, Empty};

    use super::*;
    use crate::config::Upstream;
    use crate::upstream::connect::connect;

    /// A waker that counts its wakes.
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What the upstream has received so far (a read that does not wait).
    fn received(upstream: &mut std::net::TcpStream) -> Vec<u8> {
        use std::io::Read;
        let mut buf = vec![0; 4096];
        match upstream.read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Vec::new(),
            Err(e) => panic!("upstream read: {e}"),
        }
    }

    /// `await_response` with `batch` writes nothing at its first poll, only asks for the next
    /// one; then it writes. Without `batch` the first poll writes.
    #[tokio::test]
    async fn a_batched_request_goes_out_at_the_next_poll() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream::parse(&format!("http://{}", listener.local_addr().unwrap()))
            .expect("an upstream URL");
        for batch in [true, false] {
            let mut conn = connect(&upstream, Duration::from_secs(1)).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            let mut accepted = accepted.into_std().unwrap();
            accepted.set_nonblocking(true).unwrap();
            let request = Request::get("/batched")
                .header(header::HOST, "upstream")
                .body(Either::Right(Empty::<Bytes>::new()))
                .unwrap();
            let response = conn.sender.try_send_request(request);
            let mut exchange = std::pin::pin!(await_response(&mut conn, response, batch));
            let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
            let waker = Waker::from(wakes.clone());
            let mut cx = Context::from_waker(&waker);

            assert!(exchange.as_mut().poll(&mut cx).is_pending());
            if batch {
                assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "asks for the next poll");
                assert_eq!(
                    received(&mut accepted),
                    b"",
                    "nothing written at the first poll"
                );
                assert!(exchange.as_mut().poll(&mut cx).is_pending());
            }
            // Written by a `write(2)` on loopback: there when the poll returns.
            let head = received(&mut accepted);
            assert!(
                head.starts_with(b"GET /batched HTTP/1.1\r\n"),
                "batch {batch}: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
    }
}
