//! TLS material: the served pair ([`CertStore`]; its files are read in `files`, described for the
//! logs in `info`), the rustls server config, and hot reload (SIGHUP via
//! [`CertStore::reload_logged`], file changes via [`CertStore::watch`]).
//!
//! Every handshake asks [`CertStore`] (a rustls `ResolvesServerCert`) for the pair in use, which sits
//! behind an `ArcSwap`: a reload loads and checks the new pair completely, then swaps one pointer, so
//! a broken or half-written pair never replaces a good one and connections already open keep theirs.
//!
//! With ACME the store may start empty (handshakes fail until the first certificate is issued
//! and loaded) and also answers the TLS-ALPN-01 challenge handshakes (RFC 8737) that the ACME
//! task installs ([`CertStore::set_tls_alpn_challenge`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tracing::{error, warn};

mod files;
mod info;

pub use crate::error::TlsError;
pub(crate) use info::{civil_from_days, rfc3339};
pub use info::{spki_sha256_base64, CertInfo, EXPIRY_WARNING};

use crate::metrics::{Metrics, Reload};
use crate::watch::{self, FileFingerprint, Watched};
use files::{read_chain, read_key};
use info::describe;

/// TLS 1.2 session ids remembered for resumption by clients that do not take tickets. An entry is a
/// few hundred bytes and the cache fills only as clients connect, so idle memory is unaffected.
pub const TLS12_SESSION_CACHE_ENTRIES: usize = 4096;

/// TLS 1.3 tickets sent after each full handshake. rustls defaults to 2 (so a client can open two
/// resumed connections at once); one halves the ticket-sealing work per handshake, and each resumed
/// connection receives a fresh ticket anyway.
pub const TLS13_TICKETS_PER_HANDSHAKE: usize = 1;

/// ALPN protocols offered to clients, in order of preference.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The ALPN protocol of ACME TLS-ALPN-01 validation handshakes (RFC 8737 §6.2). A connection that
/// negotiated it is closed right after the handshake, never served.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The pair in use: what handshakes get, and what the logs describe.
struct Loaded {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    /// The files' state just before they were read: the watcher's "nothing new" baseline.
    fingerprint: PairFingerprint,
}

/// The certificate/key pair in use, swappable while the server runs.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    /// The file holding the key's password, for an encrypted key; read again at each reload.
    key_password_file: Option<PathBuf>,
    provider: Arc<CryptoProvider>,
    /// `None` until a pair has loaded (an ACME certificate not yet issued).
    current: ArcSwapOption<Loaded>,
    /// TLS-ALPN-01 challenge certificates by server name; `None` when ACME's TLS-ALPN-01 is off.
    tls_alpn_challenges: Option<ArcSwap<HashMap<String, Arc<CertifiedKey>>>>,
    /// Where reloads and the served certificate's expiry are reported, once set.
    metrics: OnceLock<Arc<Metrics>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("info", &self.info())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair and checks that the key matches the certificate (start-up: an error is fatal).
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Arc<CertStore>, TlsError> {
        CertStore::load_with_password(cert_path, key_path, None)
    }

    /// [`CertStore::load`] for a key that may be encrypted (PKCS#8 `ENCRYPTED PRIVATE KEY`), its
    /// password the first line of `key_password_file`.
    pub fn load_with_password(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
        key_password_file: Option<PathBuf>,
    ) -> Result<Arc<CertStore>, TlsError> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let loaded = load_pair(
            &cert_path,
            &key_path,
            key_password_file.as_deref(),
            &provider,
        )?;
        Ok(Arc::new(CertStore {
            cert_path,
            key_path,
            key_password_file,
            provider,
            current: ArcSwapOption::from_pointee(loaded),
            tls_alpn_challenges: None,
            metrics: OnceLock::new(),
        }))
    }

    /// A store for a pair that may not exist yet (ACME): serves nothing until [`Self::reload`]
    /// succeeds. With `tls_alpn_01`, it also answers TLS-ALPN-01 challenge handshakes.
    pub fn awaiting(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
        tls_alpn_01: bool,
    ) -> Arc<CertStore> {
        Arc::new(CertStore {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            // ACME keys are written unencrypted, 0600, by the proxy itself.
            key_password_file: None,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            current: ArcSwapOption::empty(),
            tls_alpn_challenges: tls_alpn_01.then(ArcSwap::default),
            metrics: OnceLock::new(),
        })
    }

    /// Answers TLS-ALPN-01 handshakes for `name` with `key` from now on (ignored when the store
    /// was not made for TLS-ALPN-01).
    pub fn set_tls_alpn_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        if let Some(challenges) = &self.tls_alpn_challenges {
            challenges.rcu(|map| {
                let mut map = HashMap::clone(map);
                map.insert(name.to_ascii_lowercase(), Arc::clone(&key));
                map
            });
        }
    }

    /// Stops answering TLS-ALPN-01 handshakes for `name`.
    pub fn clear_tls_alpn_challenge(&self, name: &str) {
        if let Some(challenges) = &self.tls_alpn_challenges {
            challenges.rcu(|map| {
                let mut map = HashMap::clone(map);
                map.remove(&name.to_ascii_lowercase());
                map
            });
        }
    }

    /// The crypto provider handshakes use (also for signing keys made outside the store).
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// Reports the certificate in use, and from now on every reload and its outcome, to
    /// `metrics` (a second call is ignored: one store serves one proxy).
    pub fn report_to(&self, metrics: Arc<Metrics>) {
        if let Some(info) = self.info() {
            metrics.certificate(info.not_after);
        }
        let _ = self.metrics.set(metrics);
    }

    /// Loads the files again and, only if the new pair is complete and consistent, serves it to new
    /// handshakes. On error the pair in use is unchanged. Does not log (see [`Self::reload_logged`]).
    pub fn reload(&self) -> Result<CertInfo, TlsError> {
        let loaded = load_pair(
            &self.cert_path,
            &self.key_path,
            self.key_password_file.as_deref(),
            &self.provider,
        )?;
        let info = loaded.info.clone();
        self.current.store(Some(Arc::new(loaded)));
        Ok(info)
    }

    /// [`Self::reload`], logging the new certificate or why it was rejected. For SIGHUP handlers.
    pub fn reload_logged(&self, trigger: &'static str) -> Result<CertInfo, TlsError> {
        let result = self.reload();
        if let Some(metrics) = self.metrics.get() {
            metrics.reload(Reload::Certificate, result.is_ok());
            if let Ok(info) = &result {
                metrics.certificate(info.not_after);
            }
        }
        match &result {
            Ok(info) => info.log(trigger),
            Err(e) => error!(
                trigger,
                cert = %self.cert_path.display(),
                key = %self.key_path.display(),
                error = %e,
                "tls reload rejected; the previous certificate keeps serving"
            ),
        }
        result
    }

    /// The certificate in use; `None` while there is none yet.
    pub fn info(&self) -> Option<CertInfo> {
        self.current
            .load()
            .as_ref()
            .map(|loaded| loaded.info.clone())
    }

    /// The certificate in use (the chain's first), DER; `None` while there is none yet.
    pub fn leaf_der(&self) -> Option<CertificateDer<'static>> {
        let current = self.current.load();
        current.as_ref()?.key.cert.first().cloned()
    }

    /// The certificate file's path.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The key file's path.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Spawns a task that checks the two files every `interval` (a `stat` each: size, mtime, ctime,
    /// inode, so an atomic rename or a Kubernetes symlink swap counts) and reloads once a change has
    /// settled. The task ends when the store is dropped. Needs a tokio runtime.
    pub fn watch(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        watch::spawn(&self, interval)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A validation handshake offers `acme-tls/1` alone (RFC 8737 §3); it gets the challenge
        // certificate for its server name, or no certificate (a failed handshake) when none is
        // pending. Any other handshake never sees a challenge certificate.
        if let Some(challenges) = &self.tls_alpn_challenges {
            let mut offered = client_hello.alpn().into_iter().flatten();
            if offered.next() == Some(ACME_TLS_ALPN) && offered.next().is_none() {
                let name = client_hello.server_name()?.to_ascii_lowercase();
                return challenges.load().get(&name).cloned();
            }
        }
        // One pair for every server name: the proxy fronts one site. None until one has loaded.
        let current = self.current.load();
        current.as_ref().map(|loaded| Arc::clone(&loaded.key))
    }
}

type PairFingerprint = (Option<FileFingerprint>, Option<FileFingerprint>);

fn fingerprint(cert_path: &Path, key_path: &Path) -> PairFingerprint {
    (
        FileFingerprint::of(cert_path),
        FileFingerprint::of(key_path),
    )
}

impl Watched for CertStore {
    type State = PairFingerprint;

    fn seen(&self) -> PairFingerprint {
        fingerprint(&self.cert_path, &self.key_path)
    }

    /// An empty store (no ACME certificate yet) counts as two missing files.
    fn in_use(&self) -> PairFingerprint {
        self.current
            .load()
            .as_ref()
            .map_or((None, None), |loaded| loaded.fingerprint)
    }

    fn reload_changed(&self) -> bool {
        self.reload_logged("file-change").is_ok()
    }
}

/// The rustls server config for the proxy's listener, resolving certificates through `store`.
///
/// TLS 1.2 and 1.3 with the aws-lc-rs provider's default (safe) suites and key-exchange groups;
/// ALPN `h2`, `http/1.1`; resumption on: stateless tickets (the provider's rotating `Ticketer`) for
/// both versions, and a server-side session-id cache for TLS 1.2 clients without ticket support.
/// No 0-RTT: early data can be replayed, and a proxy cannot know which requests are safe to replay.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    server_config_verifying_clients(store, None)
}

/// [`server_config`], asking clients for a certificate that `clients` verifies, when given
/// (mutual TLS: the `client_auth` module's verifier).
pub fn server_config_verifying_clients(
    store: Arc<CertStore>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
) -> Arc<ServerConfig> {
    let provider = Arc::clone(&store.provider);
    let tls_alpn_01 = store.tls_alpn_challenges.is_some();
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the aws-lc-rs default provider supports TLS 1.2 and 1.3");
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    // Last, so a client offering HTTP as well never negotiates it; the resolver gives the
    // challenge certificate only to handshakes offering it alone.
    if tls_alpn_01 {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    config.session_storage = ServerSessionMemoryCache::new(TLS12_SESSION_CACHE_ENTRIES);
    match rustls::crypto::aws_lc_rs::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        // Without tickets rustls resumes TLS 1.3 statefully through `session_storage` instead.
        Err(e) => {
            warn!(error = %e, "tls ticket keys unavailable; resuming through the session cache")
        }
    }
    config.send_tls13_tickets = TLS13_TICKETS_PER_HANDSHAKE;
    Arc::new(config)
}

/// Reads and checks a pair; nothing is swapped here.
fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    key_password_file: Option<&Path>,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    // Taken before reading: a write during the read leaves a newer state for the watcher to see.
    let fingerprint = fingerprint(cert_path, key_path);
    let chain = read_chain(cert_path)?;
    let info = describe(cert_path, &chain)?;
    let key = read_key(key_path, key_password_file)?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnsupportedKey {
                path: key_path.to_owned(),
                detail: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key type cannot report its public key, so there is nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            })
        }
        Err(e) => {
            return Err(TlsError::BadCertificate {
                path: cert_path.to_owned(),
                detail: e.to_string(),
            })
        }
    }
    Ok(Loaded {
        key: Arc::new(certified),
        info,
        fingerprint,
    })
}
