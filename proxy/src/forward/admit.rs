//! What the proxy refuses before a request goes anywhere (before CORS, before the upstream): the
//! request target and `Host` (RFC 9112 §3.2, RFC 9113 §8.3.1), methods a gateway does not pass
//! on, transfer codings it does not implement, and a declared body over the size limit. A pure
//! function of the request head; a streamed body's size is counted as it goes (`upstream::body`).

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Method, Uri, Version};

use crate::metrics::Refused;

/// Decides whether a request head is forwarded. `Ok(Some(host))`: forward it with `host` as its
/// only `Host` (an absolute-form target's authority, RFC 9112 §3.2.2); `Ok(None)`: forward it
/// with the `Host` it has (or, over HTTP/2 without one, `:authority` as `Host`).
pub fn admit(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    max_body_bytes: u64,
) -> Result<Option<HeaderValue>, Refused> {
    // CONNECT would make the proxy a tunnel to any host:port the client names, and TRACE echoes
    // the request (credentials included) back to a script (RFC 9110 §9.3.6, §9.3.8): neither
    // is the app's to answer behind a TLS-terminating gateway, as with nginx.
    if *method == Method::CONNECT || *method == Method::TRACE {
        return Err(Refused::Method);
    }
    // RFC 9112 §3.2.4: the asterisk form is only for a server-wide OPTIONS.
    if uri.path() == "*" && *method != Method::OPTIONS {
        return Err(Refused::AsteriskForm);
    }
    let host = host_of(uri, version, headers)?;
    // RFC 9112 §6.1: a server that receives a transfer coding it does not understand answers
    // 501. The proxy implements `chunked` only (hyper decodes it; a `gzip` under it would be lost
    // if passed on as chunked, or mis-framed if passed on as it is).
    if version != Version::HTTP_2 && headers.contains_key(header::TRANSFER_ENCODING) {
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
        let chunked_alone = codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !chunked_alone {
            return Err(Refused::TransferCoding);
        }
    }
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body_bytes) {
        return Err(Refused::BodyTooLarge);
    }
    Ok(host)
}

/// The `Host` rules: HTTP/1.1 requires exactly one valid `Host` (RFC 9112 §3.2), and an
/// absolute-form target's authority replaces it (§3.2.2); HTTP/2 requires `:authority` or
/// `Host`, and both, when present, must name the same authority (RFC 9113 §8.3.1). HTTP/1.0 may
/// omit `Host`.
fn host_of(
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, Refused> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refused::DuplicateHost);
    }
    if let Some(host) = host {
        if !valid_authority(host.as_bytes()) {
            return Err(Refused::InvalidHost);
        }
    }
    // The authority of the target: `:authority` over HTTP/2, an absolute-form target's over
    // HTTP/1.x.
    let target = uri.authority();
    if let Some(target) = target {
        if !valid_authority(target.as_str().as_bytes()) {
            return Err(Refused::InvalidHost);
        }
    }
    match (version, target, host) {
        (Version::HTTP_2, None, None) => Err(Refused::MissingHost),
        (Version::HTTP_2, Some(target), Some(host))
            if !target
                .as_str()
                .as_bytes()
                .eq_ignore_ascii_case(host.as_bytes()) =>
        {
            Err(Refused::HostMismatch)
        }
        (Version::HTTP_2, _, _) => Ok(None),
        (Version::HTTP_11, _, None) => Err(Refused::MissingHost),
        (_, Some(target), host) => {
            if host.is_some_and(|h| h.as_bytes() == target.as_str().as_bytes()) {
                Ok(None)
            } else {
                HeaderValue::from_str(target.as_str())
                    .map(Some)
                    .map_err(|_| Refused::InvalidHost)
            }
        }
        (_, None, _) => Ok(None),
    }
}

/// Whether `value` is a `Host` value: `uri-host [ ":" port ]` (RFC 9110 §7.2), non-empty, with
/// no user information and a numeric port.
fn valid_authority(value: &[u8]) -> bool {
    if value.is_empty() || value.contains(&b'@') {
        return false;
    }
    let Ok(authority) = Authority::try_from(value) else {
        return false;
    };
    // `Authority` takes a port of any digits, and an unbracketed IPv6 address.
    let text = authority.as_str();
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !text.ends_with(']') => (host, Some(port)),
        _ => (text, None),
    };
    let bracketed = host.starts_with('[') && host.ends_with(']');
    !host.is_empty()
        && (bracketed || !host.contains(':'))
        && port.is_none_or(|p| p.is_empty() || p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1000;

    #[test]
    fn request_heads_admitted_or_refused() {
        use Refused::*;
        // (method, target, version, headers, expected: Ok(Host to set) or the refusal)
        type Case = (
            &'static str,
            &'static str,
            Version,
            &'static [(&'static str, &'static str)],
            Result<Option<&'static str>, Refused>,
        );
        let h11 = Version::HTTP_11;
        let h10 = Version::HTTP_10;
        let h2 = Version::HTTP_2;
        let cases: &[Case] = &[
            ("GET", "/", h11, &[("host", "app.example")], Ok(None)),
            ("GET", "/", h11, &[("host", "app.example:8443")], Ok(None)),
            ("GET", "/", h11, &[("host", "127.0.0.1:8443")], Ok(None)),
            ("GET", "/", h11, &[("host", "[::1]:8443")], Ok(None)),
            ("GET", "/", h11, &[], Err(MissingHost)),
            ("GET", "/", h10, &[], Ok(None)),
            (
                "GET",
                "/",
                h11,
                &[("host", "a.example"), ("host", "a.example")],
                Err(DuplicateHost),
            ),
            ("GET", "/", h11, &[("host", "")], Err(InvalidHost)),
            (
                "GET",
                "/",
                h11,
                &[("host", "user@a.example")],
                Err(InvalidHost),
            ),
            (
                "GET",
                "/",
                h11,
                &[("host", "a.example:http")],
                Err(InvalidHost),
            ),
            (
                "GET",
                "/",
                h11,
                &[("host", "a.example:99999")],
                Err(InvalidHost),
            ),
            ("GET", "/", h11, &[("host", "a example")], Err(InvalidHost)),
            (
                "GET",
                "/",
                h11,
                &[("host", "a.example/path")],
                Err(InvalidHost),
            ),
            ("GET", "/", h11, &[("host", "::1")], Err(InvalidHost)),
            // Absolute form: the target's authority becomes the Host.
            (
                "GET",
                "http://b.example/x",
                h11,
                &[("host", "a.example")],
                Ok(Some("b.example")),
            ),
            (
                "GET",
                "http://b.example/x",
                h11,
                &[("host", "b.example")],
                Ok(None),
            ),
            ("GET", "http://b.example/x", h11, &[], Err(MissingHost)),
            ("GET", "http://b.example/x", h10, &[], Ok(Some("b.example"))),
            (
                "GET",
                "http://u@b.example/x",
                h11,
                &[("host", "b.example")],
                Err(InvalidHost),
            ),
            // HTTP/2: `:authority` and `Host` must agree; one of them is needed.
            ("GET", "https://a.example/", h2, &[], Ok(None)),
            ("GET", "/", h2, &[("host", "a.example")], Ok(None)),
            ("GET", "/", h2, &[], Err(MissingHost)),
            (
                "GET",
                "https://a.example/",
                h2,
                &[("host", "A.example")],
                Ok(None),
            ),
            (
                "GET",
                "https://a.example/",
                h2,
                &[("host", "b.example")],
                Err(HostMismatch),
            ),
            (
                "GET",
                "https://a.example/",
                h2,
                &[("host", "a.example:443")],
                Err(HostMismatch),
            ),
            // Methods and targets.
            (
                "CONNECT",
                "a.example:443",
                h11,
                &[("host", "a.example:443")],
                Err(Method),
            ),
            ("TRACE", "/", h11, &[("host", "a")], Err(Method)),
            ("TRACE", "https://a.example/", h2, &[], Err(Method)),
            ("OPTIONS", "*", h11, &[("host", "a")], Ok(None)),
            ("GET", "*", h11, &[("host", "a")], Err(AsteriskForm)),
            ("POST", "*", h11, &[("host", "a")], Err(AsteriskForm)),
            // Transfer codings: `chunked` alone.
            (
                "POST",
                "/",
                h11,
                &[("host", "a"), ("transfer-encoding", "chunked")],
                Ok(None),
            ),
            (
                "POST",
                "/",
                h11,
                &[("host", "a"), ("transfer-encoding", "Chunked")],
                Ok(None),
            ),
            (
                "POST",
                "/",
                h11,
                &[("host", "a"), ("transfer-encoding", "gzip, chunked")],
                Err(TransferCoding),
            ),
            (
                "POST",
                "/",
                h11,
                &[
                    ("host", "a"),
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                ],
                Err(TransferCoding),
            ),
            (
                "POST",
                "/",
                h11,
                &[("host", "a"), ("transfer-encoding", "chunked, chunked")],
                Err(TransferCoding),
            ),
            // The declared body size.
            (
                "POST",
                "/",
                h11,
                &[("host", "a"), ("content-length", "1000")],
                Ok(None),
            ),
            (
                "POST",
                "/",
                h11,
                &[("host", "a"), ("content-length", "1001")],
                Err(BodyTooLarge),
            ),
            (
                "POST",
                "https://a.example/",
                h2,
                &[("content-length", "5000")],
                Err(BodyTooLarge),
            ),
        ];
        for (method, target, version, fields, expected) in cases {
            let mut headers = HeaderMap::new();
            for (name, value) in *fields {
                headers.append(
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            let method = http::Method::from_bytes(method.as_bytes()).unwrap();
            let uri: Uri = target.parse().unwrap();
            let got = admit(&method, &uri, *version, &headers, LIMIT);
            let got = got
                .as_ref()
                .map(|h| h.as_ref().map(|h| h.to_str().unwrap()));
            assert_eq!(
                got,
                expected.as_ref().map(|h| *h),
                "{method} {target} {version:?} {fields:?}"
            );
        }
    }
}
