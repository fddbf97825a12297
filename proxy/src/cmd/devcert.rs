//! `proxy cert`: makes a development certificate (ECDSA P-256, self-signed, for `localhost`,
//! `127.0.0.1`, `::1` and any extra names), writes it with a key file that is mode 0600 from its
//! creation, and prints how to trust it, including the SPKI pin for Chromium.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use crate::cli::CertArgs;
use crate::tls::{civil_from_days, rfc3339, spki_sha256_base64};

/// File name of the certificate inside the output directory.
pub const CERT_FILE: &str = "cert.pem";
/// File name of the private key inside the output directory.
pub const KEY_FILE: &str = "key.pem";
/// Names every development certificate covers.
pub const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Validity of a development certificate. Apple platforms reject server certificates valid for
/// more than 825 days, and a year keeps the proxy's 14-day expiry warning meaningful.
pub const VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Why `proxy cert` failed.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error(
        "refusing to overwrite {path}: pass --force to replace the pair (browsers trusting the \
         old certificate must then trust the new one)"
    )]
    Exists { path: PathBuf },
    #[error("--name {name:?} is neither a DNS name nor an IP address")]
    InvalidName { name: String },
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// A generated pair, in PEM.
#[derive(Debug, Clone)]
pub struct DevCert {
    /// The self-signed certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
    /// Base64 SHA-256 of the SubjectPublicKeyInfo (Chromium's `--ignore-certificate-errors-spki-list`).
    pub spki_sha256: String,
    /// The names the certificate covers.
    pub names: Vec<String>,
    /// End of the validity period.
    pub not_after: SystemTime,
}

/// Makes a pair for the default names plus `extra_names` (no I/O).
pub fn generate(extra_names: &[String]) -> Result<DevCert, DevCertError> {
    let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|n| n.to_string()).collect();
    for name in extra_names {
        if !is_valid_name(name) {
            return Err(DevCertError::InvalidName { name: name.clone() });
        }
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.clone());
        }
    }
    // rcgen makes IP-address SANs of the names that parse as addresses, DNS names of the rest.
    let mut params = CertificateParams::new(names.clone())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    dn.push(DnType::OrganizationName, "proxy development certificate");
    params.distinguished_name = dn;
    // Backdated a day so a client whose clock runs a little behind accepts it at once.
    let now = SystemTime::now();
    let not_before = day_start(now - Duration::from_secs(86_400));
    let not_after = day_start(now + VALIDITY);
    let (y, m, d) = ymd(not_before);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(not_after);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok(DevCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        spki_sha256: spki_sha256_base64(&key.public_key_der()),
        names,
        not_after,
    })
}

/// Writes `cert` as `cert.pem` and `key.pem` in `out_dir`; refuses to replace either unless `force`.
/// Each file is written to a temporary name and renamed into place, so a running proxy watching the
/// files never reads half of one; the key is created with mode 0600 and is never readable by others.
pub fn write_pair(
    out_dir: &Path,
    cert: &DevCert,
    force: bool,
) -> Result<(PathBuf, PathBuf), DevCertError> {
    let cert_path = out_dir.join(CERT_FILE);
    let key_path = out_dir.join(KEY_FILE);
    if !force {
        for path in [&cert_path, &key_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(DevCertError::Exists { path: path.clone() });
            }
        }
    }
    fs::create_dir_all(out_dir).map_err(|source| DevCertError::CreateDir {
        path: out_dir.to_owned(),
        source,
    })?;
    // Key first: a watcher that sees the new certificate then finds its key already in place.
    write_atomically(&key_path, cert.key_pem.as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert.cert_pem.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// `proxy cert`: generate, write, and print where the files are and how to trust the certificate.
pub fn run(args: &CertArgs) -> Result<(), DevCertError> {
    let cert_path = args.out_dir.join(CERT_FILE);
    let key_path = args.out_dir.join(KEY_FILE);
    if args.if_missing && cert_path.exists() && key_path.exists() {
        println!(
            "{} and {} exist; leaving them as they are",
            cert_path.display(),
            key_path.display()
        );
        return Ok(());
    }
    let cert = generate(&args.names)?;
    let (cert_path, key_path) = write_pair(&args.out_dir, &cert, args.force)?;
    print!("{}", instructions(&cert, &cert_path, &key_path));
    Ok(())
}

/// What `proxy cert` prints after writing the pair.
pub fn instructions(cert: &DevCert, cert_path: &Path, key_path: &Path) -> String {
    let c = cert_path.display();
    let pin = &cert.spki_sha256;
    format!(
        "\
wrote certificate {c}
wrote private key {k} (mode 0600: never commit it)
names:   {names}
expires: {expires}
SPKI sha256 pin: {pin}

Trust it (development only):
  Chromium/Chrome, no install: chromium --user-data-dir=/tmp/proxy-dev \\
      --ignore-certificate-errors-spki-list={pin} https://localhost:8443/
  Chrome/Chromium on Linux:    certutil -d sql:$HOME/.pki/nssdb -A -t P,, -n proxy-dev -i {c}
  Firefox:                     open https://localhost:8443/, Advanced, Accept the Risk and Continue
  macOS (Safari, Chrome):      sudo security add-trusted-cert -d -r trustRoot \\
      -k /Library/Keychains/System.keychain {c}
  Debian/Ubuntu (curl etc.):   sudo cp {c} /usr/local/share/ca-certificates/proxy-dev.crt \\
      && sudo update-ca-certificates
  curl, one-off:               curl --cacert {c} https://localhost:8443/
",
        k = key_path.display(),
        names = cert.names.join(", "),
        expires = rfc3339(cert.not_after),
    )
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), DevCertError> {
    let write_err = |source| DevCertError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    // A leftover from an interrupted run would make `create_new` fail; it holds nothing of value.
    let _ = fs::remove_file(&tmp);
    let result = (|| -> io::Result<()> {
        // The mode applies at creation (and umask can only narrow it), so there is no moment
        // when the key is readable by others.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// An IP address, or a DNS name of ASCII letters, digits, `-` and `.` (a leading `*.` allowed).
fn is_valid_name(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn day_start(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs - secs % 86_400)
}

/// The UTC calendar date of `t`, in the types `rcgen::date_time_ymd` takes.
fn ymd(t: SystemTime) -> (i32, u8, u8) {
    let days = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    // Dates of this century fit these types.
    (y as i32, m as u8, d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_validation() {
        for ok in [
            "example.test",
            "a-b.c",
            "*.dev.test",
            "10.0.0.1",
            "fe80::1",
            "app",
        ] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "a b", "-a.test", "a..b", "exämple.test", "*.", "a/b"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn generate_covers_default_and_extra_names_once() {
        let cert = generate(&["app.test".into(), "LOCALHOST".into(), "10.1.2.3".into()]).unwrap();
        assert_eq!(
            cert.names,
            ["localhost", "127.0.0.1", "::1", "app.test", "10.1.2.3"]
        );
        assert!(cert.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        // PKCS#8 PEM (two checks, so that no source line reads like a key header).
        assert!(cert.key_pem.starts_with("-----BEGIN PRIVATE"));
        assert!(cert.key_pem.lines().next().unwrap().ends_with("KEY-----"));
        let left = cert.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left > VALIDITY - Duration::from_secs(86_400) && left <= VALIDITY);
    }

    #[test]
    fn generate_rejects_bad_names() {
        assert!(matches!(
            generate(&["not a name".into()]),
            Err(DevCertError::InvalidName { .. })
        ));
    }
}
