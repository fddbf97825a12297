//! A verified client certificate's identity: what the allow-list matches (subject common names,
//! DNS and URI subject alternative names) and the `X-Forwarded-Client-Cert` value the upstream
//! gets, in Envoy's format. Pure functions of the certificate's DER.

use std::fmt::Write as _;

use http::HeaderValue;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid2abbrev, oid_registry};
use x509_parser::x509::X509Name;

use crate::error::ConfigError;

/// The identity a client certificate asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Lower-case hex SHA-256 of the certificate's DER (XFCC `Hash`).
    pub hash: String,
    /// The subject as an RFC 4514 string, most specific attribute first (`CN=a,O=b`).
    pub subject: String,
    /// The subject's common names.
    pub common_names: Vec<String>,
    /// DNS names among the subject alternative names.
    pub dns: Vec<String>,
    /// URIs among the subject alternative names (SPIFFE IDs are these).
    pub uris: Vec<String>,
}

impl Identity {
    /// Reads the identity of a certificate (already verified: this only describes it).
    pub fn from_der(der: &[u8]) -> Result<Identity, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        let common_names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect();
        let (mut dns, mut uris) = (Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(name) => dns.push((*name).to_owned()),
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(Identity {
            hash: hex(&Sha256::digest(der)),
            subject: rfc4514(cert.subject()),
            common_names,
            dns,
            uris,
        })
    }

    /// The names the logs show for it: `cn:…`, `dns:…`, `uri:…`, as the allow-list takes them.
    pub fn names(&self) -> String {
        let cn = self.common_names.iter().map(|n| format!("cn:{n}"));
        let dns = self.dns.iter().map(|n| format!("dns:{n}"));
        let uri = self.uris.iter().map(|n| format!("uri:{n}"));
        cn.chain(dns).chain(uri).collect::<Vec<_>>().join(",")
    }

    /// `Hash=…;Subject="…";URI=…;DNS=…`: Envoy's `X-Forwarded-Client-Cert` element for this
    /// certificate (one `URI` and one `DNS` pair per name). `None` if a name holds bytes a header
    /// value cannot carry, which a verified certificate should never have.
    pub fn xfcc(&self) -> Option<HeaderValue> {
        let mut value = format!("Hash={};Subject=\"{}\"", self.hash, self.subject);
        for uri in &self.uris {
            let _ = write!(value, ";URI={}", xfcc_value(uri));
        }
        for dns in &self.dns {
            let _ = write!(value, ";DNS={}", xfcc_value(dns));
        }
        HeaderValue::from_str(&value).ok()
    }
}

/// A value as XFCC carries it: double-quoted (with `"` and `\` escaped) when it holds a `,`, `;`
/// or `=` that would otherwise end or split it.
fn xfcc_value(value: &str) -> String {
    if !value.contains([',', ';', '=', '"', '\\']) {
        return value.to_owned();
    }
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// The name as RFC 4514 writes it: the last RDN first, `,` between RDNs, `+` within one. Values
/// are escaped as §2.4 says, and bytes outside printable ASCII become `\XX`, so the result fits
/// in a header value.
fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type();
                    let key = oid2abbrev(oid, oid_registry())
                        .map(str::to_owned)
                        .unwrap_or_else(|_| oid.to_id_string());
                    match attr.as_str() {
                        Ok(text) => format!("{key}={}", escape_dn_value(text)),
                        // Not a string type: §2.4's `#` and the value's bytes in hex.
                        Err(_) => format!("{key}=#{}", hex(attr.as_slice())),
                    }
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// Escapes an attribute value (RFC 4514 §2.4).
fn escape_dn_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    for (i, &b) in bytes.iter().enumerate() {
        let edge_space = b == b' ' && (i == 0 || i == bytes.len() - 1);
        match b {
            b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b'#' if i == 0 => out.push_str("\\#"),
            _ if edge_space => out.push_str("\\ "),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\{b:02X}");
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One entry of `PROXY_CLIENT_ALLOW`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// `cn:NAME`: a subject common name, exactly.
    Cn(String),
    /// `dns:NAME`: a DNS subject alternative name, in any letter case.
    Dns(String),
    /// `uri:URI`: a URI subject alternative name (e.g. a SPIFFE ID), exactly.
    Uri(String),
}

/// Which verified clients may connect: any (empty list) or those naming an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<Allowed>);

/// What `PROXY_CLIENT_ALLOW` accepts, for error messages.
const ALLOW_FORMS: &str = "use comma-separated cn:NAME, dns:NAME or uri:URI entries, e.g. \
     cn:billing,uri:spiffe://example.org/ns/prod/sa/billing";

impl AllowList {
    /// Parses `cn:a,dns:b.example,uri:spiffe://t/x`; blank entries are ignored.
    pub fn parse(value: &str) -> Result<AllowList, ConfigError> {
        let invalid = |problem: String| ConfigError::Invalid {
            setting: "PROXY_CLIENT_ALLOW",
            value: value.to_owned(),
            problem,
        };
        let mut entries = Vec::new();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((kind, name)) = entry.split_once(':') else {
                return Err(invalid(format!("{entry:?} has no kind; {ALLOW_FORMS}")));
            };
            let name = name.trim();
            if name.is_empty() {
                return Err(invalid(format!("{entry:?} names nothing; {ALLOW_FORMS}")));
            }
            entries.push(match kind.trim().to_ascii_lowercase().as_str() {
                "cn" => Allowed::Cn(name.to_owned()),
                "dns" => Allowed::Dns(name.to_owned()),
                "uri" => Allowed::Uri(name.to_owned()),
                other => {
                    return Err(invalid(format!(
                        "{other:?} is not a kind of name; {ALLOW_FORMS}"
                    )))
                }
            });
        }
        Ok(AllowList(entries))
    }

    /// Whether a client with this identity may connect.
    pub fn allows(&self, identity: &Identity) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|allowed| match allowed {
                Allowed::Cn(name) => identity.common_names.iter().any(|cn| cn == name),
                Allowed::Dns(name) => identity.dns.iter().any(|d| d.eq_ignore_ascii_case(name)),
                Allowed::Uri(uri) => identity.uris.iter().any(|u| u == uri),
            })
    }
}

impl std::fmt::Display for AllowList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("any verified client");
        }
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|allowed| match allowed {
                Allowed::Cn(name) => format!("cn:{name}"),
                Allowed::Dns(name) => format!("dns:{name}"),
                Allowed::Uri(uri) => format!("uri:{uri}"),
            })
            .collect();
        f.write_str(&entries.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn identity(cn: &str, sans: Vec<SanType>) -> Identity {
        let mut params = CertificateParams::default();
        // Written in this order (the issuer-most first), so RFC 4514 puts the CN first.
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example, Inc.");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Identity::from_der(cert.der()).unwrap()
    }

    #[test]
    fn identity_and_xfcc() {
        let id = identity(
            "billing",
            vec![
                SanType::URI(
                    "spiffe://example.org/ns/prod/sa/billing"
                        .try_into()
                        .unwrap(),
                ),
                SanType::DnsName("billing.example".try_into().unwrap()),
            ],
        );
        assert_eq!(id.subject, "CN=billing,O=Example\\, Inc.");
        assert_eq!(id.common_names, ["billing"]);
        assert_eq!(id.hash.len(), 64);
        assert_eq!(
            id.xfcc().unwrap(),
            format!(
                "Hash={};Subject=\"CN=billing,O=Example\\, Inc.\";\
                 URI=spiffe://example.org/ns/prod/sa/billing;DNS=billing.example",
                id.hash
            )
            .as_str()
        );
        assert_eq!(
            id.names(),
            "cn:billing,dns:billing.example,uri:spiffe://example.org/ns/prod/sa/billing"
        );
    }

    #[test]
    fn dn_values_are_escaped() {
        let cases = [
            ("plain", "plain"),
            ("a,b+c", "a\\,b\\+c"),
            ("#lead", "\\#lead"),
            (" edge ", "\\ edge\\ "),
            ("quote\"", "quote\\\""),
            ("é", "\\C3\\A9"),
        ];
        for (input, want) in cases {
            assert_eq!(escape_dn_value(input), want, "{input}");
        }
        assert_eq!(xfcc_value("spiffe://t/x"), "spiffe://t/x");
        assert_eq!(xfcc_value("a;b=\"c\""), "\"a;b=\\\"c\\\"\"");
    }

    #[test]
    fn allow_list_parsing_and_matching() {
        let list =
            AllowList::parse(" cn:billing , DNS:API.example,uri:spiffe://t/ns/x/sa/y,").unwrap();
        assert_eq!(
            list.0,
            [
                Allowed::Cn("billing".into()),
                Allowed::Dns("API.example".into()),
                Allowed::Uri("spiffe://t/ns/x/sa/y".into()),
            ]
        );
        // (common name, SANs, allowed)
        let cases = [
            ("billing", vec![], true),
            ("Billing", vec![], false),
            (
                "other",
                vec![SanType::DnsName("api.example".try_into().unwrap())],
                true,
            ),
            (
                "other",
                vec![SanType::URI("spiffe://t/ns/x/sa/y".try_into().unwrap())],
                true,
            ),
            (
                "other",
                vec![SanType::URI("spiffe://t/ns/x/sa/z".try_into().unwrap())],
                false,
            ),
        ];
        for (cn, sans, allowed) in cases {
            let id = identity(cn, sans);
            assert_eq!(list.allows(&id), allowed, "{}", id.names());
        }
        assert!(AllowList::default().allows(&identity("anyone", vec![])));
        for bad in ["billing", "cn:", "ip:10.0.0.1"] {
            assert!(AllowList::parse(bad).is_err(), "{bad}");
        }
    }
}
