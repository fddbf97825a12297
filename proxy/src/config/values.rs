//! The typed values of the settings besides the upstream: trusted networks, the named timeouts,
//! the limits, the request rules, and how each prints as the settings a user would type.

use std::net::IpAddr;
use std::time::Duration;

use crate::cli::ProxyArgs;
use crate::error::ConfigError;

/// A network (address + prefix length) whose forwarding headers are trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1`, `192.168.1.7/32`.
    pub fn parse(value: &str) -> Option<Cidr> {
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let addr: IpAddr = addr.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 peers compare as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Named timeouts, one per phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tls_handshake: Duration,
    pub header_read: Duration,
    pub client_idle: Duration,
    pub body_read: Duration,
    pub send: Duration,
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
    pub upstream_idle: Duration,
    pub shutdown_grace: Duration,
    pub cert_watch_interval: Duration,
}

/// Size and count limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub upstream_max_idle: usize,
    pub upstream_max_connections: usize,
}

/// What the proxy accepts from clients and passes on (besides the limits on heads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRules {
    /// Largest request body in bytes (`PROXY_MAX_BODY_BYTES`).
    pub max_body_bytes: u64,
    /// Header fields with `_` in their names are forwarded (`PROXY_ALLOW_UNDERSCORE_HEADERS`).
    pub allow_underscore_headers: bool,
    /// `Upgrade` protocol names forwarded, lower case (`PROXY_UPGRADE_PROTOCOLS`).
    pub upgrade_protocols: Vec<String>,
}

impl RequestRules {
    /// Whether `protocol` (an `Upgrade` token, `name[/version]`) may be forwarded.
    pub fn allows_upgrade(&self, protocol: &str) -> bool {
        let name = protocol.split('/').next().unwrap_or("").trim();
        self.upgrade_protocols
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name))
    }

    pub(super) fn from_args(args: &ProxyArgs) -> Result<RequestRules, ConfigError> {
        const UPGRADES: &str = "PROXY_UPGRADE_PROTOCOLS";
        let allow_underscore_headers = match args.allow_underscore_headers.as_deref() {
            None => false,
            Some(v) => parse_bool(v).ok_or_else(|| {
                ConfigError::invalid("PROXY_ALLOW_UNDERSCORE_HEADERS", v, "use true or false")
            })?,
        };
        let list = args.upgrade_protocols.trim();
        let mut upgrade_protocols = Vec::new();
        if !list.eq_ignore_ascii_case("none") {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !name.bytes().all(is_token_byte) {
                    return Err(ConfigError::invalid(
                        UPGRADES,
                        name,
                        "use protocol names (RFC 9110 tokens) separated by commas, e.g. websocket",
                    ));
                }
                // h2c is HTTP/2 in clear text: after it the connection would be a raw tunnel past
                // the proxy's per-request rules (RFC 9113 §3.1 removed the upgrade to it).
                if name.eq_ignore_ascii_case("h2c") {
                    return Err(ConfigError::invalid(
                        UPGRADES,
                        name,
                        "h2c is never forwarded: it would turn the connection into a tunnel \
                         that bypasses the proxy's per-request rules",
                    ));
                }
                upgrade_protocols.push(name.to_ascii_lowercase());
            }
        }
        Ok(RequestRules {
            max_body_bytes: args.max_body_bytes,
            allow_underscore_headers,
            upgrade_protocols,
        })
    }
}

/// The rules as the settings a user would type.
impl std::fmt::Display for RequestRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let upgrades = if self.upgrade_protocols.is_empty() {
            "none".to_owned()
        } else {
            self.upgrade_protocols.join(",")
        };
        write!(
            f,
            "PROXY_MAX_BODY_BYTES={} PROXY_ALLOW_UNDERSCORE_HEADERS={} PROXY_UPGRADE_PROTOCOLS={upgrades}",
            self.max_body_bytes, self.allow_underscore_headers
        )
    }
}

/// `true`/`1`/`yes`/`on` or `false`/`0`/`no`/`off`, in any case.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A byte of an RFC 9110 §5.6.2 token.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A duration as a setting takes it: `500ms`, `10s`, `2m`, `1h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        ms if ms % 3_600_000 == 0 && ms > 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 && ms > 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// The timeouts as the settings a user would type.
impl std::fmt::Display for Timeouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settings = [
            ("PROXY_TLS_HANDSHAKE_TIMEOUT", self.tls_handshake),
            ("PROXY_HEADER_READ_TIMEOUT", self.header_read),
            ("PROXY_CLIENT_IDLE_TIMEOUT", self.client_idle),
            ("PROXY_BODY_READ_TIMEOUT", self.body_read),
            ("PROXY_SEND_TIMEOUT", self.send),
            ("PROXY_UPSTREAM_CONNECT_TIMEOUT", self.upstream_connect),
            ("PROXY_UPSTREAM_RESPONSE_TIMEOUT", self.upstream_response),
            ("PROXY_UPSTREAM_IDLE_TIMEOUT", self.upstream_idle),
            ("PROXY_SHUTDOWN_GRACE", self.shutdown_grace),
            ("PROXY_CERT_WATCH_INTERVAL", self.cert_watch_interval),
            ("PROXY_BODY_READ_TIMEOUT", self.body_read),
            ("PROXY_SEND_TIMEOUT", self.send),
        ];
        for (i, (name, value)) in settings.into_iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={}", format_duration(value))?;
        }
        Ok(())
    }
}

/// The limits as the settings a user would type.
impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PROXY_MAX_CONNECTIONS={} PROXY_MAX_HEADER_BYTES={} PROXY_MAX_HEADERS={} PROXY_UPSTREAM_MAX_IDLE={} PROXY_UPSTREAM_MAX_CONNECTIONS={}",
            self.max_connections,
            self.max_header_bytes,
            self.max_headers,
            self.upstream_max_idle,
            self.upstream_max_connections
        )
    }
}

/// The trusted proxy networks as `PROXY_TRUSTED_PROXIES` takes them.
pub fn format_cidrs(cidrs: &[Cidr]) -> String {
    let parts: Vec<String> = cidrs
        .iter()
        .map(|c| format!("{}/{}", c.addr, c.prefix))
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let cases = [
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.1.2.3", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "::ffff:127.0.0.1", true),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("::1", "::1", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "10.0.0.1", false),
        ];
        for (net, ip, expected) in cases {
            let net = Cidr::parse(net).unwrap();
            assert_eq!(net.contains(ip.parse().unwrap()), expected, "{net:?} {ip}");
        }
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("example.com").is_none());
    }
}
