//! TLS-terminating reverse-proxy sidecar with a CORS policy engine.
//!
//! # A request's way through the modules
//! 1. [`server::run`] accepts a TCP connection (waiting for a slot under `PROXY_MAX_CONNECTIONS`),
//!    completes the TLS handshake within the handshake timeout with the certificate the
//!    [`tls::CertStore`] holds at that moment (with `PROXY_CLIENT_CA`, verifying the client's
//!    certificate too: [`client_auth`]), and serves the protocol ALPN agreed on: HTTP/2 with
//!    hyper's connection, HTTP/1.1 (also without ALPN) with hyper's connection parked while idle.
//!    One client connection's deadlines (header read, idle) are kept on one timer per connection.
//! 2. Each request goes to the server's handler, which reads the reloadable settings (upstream and
//!    CORS policy, swapped atomically on reload, [`server::state`]) without a lock.
//! 3. [`forward::admit()`] refuses what is never forwarded (a missing, repeated or contradicting
//!    `Host`, `CONNECT`/`TRACE`, unknown transfer codings, a declared body over the limit); then
//!    [`cors::evaluate`] decides, with no I/O: answer now (preflight, refusal) or forward with
//!    CORS headers to add to the response.
//! 4. [`forward::forward`] prepares the head for the upstream ([`forward::headers`]: hop-by-hop
//!    fields stripped, `X-Forwarded-*`, `Forwarded`, `Via` set, and `X-Forwarded-Client-Cert`
//!    replaced by the verified client certificate's) and sends it on a pooled upstream
//!    connection ([`upstream`]), streaming the body, within the upstream response timeout; a stale
//!    pooled connection is retried once for idempotent requests; an accepted upgrade becomes a
//!    tunnel ([`forward::tunnel`]).
//! 5. The response streams back with hop-by-hop headers stripped, the CORS headers and HSTS added;
//!    failures become 502/504 in [`error`], the one place errors map to statuses; one access-log
//!    line is written when the body ends.
//!
//! # Around the request path
//! [`cli`] reads flags, environment and `.env` ([`envfile`] reads the file and spots misspelt
//! keys); [`config`] validates them into settings; [`build`] assembles a proxy from them (used by
//! the binary and by the tests), serving the configured certificate or, with none, a development
//! certificate from the local CA ([`cmd::localca`]); [`acme`] obtains and renews the certificate
//! from an ACME CA when domains are configured, and answers the CA's challenges; [`fdlimit`]
//! raises the open-files limit at start; [`signal`] turns
//! SIGTERM/SIGINT into the graceful drain and SIGHUP into a reload; [`cmd`] holds the helper
//! subcommands (`proxy cert`, `proxy cert --trust`, `proxy healthcheck`, `proxy admin-get`).
//! [`metrics`] holds the counters every step above adds to, which the optional admin listener
//! ([`server::admin`]) serves with liveness and readiness.
//!
//! # Conventions
//! No `unwrap` or `expect` is reachable from a request. A poisoned lock is used as it is
//! (`PoisonError::into_inner`): every critical section leaves its data consistent at each step,
//! so a panic in another request cannot make it unusable, and one panicking request must not
//! take the others down.

pub mod acme;
pub mod cli;
pub mod client_auth;
pub mod cmd;
pub mod config;
pub mod cors;
pub mod envfile;
pub mod error;
pub mod fdlimit;
pub mod forward;
pub mod metrics;
pub mod server;
pub mod signal;
pub mod tls;
pub mod upstream;
mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::acme::Acme;
use crate::cli::Cli;
use crate::client_auth::ClientVerifier;
use crate::cmd::{devcert, localca};
use crate::config::{FixedSettings, Settings};
use crate::error::StartError;
use crate::server::Proxy;
use crate::tls::CertStore;

/// A proxy assembled from its command line, ready to serve.
pub struct Assembled {
    /// The state every connection shares; [`Proxy::reload`] swaps its reloadable settings.
    pub proxy: Arc<Proxy>,
    /// The certificate and key in use, reloaded on SIGHUP and when the files change.
    pub certs: Arc<CertStore>,
    /// The client-certificate verifier, with mutual TLS on; reloaded like the certificate.
    pub client_ca: Option<Arc<ClientVerifier>>,
    /// CORS settings that are valid but probably not what was meant, to be logged.
    pub warnings: Vec<String>,
    /// The bound admin listener, served beside the proxy when set ([`Assembled::with_admin`]).
    pub admin: Option<TcpListener>,
    /// Set when no certificate is configured and the proxy serves its development certificate.
    pub development: Option<DevelopmentCert>,
    /// Set when the certificate comes from an ACME CA ([`acme`]); its task starts in `serve`.
    pub acme: Option<Arc<Acme>>,
}

/// The development certificate in use.
#[derive(Debug, Clone)]
pub struct DevelopmentCert {
    /// The local CA that issued it: what a browser must trust.
    pub ca: PathBuf,
    /// It was issued at this start (first use, or the last one was near its end).
    pub issued: bool,
}

/// Assembles the proxy: validates the settings, builds the CORS policy, loads the certificate
/// pair. Binds nothing and starts nothing, so a configuration error stops start-up before any
/// port is bound.
pub fn build(cli: &Cli) -> Result<Assembled, StartError> {
    let (settings, warnings) = Settings::from_args(&cli.proxy, &cli.cors)?;
    let (certs, development, acme) = match &settings.fixed.acme {
        Some(acme_settings) => {
            let base = match &acme_settings.dir {
                Some(dir) => dir.clone(),
                None => localca::process_data_dir(settings.fixed.data_dir.as_deref())?
                    .join(acme::settings::DATA_SUBDIR),
            };
            let (acme, certs) = Acme::prepare(acme_settings.clone(), &base)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            (certs, None, Some(acme))
        }
        None => {
            let (cert_path, key_path, development) = certificate_files(&settings.fixed)?;
            let certs = CertStore::load_with_password(
                &cert_path,
                &key_path,
                settings.fixed.tls_key_password_file.clone(),
            )
            .map_err(|e| StartError::Tls(e.to_string()))?;
            (certs, development, None)
        }
    };
    let client_ca = match &settings.fixed.client_auth {
        Some(client_auth) => {
            Some(ClientVerifier::load(client_auth).map_err(|e| StartError::Tls(e.to_string()))?)
        }
        None => None,
    };
    let tls_config = tls::server_config_verifying_clients(
        certs.clone(),
        client_ca.clone().map(|v| v as Arc<dyn ClientCertVerifier>),
    );
    let (reload_certs, reload_client_ca) = (certs.clone(), client_ca.clone());
    let proxy = Proxy::new(settings, tls_config).with_cert_reloader(Box::new(move || {
        // Both are tried, so a bad one of the two does not keep the other from reloading. An
        // ACME store with no certificate yet has no files to load; its task fills it.
        let certs = match reload_certs.info() {
            Some(_) => reload_certs.reload_logged("reload").map(|_| ()),
            None => Ok(()),
        };
        let client_ca = match &reload_client_ca {
            Some(verifier) => verifier.reload_logged("reload"),
            None => Ok(()),
        };
        certs?;
        client_ca.map_err(Into::into)
    }));
    let proxy = Arc::new(proxy);
    certs.report_to(proxy.metrics().clone());
    Ok(Assembled {
        proxy,
        certs,
        client_ca,
        warnings,
        development,
        admin: None,
        acme,
    })
}

/// The certificate files to serve: the configured ones; else `cert/cert.pem` and `cert/key.pem`
/// if either exists (a missing other one is then the error to report); else the development
/// certificate in the data directory, issued from the local CA when missing or nearly expired.
fn certificate_files(
    fixed: &FixedSettings,
) -> Result<(PathBuf, PathBuf, Option<DevelopmentCert>), StartError> {
    if let Some((cert, key)) = &fixed.tls_files {
        return Ok((cert.clone(), key.clone(), None));
    }
    let (cert, key) = (
        PathBuf::from(cli::DEFAULT_TLS_CERT),
        PathBuf::from(cli::DEFAULT_TLS_KEY),
    );
    if cert.exists() || key.exists() {
        return Ok((cert, key, None));
    }
    let data_dir = localca::process_data_dir(fixed.data_dir.as_deref())?;
    let (cert, key, issued) = devcert::default_pair(&data_dir)?;
    let ca = data_dir.join(localca::CA_CERT_FILE);
    Ok((cert, key, Some(DevelopmentCert { ca, issued })))
}
impl Assembled {
    /// Serves the admin endpoints (health, readiness, metrics) on `listener` as well, from the
    /// start until the drain has ended.
    pub fn with_admin(mut self, listener: TcpListener) -> Assembled {
        self.admin = Some(listener);
        self
    }

    /// Serves HTTPS on `listener` (and redirects plain HTTP on `redirect`, if given) until
    /// `shutdown` resolves, then drains. Logs the configuration and the certificate first, and
    /// watches the certificate files while serving.
    pub async fn serve(
        self,
        listener: TcpListener,
        redirect: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let Assembled {
            proxy,
            certs,
            client_ca,
            warnings,
            development,
            admin,
            acme,
        } = self;
        if let Some(dev) = &development {
            warn!(
                cert = %certs.cert_path().display(),
                ca = %dev.ca.display(),
                issued_now = dev.issued,
                "no certificate configured (--tls-cert/TLS_CERT_FILE): serving the development \
                 certificate from the local CA; `proxy cert --trust` makes browsers trust it"
            );
        }
        for warning in warnings {
            warn!(%warning, "CORS configuration");
        }
        let fixed = proxy.fixed().clone();
        let reloadable = proxy.reloadable();
        info!(
            upstream = %reloadable.upstream,
            timeouts = %fixed.timeouts,
            limits = %fixed.limits,
            rules = %fixed.rules,
            trusted_proxies = %config::format_cidrs(&fixed.trusted_proxies),
            cors = %reloadable.cors,
            hsts = fixed.hsts.is_some(),
            "configuration"
        );
        if let Some(info) = certs.info() {
            info.log("startup");
        }
        certs.clone().watch(fixed.timeouts.cert_watch_interval);
        // Started after the listener is bound (by the caller), so a TLS-ALPN-01 validation
        // finds the port open; aborted when serving ends.
        let acme_task = acme.as_ref().map(|acme| {
            let settings = acme.settings();
            info!(
                domains = %settings.domains.join(","),
                directory = %settings.directory,
                challenge = settings.challenge.as_str(),
                dir = %acme.files().dir().display(),
                "acme certificates"
            );
            Arc::clone(acme).spawn(certs.clone())
        });
        let http01 = acme.as_ref().and_then(|acme| acme.http01());
        if let Some(client_ca) = client_ca {
            client_ca.log("startup");
            client_ca.watch(fixed.timeouts.cert_watch_interval);
        }

        let (stop_redirect, redirect_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(redirect) = redirect {
            // The public HTTPS port if set, else the bound one (which differs from the setting
            // when that asks for port 0).
            let port = fixed.redirect_https_port.unwrap_or_else(|| {
                listener
                    .local_addr()
                    .map_or(fixed.listen.port(), |a| a.port())
            });
            tokio::spawn(server::serve_redirect(
                redirect,
                port,
                fixed.timeouts.header_read,
                http01,
                async move {
                    let _ = redirect_stopped.await;
                },
            ));
        }
        // The admin listener outlives the drain: readiness answers 503 until the end.
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(admin) = admin {
            tokio::spawn(server::serve_admin(admin, proxy.clone(), async move {
                let _ = admin_stopped.await;
            }));
        }
        let result = server::run(listener, proxy, shutdown).await;
        if let Some(task) = acme_task {
            task.abort();
        }
        let _ = stop_redirect.send(());
        let _ = stop_admin.send(());
        result
    }
}
