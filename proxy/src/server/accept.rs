//! Accepting TCP connections: the one accept loop step both listeners use.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// How long to wait after a failed accept before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection on `listener`. A failed accept (EMFILE and friends: out of descriptors) is
/// logged with the listener's name and retried after [`ACCEPT_BACKOFF`] instead of spinning.
pub(super) async fn accept(listener: &TcpListener, name: &'static str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
