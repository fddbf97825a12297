//! What the logs and operators are told about a certificate: its subject, names, validity and
//! SPKI pin, read from the DER with x509-parser; and the RFC 3339 dates they are written in.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};
use x509_parser::extensions::GeneralName;

use crate::error::TlsError;

/// A certificate that expires within this window is logged as a warning at start-up and on reload.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 60 * 60);

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

/// Parses the server certificate (the chain's first) for the logs.
pub(super) fn describe(path: &Path, chain: &[CertificateDer<'_>]) -> Result<CertInfo, TlsError> {
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
