//! Reading the PEM files: the certificate chain, and the private key in any of the forms it comes
//! in (PKCS#8, encrypted PKCS#8, PKCS#1, SEC1), each problem named with its file and its fix.

use std::io;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsError;

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

pub(super) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

pub(super) fn read_key(
    path: &Path,
    password_file: Option<&Path>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
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
