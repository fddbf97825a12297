//! Answering the CA's validation: the HTTP-01 key authorizations the plain-HTTP listener serves
//! while an order is pending ([`Http01Tokens`], RFC 8555 §8.3), and the self-signed TLS-ALPN-01
//! certificate that carries the key authorization's digest (RFC 8737 §3).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use rcgen::{CertificateParams, CustomExtension, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::AcmeError;

/// The path prefix the CA fetches HTTP-01 key authorizations under (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending HTTP-01 answers, token → key authorization; shared by the ACME task, which adds and
/// removes them, and the plain-HTTP listener, which serves them.
#[derive(Debug, Default)]
pub struct Http01Tokens {
    // A lock held only to copy one string in or out: no await and no I/O inside.
    tokens: Mutex<HashMap<String, String>>,
}

impl Http01Tokens {
    /// Serves `key_authorization` for `token` until [`Self::remove`].
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Stops serving `token`.
    pub fn remove(&self, token: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    fn get(&self, token: &str) -> Option<String> {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    /// The answer to `req` when it asks for a pending HTTP-01 challenge (`GET` or `HEAD` of
    /// [`HTTP01_PREFIX`] and the token): 200 with the key authorization. `None` for any other
    /// request, which keeps its usual answer.
    pub fn respond<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let token = req.uri().path().strip_prefix(HTTP01_PREFIX)?;
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return None;
        }
        let key_authorization = self.get(token)?;
        let mut response = Response::new(Full::new(Bytes::from(key_authorization)));
        *response.status_mut() = StatusCode::OK;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        Some(response)
    }
}

/// The TLS-ALPN-01 certificate for `name`: self-signed, for `name` only, with the critical
/// acmeIdentifier extension holding `digest`, the SHA-256 of the key authorization.
pub fn tls_alpn_01_key(
    name: &str,
    digest: &[u8],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, AcmeError> {
    let failed = |detail: String| AcmeError::ChallengeCertificate {
        name: name.to_owned(),
        detail,
    };
    // rcgen asserts the length; checked here so a surprise cannot panic the task.
    if digest.len() != 32 {
        return Err(failed(format!(
            "key authorization digest is {} bytes, not 32",
            digest.len()
        )));
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| failed(e.to_string()))?;
    let mut params =
        CertificateParams::new(vec![name.to_owned()]).map_err(|e| failed(e.to_string()))?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params
        .self_signed(&key)
        .map_err(|e| failed(e.to_string()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| failed(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    #[test]
    fn http01_answers_pending_tokens_only() {
        let tokens = Http01Tokens::default();
        tokens.insert("tok", "tok.thumb");
        let ok = tokens
            .respond(&get("/.well-known/acme-challenge/tok"))
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(tokens
            .respond(&get("/.well-known/acme-challenge/other"))
            .is_none());
        assert!(tokens.respond(&get("/somewhere")).is_none());
        tokens.remove("tok");
        assert!(tokens
            .respond(&get("/.well-known/acme-challenge/tok"))
            .is_none());
    }

    #[test]
    fn tls_alpn_01_certificate_carries_the_digest() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = tls_alpn_01_key("a.example.com", &[7; 32], &provider).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let acme_oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == acme_oid)
            .unwrap();
        assert!(ext.critical);
        assert!(tls_alpn_01_key("a.example.com", &[7; 31], &provider).is_err());
    }
}
