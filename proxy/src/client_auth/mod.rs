//! Client certificates (mutual TLS), as a sidecar between services uses them: the settings
//! (`PROXY_CLIENT_CA`, `PROXY_CLIENT_AUTH`, `PROXY_CLIENT_ALLOW`), the verifier the TLS handshake
//! asks ([`verifier`]: the chain to the CA file, reloaded like the server certificate, then the
//! allow-list), and the identity forwarded to the upstream ([`identity`]: Envoy's
//! `X-Forwarded-Client-Cert`, which the forwarding headers strip from every client).

pub mod identity;
pub mod verifier;

use std::path::PathBuf;

pub use identity::{AllowList, Allowed, Identity};
pub use verifier::{ClientCaError, ClientVerifier};

use crate::error::ConfigError;

/// The client-certificate settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientAuthArgs {
    /// CA certificates (PEM) that client certificates must chain to; setting it turns on client
    /// certificate verification (mutual TLS). Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "PROXY_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// `require` (a client without a valid certificate is refused in the handshake) or
    /// `optional` (one without a certificate is served, without X-Forwarded-Client-Cert; one with
    /// an invalid certificate is still refused) [default: require, with --client-ca]
    #[arg(long, env = "PROXY_CLIENT_AUTH", value_name = "MODE")]
    pub client_auth: Option<String>,
    /// Comma-separated identities allowed to connect, matched against the verified certificate:
    /// `cn:NAME` (subject common name), `dns:NAME`, `uri:URI` (subject alternative names, e.g.
    /// a SPIFFE ID) [default: any client with a verified certificate]
    #[arg(long, env = "PROXY_CLIENT_ALLOW", value_name = "IDS")]
    pub client_allow: Option<String>,
}

/// Whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Require,
    Optional,
}

impl Mode {
    /// As `PROXY_CLIENT_AUTH` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Require => "require",
            Mode::Optional => "optional",
        }
    }
}

/// Validated client-certificate settings: present when `PROXY_CLIENT_CA` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthSettings {
    /// The CA file client certificates must chain to.
    pub ca: PathBuf,
    pub mode: Mode,
    pub allow: AllowList,
}

impl ClientAuthSettings {
    /// Validates the arguments (pure): `None` when no CA is set. A mode or an allow-list without
    /// a CA would do nothing, so it is an error rather than silently plain TLS.
    pub fn from_args(args: &ClientAuthArgs) -> Result<Option<ClientAuthSettings>, ConfigError> {
        let Some(ca) = &args.client_ca else {
            for (setting, value) in [
                ("PROXY_CLIENT_AUTH", &args.client_auth),
                ("PROXY_CLIENT_ALLOW", &args.client_allow),
            ] {
                if let Some(value) = value {
                    return Err(ConfigError::Invalid {
                        setting,
                        value: value.clone(),
                        problem: "client certificates are checked only with PROXY_CLIENT_CA \
                                  (--client-ca) set: set it to the CA file, or remove this"
                            .into(),
                    });
                }
            }
            return Ok(None);
        };
        let mode = match args.client_auth.as_deref().map(str::trim) {
            None => Mode::Require,
            Some(v) if v.eq_ignore_ascii_case("require") => Mode::Require,
            Some(v) if v.eq_ignore_ascii_case("optional") => Mode::Optional,
            Some(v) => {
                return Err(ConfigError::Invalid {
                    setting: "PROXY_CLIENT_AUTH",
                    value: v.to_owned(),
                    problem: "use require or optional".into(),
                })
            }
        };
        let allow = match &args.client_allow {
            Some(value) => AllowList::parse(value)?,
            None => AllowList::default(),
        };
        Ok(Some(ClientAuthSettings {
            ca: ca.clone(),
            mode,
            allow,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ca: Option<&str>, mode: Option<&str>, allow: Option<&str>) -> ClientAuthArgs {
        ClientAuthArgs {
            client_ca: ca.map(PathBuf::from),
            client_auth: mode.map(str::to_owned),
            client_allow: allow.map(str::to_owned),
        }
    }

    #[test]
    fn settings_come_from_flags_and_environment() {
        let argv: Vec<std::ffi::OsString> = [
            "proxy",
            "--env-file",
            "/dev/null",
            "--client-auth",
            "optional",
        ]
        .iter()
        .map(Into::into)
        .collect();
        let env = [
            ("PROXY_CLIENT_CA", "/etc/proxy/clients.pem"),
            ("PROXY_CLIENT_ALLOW", "uri:spiffe://t/x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let cli = crate::cli::parse(&argv, &env).unwrap();
        let settings = ClientAuthSettings::from_args(&cli.proxy.client_auth)
            .unwrap()
            .unwrap();
        assert_eq!(settings.ca, PathBuf::from("/etc/proxy/clients.pem"));
        assert_eq!(settings.mode, Mode::Optional);
        assert_eq!(settings.allow.0, [Allowed::Uri("spiffe://t/x".into())]);
    }

    #[test]
    fn settings_validation() {
        assert_eq!(
            ClientAuthSettings::from_args(&args(None, None, None)).unwrap(),
            None
        );
        let on = ClientAuthSettings::from_args(&args(Some("/ca.pem"), None, None))
            .unwrap()
            .unwrap();
        assert_eq!((on.mode, on.allow.0.len()), (Mode::Require, 0));
        let optional =
            ClientAuthSettings::from_args(&args(Some("/ca.pem"), Some("Optional"), Some("cn:a")))
                .unwrap()
                .unwrap();
        assert_eq!(optional.mode, Mode::Optional);
        assert_eq!(optional.allow.0, [Allowed::Cn("a".into())]);
        // (args, the setting the error names)
        let errors = [
            (args(None, Some("require"), None), "PROXY_CLIENT_AUTH"),
            (args(None, None, Some("cn:a")), "PROXY_CLIENT_ALLOW"),
            (
                args(Some("/ca.pem"), Some("maybe"), None),
                "PROXY_CLIENT_AUTH",
            ),
            (args(Some("/ca.pem"), None, Some("a")), "PROXY_CLIENT_ALLOW"),
        ];
        for (args, setting) in errors {
            match ClientAuthSettings::from_args(&args) {
                Err(ConfigError::Invalid { setting: s, .. }) => assert_eq!(s, setting),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }
}
