//! The ACME files on disk: per CA directory URL, the account credentials (`account.json`) and the
//! served pair (`cert.pem`, `key.pem`), in a 0700 directory with 0600 files, each written whole
//! and renamed into place. One CA's account is never sent to another.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use instant_acme::AccountCredentials;

use super::AcmeError;
use crate::cmd::files::{create_dir, write_atomically};
use crate::tls::CertInfo;

/// Mode of the ACME directories: the account key is in them.
const DIR_MODE: u32 = 0o700;
/// Mode of every ACME file (the certificate too, so the directory holds nothing world-readable).
const FILE_MODE: u32 = 0o600;

/// Where one CA's account and certificate are kept.
#[derive(Debug, Clone)]
pub struct AcmeFiles {
    dir: PathBuf,
}

impl AcmeFiles {
    /// The files for the CA at `directory_url`, under `base` (the `PROXY_ACME_DIR`).
    pub fn new(base: &Path, directory_url: &str) -> AcmeFiles {
        AcmeFiles {
            dir: base.join(ca_dir_name(directory_url)),
        }
    }

    /// The directory of this CA's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate chain served.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// The served certificate's key.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// Creates the directory (and its parents) with mode 0700 when missing.
    pub fn create(&self) -> Result<(), AcmeError> {
        create_dir(&self.dir, DIR_MODE).map_err(AcmeError::Storage)
    }

    /// The stored account, if there is one.
    pub fn load_account(&self) -> Result<Option<AccountCredentials>, AcmeError> {
        let path = self.account_path();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AcmeError::ReadAccount { path, source }),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| AcmeError::BadAccount {
                path,
                detail: e.to_string(),
            })
    }

    /// Stores the account's credentials (its private key included).
    pub fn save_account(&self, credentials: &AccountCredentials) -> Result<(), AcmeError> {
        let path = self.account_path();
        let json = serde_json::to_vec_pretty(credentials).map_err(|e| AcmeError::BadAccount {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        write_atomically(&path, &json, FILE_MODE).map_err(AcmeError::Storage)
    }

    /// Stores a newly issued pair: the key first, so a reader that sees the new certificate
    /// finds its key (a reader between the two sees a mismatch and keeps the old pair).
    pub fn save_pair(&self, cert_pem: &str, key_pem: &str) -> Result<(), AcmeError> {
        write_atomically(&self.key_path(), key_pem.as_bytes(), FILE_MODE)
            .map_err(AcmeError::Storage)?;
        write_atomically(&self.cert_path(), cert_pem.as_bytes(), FILE_MODE)
            .map_err(AcmeError::Storage)
    }
}

/// A file-system-safe name for a directory URL: its host, port and path, other characters
/// replaced, e.g. `acme-v02.api.letsencrypt.org-directory`.
fn ca_dir_name(directory_url: &str) -> String {
    let rest = directory_url
        .split_once("://")
        .map_or(directory_url, |(_, rest)| rest);
    let name: String = rest
        .trim_end_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.trim_matches(|c| c == '.' || c == '-').to_owned()
}

/// When a certificate is due for renewal: two thirds into its lifetime, as Let's Encrypt and
/// Caddy advise, which leaves a third of it to retry in if the CA is down.
pub fn renewal_due(info: &CertInfo) -> SystemTime {
    let lifetime = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or(Duration::ZERO);
    info.not_before + lifetime * 2 / 3
}

/// Whether a stored certificate covers every one of `domains` (a changed domain list needs a new
/// certificate).
pub fn covers(info: &CertInfo, domains: &[String]) -> bool {
    domains
        .iter()
        .all(|d| info.sans.iter().any(|san| san.eq_ignore_ascii_case(d)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn ca_dir_names() {
        let cases = [
            (
                "https://acme-v02.api.letsencrypt.org/directory",
                "acme-v02.api.letsencrypt.org-directory",
            ),
            ("https://127.0.0.1:14000/dir", "127.0.0.1-14000-dir"),
            ("https://ca.example/", "ca.example"),
        ];
        for (url, name) in cases {
            assert_eq!(ca_dir_name(url), name, "{url}");
        }
    }

    #[test]
    fn renewal_at_two_thirds_and_coverage() {
        let day = 86_400;
        let info = CertInfo {
            subject: String::new(),
            sans: vec!["a.example.com".into(), "b.example.com".into()],
            not_before: UNIX_EPOCH + Duration::from_secs(10 * day),
            not_after: UNIX_EPOCH + Duration::from_secs(100 * day),
            spki_sha256: String::new(),
            chain_len: 2,
        };
        assert_eq!(
            renewal_due(&info),
            UNIX_EPOCH + Duration::from_secs(70 * day)
        );
        assert!(covers(&info, &["A.example.com".into()]));
        assert!(!covers(&info, &["c.example.com".into()]));
    }
}
