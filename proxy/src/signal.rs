//! Process signals: SIGTERM/SIGINT start the graceful shutdown, SIGHUP reloads the configuration
//! and certificates. Handlers are installed before the listener serves, so a signal is never
//! handled by the default action (which, as PID 1 in a container, would be to ignore it).

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info};

use crate::server::Proxy;

/// Installs the SIGTERM and SIGINT handlers; the returned future resolves on the first of them.
pub fn shutdown() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutdown requested");
    })
}

/// Installs the SIGHUP handler; signals that arrive before [`reload_on_sighup`] takes the stream
/// are kept, not lost.
pub fn hangups() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

/// Each SIGHUP from `hup` re-reads the env file and the process environment (with the original
/// command line, whose flags still win) and reloads through [`Proxy::reload`]. An invalid
/// configuration is logged and the old one keeps serving.
pub fn reload_on_sighup(mut hup: Signal, proxy: Arc<Proxy>, argv: Vec<OsString>) {
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!(
                signal = "SIGHUP",
                "reloading configuration and certificates"
            );
            if let Err(e) = proxy.reload(&argv, &process_env()) {
                error!(error = %e, "reload rejected; the previous configuration keeps serving");
            }
        }
    });
}

/// The process environment as UTF-8 pairs (others cannot be settings and are skipped).
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}
