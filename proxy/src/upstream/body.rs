//! The body of a request as it goes upstream: the client's streamed body, which says when its
//! last byte has gone, or nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::error::BodyError;
use crate::metrics::Metrics;

/// Body of a request sent upstream: the client's streamed body, or nothing (which lets an
/// idempotent request be sent again on a fresh connection).
pub type UpstreamBody = Either<ClientBody, Empty<Bytes>>;

/// The client's request body as it streams upstream. It reports when its last byte has gone,
/// because the upstream response timeout counts from there: however long an upload takes is the
/// client's time, not the upstream's. Its bytes are counted as they go, and it fails (which
/// aborts the upstream request) once they pass the body size limit: a chunked or HTTP/2 body
/// declares no length that could be refused up front.
pub struct ClientBody {
    inner: Incoming,
    sent: Option<oneshot::Sender<()>>,
    metrics: Arc<Metrics>,
    /// Bytes the body may still carry.
    remaining: u64,
    limit: u64,
    /// The longest wait for the body's next bytes.
    read_timeout: Duration,
    /// When the wait for the next bytes ends; made at the first wait (a body that arrives with
    /// its head never needs one).
    stall: Option<Pin<Box<Sleep>>>,
}

impl ClientBody {
    /// Wraps the client's body; `sent` (if any) is told when the body has gone in full or failed;
    /// more than `limit` bytes fail it, and so does a wait of `read_timeout` for its next bytes.
    pub fn new(
        inner: Incoming,
        sent: Option<oneshot::Sender<()>>,
        metrics: Arc<Metrics>,
        limit: u64,
        read_timeout: Duration,
    ) -> ClientBody {
        ClientBody {
            inner,
            sent,
            metrics,
            remaining: limit,
            limit,
            read_timeout,
            stall: None,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut poll = Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(BodyError::Client);
        // The body-read timeout runs between the client's bytes: a client that announces a body
        // and stalls would otherwise hold its connection and an upstream connection for ever.
        let timeout = self.read_timeout;
        match &poll {
            Poll::Pending => {
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stall.as_mut().poll(cx).is_ready() {
                    debug!(phase = "body_read", timeout = ?timeout, "request body stalled");
                    poll = Poll::Ready(Some(Err(BodyError::ReadTimeout { timeout })));
                }
            }
            Poll::Ready(_) => {
                if let Some(stall) = &mut self.stall {
                    stall.as_mut().reset(Instant::now() + timeout);
                }
            }
        }
        if let Poll::Ready(Some(Ok(frame))) = &poll {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                self.metrics.request_body_bytes(n);
                match self.remaining.checked_sub(n) {
                    Some(left) => self.remaining = left,
                    None => {
                        poll = Poll::Ready(Some(Err(BodyError::TooLarge { limit: self.limit })))
                    }
                }
            }
        }
        // The end (or a failure) of the body, whichever the client connection saw first.
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || self.inner.is_end_stream()
        {
            if let Some(sent) = self.sent.take() {
                let _ = sent.send(());
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
