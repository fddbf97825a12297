//! What every client connection shares: the settings fixed at start-up, the reloadable ones
//! (upstream and CORS policy, swapped atomically together), the upstream pool and the TLS
//! configuration; and the reload that swaps them.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::cli;
use crate::config::{FixedSettings, ReloadableSettings, Settings};
use crate::error::ReloadError;
use crate::metrics::{Metrics, Reload};
use crate::upstream::Pool;

/// Reloads the TLS material (the certificate store's reload, wired by [`crate::build`]); on error
/// the old pair must keep serving.
pub type CertReloader =
    Box<dyn Fn() -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// Everything the server shares between connections. Requests read the reloadable settings
/// through an `ArcSwap` (no lock on the request path).
pub struct Proxy {
    pub(crate) fixed: FixedSettings,
    reloadable: ArcSwap<ReloadableSettings>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) tls: Arc<rustls::ServerConfig>,
    cert_reloader: Option<CertReloader>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set when the graceful drain starts: readiness turns false so load balancers stop sending.
    draining: AtomicBool,
}

impl Proxy {
    /// Builds the shared state. `tls` should resolve certificates through the reloadable store.
    pub fn new(settings: Settings, tls: Arc<rustls::ServerConfig>) -> Proxy {
        let fixed = settings.fixed;
        let metrics = Arc::new(Metrics::new());
        let pool = Pool::new(&fixed.timeouts, &fixed.limits, metrics.clone());
        Proxy {
            fixed,
            reloadable: ArcSwap::from_pointee(settings.reloadable),
            pool,
            tls,
            cert_reloader: None,
            metrics,
            draining: AtomicBool::new(false),
        }
    }

    /// Sets what a reload calls to reload the certificates.
    pub fn with_cert_reloader(mut self, reloader: CertReloader) -> Proxy {
        self.cert_reloader = Some(reloader);
        self
    }

    /// The settings that need a restart to change.
    pub fn fixed(&self) -> &FixedSettings {
        &self.fixed
    }

    /// The counters every part of the proxy adds to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether the graceful drain has started.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the start of the graceful drain.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The upstream pool's idle connections now.
    pub fn upstream_idle(&self) -> usize {
        self.pool.idle_len()
    }

    /// The upstream and CORS policy in effect now.
    pub fn reloadable(&self) -> Arc<ReloadableSettings> {
        self.reloadable.load_full()
    }

    /// The reloadable settings without taking a reference count (the request path's read).
    pub(crate) fn reloadable_guard(&self) -> arc_swap::Guard<Arc<ReloadableSettings>> {
        self.reloadable.load()
    }

    /// Reads the configuration again from the same sources (`argv`, the env file, `env`),
    /// validates all of it, reloads the certificates, and only then swaps upstream and CORS
    /// policy together. Any failure leaves everything as it was.
    ///
    /// Listen addresses, timeouts, limits and certificate paths need a restart; a change to
    /// them is logged and ignored.
    pub fn reload(
        &self,
        argv: &[OsString],
        env: &HashMap<String, String>,
    ) -> Result<(), ReloadError> {
        let result = self.reload_settings(argv, env);
        self.metrics.reload(Reload::Config, result.is_ok());
        result
    }

    fn reload_settings(
        &self,
        argv: &[OsString],
        env: &HashMap<String, String>,
    ) -> Result<(), ReloadError> {
        let (cli, provenance) = cli::parse_traced(argv, env)?;
        let (settings, warnings) = Settings::from_args(&cli.proxy, &cli.cors)?;
        if let Some(reload_certs) = &self.cert_reloader {
            reload_certs().map_err(ReloadError::Tls)?;
        }
        for warning in warnings {
            warn!(%warning, "CORS configuration");
        }
        for warning in provenance.warnings {
            warn!(%warning, "env file");
        }
        if settings.fixed != self.fixed {
            warn!("only the upstream, the CORS policy and the certificates reload; other changed settings need a restart");
        }
        let reloadable = settings.reloadable;
        info!(upstream = %reloadable.upstream, cors = %reloadable.cors, "configuration reloaded");
        self.reloadable.store(Arc::new(reloadable));
        Ok(())
    }
}
