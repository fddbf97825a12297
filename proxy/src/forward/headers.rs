//! Rewriting a request's and a response's header fields for forwarding (RFC 9110 §7.6):
//! hop-by-hop fields stripped both ways, `X-Forwarded-For/Proto/Host`, `Forwarded` (RFC 7239)
//! and `Via` set on requests. Pure functions of the header map and the client's peer.

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use tracing::debug;

use crate::config::Cidr;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// Headers a client could use to impersonate another address or scheme to the app; removed
/// unless the peer is a trusted proxy.
static SPOOFABLE: [HeaderName; 3] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// The client connection's peer, with the header values derived from it once per connection.
#[derive(Debug)]
pub struct Peer {
    pub ip: IpAddr,
    /// The peer's forwarding headers are kept (it is in `PROXY_TRUSTED_PROXIES`).
    pub trusted: bool,
    /// The peer's address as an `X-Forwarded-For` value.
    x_forwarded_for: HeaderValue,
    /// `for=...` of the peer's `Forwarded` element (RFC 7239 §6).
    forwarded_for: String,
    /// The last `Forwarded` element made, with the `Host` it was made for: a connection's
    /// requests nearly always name one host, so the element is formatted once per connection.
    forwarded: Mutex<Option<(HeaderValue, HeaderValue)>>,
    /// The `X-Forwarded-Client-Cert` value of the client's verified certificate (mutual TLS).
    client_cert: Option<HeaderValue>,
}

impl Peer {
    /// Describes a connection's peer.
    pub fn new(ip: IpAddr, trusted_proxies: &[Cidr]) -> Peer {
        let ip = ip.to_canonical();
        let text = ip.to_string();
        // RFC 7239 §6: IPv6 addresses are bracketed and quoted.
        let forwarded_for = match ip {
            IpAddr::V4(_) => format!("for={text}"),
            IpAddr::V6(_) => format!("for=\"[{text}]\""),
        };
        Peer {
            ip,
            trusted: trusted_proxies.iter().any(|net| net.contains(ip)),
            x_forwarded_for: HeaderValue::from_str(&text)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            forwarded_for,
            forwarded: Mutex::new(None),
            client_cert: None,
        }
    }

    /// The peer with the `X-Forwarded-Client-Cert` value of its verified certificate, if any.
    pub fn with_client_cert(mut self, value: Option<HeaderValue>) -> Peer {
        self.client_cert = value;
        self
    }

    /// `for=...;host="...";proto=https` (RFC 7239 §4) for a request to `host`.
    fn forwarded_element(&self, host: Option<&HeaderValue>) -> Option<HeaderValue> {
        let Some(host) = host else {
            return forwarded_element(self, None);
        };
        // A poisoned cache is still a valid cache (it is replaced whole).
        let mut cached = self
            .forwarded
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((for_host, element)) = &*cached {
            if for_host == host {
                return Some(element.clone());
            }
        }
        let element = forwarded_element(self, Some(host))?;
        // A copy of the host, not a clone: a parsed value is a view into hyper's read buffer,
        // and holding it would keep that whole buffer alive for the connection's life.
        if let Ok(host) = HeaderValue::from_bytes(host.as_bytes()) {
            *cached = Some((host, element.clone()));
        }
        Some(element)
    }
}

/// The header fields the proxy acts on that a message carries, found in one pass over its names.
///
/// Every `contains_key`, `get` or `remove` hashes the name and probes the map, whether or not the
/// field is there, and most requests carry none of these fields but `Host`: one pass comparing
/// lengths and bytes, then lookups only for what is present (and `append` instead of `insert` for
/// what is absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderScan(u16);

impl HeaderScan {
    const CONNECTION: u16 = 1 << 0;
    const KEEP_ALIVE: u16 = 1 << 1;
    const PROXY_CONNECTION: u16 = 1 << 2;
    const TRANSFER_ENCODING: u16 = 1 << 3;
    const TE: u16 = 1 << 4;
    const UPGRADE: u16 = 1 << 5;
    pub const HOST: u16 = 1 << 6;
    const X_FORWARDED_FOR: u16 = 1 << 7;
    const X_FORWARDED_PROTO: u16 = 1 << 8;
    const X_FORWARDED_HOST: u16 = 1 << 9;
    const FORWARDED: u16 = 1 << 10;
    /// Any of [`SPOOFABLE`].
    const SPOOFABLE: u16 = 1 << 11;
    const X_FORWARDED_CLIENT_CERT: u16 = 1 << 12;
    /// Any field whose name contains `_` (dropped before forwarding unless allowed).
    pub const UNDERSCORE: u16 = 1 << 13;

    pub fn scan(headers: &HeaderMap) -> HeaderScan {
        HeaderScan(
            headers
                .keys()
                .fold(0, |bits, name| bits | HeaderScan::bit(name)),
        )
    }

    /// The field's bit, or 0 for a field the proxy passes through untouched. Names are lower
    /// case (`HeaderName` guarantees it).
    fn bit(name: &HeaderName) -> u16 {
        let name = name.as_str();
        match (name.len(), name) {
            (2, "te") => HeaderScan::TE,
            (4, "host") => HeaderScan::HOST,
            (7, "upgrade") => HeaderScan::UPGRADE,
            (9, "forwarded") => HeaderScan::FORWARDED,
            (9, "x-real-ip") => HeaderScan::SPOOFABLE,
            (10, "connection") => HeaderScan::CONNECTION,
            (10, "keep-alive") => HeaderScan::KEEP_ALIVE,
            (15, "x-forwarded-for") => HeaderScan::X_FORWARDED_FOR,
            (16, "proxy-connection") => HeaderScan::PROXY_CONNECTION,
            (16, "x-forwarded-host") => HeaderScan::X_FORWARDED_HOST,
            (16, "x-forwarded-port") => HeaderScan::SPOOFABLE,
            (17, "transfer-encoding") => HeaderScan::TRANSFER_ENCODING,
            (17, "x-forwarded-proto") => HeaderScan::X_FORWARDED_PROTO,
            (18, "x-forwarded-prefix") => HeaderScan::SPOOFABLE,
            (23, "x-forwarded-client-cert") => HeaderScan::X_FORWARDED_CLIENT_CERT,
            _ if name.as_bytes().contains(&b'_') => HeaderScan::UNDERSCORE,
            _ => 0,
        }
    }

    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

/// Whether the request asks for a protocol upgrade (RFC 9110 §7.8): HTTP/1.1, `Upgrade`
/// present and `Connection` naming it.
pub fn is_upgrade_request(version: Version, headers: &HeaderMap) -> bool {
    is_upgrade(version, headers, HeaderScan::scan(headers))
}

pub(super) fn is_upgrade(version: Version, headers: &HeaderMap, fields: HeaderScan) -> bool {
    version == Version::HTTP_11
        && fields.has(HeaderScan::UPGRADE)
        && fields.has(HeaderScan::CONNECTION)
        && connection_has(headers, "upgrade")
}

/// The request's `Upgrade` protocols that `allowed` accepts, as the value to forward (in the
/// client's order of preference, RFC 9110 §7.8), or `None` when it names none of them.
pub(super) fn allowed_upgrade(
    headers: &HeaderMap,
    allowed: impl Fn(&str) -> bool,
) -> Option<HeaderValue> {
    let protocols: Vec<&str> = upgrade_tokens(headers).filter(|p| allowed(p)).collect();
    if protocols.is_empty() {
        return None;
    }
    HeaderValue::from_str(&protocols.join(", ")).ok()
}

/// Whether a `101`'s `Upgrade` names only protocols the request asked for (`asked`, the value
/// forwarded), and at least one: a tunnel is opened for nothing else (RFC 9110 §7.8, "the
/// server MUST NOT switch to a protocol that was not indicated by the client").
pub(super) fn upgrade_answers(response: &HeaderMap, asked: &HeaderValue) -> bool {
    let asked: Vec<&str> = asked
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    let mut named = upgrade_tokens(response).peekable();
    named.peek().is_some() && named.all(|p| asked.iter().any(|a| a.eq_ignore_ascii_case(p)))
}

/// The protocols an `Upgrade` field lists.
fn upgrade_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes every field whose name contains `_`. Such a name is valid HTTP, but CGI, WSGI and
/// Rack turn `-` into `_` to make variable names, so an app reading `HTTP_X_FORWARDED_FOR` would
/// see a client's `X_Forwarded_For` beside (or instead of) the proxy's `X-Forwarded-For`. nginx
/// drops them by default (`underscores_in_headers off`).
pub(super) fn drop_underscored(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        debug!(header = %name, "dropping a header field whose name contains an underscore");
        headers.remove(&name);
    }
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE` (except `trailers`), `Transfer-Encoding`, and
/// `Upgrade` unless this message is part of an upgrade, in which case `Connection: upgrade`
/// and `Upgrade` are kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_fields(headers, HeaderScan::scan(headers), keep_upgrade);
}

/// [`strip_hop_by_hop`] with the fields already scanned: only those present are looked up.
pub(super) fn strip_fields(headers: &mut HeaderMap, fields: HeaderScan, keep_upgrade: bool) {
    if fields.has(HeaderScan::CONNECTION) {
        // Most clients send only `keep-alive`/`close`; collecting names allocates only when the
        // header names something else. The field's values are taken out as they are read (one
        // lookup, not a `get_all` and a `remove`).
        let mut named: Vec<HeaderName> = Vec::new();
        if let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION) {
            for value in entry.remove_entry_mult().1 {
                let Ok(value) = value.to_str() else { continue };
                for token in value.split(',').map(str::trim) {
                    let skip = token.is_empty()
                        || token.eq_ignore_ascii_case("keep-alive")
                        || token.eq_ignore_ascii_case("close")
                        || token.eq_ignore_ascii_case("upgrade");
                    if !skip {
                        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                            named.push(name);
                        }
                    }
                }
            }
        }
        for name in &named {
            // `Host` is end-to-end whatever a client claims; forwarding headers are set after
            // stripping, so naming them here cannot remove the proxy's own values.
            if name != header::HOST {
                headers.remove(name);
            }
        }
    }
    if fields.has(HeaderScan::KEEP_ALIVE) {
        headers.remove(&KEEP_ALIVE);
    }
    if fields.has(HeaderScan::PROXY_CONNECTION) {
        headers.remove(&PROXY_CONNECTION);
    }
    if fields.has(HeaderScan::TRANSFER_ENCODING) {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if fields.has(HeaderScan::TE) {
        if let Some(te) = headers.remove(header::TE) {
            let trailers = te.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
            if trailers {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if fields.has(HeaderScan::UPGRADE) {
        headers.remove(header::UPGRADE);
    }
}

/// Sets `X-Forwarded-For/Proto/Host`, `Forwarded`, `Via` and (with a verified client
/// certificate) `X-Forwarded-Client-Cert` on a request going upstream.
///
/// From an untrusted peer, incoming forwarding headers are replaced (a client cannot make the app
/// believe it is someone else); from a trusted proxy they are kept and the peer is appended.
/// `host` is the authority the client addressed.
pub fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: &Peer,
    host: Option<&HeaderValue>,
    version: Version,
) {
    set_forwarding_fields(headers, HeaderScan::scan(headers), peer, host, version);
}

/// [`set_forwarding_headers`] with the fields already scanned. `fields` may name a field that is
/// gone since (which costs a lookup) but never misses one that is there.
pub(super) fn set_forwarding_fields(
    headers: &mut HeaderMap,
    fields: HeaderScan,
    peer: &Peer,
    host: Option<&HeaderValue>,
    version: Version,
) {
    // Envoy's `sanitize`: what a client sends as X-Forwarded-Client-Cert never passes, not even
    // from a trusted proxy (its certificate is not the one the upstream would take it for); the
    // upstream gets the proxy's value for the certificate verified on this connection, if any.
    if fields.has(HeaderScan::X_FORWARDED_CLIENT_CERT) {
        headers.remove(&X_FORWARDED_CLIENT_CERT);
    }
    if let Some(cert) = &peer.client_cert {
        headers.append(&X_FORWARDED_CLIENT_CERT, cert.clone());
    }
    let https = HeaderValue::from_static("https");
    let element = peer.forwarded_element(host);
    if peer.trusted {
        let xff = match joined(headers, &X_FORWARDED_FOR) {
            Some(previous) => HeaderValue::from_str(&format!("{previous}, {}", peer.ip))
                .unwrap_or(peer.x_forwarded_for.clone()),
            None => peer.x_forwarded_for.clone(),
        };
        headers.insert(&X_FORWARDED_FOR, xff);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, https);
        }
        if let (false, Some(host)) = (headers.contains_key(&X_FORWARDED_HOST), host) {
            headers.insert(&X_FORWARDED_HOST, host.clone());
        }
        if let Some(element) = element {
            headers.append(&FORWARDED, element);
        }
    } else {
        if fields.has(HeaderScan::SPOOFABLE) {
            for name in &SPOOFABLE {
                headers.remove(name);
            }
        }
        // The client's own values are replaced; where it sent none, `append` adds without first
        // removing.
        let mut set = |bit: u16, name: &HeaderName, value: Option<HeaderValue>| match value {
            Some(value) if fields.has(bit) => {
                headers.insert(name, value);
            }
            Some(value) => {
                headers.append(name, value);
            }
            None if fields.has(bit) => {
                headers.remove(name);
            }
            None => {}
        };
        set(
            HeaderScan::X_FORWARDED_FOR,
            &X_FORWARDED_FOR,
            Some(peer.x_forwarded_for.clone()),
        );
        set(
            HeaderScan::X_FORWARDED_PROTO,
            &X_FORWARDED_PROTO,
            Some(https),
        );
        set(
            HeaderScan::X_FORWARDED_HOST,
            &X_FORWARDED_HOST,
            host.cloned(),
        );
        set(HeaderScan::FORWARDED, &FORWARDED, element);
    }
    // RFC 9110 §7.6.3: a gateway MUST send Via on requests it forwards; the pseudonym hides the
    // proxy's host name. Responses get none (that is optional and would only advertise us).
    let via = match version {
        Version::HTTP_2 => "2 proxy",
        Version::HTTP_10 => "1.0 proxy",
        _ => "1.1 proxy",
    };
    headers.append(header::VIA, HeaderValue::from_static(via));
}

/// All values of a (list-valued) header joined with `, `.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for value in headers.get_all(name) {
        let Ok(value) = value.to_str() else { continue };
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(value);
            }
            None => out = Some(value.to_owned()),
        }
    }
    out
}

/// `for=...;host="...";proto=https` (RFC 7239 §4).
fn forwarded_element(peer: &Peer, host: Option<&HeaderValue>) -> Option<HeaderValue> {
    let host = host
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.contains(['"', '\\']));
    let value = match host {
        Some(host) => format!("{};host=\"{host}\";proto=https", peer.forwarded_for),
        None => format!("{};proto=https", peer.forwarded_for),
    };
    HeaderValue::from_str(&value).ok()
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 allows one, joined with `; `
/// (RFC 9113 §8.2.3).
pub(super) fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_stripping() {
        // (headers in, keep upgrade, header names left)
        type Case<'a> = (&'a [(&'a str, &'a str)], bool, &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("accept", "*/*"),
                ],
                false,
                &["accept"],
            ),
            (
                &[
                    ("Connection", "X-Secret, close"),
                    ("x-secret", "1"),
                    ("x-other", "2"),
                ],
                false,
                &["x-other"],
            ),
            (
                &[
                    ("connection", "a"),
                    ("connection", "b"),
                    ("a", "1"),
                    ("b", "2"),
                ],
                false,
                &[],
            ),
            (
                &[
                    ("proxy-connection", "keep-alive"),
                    ("transfer-encoding", "chunked"),
                ],
                false,
                &[],
            ),
            (&[("te", "gzip")], false, &[]),
            (&[("te", "trailers, deflate")], false, &["te"]),
            (&[("upgrade", "websocket")], false, &[]),
            (
                &[("connection", "Upgrade"), ("upgrade", "websocket")],
                true,
                &["connection", "upgrade"],
            ),
            (
                &[
                    ("connection", "upgrade, x-drop"),
                    ("x-drop", "1"),
                    ("upgrade", "websocket"),
                ],
                true,
                &["connection", "upgrade"],
            ),
        ];
        for (input, keep_upgrade, expected) in cases {
            let mut map = headers(input);
            strip_hop_by_hop(&mut map, *keep_upgrade);
            assert_eq!(names(&map), *expected, "{input:?}");
        }
        let mut map = headers(&[("te", "trailers, deflate")]);
        strip_hop_by_hop(&mut map, false);
        assert_eq!(map["te"], "trailers");
    }

    #[test]
    fn forwarding_headers_untrusted_peer_replaces() {
        let peer = Peer::new("203.0.113.7".parse().unwrap(), &[]);
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        let host = HeaderValue::from_static("app.example:8443");
        set_forwarding_headers(&mut map, &peer, Some(&host), Version::HTTP_11);
        assert_eq!(map["x-forwarded-for"], "203.0.113.7");
        assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-host"], "app.example:8443");
        assert_eq!(
            map["forwarded"],
            "for=203.0.113.7;host=\"app.example:8443\";proto=https"
        );
        assert!(!map.contains_key("x-real-ip"));
        assert_eq!(map["via"], "1.1 proxy");
    }

    #[test]
    fn forwarding_headers_trusted_peer_appends() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let peer = Peer::new("10.1.1.1".parse().unwrap(), &trusted);
        let mut map = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "front.example"),
            ("forwarded", "for=198.51.100.1"),
            ("via", "1.1 front"),
        ]);
        set_forwarding_headers(&mut map, &peer, None, Version::HTTP_2);
        assert_eq!(
            map["x-forwarded-for"],
            "198.51.100.1, 198.51.100.2, 10.1.1.1"
        );
        assert_eq!(map["x-forwarded-host"], "front.example");
        let forwarded: Vec<_> = map.get_all("forwarded").iter().collect();
        assert_eq!(forwarded, ["for=198.51.100.1", "for=10.1.1.1;proto=https"]);
        let via: Vec<_> = map.get_all("via").iter().collect();
        assert_eq!(via, ["1.1 front", "2 proxy"]);
    }

    #[test]
    fn field_scan_finds_every_field_the_proxy_acts_on() {
        let acted_on = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "te",
            "upgrade",
            "host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-real-ip",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-client-cert",
            "x_forwarded_for",
        ];
        let mut all = 0;
        for name in acted_on {
            let bit = HeaderScan::bit(&HeaderName::from_static(name));
            assert_ne!(bit, 0, "{name}");
            all |= bit;
        }
        assert_eq!(
            all,
            (1 << 14) - 1,
            "one bit per field (the spoofable ones share one, as do underscored names)"
        );
        // SPOOFABLE lists exactly the fields that share the spoofable bit.
        for name in &SPOOFABLE {
            assert_eq!(HeaderScan::bit(name), HeaderScan::SPOOFABLE, "{name}");
        }
        for name in [
            "accept",
            "cookie",
            "user-agent",
            "content-length",
            "x-forwarded-foo",
            "via",
            "tex",
            "hosts",
        ] {
            assert_eq!(HeaderScan::bit(&HeaderName::from_static(name)), 0, "{name}");
        }
        // Mixed-case input is lower-cased by `HeaderName`.
        let name = HeaderName::from_bytes(b"X-Forwarded-For").unwrap();
        assert_eq!(HeaderScan::bit(&name), HeaderScan::X_FORWARDED_FOR);
    }

    #[test]
    fn ipv6_peer_is_quoted_in_forwarded() {
        let peer = Peer::new("2001:db8::1".parse().unwrap(), &[]);
        let mut map = HeaderMap::new();
        set_forwarding_headers(&mut map, &peer, None, Version::HTTP_11);
        assert_eq!(map["forwarded"], "for=\"[2001:db8::1]\";proto=https");
        assert_eq!(map["x-forwarded-for"], "2001:db8::1");
        let mapped = Peer::new("::ffff:192.0.2.1".parse().unwrap(), &[]);
        assert_eq!(mapped.ip.to_string(), "192.0.2.1");
    }

    #[test]
    fn upgrade_detection_and_cookie_join() {
        let up = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade_request(Version::HTTP_11, &up));
        assert!(!is_upgrade_request(Version::HTTP_2, &up));
        assert!(!is_upgrade_request(
            Version::HTTP_11,
            &headers(&[("upgrade", "websocket")])
        ));

        // Only allowed protocols are forwarded; a 101 must name one of those.
        let asked = headers(&[("upgrade", "h2c, WebSocket, foo/2")]);
        let allow = |p: &str| p.eq_ignore_ascii_case("websocket") || p == "foo/2";
        let forwarded = allowed_upgrade(&asked, allow).unwrap();
        assert_eq!(forwarded, "WebSocket, foo/2");
        assert!(allowed_upgrade(&headers(&[("upgrade", "h2c")]), allow).is_none());
        for (answer, ok) in [
            (&[("upgrade", "websocket")][..], true),
            (&[("upgrade", "foo/2")][..], true),
            (&[("upgrade", "h2c")][..], false),
            (&[("upgrade", "websocket, h2c")][..], false),
            (&[][..], false),
        ] {
            assert_eq!(
                upgrade_answers(&headers(answer), &forwarded),
                ok,
                "{answer:?}"
            );
        }

        // Underscored names are found by the scan and dropped.
        let mut map = headers(&[("x_forwarded_for", "6.6.6.6"), ("x-ok", "1"), ("a_b", "2")]);
        assert!(HeaderScan::scan(&map).has(HeaderScan::UNDERSCORE));
        drop_underscored(&mut map);
        assert_eq!(names(&map), ["x-ok"]);
        assert!(!HeaderScan::scan(&map).has(HeaderScan::UNDERSCORE));

        let mut cookies = headers(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut cookies);
        assert_eq!(cookies["cookie"], "a=1; b=2");
        assert_eq!(cookies.get_all("cookie").iter().count(), 1);
    }
}
