//! Upgraded connections: after a `101`, bytes are copied both ways between the client and the
//! upstream until either side closes or the tunnel is idle for the client idle timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::{debug, warn};

/// Copies bytes both ways between an upgraded client connection and the upstream's, until either
/// side closes or no byte has moved either way for `idle` (the client idle timeout: a tunnel is a
/// client connection too).
pub async fn tunnel<C>(client: C, upstream: OnUpgrade, upstream_name: String, idle: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = match upstream.await {
        Ok(upstream) => upstream,
        Err(e) => {
            warn!(upstream = %upstream_name, error = %e, "upgrade failed");
            return;
        }
    };
    let opened = Instant::now();
    let last_activity_ms = Arc::new(AtomicU64::new(0));
    let mut client = Activity::new(client, opened, &last_activity_ms);
    let mut upstream = Activity::new(TokioIo::new(upstream), opened, &last_activity_ms);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let last = opened + Duration::from_millis(last_activity_ms.load(Ordering::Relaxed));
        tokio::select! {
            result = &mut copy => {
                match result {
                    Ok((to_upstream, to_client)) => {
                        debug!(upstream = %upstream_name, to_upstream, to_client, "upgraded connection closed")
                    }
                    Err(e) => debug!(upstream = %upstream_name, error = %e, "upgraded connection failed"),
                }
                return;
            }
            // Woken at the deadline; traffic since then moves the deadline on.
            _ = tokio::time::sleep_until(last + idle) => {
                let last = opened + Duration::from_millis(last_activity_ms.load(Ordering::Relaxed));
                if Instant::now() >= last + idle {
                    debug!(upstream = %upstream_name, phase = "tunnel_idle", timeout = ?idle, "idle upgraded connection closed");
                    return;
                }
            }
        }
    }
}

/// An I/O object that records when it last read any bytes, for the tunnel's idle timeout.
struct Activity<T> {
    inner: T,
    opened: Instant,
    last_ms: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn new(inner: T, opened: Instant, last_ms: &Arc<AtomicU64>) -> Self {
        Activity {
            inner,
            opened,
            last_ms: last_ms.clone(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = self.opened.elapsed().as_millis() as u64;
            self.last_ms.store(ms, Ordering::Relaxed);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
