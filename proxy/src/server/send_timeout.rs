//! The send timeout (`PROXY_SEND_TIMEOUT`): sending to a client that makes no progress for that
//! long is given up, so a client that stops reading cannot hold a connection slot, or the upstream
//! connection its response comes from, for ever.
//!
//! - [`SendDeadline`]: the deadline itself, armed when sending starts to wait on the client;
//! - [`SendTimeoutIo`]: a client connection's writes (HTTP/1.1 and HTTP/2), failed when they wait
//!   that long: the connection ends, so do its responses;
//! - [`StreamExecutor`] and its [`StreamSendGuard`]: one HTTP/2 stream's response, dropped when
//!   the client keeps the stream's flow-control window shut that long (the connection's writes go
//!   on, other streams too).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::metrics::{ClientTimeout, Metrics};

/// When sending that waits on the client gives up: armed when the waiting starts, never while
/// sending makes progress. The timer is made at the first wait (a client that reads never needs
/// one) and reused after.
pub(crate) struct SendDeadline {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether sending waited when last looked at: the deadline runs from the first of such waits.
    waiting: bool,
}

impl SendDeadline {
    pub(crate) fn new(timeout: Duration) -> SendDeadline {
        SendDeadline {
            timeout,
            sleep: None,
            waiting: false,
        }
    }

    /// Whether sending has waited on the client for the whole timeout, told after each attempt
    /// whether it is `waiting` (any progress ends the wait). While it waits, `cx` is woken at the
    /// deadline.
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>, waiting: bool) -> bool {
        if !waiting {
            self.waiting = false;
            return false;
        }
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.waiting {
            self.waiting = true;
            sleep.as_mut().reset(Instant::now() + timeout);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// A client connection's stream whose writes and flushes fail when they make no progress for
/// the send timeout. Failing a write ends hyper's connection, which drops the responses' bodies
/// and so closes (never pools) the upstream connections they come from.
pub(crate) struct SendTimeoutIo<T> {
    io: T,
    deadline: SendDeadline,
    metrics: Arc<Metrics>,
}

impl<T> SendTimeoutIo<T> {
    pub(crate) fn new(io: T, timeout: Duration, metrics: Arc<Metrics>) -> SendTimeoutIo<T> {
        SendTimeoutIo {
            io,
            deadline: SendDeadline::new(timeout),
            metrics,
        }
    }

    /// After a write or flush returned `poll`: fails it once writes have waited for the timeout.
    fn stalled<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if self.deadline.expired(cx, poll.is_pending()) {
            debug!(phase = "send", timeout = ?self.deadline.timeout, "client took nothing of the response in time: closing");
            self.metrics.client_timeout(ClientTimeout::Send);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "send timeout",
            )));
        }
        poll
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeoutIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeoutIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.stalled(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.stalled(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.stalled(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

thread_local! {
    /// While an HTTP/2 stream's task is polled (by [`StreamSendGuard`]): whether its response body
    /// has yielded a data frame that hyper has not sent yet. It waits for the client to open the
    /// stream's window, since hyper polls the body again only once the frame has been sent.
    /// `None` outside such a poll.
    static FRAME_WAITING: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Told by a response body each time hyper polls it on an HTTP/2 stream: whether it yielded a
/// data frame (which now waits to be sent). Outside an HTTP/2 stream's task it does nothing.
pub(crate) fn body_polled(yielded_data: bool) {
    FRAME_WAITING.with(|waiting| {
        if waiting.get().is_some() {
            waiting.set(Some(yielded_data));
        }
    });
}

/// The executor of the HTTP/2 connections' streams: tokio's, with each stream's task guarded by
/// the send timeout ([`StreamSendGuard`]).
#[derive(Clone)]
pub(crate) struct StreamExecutor {
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl StreamExecutor {
    pub(crate) fn new(timeout: Duration, metrics: Arc<Metrics>) -> StreamExecutor {
        StreamExecutor { timeout, metrics }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Unpin + Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(StreamSendGuard {
            stream,
            deadline: SendDeadline::new(self.timeout),
            waiting: false,
            metrics: self.metrics.clone(),
        });
    }
}

/// One HTTP/2 stream's task under the send timeout. A stream whose response has a frame waiting
/// for flow-control window for the whole timeout is dropped: h2 resets it (`RST_STREAM` CANCEL)
/// and the dropped body releases its upstream connection. A body that waits on the upstream (a
/// slow stream, server-sent events) is not cut: only a frame the client does not take counts.
/// The guard is part of the task's own future: nothing is allocated for it until a frame first
/// waits on the client.
struct StreamSendGuard<F> {
    stream: F,
    deadline: SendDeadline,
    /// Carried from poll to poll: hyper polls the body only when the frame has gone.
    waiting: bool,
    metrics: Arc<Metrics>,
}

impl<F: Future<Output = ()> + Unpin> Future for StreamSendGuard<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let guard = &mut *self;
        FRAME_WAITING.set(Some(guard.waiting));
        let polled = Pin::new(&mut guard.stream).poll(cx);
        guard.waiting = FRAME_WAITING.take().unwrap_or(false);
        if polled.is_ready() {
            return Poll::Ready(());
        }
        if guard.deadline.expired(cx, guard.waiting) {
            debug!(phase = "send", timeout = ?guard.deadline.timeout, "client took nothing of an HTTP/2 stream's response in time: resetting the stream");
            guard.metrics.client_timeout(ClientTimeout::Send);
            // Returning drops the stream's future.
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
