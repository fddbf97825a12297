//! The ACME settings validated into [`AcmeSettings`]: pure functions of the parsed arguments
//! ([`AcmeArgs`], defined with the other flags in [`crate::cli`]); where the files live by
//! default depends on the data directory, which [`crate::build`] resolves.

use std::path::PathBuf;

use http::uri::Scheme;
use http::Uri;

use crate::cli::AcmeArgs;
use crate::error::ConfigError;

/// Let's Encrypt's production directory, the default CA.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory: untrusted certificates, generous rate limits; for trials.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// The default challenge: answered on the HTTPS port itself, so no other port must be open.
pub const DEFAULT_CHALLENGE: &str = "tls-alpn-01";
/// The ACME directory's name inside the data directory.
pub const DATA_SUBDIR: &str = "acme";

/// How the CA validates control of the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// RFC 8737: a handshake on the HTTPS port with ALPN `acme-tls/1`.
    TlsAlpn01,
    /// RFC 8555 §8.3: `GET /.well-known/acme-challenge/<token>` on port 80.
    Http01,
}

impl Challenge {
    /// The name the setting takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

/// Validated ACME settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The names the certificate covers, lower-case, first one the subject.
    pub domains: Vec<String>,
    /// The directory URL.
    pub directory: String,
    /// `mailto:` contact, when set.
    pub contact: Option<String>,
    /// The storage directory, when set (else `<data dir>/acme`).
    pub dir: Option<PathBuf>,
    pub challenge: Challenge,
    /// Roots to trust for the directory instead of the system's.
    pub ca_root: Option<PathBuf>,
}

fn invalid(setting: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        value: value.to_owned(),
        problem: problem.into(),
    }
}

impl AcmeSettings {
    /// `None` when ACME is off (no domains); an error for a bad value, or for another ACME
    /// setting given without domains (it would silently do nothing).
    pub fn from_args(args: &AcmeArgs) -> Result<Option<AcmeSettings>, ConfigError> {
        let Some(domains) = args.acme_domains.as_deref() else {
            let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
            let stray = [
                ("PROXY_ACME_DIRECTORY", args.acme_directory.clone()),
                ("PROXY_ACME_EMAIL", args.acme_email.clone()),
                ("PROXY_ACME_DIR", path(&args.acme_dir)),
                ("PROXY_ACME_CHALLENGE", args.acme_challenge.clone()),
                ("PROXY_ACME_CA_ROOT", path(&args.acme_ca_root)),
            ];
            if let Some((setting, Some(value))) = stray.iter().find(|(_, v)| v.is_some()) {
                return Err(invalid(
                    setting,
                    value,
                    "ACME settings need PROXY_ACME_DOMAINS (--acme-domain): set the domain names, \
                     or remove this setting",
                ));
            }
            return Ok(None);
        };
        let domains = parse_domains(domains)?;
        let directory = match args.acme_directory.as_deref() {
            Some(url) => parse_directory(url)?,
            None => LETS_ENCRYPT_PRODUCTION.to_owned(),
        };
        let contact = args.acme_email.as_deref().map(parse_email).transpose()?;
        let challenge = match args.acme_challenge.as_deref() {
            None | Some("tls-alpn-01") => Challenge::TlsAlpn01,
            Some("http-01") => Challenge::Http01,
            Some(other) => {
                return Err(invalid(
                    "PROXY_ACME_CHALLENGE",
                    other,
                    "use tls-alpn-01 (on the HTTPS port) or http-01 (on --redirect-http)",
                ))
            }
        };
        Ok(Some(AcmeSettings {
            domains,
            directory,
            contact,
            dir: args.acme_dir.clone(),
            challenge,
            ca_root: args.acme_ca_root.clone(),
        }))
    }
}

impl AcmeSettings {
    /// [`Self::from_args`], checked against the rest of the configuration: ACME replaces the
    /// certificate files, and HTTP-01 is answered on the plain-HTTP listener.
    pub fn from_proxy_args(
        args: &AcmeArgs,
        tls_files: bool,
        redirect_http: bool,
    ) -> Result<Option<AcmeSettings>, ConfigError> {
        let Some(settings) = Self::from_args(args)? else {
            return Ok(None);
        };
        let domains = settings.domains.join(",");
        if tls_files {
            return Err(invalid(
                "PROXY_ACME_DOMAINS",
                &domains,
                "the certificate comes either from ACME or from TLS_CERT_FILE/TLS_KEY_FILE \
                 (--tls-cert/--tls-key): remove one of the two",
            ));
        }
        if settings.challenge == Challenge::Http01 && !redirect_http {
            return Err(invalid(
                "PROXY_ACME_CHALLENGE",
                "http-01",
                "HTTP-01 is answered on the plain-HTTP listener: set PROXY_REDIRECT_HTTP \
                 (--redirect-http, e.g. 0.0.0.0:80), or use tls-alpn-01",
            ));
        }
        Ok(Some(settings))
    }
}

/// Comma-separated DNS names; wildcards need DNS-01, which the proxy cannot answer.
fn parse_domains(value: &str) -> Result<Vec<String>, ConfigError> {
    const SETTING: &str = "PROXY_ACME_DOMAINS";
    let mut domains: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.starts_with("*.") {
            return Err(invalid(
                SETTING,
                value,
                format!(
                    "{name}: wildcard names need the DNS-01 challenge, which the proxy does not \
                     answer; list each name"
                ),
            ));
        }
        if name.parse::<std::net::IpAddr>().is_ok() {
            return Err(invalid(
                SETTING,
                value,
                format!("{name}: an IP address; ACME certificates here are for DNS names"),
            ));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.len() > 253 || !name.contains('.') || !name.split('.').all(label_ok) {
            return Err(invalid(
                SETTING,
                value,
                format!(
                    "{name:?} is not a fully qualified DNS name (letters, digits, hyphens, \
                     dot-separated, e.g. app.example.com)"
                ),
            ));
        }
        if !domains.contains(&name) {
            domains.push(name);
        }
    }
    if domains.is_empty() {
        return Err(invalid(
            SETTING,
            value,
            "no name given: list the DNS names, comma-separated",
        ));
    }
    Ok(domains)
}

/// An `https://` URL (RFC 8555 §6.1: ACME runs over HTTPS only).
fn parse_directory(value: &str) -> Result<String, ConfigError> {
    const SETTING: &str = "PROXY_ACME_DIRECTORY";
    let uri: Uri = value.parse().map_err(|e| {
        invalid(
            SETTING,
            value,
            format!("not a URL ({e}); use e.g. {LETS_ENCRYPT_STAGING}"),
        )
    })?;
    if uri.scheme() != Some(&Scheme::HTTPS) || uri.host().is_none() {
        return Err(invalid(
            SETTING,
            value,
            format!("ACME directories are https:// URLs, e.g. {LETS_ENCRYPT_STAGING}"),
        ));
    }
    Ok(value.to_owned())
}

fn parse_email(value: &str) -> Result<String, ConfigError> {
    let ok = value
        .split_once('@')
        .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
        && !value.contains([' ', ',', '<', '>']);
    if !ok {
        return Err(invalid(
            "PROXY_ACME_EMAIL",
            value,
            "use one plain e-mail address, e.g. ops@example.com",
        ));
    }
    Ok(format!("mailto:{value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(domains: Option<&str>) -> AcmeArgs {
        AcmeArgs {
            acme_domains: domains.map(str::to_owned),
            ..AcmeArgs::default()
        }
    }

    #[test]
    fn off_without_domains_and_stray_settings_are_refused() {
        assert_eq!(AcmeSettings::from_args(&args(None)).unwrap(), None);
        let stray = AcmeArgs {
            acme_email: Some("a@b.c".into()),
            ..args(None)
        };
        let err = AcmeSettings::from_args(&stray).unwrap_err().to_string();
        assert!(err.contains("PROXY_ACME_EMAIL") && err.contains("PROXY_ACME_DOMAINS"));
    }

    #[test]
    fn defaults() {
        let s = AcmeSettings::from_args(&args(Some("App.Example.com, www.example.com,")))
            .unwrap()
            .unwrap();
        assert_eq!(s.domains, ["app.example.com", "www.example.com"]);
        assert_eq!(s.directory, LETS_ENCRYPT_PRODUCTION);
        assert_eq!(s.challenge, Challenge::TlsAlpn01);
        assert_eq!(s.contact, None);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: &[(AcmeArgs, &str)] = &[
            (args(Some("*.example.com")), "PROXY_ACME_DOMAINS"),
            (args(Some("localhost")), "PROXY_ACME_DOMAINS"),
            (args(Some("10.0.0.1")), "PROXY_ACME_DOMAINS"),
            (args(Some("a_b.example.com")), "PROXY_ACME_DOMAINS"),
            (args(Some(" , ")), "PROXY_ACME_DOMAINS"),
            (
                AcmeArgs {
                    acme_directory: Some("http://ca.example/dir".into()),
                    ..args(Some("a.example.com"))
                },
                "PROXY_ACME_DIRECTORY",
            ),
            (
                AcmeArgs {
                    acme_email: Some("nobody".into()),
                    ..args(Some("a.example.com"))
                },
                "PROXY_ACME_EMAIL",
            ),
            (
                AcmeArgs {
                    acme_challenge: Some("dns-01".into()),
                    ..args(Some("a.example.com"))
                },
                "PROXY_ACME_CHALLENGE",
            ),
        ];
        for (input, setting) in cases {
            let err = AcmeSettings::from_args(input).unwrap_err().to_string();
            assert!(err.starts_with(setting), "{input:?}: {err}");
        }
    }

    #[test]
    fn conflicts_with_files_and_http01_needs_the_plain_listener() {
        let on = args(Some("a.example.com"));
        assert!(AcmeSettings::from_proxy_args(&on, false, false).is_ok());
        let err = AcmeSettings::from_proxy_args(&on, true, false).unwrap_err();
        assert!(err.to_string().contains("TLS_CERT_FILE"), "{err}");
        let http01 = AcmeArgs {
            acme_challenge: Some("http-01".into()),
            ..on
        };
        let err = AcmeSettings::from_proxy_args(&http01, false, false).unwrap_err();
        assert!(err.to_string().contains("PROXY_REDIRECT_HTTP"), "{err}");
        assert!(AcmeSettings::from_proxy_args(&http01, false, true).is_ok());
    }

    #[test]
    fn email_becomes_a_mailto_contact() {
        let s = AcmeSettings::from_args(&AcmeArgs {
            acme_email: Some("ops@example.com".into()),
            acme_challenge: Some("http-01".into()),
            ..args(Some("a.example.com"))
        })
        .unwrap()
        .unwrap();
        assert_eq!(s.contact.as_deref(), Some("mailto:ops@example.com"));
        assert_eq!(s.challenge, Challenge::Http01);
    }
}
