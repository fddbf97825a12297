//! TLS material: loading the certificate/key pair, the rustls server config, and hot reload.
//!
//! INTERFACE CONTRACT (owned by the TLS work; the server calls only these):
//! - `CertStore::load(cert_path, key_path) -> Result<Arc<CertStore>, TlsError>`: loads and checks the pair.
//! - `CertStore::reload(&self) -> Result<CertInfo, TlsError>`: loads the files again; on error the
//!   old pair keeps serving.
//! - `CertStore::info(&self) -> CertInfo`: subject, SANs, expiry of the pair in use (for start-up logs).
//! - `CertStore::watch(self: Arc<Self>, interval)`: spawns a task that reloads when the files change.
//! - `server_config(store: Arc<CertStore>) -> Arc<rustls::ServerConfig>`: TLS 1.2+1.3, ALPN h2 and
//!   http/1.1, session resumption on; certificates resolved through the store for every handshake.
//!
//! Placeholder until the TLS work lands.
