//! Certificates from an ACME CA (RFC 8555), e.g. Let's Encrypt: obtained and renewed by the proxy.
//!
//! At start-up [`Acme::prepare`] loads the stored pair into the [`CertStore`] (an empty store
//! when there is none: handshakes fail until the first certificate is issued). While the proxy
//! serves, one background task (`renew`) orders a certificate when none covers the names, and
//! renews two thirds into its lifetime: it answers the CA's challenge (TLS-ALPN-01 through the
//! store's resolver on the HTTPS port, or HTTP-01 through [`challenge::Http01Tokens`] on the
//! plain-HTTP listener), writes the new pair ([`store`]) and reloads the store, which swaps it in
//! for new handshakes while open connections keep theirs. A failure leaves the current pair
//! serving and is retried with capped exponential backoff, never sooner than the CA's
//! `Retry-After`. The protocol itself is instant-acme's ([`client`]).

pub mod challenge;
pub mod client;
mod renew;
pub mod settings;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{watch, Notify};
use tracing::{info, warn};

pub use settings::{AcmeSettings, Challenge};

use crate::error::DevCertError;
use crate::tls::{CertStore, TlsError};
use challenge::Http01Tokens;
use store::AcmeFiles;

/// Why a certificate could not be obtained or stored. Each says what failed and what to check.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME storage: {0}: check PROXY_ACME_DIR and that the proxy's user may write it")]
    Storage(#[source] DevCertError),
    #[error("cannot read the ACME account {path}: {source}: check its permissions")]
    ReadAccount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the ACME account file {path} is not usable ({detail}): move it away to register a new \
         account"
    )]
    BadAccount { path: PathBuf, detail: String },
    #[error(
        "PROXY_ACME_CA_ROOT {path}: {detail}: point it at the PEM root certificate of the ACME \
         server's HTTPS"
    )]
    CaRoot { path: PathBuf, detail: String },
    #[error("ACME HTTPS client: {0}")]
    Client(String),
    #[error(
        "the CA failed to {step}: {source} (check PROXY_ACME_DIRECTORY, the network, and that \
         the domains point at this host)"
    )]
    Ca {
        step: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    #[error(
        "the CA offers no {challenge} challenge for a domain: set PROXY_ACME_CHALLENGE to the \
         other type"
    )]
    NoChallenge { challenge: &'static str },
    #[error(
        "the order ended {status}: {detail} (check that the domains resolve to this host and \
         the challenge port is reachable from the internet)"
    )]
    OrderFailed { status: String, detail: String },
    #[error("cannot make the TLS-ALPN-01 certificate for {name}: {detail}")]
    ChallengeCertificate { name: String, detail: String },
    #[error("cannot make the certificate request: {0}")]
    Csr(String),
    #[error("the issued certificate is not usable: {0}")]
    Install(#[source] TlsError),
}

/// What the ACME task has done so far: for the logs' readers and for tests to wait on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcmeStatus {
    /// Certificates issued and swapped in since start.
    pub issued: u64,
    /// Attempts that failed since start.
    pub failed: u64,
    /// Why the latest attempt failed, until one succeeds.
    pub last_error: Option<String>,
}

/// The ACME side of one proxy: its settings and files, the state shared with the listeners, and
/// the handles to steer and watch the renewal task.
pub struct Acme {
    settings: AcmeSettings,
    files: AcmeFiles,
    http01: Arc<Http01Tokens>,
    renew_now: Notify,
    status: watch::Sender<AcmeStatus>,
    /// The CA's latest `Retry-After`, noted by the HTTP client (kept across reconnects).
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl Acme {
    /// Makes the storage directory under `dir` (`PROXY_ACME_DIR`, else `<data dir>/acme`) and the
    /// certificate store, serving the stored pair when there is a usable one.
    pub fn prepare(
        settings: AcmeSettings,
        dir: &Path,
    ) -> Result<(Arc<Acme>, Arc<CertStore>), AcmeError> {
        let files = AcmeFiles::new(dir, &settings.directory);
        files.create()?;
        let certs = CertStore::awaiting(
            files.cert_path(),
            files.key_path(),
            settings.challenge == Challenge::TlsAlpn01,
        );
        match certs.reload() {
            Ok(info) => info!(
                dir = %files.dir().display(),
                not_after = %info.not_after_rfc3339(),
                "acme: stored certificate loaded"
            ),
            Err(TlsError::CertMissing { .. } | TlsError::KeyMissing { .. }) => {}
            Err(e) => warn!(
                error = %e,
                "acme: the stored certificate is not usable; a new one will be ordered"
            ),
        }
        let acme = Acme {
            settings,
            files,
            http01: Arc::default(),
            renew_now: Notify::new(),
            status: watch::Sender::new(AcmeStatus::default()),
            retry_after: Arc::default(),
        };
        Ok((Arc::new(acme), certs))
    }

    /// The settings in use.
    pub fn settings(&self) -> &AcmeSettings {
        &self.settings
    }

    /// Where the account and the pair are kept.
    pub fn files(&self) -> &AcmeFiles {
        &self.files
    }

    /// The HTTP-01 answers for the plain-HTTP listener, when that is the challenge.
    pub fn http01(&self) -> Option<Arc<Http01Tokens>> {
        (self.settings.challenge == Challenge::Http01).then(|| Arc::clone(&self.http01))
    }

    /// Orders a new certificate now, whatever the current one's expiry (also cuts a retry
    /// backoff short).
    pub fn renew_now(&self) {
        self.renew_now.notify_one();
    }

    /// Follows what the renewal task has done.
    pub fn status(&self) -> watch::Receiver<AcmeStatus> {
        self.status.subscribe()
    }

    /// Starts the background task that obtains and renews the certificate in `certs`. It runs
    /// until aborted.
    pub fn spawn(self: Arc<Self>, certs: Arc<CertStore>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(renew::run(self, certs))
    }
}
