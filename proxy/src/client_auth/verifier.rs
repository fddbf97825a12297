//! The client-certificate verifier the TLS handshake asks: rustls' `WebPkiClientVerifier` checks
//! the chain to the CA file (signatures, validity dates, client-auth usage), then the allow-list
//! is applied to the verified identity. A refusal is an error in the handshake, so the client
//! gets a TLS alert and nothing reaches the upstream; it is logged with the reason (the
//! connection's span carries the peer).
//!
//! The CA file reloads like the server certificate: the chain verifier sits behind an `ArcSwap`,
//! rebuilt from the file on SIGHUP ([`ClientVerifier::reload_logged`]) and when the file changes
//! ([`ClientVerifier::watch`]); a file that does not load leaves the previous CAs in use.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use tracing::{error, info, warn};

use super::{ClientAuthSettings, Identity, Mode};
use crate::watch::{self, FileFingerprint, Watched};

/// A CA file that cannot be used. Each message names the file and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ClientCaError {
    #[error(
        "client CA file {path} (PROXY_CLIENT_CA): cannot read it: {source}: check the path and \
         that the proxy's user may read it"
    )]
    Read { path: PathBuf, source: io::Error },
    #[error("client CA file {path} (PROXY_CLIENT_CA) is not valid PEM ({detail}): write it again")]
    BadPem { path: PathBuf, detail: String },
    #[error(
        "client CA file {path} (PROXY_CLIENT_CA) holds no usable CA certificate ({detail}): \
         point it at the PEM certificate(s) of the CA that issues client certificates"
    )]
    NoCa { path: PathBuf, detail: String },
}

/// The CAs in use and the file state they were read from.
struct Loaded {
    chain: Arc<dyn ClientCertVerifier>,
    /// The file's state just before it was read: the watcher's "nothing new" baseline.
    fingerprint: Option<FileFingerprint>,
    /// How many CA certificates the file holds, for the logs.
    cas: usize,
}

/// Verifies client certificates against the CA file, then the allow-list.
pub struct ClientVerifier {
    settings: ClientAuthSettings,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Loaded>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ClientVerifier {
    /// Loads the CA file (start-up: an error is fatal).
    pub fn load(settings: &ClientAuthSettings) -> Result<Arc<ClientVerifier>, ClientCaError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let loaded = load_cas(&settings.ca, settings.mode, &provider)?;
        Ok(Arc::new(ClientVerifier {
            settings: settings.clone(),
            provider,
            current: ArcSwap::from_pointee(loaded),
        }))
    }

    /// The settings it enforces.
    pub fn settings(&self) -> &ClientAuthSettings {
        &self.settings
    }

    /// Reads the CA file again and, only if it loads, verifies new handshakes with it.
    pub fn reload(&self) -> Result<(), ClientCaError> {
        let loaded = load_cas(&self.settings.ca, self.settings.mode, &self.provider)?;
        self.current.store(Arc::new(loaded));
        Ok(())
    }

    /// [`Self::reload`], logging the outcome. `trigger` says why: `reload`, `file-change`.
    pub fn reload_logged(&self, trigger: &'static str) -> Result<(), ClientCaError> {
        let result = self.reload();
        match &result {
            Ok(()) => self.log(trigger),
            Err(e) => error!(
                trigger,
                client_ca = %self.settings.ca.display(),
                error = %e,
                "client CA reload rejected; the previous CAs keep verifying"
            ),
        }
        result
    }

    /// Logs the settings in use.
    pub fn log(&self, trigger: &'static str) {
        info!(
            trigger,
            client_ca = %self.settings.ca.display(),
            cas = self.current.load().cas,
            mode = self.settings.mode.as_str(),
            allow = %self.settings.allow,
            "client certificates verified"
        );
    }

    /// Spawns a task that checks the CA file every `interval` and reloads it once a change has
    /// settled (two polls seeing the same state, as for the server certificate). The task ends
    /// when the verifier is dropped. Needs a tokio runtime.
    pub fn watch(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        watch::spawn(&self, interval)
    }

    fn refuse(&self, reason: &'static str, detail: &str, error: rustls::Error) -> rustls::Error {
        warn!(
            phase = "tls_handshake",
            reason, detail, "client certificate refused"
        );
        error
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.settings.mode == Mode::Require
    }

    /// No hints: the CA names would have to outlive a reload that replaces them, and an empty
    /// list lets a client send whichever certificate it has (RFC 8446 §4.2.4, RFC 5246 §7.4.4).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain = Arc::clone(&self.current.load().chain);
        if let Err(e) = chain.verify_client_cert(end_entity, intermediates, now) {
            return Err(self.refuse("chain", &e.to_string(), e));
        }
        let identity = match Identity::from_der(end_entity) {
            Ok(identity) => identity,
            Err(detail) => {
                let error = rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
                return Err(self.refuse("unreadable", &detail, error));
            }
        };
        if !self.settings.allow.allows(&identity) {
            // access_denied: the certificate is valid, access control said no (RFC 8446 §6.2).
            let error =
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);
            let detail = format!(
                "identity {} (subject {}) is not in PROXY_CLIENT_ALLOW ({})",
                identity.names(),
                identity.subject,
                self.settings.allow
            );
            return Err(self.refuse("not allowed", &detail, error));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether a failed handshake was a client that sent no certificate where one is required
/// (rustls refuses it before asking the verifier), so the caller can log it as a refusal.
pub fn missing_certificate(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::NoCertificatesPresented))
}

/// Reads the CA file and builds the chain verifier; nothing is swapped here.
fn load_cas(
    path: &Path,
    mode: Mode,
    provider: &Arc<CryptoProvider>,
) -> Result<Loaded, ClientCaError> {
    // Taken before reading: a write during the read leaves a newer state for the watcher.
    let fingerprint = FileFingerprint::of(path);
    let pem = std::fs::read(path).map_err(|source| ClientCaError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientCaError::BadPem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    let no_ca = |detail: String| ClientCaError::NoCa {
        path: path.to_owned(),
        detail,
    };
    let cas = certs.len();
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| no_ca(e.to_string()))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = match mode {
        Mode::Require => builder,
        Mode::Optional => builder.allow_unauthenticated(),
    };
    let chain = builder.build().map_err(|e| no_ca(e.to_string()))?;
    Ok(Loaded {
        chain,
        fingerprint,
        cas,
    })
}

impl Watched for ClientVerifier {
    type State = Option<FileFingerprint>;

    fn seen(&self) -> Option<FileFingerprint> {
        FileFingerprint::of(&self.settings.ca)
    }

    fn in_use(&self) -> Option<FileFingerprint> {
        self.current.load().fingerprint
    }

    fn reload_changed(&self) -> bool {
        self.reload_logged("file-change").is_ok()
    }
}
