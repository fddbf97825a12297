//! The local certificate authority that issues development certificates: made once (ECDSA P-256,
//! valid for ten years) in the user's data directory, its key mode 0600 in a 0700 directory, and
//! kept there. Trusting it once (`proxy cert` prints how) makes every certificate it issues
//! trusted, so re-issuing a short-lived `localhost` certificate never brings a browser warning back.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};

use super::files::{create_dir, write_atomically};
use crate::error::DevCertError;
use crate::tls::spki_sha256_base64;

/// The CA certificate's file name in the data directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in the data directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// How long the local CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// The CA's common name: what a trust store lists it as.
pub const CA_NAME: &str = "proxy local development CA";

/// The directory the proxy keeps its own files in: `$XDG_DATA_HOME/proxy`, else
/// `$HOME/.local/share/proxy` (the XDG base directory rules); `None` without either.
pub fn data_dir(xdg_data_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    let xdg = xdg_data_home.map(PathBuf::from).filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        home.filter(|h| !h.is_empty())
            .map(|h| Path::new(h).join(".local/share"))
    })?;
    Some(base.join("proxy"))
}

/// The data directory of this process: `PROXY_DATA_DIR` if set, else [`data_dir`] of its
/// environment.
pub fn process_data_dir(configured: Option<&Path>) -> Result<PathBuf, DevCertError> {
    if let Some(dir) = configured {
        return Ok(dir.to_owned());
    }
    let xdg = std::env::var("XDG_DATA_HOME").ok();
    let home = std::env::var("HOME").ok();
    data_dir(xdg.as_deref(), home.as_deref()).ok_or(DevCertError::NoDataDir)
}

/// A CA that can issue certificates.
pub struct LocalCa {
    key: KeyPair,
    /// The CA as rcgen's issuer: its name and key, which is all a certificate it issues records.
    issuer: rcgen::Certificate,
    /// The CA certificate as written to `ca.pem`.
    pub cert_pem: String,
    /// Where `ca.pem` is, once written.
    pub cert_path: Option<PathBuf>,
    /// Base64 SHA-256 of the CA's public key.
    pub spki_sha256: String,
}

impl LocalCa {
    /// A new CA, in memory only.
    pub fn generate() -> Result<LocalCa, DevCertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let issuer = ca_params(SystemTime::now())?.self_signed(&key)?;
        Ok(LocalCa {
            cert_pem: issuer.pem(),
            spki_sha256: spki_sha256_base64(&key.public_key_der()),
            key,
            issuer,
            cert_path: None,
        })
    }

    /// The CA kept in `dir`, made and written there first if there is none. Returns whether it
    /// was made now.
    pub fn load_or_create(dir: &Path) -> Result<(LocalCa, bool), DevCertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((LocalCa::load(&cert_path, &key_path)?, false)),
            (false, false) => {
                let mut ca = LocalCa::generate()?;
                create_dir(dir, 0o700)?;
                write_atomically(&key_path, ca.key.serialize_pem().as_bytes(), 0o600)?;
                write_atomically(&cert_path, ca.cert_pem.as_bytes(), 0o644)?;
                ca.cert_path = Some(cert_path);
                Ok((ca, true))
            }
            _ => Err(DevCertError::HalfCa {
                dir: dir.to_owned(),
            }),
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<LocalCa, DevCertError> {
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| DevCertError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key = KeyPair::from_pem(&read(key_path)?).map_err(|e| DevCertError::BadCa {
            path: key_path.to_owned(),
            detail: e.to_string(),
        })?;
        // The same name and key make the same issuer: what a certificate it issues records of
        // its CA (the issuer's name and key identifier) does not depend on the CA's own dates.
        let issuer = ca_params(SystemTime::now())?.self_signed(&key)?;
        Ok(LocalCa {
            spki_sha256: spki_sha256_base64(&key.public_key_der()),
            key,
            issuer,
            cert_pem,
            cert_path: Some(cert_path.to_owned()),
        })
    }

    /// Signs `params` for `key` with this CA.
    pub(super) fn sign(
        &self,
        params: CertificateParams,
        key: &KeyPair,
    ) -> Result<rcgen::Certificate, DevCertError> {
        Ok(params.signed_by(key, &self.issuer, &self.key)?)
    }
}

fn ca_params(now: SystemTime) -> Result<CertificateParams, DevCertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "proxy development");
    params.distinguished_name = dn;
    // No intermediate below it: a leaf only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - Duration::from_secs(86_400)).into();
    params.not_after = (now + CA_VALIDITY).into();
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_follows_xdg() {
        let cases = [
            (Some("/x/data"), Some("/home/u"), Some("/x/data/proxy")),
            (None, Some("/home/u"), Some("/home/u/.local/share/proxy")),
            // A relative XDG_DATA_HOME is invalid and ignored (XDG base directory spec).
            (
                Some("rel"),
                Some("/home/u"),
                Some("/home/u/.local/share/proxy"),
            ),
            (None, None, None),
            (None, Some(""), None),
        ];
        for (xdg, home, expected) in cases {
            assert_eq!(
                data_dir(xdg, home),
                expected.map(PathBuf::from),
                "{xdg:?} {home:?}"
            );
        }
    }
}
