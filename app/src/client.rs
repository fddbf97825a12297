//! Which address a request came from: the TCP peer, or, when the peer is a trusted proxy, the
//! client that proxy names in `X-Forwarded-For` (else `Forwarded`, RFC 7239 §5.2).
//!
//! Forwarding headers are trusted only from the configured proxy peers: anyone else could write
//! any address there and escape the login throttle. Proxies append the peer they saw, so the list
//! is read from the right, skipping trusted proxies; the first other address is the client.

use std::fmt;
use std::net::IpAddr;

use http::HeaderMap;

/// Default trusted proxy peers: loopback, where the proxy sidecar connects from.
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.0/8,::1/128";

/// A set of networks (`ADDR/PREFIX`, or a bare address) whose peers may name the client.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nets: Vec<String> = self.0.iter().map(|(a, p)| format!("{a}/{p}")).collect();
        write!(f, "{}", nets.join(","))
    }
}

impl TrustedProxies {
    /// Parses a comma-separated list of networks; an empty list trusts no peer.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, prefix) = item.split_once('/').unwrap_or((item, ""));
            let addr: IpAddr = addr.parse().map_err(|_| {
                format!("`{item}` is not an IP address or network (ADDR or ADDR/PREFIX)")
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                "" => max,
                p => p
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("`{item}`: the prefix must be 0 to {max}"))?,
            };
            nets.push((addr, prefix));
        }
        Ok(Self(nets))
    }

    /// True when `addr` is in one of the networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|&(net, prefix)| match (net, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                masked(u32::from(net).into(), 32, prefix) == masked(u32::from(a).into(), 32, prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                masked(net.into(), 128, prefix) == masked(a.into(), 128, prefix)
            }
            _ => false,
        })
    }
}

fn masked(bits: u128, width: u8, prefix: u8) -> u128 {
    let drop = u32::from(width - prefix.min(width));
    bits.checked_shr(drop).unwrap_or(0)
}

/// The client address of a request from `peer` with these headers.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let hops = list(headers, "x-forwarded-for", Some);
    let hops = if hops.is_empty() {
        list(headers, "forwarded", |element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then_some(value)
            })
        })
    } else {
        hops
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        // An unreadable hop (`unknown`, an obfuscated name) ends what can be believed.
        let Some(addr) = node_address(hop) else { break };
        client = addr;
        if !trusted.contains(addr) {
            break;
        }
    }
    client
}

/// Every comma-separated element of every `name` header, mapped by `pick`.
fn list<'a>(
    headers: &'a HeaderMap,
    name: &str,
    pick: impl Fn(&'a str) -> Option<&'a str>,
) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(pick)
        .map(str::trim)
        .collect()
}

/// The address in a node: `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:80"`, `2001:db8::1`.
fn node_address(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse()
        .ok()
        .or_else(|| {
            node.rsplit_once(':')?
                .0
                .parse::<std::net::Ipv4Addr>()
                .ok()
                .map(IpAddr::V4)
        })
        .map(|addr: IpAddr| addr.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn trusted_proxies_parsing_and_matching() {
        let nets = TrustedProxies::parse(DEFAULT_TRUSTED_PROXIES).unwrap();
        for (addr, want) in [
            ("127.0.0.1", true),
            ("127.255.0.9", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("128.0.0.1", false),
            ("10.0.0.1", false),
            ("::2", false),
        ] {
            assert_eq!(nets.contains(ip(addr)), want, "{addr}");
        }
        let nets = TrustedProxies::parse(" 10.0.0.0/8 , 192.0.2.7, fd00::/8,0.0.0.0/0").unwrap();
        assert_eq!(
            format!("{nets:?}"),
            "10.0.0.0/8,192.0.2.7/32,fd00::/8,0.0.0.0/0"
        );
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
        for (bad, why) in [
            ("localhost", "not an IP address"),
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/x", "prefix"),
        ] {
            let err = TrustedProxies::parse(bad).unwrap_err();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn client_address_table() {
        let trusted = TrustedProxies::parse("127.0.0.0/8,10.0.0.0/8").unwrap();
        /// Peer, request headers, the client address wanted.
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            &'static str,
        );
        let cases: &[Case] = &[
            // Untrusted peers cannot name anyone.
            ("192.0.2.9", &[("x-forwarded-for", "1.2.3.4")], "192.0.2.9"),
            ("127.0.0.1", &[], "127.0.0.1"),
            ("127.0.0.1", &[("x-forwarded-for", "1.2.3.4")], "1.2.3.4"),
            // A client's own forged entry sits left of what the proxy appended.
            (
                "127.0.0.1",
                &[("x-forwarded-for", "6.6.6.6, 1.2.3.4")],
                "1.2.3.4",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "1.2.3.4, 10.1.1.1")],
                "1.2.3.4",
            ),
            (
                "127.0.0.1",
                &[
                    ("x-forwarded-for", "1.2.3.4"),
                    ("x-forwarded-for", "10.0.0.2"),
                ],
                "1.2.3.4",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "unknown, 1.2.3.4:5678")],
                "1.2.3.4",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "10.0.0.3, unknown")],
                "127.0.0.1",
            ),
            (
                "127.0.0.1",
                &[(
                    "forwarded",
                    "for=192.0.2.60;proto=https, for=\"[2001:db8::17]:4711\"",
                )],
                "2001:db8::17",
            ),
            // X-Forwarded-For wins over Forwarded, as for the origin.
            (
                "127.0.0.1",
                &[("forwarded", "for=5.5.5.5"), ("x-forwarded-for", "1.2.3.4")],
                "1.2.3.4",
            ),
            (
                "::ffff:127.0.0.1",
                &[("x-forwarded-for", "::ffff:1.2.3.4")],
                "1.2.3.4",
            ),
        ];
        for (peer, pairs, want) in cases {
            let mut headers = HeaderMap::new();
            for (k, v) in *pairs {
                headers.append(*k, HeaderValue::from_static(v));
            }
            assert_eq!(
                client_address(ip(peer), &headers, &trusted),
                ip(want),
                "{peer} {pairs:?}"
            );
        }
    }
}
