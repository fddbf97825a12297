//! Development certificates: `proxy cert` issues a `localhost` certificate (ECDSA P-256, for
//! `localhost`, `127.0.0.1`, `::1` and any extra names) from the local CA, writes it with a key
//! file that is mode 0600 from its creation, and prints how to trust the CA; the proxy itself
//! keeps one in the data directory for when no certificate is configured.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use super::files::{create_dir, write_atomically};
use super::localca::LocalCa;
use crate::cli::CertArgs;
pub use crate::error::DevCertError;
use crate::tls::{civil_from_days, rfc3339, spki_sha256_base64, CertStore};

/// File name of the certificate inside the output directory.
pub const CERT_FILE: &str = "cert.pem";
/// File name of the private key inside the output directory.
pub const KEY_FILE: &str = "key.pem";
/// Names every development certificate covers.
pub const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Validity of a development certificate: short, as it is re-issued from the trusted local CA
/// whenever needed (browsers limit server certificates' lifetimes, and a short one keeps a leaked
/// key's use short).
pub const VALIDITY: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// A development certificate with less validity left than this is re-issued.
pub const RENEW_BEFORE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Where in the data directory the proxy keeps the certificate it serves when none is configured.
pub const DEFAULT_CERT_DIR: &str = "localhost";

/// A generated pair, in PEM.
#[derive(Debug, Clone)]
pub struct DevCert {
    /// The certificate, issued by the local CA.
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

/// Issues a pair from `ca` for the default names plus `extra_names` (no I/O).
pub fn generate(ca: &LocalCa, extra_names: &[String]) -> Result<DevCert, DevCertError> {
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
    // Names the CA's key, as RFC 5280 §4.2.1.1 asks of a CA-issued certificate: strict
    // validators (pyca/cryptography, hence sslyze) refuse a chain without it.
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = ca.sign(params, &key)?;
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
    create_dir(out_dir, 0o755)?;
    // Key first: a watcher that sees the new certificate then finds its key already in place.
    write_atomically(&key_path, cert.key_pem.as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert.cert_pem.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// `proxy cert`: the local CA (made once), a certificate issued from it, and how to trust the CA.
pub fn run(args: &CertArgs, data_dir: &Path) -> Result<(), DevCertError> {
    let cert_path = args.out_dir.join(CERT_FILE);
    let key_path = args.out_dir.join(KEY_FILE);
    if args.if_missing && valid_for(&cert_path, &key_path, RENEW_BEFORE) {
        println!(
            "{} and {} exist and stay valid for more than {} days; leaving them as they are",
            cert_path.display(),
            key_path.display(),
            RENEW_BEFORE.as_secs() / 86_400
        );
        return Ok(());
    }
    let (ca, created) = LocalCa::load_or_create(data_dir)?;
    let cert = generate(&ca, &args.names)?;
    // --if-missing re-issues a pair that is about to expire.
    let (cert_path, key_path) = write_pair(&args.out_dir, &cert, args.force || args.if_missing)?;
    print!(
        "{}",
        instructions(&ca, created, &cert, &cert_path, &key_path)
    );
    Ok(())
}

/// Whether the pair at these paths loads and stays valid for at least `margin`.
fn valid_for(cert_path: &Path, key_path: &Path, margin: Duration) -> bool {
    CertStore::load(cert_path, key_path).is_ok_and(|store| {
        store
            .info()
            .is_some_and(|info| !info.expires_within(SystemTime::now(), margin))
    })
}

/// The certificate the proxy serves when none is configured: kept in `<data dir>/localhost/`,
/// issued from the local CA the first time and again when it nears its end. Returns the pair's
/// paths and whether it was issued now.
pub fn default_pair(data_dir: &Path) -> Result<(PathBuf, PathBuf, bool), DevCertError> {
    let dir = data_dir.join(DEFAULT_CERT_DIR);
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if valid_for(&cert_path, &key_path, RENEW_BEFORE) {
        return Ok((cert_path, key_path, false));
    }
    let (ca, _) = LocalCa::load_or_create(data_dir)?;
    let cert = generate(&ca, &[])?;
    create_dir(&dir, 0o700)?;
    let (cert_path, key_path) = write_pair(&dir, &cert, true)?;
    Ok((cert_path, key_path, true))
}

/// What `proxy cert` prints after writing the pair: where everything is and how to trust the CA.
pub fn instructions(
    ca: &LocalCa,
    ca_created: bool,
    cert: &DevCert,
    cert_path: &Path,
    key_path: &Path,
) -> String {
    let ca_path = ca
        .cert_path
        .as_deref()
        .map_or_else(|| "(in memory)".to_owned(), |p| p.display().to_string());
    let ca_state = if ca_created { "made" } else { "kept" };
    format!(
        "\
wrote certificate {c}
wrote private key {k} (mode 0600: never commit it)
names:   {names}
expires: {expires} (re-run `proxy cert` to re-issue; the CA stays)
SPKI sha256 pin: {pin}
local CA ({ca_state}): {ca_path}

Trust the local CA once, and every certificate it issues is trusted (development only):
  Linux (system store and Chromium/Firefox):  proxy cert --trust
  Chrome/Chromium on Linux, by hand:  certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n \"{ca_name}\" -i {ca_path}
  macOS:    sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca_path}
  Windows:  certutil -addstore -user Root {ca_path}
  curl, one-off:  curl --cacert {ca_path} https://localhost:8443/
  Chromium without trusting anything:  --ignore-certificate-errors-spki-list={pin}
",
        c = cert_path.display(),
        k = key_path.display(),
        names = cert.names.join(", "),
        expires = rfc3339(cert.not_after),
        pin = cert.spki_sha256,
        ca_name = super::localca::CA_NAME,
    )
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
        let ca = LocalCa::generate().unwrap();
        let cert = generate(
            &ca,
            &["app.test".into(), "LOCALHOST".into(), "10.1.2.3".into()],
        )
        .unwrap();
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

    /// The certificate names its issuer's key (Authority Key Identifier = the CA's Subject Key
    /// Identifier): strict RFC 5280 validators refuse the chain without it.
    #[test]
    fn the_certificate_names_the_ca_key() {
        use x509_parser::extensions::ParsedExtension;
        use x509_parser::pem::parse_x509_pem;

        let ca = LocalCa::generate().unwrap();
        let cert = generate(&ca, &[]).unwrap();
        let (_, ca_pem) = parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let ca_cert = ca_pem.parse_x509().unwrap();
        let ca_ski = ca_cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .expect("the CA has a subject key identifier");
        let (_, leaf_pem) = parse_x509_pem(cert.cert_pem.as_bytes()).unwrap();
        let leaf = leaf_pem.parse_x509().unwrap();
        let aki = leaf
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
            .expect("the certificate has an authority key identifier");
        assert_eq!(aki, ca_ski);
    }

    #[test]
    fn generate_rejects_bad_names() {
        let ca = LocalCa::generate().unwrap();
        assert!(matches!(
            generate(&ca, &["not a name".into()]),
            Err(DevCertError::InvalidName { .. })
        ));
    }
}
