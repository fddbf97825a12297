//! TLS material: loading and checking the certificate/key pair, the rustls server config, and hot
//! reload (SIGHUP via [`CertStore::reload_logged`], file changes via [`CertStore::watch`]).
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
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};
use x509_parser::extensions::GeneralName;

use crate::metrics::{Metrics, Reload};
use crate::watch::{self, FileFingerprint, Watched};

/// A certificate that expires within this window is logged as a warning at start-up and on reload.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 60 * 60);

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

/// A certificate/key pair that cannot be used. Each message names the file and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "certificate file {path} does not exist: create a development pair with `proxy cert`, \
         or set --tls-cert (TLS_CERT_FILE) to your certificate chain"
    )]
    CertMissing { path: PathBuf },
    #[error(
        "key file {path} does not exist: create a development pair with `proxy cert`, \
         or set --tls-key (TLS_KEY_FILE) to the certificate's private key"
    )]
    KeyMissing { path: PathBuf },
    #[error("cannot read {path}: {source}: check the path and that the proxy's user may read it")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not valid PEM ({detail}): the file may be truncated or still being written; \
         write it again"
    )]
    BadPem { path: PathBuf, detail: String },
    #[error(
        "{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----): point --tls-cert at the \
         certificate chain, server certificate first (a key file given as the certificate?)"
    )]
    NoCertificate { path: PathBuf },
    #[error(
        "the first certificate in {path} cannot be parsed ({detail}): replace it with a valid \
         X.509 certificate in PEM"
    )]
    BadCertificate { path: PathBuf, detail: String },
    #[error(
        "{path} holds no private key (PEM `PRIVATE KEY`, `ENCRYPTED PRIVATE KEY`, `RSA PRIVATE KEY` \
         or `EC PRIVATE KEY`): point --tls-key at the key"
    )]
    NoKey { path: PathBuf },
    #[error(
        "{path} is a legacy encrypted PEM key (`Proc-Type: 4,ENCRYPTED`), which the proxy does not \
         read: convert it to encrypted PKCS#8 with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in {path} \
         -out key.pem` and give the password with --tls-key-password-file (or write it unencrypted \
         with `openssl pkey -in {path} -out key.pem`)"
    )]
    LegacyEncryptedKey { path: PathBuf },
    #[error(
        "{path} is an encrypted private key: give its password with --tls-key-password-file \
         (TLS_KEY_PASSWORD_FILE), a file whose first line is the password"
    )]
    KeyNeedsPassword { path: PathBuf },
    #[error("cannot read the key password file {path}: {source}")]
    KeyPasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot decrypt {path} with the password in {password_file} ({detail}): check the \
         password; PBES2 keys (PBKDF2 or scrypt, AES-CBC) are supported"
    )]
    KeyDecrypt {
        path: PathBuf,
        password_file: PathBuf,
        detail: String,
    },
    #[error(
        "the private key in {path} is not usable ({detail}): use an ECDSA P-256/P-384, Ed25519 \
         or RSA (2048 bits or more) key"
    )]
    UnsupportedKey { path: PathBuf, detail: String },
    #[error(
        "the private key in {key} does not match the certificate in {cert}: install the key made \
         with this certificate (the server certificate must come first in a chain), or make a new \
         development pair with `proxy cert --force`"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

/// What the start-up log and operators need to know about the certificate in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `CN=localhost`.
    pub subject: String,
    /// Subject alternative names (DNS names and IP addresses).
    pub sans: Vec<String>,
    /// Start of the validity period.
    pub not_before: SystemTime,
    /// End of the validity period.
    pub not_after: SystemTime,
    /// Base64 SHA-256 of the SubjectPublicKeyInfo: the value for Chromium's
    /// `--ignore-certificate-errors-spki-list` and for HPKP-style pinning.
    pub spki_sha256: String,
    /// Certificates in the file: 1 for a self-signed certificate, more for a chain.
    pub chain_len: usize,
}

impl CertInfo {
    /// True when the certificate has expired, or will have expired `window` after `now`.
    pub fn expires_within(&self, now: SystemTime, window: Duration) -> bool {
        self.not_after <= now + window
    }

    /// `not_after` as RFC 3339 UTC, e.g. `2027-11-27T10:00:00Z`.
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }

    /// Logs the certificate (subject, SANs, expiry, pin), and warns when it expires within
    /// [`EXPIRY_WARNING`] or has already expired. `trigger` says why: `startup`, `sighup`, ...
    pub fn log(&self, trigger: &'static str) {
        let now = SystemTime::now();
        let not_after = self.not_after_rfc3339();
        let sans = self.sans.join(",");
        info!(
            trigger,
            subject = %self.subject,
            sans = %sans,
            not_after = %not_after,
            spki_sha256 = %self.spki_sha256,
            chain_len = self.chain_len,
            "tls certificate in use"
        );
        if self.not_after <= now {
            error!(subject = %self.subject, not_after = %not_after, "tls certificate has expired");
        } else if self.expires_within(now, EXPIRY_WARNING) {
            let days_left = self
                .not_after
                .duration_since(now)
                .unwrap_or_default()
                .as_secs()
                / 86_400;
            warn!(subject = %self.subject, not_after = %not_after, days_left, "tls certificate expires soon");
        }
        if self.not_before > now {
            warn!(subject = %self.subject, not_before = %rfc3339(self.not_before), "tls certificate is not valid yet");
        }
    }
}

/// Base64 SHA-256 of a DER SubjectPublicKeyInfo (the form Chromium's
/// `--ignore-certificate-errors-spki-list` takes).
pub fn spki_sha256_base64(spki_der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_der))
}

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

/// Reads the whole file once, so the certificate and key each come from one consistent read.
fn read_file(path: &Path, missing: fn(PathBuf) -> TlsError) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => missing(path.to_owned()),
        _ => TlsError::Read {
            path: path.to_owned(),
            source,
        },
    })
}

fn bad_pem(path: &Path, e: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::BadPem {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path, |path| TlsError::CertMissing { path })?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The PEM label of an encrypted PKCS#8 key (RFC 5958 §3).
const ENCRYPTED_KEY_LABEL: &str = "ENCRYPTED PRIVATE KEY";

fn read_key(path: &Path, password_file: Option<&Path>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path, |path| TlsError::KeyMissing { path })?;
    // The old OpenSSL format encrypts inside the PEM with its own headers; it cannot be read
    // as any of the key formats, so name it rather than report a base64 error.
    if pem
        .windows(b"Proc-Type: 4,ENCRYPTED".len())
        .any(|w| w == b"Proc-Type: 4,ENCRYPTED")
    {
        return Err(TlsError::LegacyEncryptedKey {
            path: path.to_owned(),
        });
    }
    if let Ok((ENCRYPTED_KEY_LABEL, der)) = pkcs8::der::pem::decode_vec(&pem) {
        return decrypt_key(path, &der, password_file);
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        e => bad_pem(path, e),
    })
}

/// Decrypts an encrypted PKCS#8 key with the password on the first line of `password_file`.
fn decrypt_key(
    path: &Path,
    der: &[u8],
    password_file: Option<&Path>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let Some(password_file) = password_file else {
        return Err(TlsError::KeyNeedsPassword {
            path: path.to_owned(),
        });
    };
    let text =
        std::fs::read_to_string(password_file).map_err(|source| TlsError::KeyPasswordFile {
            path: password_file.to_owned(),
            source,
        })?;
    let password = text.lines().next().unwrap_or_default();
    let decrypt_error = |detail: String| TlsError::KeyDecrypt {
        path: path.to_owned(),
        password_file: password_file.to_owned(),
        detail,
    };
    let encrypted =
        pkcs8::EncryptedPrivateKeyInfo::try_from(der).map_err(|e| decrypt_error(e.to_string()))?;
    let document = encrypted
        .decrypt(password)
        .map_err(|e| decrypt_error(e.to_string()))?;
    Ok(PrivateKeyDer::Pkcs8(document.as_bytes().to_vec().into()))
}

/// Parses the server certificate (the chain's first) for the logs.
fn describe(path: &Path, chain: &[CertificateDer<'_>]) -> Result<CertInfo, TlsError> {
    let bad = |detail: String| TlsError::BadCertificate {
        path: path.to_owned(),
        detail,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| bad(e.to_string()))?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.iter().map(san_text).collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(bad(format!("subjectAltName: {e}"))),
    };
    let validity = cert.validity();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        sans,
        not_before: unix_time(validity.not_before.timestamp()),
        not_after: unix_time(validity.not_after.timestamp()),
        spki_sha256: spki_sha256_base64(cert.public_key().raw),
        chain_len: chain.len(),
    })
}

fn san_text(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(dns) => (*dns).to_owned(),
        GeneralName::IPAddress(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d).to_string(),
        GeneralName::IPAddress(bytes) => match <[u8; 16]>::try_from(*bytes) {
            Ok(v6) => Ipv6Addr::from(v6).to_string(),
            Err(_) => format!("{name}"),
        },
        other => other.to_string(),
    }
}

fn unix_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(after) => UNIX_EPOCH + Duration::from_secs(after),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

/// RFC 3339 UTC with second precision; times before 1970 print as the epoch (never seen in practice).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days` (http://howardhinnant.github.io/date_algorithms.html).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_798_761_599, "2026-12-31T23:59:59Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(rfc3339(unix_time(secs)), want, "{secs}");
        }
    }

    #[test]
    fn expiry_window() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let info = |left: u64| CertInfo {
            subject: "CN=t".into(),
            sans: vec![],
            not_before: UNIX_EPOCH,
            not_after: now + Duration::from_secs(left),
            spki_sha256: String::new(),
            chain_len: 1,
        };
        let day = 86_400;
        assert!(info(13 * day).expires_within(now, EXPIRY_WARNING));
        assert!(!info(15 * day).expires_within(now, EXPIRY_WARNING));
        assert!(info(0).expires_within(now, Duration::ZERO));
    }

    #[test]
    fn san_text_formats_addresses() {
        assert_eq!(
            san_text(&GeneralName::IPAddress(&[127, 0, 0, 1])),
            "127.0.0.1"
        );
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(san_text(&GeneralName::IPAddress(&v6)), "::1");
        assert_eq!(san_text(&GeneralName::DNSName("localhost")), "localhost");
    }

    #[test]
    fn spki_pin_is_base64_sha256() {
        // SHA-256("") in base64.
        assert_eq!(
            spki_sha256_base64(b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }
}
