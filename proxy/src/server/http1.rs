//! HTTP/1.1 client connections: serving requests with hyper, *parking* a keep-alive connection
//! that has gone idle, and running an upgraded (WebSocket) connection's tunnel.
//!
//! Parking is how an idle keep-alive connection costs little memory. hyper keeps an 8 KB read
//! buffer and an 8 KB write buffer for as long as its connection object lives, idle or not. So
//! once a connection has finished its requests and flushed every byte, the proxy ends hyper's
//! connection *without closing the socket* (`graceful_shutdown` + `poll_without_shutdown`), keeps
//! only the TLS stream, and waits for the client's next bytes with a small buffer. When they
//! come, a new hyper connection starts on the same TLS stream with those bytes in front. nginx
//! does the same with its keep-alive buffers. While parked, the client idle timeout and the
//! shutdown signal still apply.
//!
//! An upgrade is the other way a hyper connection ends without closing the socket: after the
//! `101` the client's stream (with any bytes hyper had read past the request) is joined to the
//! upstream's in this same task, so a tunnel holds the connection's slot and is part of the
//! shutdown drain like any connection.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, trace};

use super::conn::ClientConn;
use super::handle::{handle, ProxyBody};
use super::send_timeout::SendTimeoutIo;
use crate::config::Timeouts;
use crate::forward::tunnel::tunnel;
use crate::metrics::ClientTimeout;

/// The first read of a parked connection: enough for a typical request head; the rest stays in
/// the TLS layer until hyper reads it.
const PARKED_READ: usize = 512;

/// How long closing a connection (TLS `close_notify`, then FIN) may wait for a client that does
/// not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The client's TLS stream as hyper sees it: bytes already read (by a parked connection, or left
/// in the previous hyper connection's buffer) come first. It also records whether everything
/// written has been flushed, because only then can the connection be parked without losing bytes.
/// Writes that make no progress for the send timeout fail (see [`SendTimeoutIo`]).
pub(crate) struct ClientIo {
    /// Boxed: the stream is moved between hyper, the parked state and a tunnel, and each place
    /// would otherwise keep room for its 1.2 KB in the connection's task.
    tls: Box<SendTimeoutIo<tokio_rustls::server::TlsStream<TcpStream>>>,
    prefix: Bytes,
    conn: Arc<ClientConn>,
}

impl ClientIo {
    pub(crate) fn new(
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        conn: Arc<ClientConn>,
    ) -> ClientIo {
        let send_timeout = conn.proxy.fixed.timeouts.send;
        ClientIo {
            tls: Box::new(SendTimeoutIo::new(
                tls,
                send_timeout,
                conn.proxy.metrics.clone(),
            )),
            prefix: Bytes::new(),
            conn,
        }
    }

    /// Puts `bytes` in front of what is still to be read.
    fn unread(&mut self, bytes: Bytes) {
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else if !bytes.is_empty() {
            let mut joined = BytesMut::with_capacity(bytes.len() + self.prefix.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.prefix);
            self.prefix = joined.freeze();
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.conn.bytes_arrived(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.tls).poll_read(cx, buf);
        if buf.filled().len() != before {
            self.conn.bytes_arrived(&buf.filled()[before..]);
        }
        poll
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.conn.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.conn.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.tls).poll_flush(cx);
        if let Poll::Ready(Ok(())) = poll {
            self.conn.unflushed.store(false, Ordering::Relaxed);
        }
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// Why a hyper connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed, or the exchange ended the connection (`Connection: close`, an error).
    Finished,
    /// Idle with nothing left to write: park it.
    Park,
    /// The client idle timeout, or the server is shutting down: close it.
    Close,
    /// A request head did not arrive within the header-read timeout: answer `408`, close.
    HeadTimeout,
}

/// The answer to a request head that did not arrive in time (hyper's own, when it kept the timer).
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

type Http1Service = Box<
    dyn Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
            Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>,
        > + Send
        + Sync,
>;

/// Serves an HTTP/1.1 connection until it is closed: requests while active, parked while idle,
/// and the tunnel after an upgrade.
pub(crate) async fn serve(
    mut io: ClientIo,
    conn: Arc<ClientConn>,
    builder: &http1::Builder,
    mut stop: watch::Receiver<bool>,
) {
    // Made once per connection: each hyper connection hands it back in its parts.
    let mut service: Http1Service = {
        let conn = conn.clone();
        // Boxed: parking polls the connection with `poll_without_shutdown`, which needs an
        // `Unpin` request future.
        Box::new(service_fn(move |req| {
            let future: Pin<Box<dyn Future<Output = _> + Send>> =
                Box::pin(handle(conn.clone(), req));
            future
        }))
    };
    loop {
        let finished_before = conn.finished.load(Ordering::Relaxed);
        // Boxed, so that a parked connection's task does not keep room for it.
        let hyper_conn = Box::new(builder.serve_connection(TokioIo::new(io), service));
        let (result, parts) = run_hyper(hyper_conn, &conn, &mut stop, finished_before).await;
        io = parts.io.into_inner();
        service = parts.service;
        let end = match result {
            Ok(end) => end,
            Err(e) => {
                debug!(error = %e, "connection ended with an error");
                return close(io).await;
            }
        };
        // Bytes hyper read past the last message: the next request's start, or tunnel data.
        let read_ahead = parts.read_buf;

        if let Some(upstream) = conn.take_tunnel() {
            io.unread(read_ahead);
            let upstream_name = conn.proxy.reloadable().upstream.to_string();
            // Boxed: the copy's state is large, and only upgraded connections need it.
            Box::pin(tunnel(
                io,
                upstream,
                upstream_name,
                conn.proxy.fixed.timeouts.client_idle,
            ))
            .await;
            return;
        }
        // A client may send CRLF after a body; a server ignores empty lines before a request
        // (RFC 9112 §2.2), and keeping them would stop the connection from being parked again.
        // (Matched by value, so that a discarded buffer is dropped here, not kept while parked.)
        let read_ahead = match read_ahead {
            crlf if crlf.iter().all(|b| matches!(b, b'\r' | b'\n')) => Bytes::new(),
            bytes => bytes,
        };
        match end {
            End::Park if !read_ahead.is_empty() => io.unread(read_ahead),
            End::Park => {
                // Nothing of a next request is here: no header-read timeout runs while parked.
                conn.no_head();
                trace!("connection parked");
                match wait_parked(&mut io, &conn, &mut stop).await {
                    Some(first) => io.unread(first),
                    None => return close(io).await,
                }
            }
            // After `Connection: close`, the client closing, or the end the proxy asked for.
            // (hyper has usually closed the TLS stream already; closing again is harmless.)
            End::Finished | End::Close => return close(io).await,
            End::HeadTimeout => {
                // Nothing of an earlier response is left to write (a client that does not read
                // gets no answer): the `408` goes straight to the stream.
                if !conn.unflushed.load(Ordering::Relaxed) {
                    let _ =
                        tokio::time::timeout(CLOSE_TIMEOUT, io.write_all(REQUEST_TIMEOUT)).await;
                }
                return close(io).await;
            }
        }
    }
}

/// Polls a hyper connection until it ends, asking it to end (without closing the socket) when it
/// is parkable, idle past the client idle timeout, or the server stops.
async fn run_hyper(
    mut hyper_conn: Box<http1::Connection<TokioIo<ClientIo>, Http1Service>>,
    conn: &ClientConn,
    stop: &mut watch::Receiver<bool>,
    finished_before: u64,
) -> (
    Result<End, hyper::Error>,
    http1::Parts<TokioIo<ClientIo>, Http1Service>,
) {
    let timeouts = conn.proxy.fixed.timeouts;
    let mut end = None;
    if *stop.borrow() {
        end = Some(End::Close);
        Pin::new(&mut *hyper_conn).graceful_shutdown();
    }
    let stopped = stop.changed();
    tokio::pin!(stopped);
    // One timer per connection, not one reset per request: it ticks at least every quarter
    // second while a request is in flight or the connection may soon be parked (`near`), and
    // looks at the connection's deadlines each time it fires (see `ClientConn::next_check`).
    let (first_check, mut near) = conn.next_check(&timeouts);
    let idle_check = tokio::time::sleep_until(first_check);
    tokio::pin!(idle_check);
    let mut seen = (conn.requests_started(), conn.head_started());
    // Whether a deadline already ended the connection (and was counted).
    let mut timed_out = false;
    let count_timeout = |end: End| {
        conn.proxy
            .metrics
            .client_timeout(if end == End::HeadTimeout {
                ClientTimeout::HeaderRead
            } else {
                ClientTimeout::Idle
            });
    };
    let result = poll_fn(|cx| loop {
        let polled = if end == Some(End::Park) {
            // Only when parking: `poll_without_shutdown` keeps the socket open, but it also skips
            // flushing what hyper still buffers for a connection that ends after `Connection:
            // close`, which `poll` does before closing. (Both stop without closing at an upgrade.)
            hyper_conn.poll_without_shutdown(cx)
        } else {
            Pin::new(&mut *hyper_conn).poll(cx)
        };
        if let Poll::Ready(result) = polled {
            return Poll::Ready(result.map(|()| end.unwrap_or(End::Finished)));
        }
        // hyper waits for the client, the upstream or the socket. A timer set far off (an idle
        // spell) is brought near when a request starts (to find the connection idle soon after
        // the request ends) or a request head starts to come (its deadline), ending or not.
        if !near {
            let now_seen = (conn.requests_started(), conn.head_started());
            if now_seen != seen {
                seen = now_seen;
                let (at, is_near) = conn.next_check(&timeouts);
                if at < idle_check.deadline() {
                    idle_check.as_mut().reset(at);
                    near = is_near;
                }
            }
        }
        if end.is_some() {
            // Ending: hyper finishes the exchange in progress, if any. One that a client stalls
            // with nothing in flight (an upload nobody reads any more, a request head that does
            // not complete) is cut at its idle or header-read deadline.
            if idle_check.as_mut().poll(cx).is_ready() {
                if let Some(expired) = expired(conn, &timeouts) {
                    if !timed_out {
                        count_timeout(expired);
                    }
                    return Poll::Ready(Ok(expired));
                }
                let (at, is_near) = conn.next_check(&timeouts);
                idle_check.as_mut().reset(at);
                near = is_near;
                continue;
            }
            return Poll::Pending;
        }
        // A closed channel means the server is gone: stop as well.
        if stopped.as_mut().poll(cx).is_ready() {
            end = Some(End::Close);
        } else if idle_check.as_mut().poll(cx).is_ready() {
            // (Parkable is looked at only here: the timer fires when the connection may be.)
            if conn.parkable(finished_before, &timeouts) {
                end = Some(End::Park);
            } else {
                match expired(conn, &timeouts) {
                    // hyper waits for the rest of the head (asked to end, it would go on
                    // waiting for a first request): it is left at once. No request is in
                    // flight, so it holds nothing to write but what `unflushed` tells of.
                    Some(End::HeadTimeout) => {
                        count_timeout(End::HeadTimeout);
                        return Poll::Ready(Ok(End::HeadTimeout));
                    }
                    Some(expired) => {
                        count_timeout(expired);
                        timed_out = true;
                        end = Some(End::Close);
                    }
                    None => {
                        let (at, is_near) = conn.next_check(&timeouts);
                        idle_check.as_mut().reset(at);
                        near = is_near;
                        // Polls the timer again, at its new deadline.
                        continue;
                    }
                }
            }
        } else {
            return Poll::Pending;
        }
        // An idle connection ends at once (a partly read request head comes back in the parts);
        // one with an exchange in progress finishes it first, with keep-alive off.
        Pin::new(&mut *hyper_conn).graceful_shutdown();
        let (at, is_near) = conn.next_check(&timeouts);
        idle_check.as_mut().reset(at);
        near = is_near;
    })
    .await;
    (result, hyper_conn.into_parts())
}

/// How the connection ends if its idle or header-read deadline has passed.
fn expired(conn: &ClientConn, timeouts: &Timeouts) -> Option<End> {
    if conn.idle_deadline(timeouts)? > Instant::now() {
        return None;
    }
    if conn.head_started() {
        debug!(
            phase = "header_read",
            "closing a connection whose request head did not arrive in time"
        );
        Some(End::HeadTimeout)
    } else {
        debug!(phase = "client_idle", "closing idle connection");
        Some(End::Close)
    }
}

/// Waits on a parked connection for the client's next bytes; `None` when it closed, the client
/// idle timeout passed, or the server stops.
async fn wait_parked(
    io: &mut ClientIo,
    conn: &ClientConn,
    stop: &mut watch::Receiver<bool>,
) -> Option<Bytes> {
    let timeouts = conn.proxy.fixed.timeouts;
    let deadline = conn
        .idle_deadline(&timeouts)
        .unwrap_or_else(|| Instant::now() + timeouts.client_idle);
    if *stop.borrow() {
        return None;
    }
    let mut first = BytesMut::with_capacity(PARKED_READ);
    tokio::select! {
        read = io.read_buf(&mut first) => match read {
            Ok(0) => None,
            Ok(_) => Some(first.freeze()),
            Err(e) => {
                debug!(error = %e, "parked connection failed");
                None
            }
        },
        _ = stop.changed() => None,
        () = tokio::time::sleep_until(deadline) => {
            debug!(phase = "client_idle", "closing idle connection");
            conn.proxy.metrics.client_timeout(ClientTimeout::Idle);
            None
        }
    }
}

/// Closes the client connection: TLS `close_notify`, then the TCP FIN, within [`CLOSE_TIMEOUT`].
async fn close(mut io: ClientIo) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
}
