//! Origins: parsing and normalising the allowed-origin entries, matching a request's `Origin`
//! against them (exact, `https://*.example.com`, full-match regex), and recognising same-origin.

use std::collections::BTreeSet;

use regex::Regex;

/// Longest `Origin` value the policy looks at; a real serialised origin is far shorter.
pub(crate) const MAX_ORIGIN_BYTES: usize = 1024;

/// One allowed-origin entry as written in `ALLOW_ORIGINS`, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OriginEntry {
    Null,
    Exact(String),
    Wildcard(WildcardOrigin),
}

/// `scheme://*.suffix[:port]`: one or more whole DNS labels in front of `suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WildcardOrigin {
    /// `https://`
    scheme_prefix: String,
    /// `.example.com`, with the leading dot so that `evilexample.com` cannot match.
    suffix: String,
    /// `:8443`, or empty for the scheme's default port.
    port: String,
}

impl WildcardOrigin {
    fn matches(&self, origin: &str) -> bool {
        let Some(rest) = origin.strip_prefix(self.scheme_prefix.as_str()) else {
            return false;
        };
        let Some(host) = rest.strip_suffix(self.port.as_str()) else {
            return false;
        };
        let Some(labels) = host.strip_suffix(self.suffix.as_str()) else {
            return false;
        };
        // Whole labels only: `a.b` matches, but not ``, `a.`, `.a`, `a/b`, `a:1`, `A`.
        !labels.is_empty()
            && labels.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    })
            })
    }

    /// The pattern as written in canonical form.
    pub(crate) fn pattern(&self) -> String {
        format!("{}*{}{}", self.scheme_prefix, self.suffix, self.port)
    }
}

/// The allowed origins, compiled for matching.
#[derive(Debug, Default)]
pub(crate) struct OriginRules {
    pub(crate) any: bool,
    pub(crate) null: bool,
    /// Ordered, not hashed: a lookup among the few origins a policy lists is a handful of
    /// string comparisons, cheaper than hashing the request's origin with SipHash.
    pub(crate) exact: BTreeSet<Box<str>>,
    pub(crate) wildcards: Vec<WildcardOrigin>,
    pub(crate) regex: Option<Regex>,
    /// The regex as the user wrote it, for messages.
    pub(crate) regex_source: Option<String>,
}

/// Which rule let an origin in (for `explain` and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OriginMatch {
    Any,
    Null,
    Exact,
    Wildcard(String),
    Regex(String),
}

impl OriginRules {
    /// The rule that allows `origin`, if any. `origin` is the request's serialised origin.
    pub(crate) fn find(&self, origin: &str) -> Option<OriginMatch> {
        if self.any {
            return Some(OriginMatch::Any);
        }
        if origin == "null" {
            return self.null.then_some(OriginMatch::Null);
        }
        if self.exact.contains(origin) {
            return Some(OriginMatch::Exact);
        }
        if let Some(w) = self.wildcards.iter().find(|w| w.matches(origin)) {
            return Some(OriginMatch::Wildcard(w.pattern()));
        }
        match (&self.regex, &self.regex_source) {
            (Some(re), Some(src)) if re.is_match(origin) => Some(OriginMatch::Regex(src.clone())),
            _ => None,
        }
    }

    /// Allocation-free form of [`OriginRules::find`] for the hot path.
    pub(crate) fn allows(&self, origin: &str) -> bool {
        if self.any {
            return true;
        }
        if origin == "null" {
            return self.null;
        }
        self.exact.contains(origin)
            || self.wildcards.iter().any(|w| w.matches(origin))
            || self.regex.as_ref().is_some_and(|re| re.is_match(origin))
    }

    /// The configured entries in canonical form, for the start-up log and `explain`.
    pub(crate) fn describe(&self) -> String {
        if self.any {
            return "*".to_string();
        }
        let mut entries: Vec<String> = self.exact.iter().map(|e| e.to_string()).collect();
        entries.extend(self.wildcards.iter().map(WildcardOrigin::pattern));
        if self.null {
            entries.push("null".to_string());
        }
        let mut out = if entries.is_empty() {
            "(none)".to_string()
        } else {
            entries.join(", ")
        };
        if let Some(src) = &self.regex_source {
            out.push_str(&format!(" + regex {src}"));
        }
        out
    }
}

/// Why an `Origin` header value is not a usable serialised origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadOrigin {
    /// Commas or spaces: a list of origins (RFC 6454 allows it, Fetch never sends it).
    List,
    /// Empty, over-long, or not visible ASCII.
    Malformed,
}

/// Checks an `Origin` header value without allocating and returns it as text.
pub(crate) fn request_origin(value: &http::HeaderValue) -> Result<&str, BadOrigin> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_ORIGIN_BYTES {
        return Err(BadOrigin::Malformed);
    }
    let mut list = false;
    for &b in bytes {
        match b {
            b',' | b' ' | b'\t' => list = true,
            0x21..=0x7e => {}
            _ => return Err(BadOrigin::Malformed),
        }
    }
    if list {
        return Err(BadOrigin::List);
    }
    // All visible ASCII, so this cannot fail.
    std::str::from_utf8(bytes).map_err(|_| BadOrigin::Malformed)
}

/// True when `origin` is `https://<authority>`: the proxy's own origin as the client addressed it.
/// Both sides are compared case-insensitively with the default port 443 dropped.
pub(crate) fn is_same_origin(origin: &str, authority: &str) -> bool {
    let Some(rest) = origin
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("https://"))
        .map(|_| &origin[8..])
    else {
        return false;
    };
    let strip = |s: &'_ str| -> usize { s.strip_suffix(":443").map_or(s.len(), str::len) };
    let (a, b) = (&rest[..strip(rest)], &authority[..strip(authority)]);
    !b.is_empty() && a.eq_ignore_ascii_case(b)
}

/// The default port of a scheme, dropped from canonical origins.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// An invalid origin entry: what is wrong and how to write it instead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EntryError {
    pub(crate) problem: String,
    pub(crate) fix: String,
}

fn entry_error(problem: impl Into<String>, fix: impl Into<String>) -> EntryError {
    EntryError {
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Parses one `ALLOW_ORIGINS` entry (not `*`), normalising scheme and host case and default
/// ports; each normalisation adds a note to `notes`.
pub(crate) fn parse_entry(entry: &str, notes: &mut Vec<String>) -> Result<OriginEntry, EntryError> {
    if entry.eq_ignore_ascii_case("null") {
        notes.push(
            "\"null\" is allowed: sandboxed iframes, file: pages, data: URLs and some redirects all \
             send `Origin: null`, so any site can make a request that matches it"
                .to_string(),
        );
        return Ok(OriginEntry::Null);
    }
    if entry.contains(['"', '\'']) {
        return Err(entry_error(
            "it contains quotes",
            format!("remove the quotes: {}", entry.replace(['"', '\''], "")),
        ));
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Err(entry_error(
            "it has no scheme",
            format!(
                "write it with its scheme, e.g. https://{entry} (or http:// for a plain-HTTP page)"
            ),
        ));
    };
    let scheme_ok = scheme
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(entry_error(
            format!("{scheme:?} is not a URL scheme"),
            "write the origin as scheme://host[:port], e.g. https://app.example.com",
        ));
    }
    let scheme_lower = scheme.to_ascii_lowercase();
    if let Some(i) = rest.find(['/', '?', '#']) {
        let authority = &rest[..i];
        let what = if &rest[i..] == "/" {
            "it ends with \"/\", but a browser's Origin never has a trailing slash"
        } else {
            "it has a path, query or fragment, but an origin is only scheme://host[:port]"
        };
        return Err(entry_error(
            what,
            format!("write it as {scheme}://{authority}"),
        ));
    }
    if rest.contains('@') {
        return Err(entry_error(
            "it has user information (user@), which an origin never has",
            "write it as scheme://host[:port]",
        ));
    }
    let (host, port) = split_host_port(rest).ok_or_else(|| {
        entry_error(
            "its port is not a number from 1 to 65535",
            "write it as scheme://host:port",
        )
    })?;
    if host.is_empty() {
        return Err(entry_error(
            "it has no host",
            "write it as scheme://host[:port]",
        ));
    }
    if !host.is_ascii() {
        return Err(entry_error(
            "its host is not ASCII; browsers send internationalised names in punycode",
            "write the host in its xn-- (punycode) form",
        ));
    }
    let host_lower = host.to_ascii_lowercase();
    if scheme_lower != scheme || host_lower != host {
        notes.push(format!(
            "{entry:?}: scheme and host lower-cased, as browsers send them"
        ));
    }
    let port = match port {
        Some(p) if Some(p) == default_port(&scheme_lower) => {
            notes.push(format!(
                "{entry:?}: default port {p} dropped, as browsers omit it from Origin"
            ));
            None
        }
        other => other,
    };
    let port_part = port.map(|p| format!(":{p}")).unwrap_or_default();

    if let Some(suffix) = host_lower.strip_prefix('*') {
        let labels = suffix.strip_prefix('.').unwrap_or("");
        if labels.is_empty() || !suffix.starts_with('.') || labels.contains('*') {
            return Err(entry_error(
                "`*` may only stand for whole leading labels, as in https://*.example.com",
                "write the pattern as scheme://*.domain[:port]",
            ));
        }
        check_host(labels).map_err(|p| entry_error(p, "write a DNS name like example.com"))?;
        if !labels.contains('.') && labels != "localhost" {
            return Err(entry_error(
                format!("*.{labels} matches every site under a top-level domain"),
                format!("name your own domain, e.g. {scheme_lower}://*.example.{labels}"),
            ));
        }
        return Ok(OriginEntry::Wildcard(WildcardOrigin {
            scheme_prefix: format!("{scheme_lower}://"),
            suffix: suffix.to_string(),
            port: port_part,
        }));
    }
    if host_lower.contains('*') {
        return Err(entry_error(
            "`*` may only stand for whole leading labels, as in https://*.example.com",
            "write the pattern as scheme://*.domain[:port], or use ALLOW_ORIGIN_REGEX",
        ));
    }
    if !host_lower.starts_with('[') {
        check_host(&host_lower)
            .map_err(|p| entry_error(p, "write the host as a DNS name or IP address"))?;
    }
    Ok(OriginEntry::Exact(format!(
        "{scheme_lower}://{host_lower}{port_part}"
    )))
}

/// Splits `host[:port]` (IPv6 in brackets). `None` when the port is not 1..=65535.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => {
                let after = &authority[end + 1..];
                match after.strip_prefix(':') {
                    Some(p) => (&authority[..=end], Some(p)),
                    None if after.is_empty() => (&authority[..=end], None),
                    None => return None,
                }
            }
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    match port {
        None => Some((host, None)),
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u16>()
        {
            Ok(0) | Err(_) => None,
            Ok(n) => Some((host, Some(n))),
        },
        Some(_) => None,
    }
}

/// A DNS name or IPv4 address: dot-separated non-empty labels of `[a-z0-9-_]`.
fn check_host(host: &str) -> Result<(), String> {
    let ok = host.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err(format!("{host:?} is not a valid host name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entry: &str) -> Result<OriginEntry, EntryError> {
        parse_entry(entry, &mut Vec::new())
    }

    #[test]
    fn entries_normalise() {
        let mut notes = Vec::new();
        assert_eq!(
            parse_entry("HTTPS://App.Example.com:443", &mut notes),
            Ok(OriginEntry::Exact("https://app.example.com".into()))
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(
            parse("http://localhost:8080"),
            Ok(OriginEntry::Exact("http://localhost:8080".into()))
        );
        assert_eq!(
            parse("http://[::1]:80"),
            Ok(OriginEntry::Exact("http://[::1]".into()))
        );
        assert_eq!(parse("null"), Ok(OriginEntry::Null));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "http://localhost/",
            "http://localhost/app",
            "localhost:3000",
            "example.com",
            "https://user@example.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://*example.com",
            "https://a.*.example.com",
            "https://*.com",
            "https://*",
            "\"http://localhost\"",
            "https://exa mple.com",
            "https://bücher.de",
            "1http://x",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn wildcard_matches_whole_labels_only() {
        let Ok(OriginEntry::Wildcard(w)) = parse("https://*.example.com") else {
            panic!("pattern should parse");
        };
        for (origin, want) in [
            ("https://a.example.com", true),
            ("https://a.b.example.com", true),
            ("https://example.com", false),
            ("https://evilexample.com", false),
            ("https://a.example.com.evil.net", false),
            ("http://a.example.com", false),
            ("https://a.example.com:8443", false),
            ("https://.example.com", false),
            ("https://a..example.com", false),
            ("https://A.example.com", false),
            ("https://a/b.example.com", false),
            ("https://x@a.example.com", false),
        ] {
            assert_eq!(w.matches(origin), want, "{origin}");
        }
    }

    #[test]
    fn same_origin_normalises_authority() {
        assert!(is_same_origin("https://localhost:8443", "localhost:8443"));
        assert!(is_same_origin("https://example.com", "Example.com:443"));
        assert!(is_same_origin("https://[::1]:8443", "[::1]:8443"));
        assert!(!is_same_origin("http://localhost:8443", "localhost:8443"));
        assert!(!is_same_origin("https://localhost", "localhost:8443"));
        assert!(!is_same_origin("https://localhost:8443", ""));
    }
}
