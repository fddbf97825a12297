//! Tables and predicates from the Fetch standard (<https://fetch.spec.whatwg.org/>) that the
//! policy and `proxy cors explain` share: tokens, safelisted and forbidden methods and headers.

/// RFC 9110 §5.6.2 `token`: the syntax of method and header names.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Fetch "CORS-safelisted method": these never need `Access-Control-Allow-Methods`.
/// Methods compare case-sensitively (Fetch §2.2.1).
pub(crate) fn is_safelisted_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "POST")
}

/// Fetch "normalize a method": the six methods that `fetch()`/XHR upper-case. `PATCH` is not
/// among them, so `fetch(url, {method: "patch"})` sends `patch`.
pub(crate) fn normalize_method(method: &str) -> Option<&'static str> {
    ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"]
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(method))
}

/// Fetch "forbidden method": a browser refuses to send these at all.
pub(crate) fn is_forbidden_method(method: &str) -> bool {
    ["CONNECT", "TRACE", "TRACK"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method))
}

/// Fetch "forbidden request-header" by name: the browser sets these itself and scripts cannot,
/// so they never appear in `Access-Control-Request-Headers`.
pub(crate) fn is_forbidden_request_header(name: &str) -> bool {
    const FORBIDDEN: &[&str] = &[
        "accept-charset",
        "accept-encoding",
        "access-control-request-headers",
        "access-control-request-method",
        "connection",
        "content-length",
        "cookie",
        "cookie2",
        "date",
        "dnt",
        "expect",
        "host",
        "keep-alive",
        "origin",
        "referer",
        "set-cookie",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "via",
    ];
    let lower = name.to_ascii_lowercase();
    FORBIDDEN.contains(&lower.as_str()) || lower.starts_with("proxy-") || lower.starts_with("sec-")
}

/// Fetch "CORS-unsafe request-header byte".
fn is_cors_unsafe_byte(b: u8) -> bool {
    (b < 0x20 && b != b'\t')
        || matches!(
            b,
            b'"' | b'('
                | b')'
                | b':'
                | b'<'
                | b'>'
                | b'?'
                | b'@'
                | b'['
                | b'\\'
                | b']'
                | b'{'
                | b'}'
                | 0x7f
        )
}

/// Fetch's limit on the length of one safelisted value.
const SAFELISTED_VALUE_MAX_BYTES: usize = 128;
/// Fetch's limit on the summed length of all safelisted values of one request.
const SAFELISTED_TOTAL_MAX_BYTES: usize = 1024;

/// Fetch "CORS-safelisted request-header" (name and value): a script may send it cross-origin
/// without a preflight, and the browser never lists it in `Access-Control-Request-Headers`.
pub(crate) fn is_safelisted_request_header(name: &str, value: &str) -> bool {
    if value.len() > SAFELISTED_VALUE_MAX_BYTES {
        return false;
    }
    let bytes = value.as_bytes();
    match name.to_ascii_lowercase().as_str() {
        "accept" => !bytes.iter().copied().any(is_cors_unsafe_byte),
        "accept-language" | "content-language" => bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b" *,-.;=".contains(&b)),
        "content-type" => {
            if bytes.iter().copied().any(is_cors_unsafe_byte) {
                return false;
            }
            // The MIME type's essence: what precedes the parameters, without HTTP whitespace.
            let essence = value.split(';').next().unwrap_or("");
            let essence = essence.trim_matches([' ', '\t', '\r', '\n']);
            [
                "application/x-www-form-urlencoded",
                "multipart/form-data",
                "text/plain",
            ]
            .iter()
            .any(|m| m.eq_ignore_ascii_case(essence))
        }
        "range" => is_simple_range(value),
        _ => false,
    }
}

/// Fetch "simple range header value" without whitespace: `bytes=N-` or `bytes=N-M` with N <= M
/// (suffix ranges `bytes=-M` are not safelisted).
fn is_simple_range(value: &str) -> bool {
    let Some(spec) = value.strip_prefix("bytes=") else {
        return false;
    };
    let Some((start, end)) = spec.split_once('-') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(start) || !(end.is_empty() || digits(end)) {
        return false;
    }
    match (start.parse::<u64>(), end) {
        (Ok(_), "") => true,
        (Ok(s), e) => e.parse::<u64>().is_ok_and(|e| s <= e),
        _ => false,
    }
}

/// Fetch "CORS-unsafe request-header names": what a browser puts in
/// `Access-Control-Request-Headers` for these author headers (lower-case, sorted, unique).
/// Forbidden headers are dropped, as the browser would refuse to set them.
pub(crate) fn cors_unsafe_request_header_names(
    headers: &[(String, Option<String>)],
) -> Vec<String> {
    let mut unsafe_names = Vec::new();
    let mut safelisted_bytes = 0;
    let mut safelisted_names = Vec::new();
    for (name, value) in headers {
        if is_forbidden_request_header(name) {
            continue;
        }
        match value {
            Some(v) if is_safelisted_request_header(name, v) => {
                safelisted_bytes += v.len();
                safelisted_names.push(name.to_ascii_lowercase());
            }
            _ => unsafe_names.push(name.to_ascii_lowercase()),
        }
    }
    if safelisted_bytes > SAFELISTED_TOTAL_MAX_BYTES {
        unsafe_names.extend(safelisted_names);
    }
    unsafe_names.sort();
    unsafe_names.dedup();
    unsafe_names
}

/// Fetch "CORS-safelisted response-header name": readable by scripts without
/// `Access-Control-Expose-Headers`.
pub(crate) fn is_safelisted_response_header(name: &str) -> bool {
    matches!(
        name,
        "cache-control"
            | "content-language"
            | "content-length"
            | "content-type"
            | "expires"
            | "last-modified"
            | "pragma"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safelisted_request_headers_check_values() {
        let cases = [
            ("content-type", "text/plain", true),
            ("Content-Type", "text/plain;charset=UTF-8", true),
            ("content-type", "application/x-www-form-urlencoded", true),
            ("content-type", "multipart/form-data; boundary=x", true),
            ("content-type", "application/json", false),
            ("content-type", "text/plain; x=\"y\"", false),
            ("accept", "application/json", true),
            ("accept", "a(b)", false),
            ("accept-language", "en-GB,en;q=0.9", true),
            ("accept-language", "en_GB", false),
            ("content-language", "de", true),
            ("range", "bytes=0-", true),
            ("range", "bytes=5-10", true),
            ("range", "bytes=10-5", false),
            ("range", "bytes=-5", false),
            ("range", "bytes=0-1,3-4", false),
            ("authorization", "Bearer x", false),
            ("x-requested-with", "XMLHttpRequest", false),
        ];
        for (name, value, want) in cases {
            assert_eq!(
                is_safelisted_request_header(name, value),
                want,
                "{name}: {value}"
            );
        }
        let long = "a".repeat(129);
        assert!(!is_safelisted_request_header("accept", &long));
    }

    #[test]
    fn unsafe_names_are_what_a_browser_would_list() {
        let headers = vec![
            (
                "Content-Type".to_string(),
                Some("application/json".to_string()),
            ),
            ("Accept".to_string(), Some("*/*".to_string())),
            ("Authorization".to_string(), None),
            ("Cookie".to_string(), Some("a=b".to_string())),
            ("x-b".to_string(), Some("1".to_string())),
        ];
        assert_eq!(
            cors_unsafe_request_header_names(&headers),
            ["authorization", "content-type", "x-b"]
        );
    }

    #[test]
    fn methods_follow_fetch() {
        assert_eq!(normalize_method("get"), Some("GET"));
        assert_eq!(normalize_method("patch"), None);
        assert!(is_safelisted_method("POST"));
        assert!(!is_safelisted_method("post"));
        assert!(is_forbidden_method("trace"));
        assert!(is_token("X-Custom_1"));
        assert!(!is_token("x custom"));
        assert!(!is_token(""));
    }
}
