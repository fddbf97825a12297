//! The response side of CORS: the proxy owns every `Access-Control-*` header on a forwarded
//! response (the app's are replaced, exactly one `Allow-Origin`), and merges `Origin` into `Vary`.

use http::header::Entry;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::{fetch, Expose};

/// CORS headers to put on a forwarded (or proxy-generated) response.
#[derive(Debug, Clone)]
pub struct ResponseCors {
    /// False in `shadow` mode: the response goes back exactly as the app sent it.
    rewrite: bool,
    /// `Access-Control-Allow-Origin`, for an allowed cross-origin request.
    allow_origin: Option<HeaderValue>,
    allow_credentials: bool,
    expose: Expose,
}

impl Default for ResponseCors {
    /// Leaves the response untouched.
    fn default() -> ResponseCors {
        ResponseCors::untouched()
    }
}

impl ResponseCors {
    /// Changes nothing (`shadow` mode).
    pub fn untouched() -> ResponseCors {
        ResponseCors {
            rewrite: false,
            allow_origin: None,
            allow_credentials: false,
            expose: Expose::None,
        }
    }

    /// No CORS grant: removes the app's `Access-Control-*` and adds `Vary: Origin`, because the
    /// answer would differ for another `Origin` (no Origin, same-origin, `browser`-mode denial).
    pub fn vary_origin() -> ResponseCors {
        ResponseCors {
            rewrite: true,
            ..ResponseCors::untouched()
        }
    }

    /// An allowed cross-origin request.
    pub(crate) fn grant(
        allow_origin: HeaderValue,
        allow_credentials: bool,
        expose: Expose,
    ) -> ResponseCors {
        ResponseCors {
            rewrite: true,
            allow_origin: Some(allow_origin),
            allow_credentials,
            expose,
        }
    }

    /// The `Access-Control-Allow-Origin` this grants, if any.
    pub fn allow_origin(&self) -> Option<&HeaderValue> {
        self.allow_origin.as_ref()
    }

    /// Rewrites the response's CORS headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if !self.rewrite {
            return;
        }
        remove_access_control(headers);
        if let Some(origin) = &self.allow_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            if self.allow_credentials {
                headers.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            match &self.expose {
                Expose::None => {}
                Expose::Value(v) => {
                    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
                }
                Expose::ResponseNames => {
                    if let Some(v) = response_header_names(headers) {
                        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
                    }
                }
            }
        }
        merge_vary_origin(headers);
    }
}

/// Removes every `Access-Control-*` header; allocates only when the app sent one.
fn remove_access_control(headers: &mut HeaderMap) {
    let is_ac = |name: &HeaderName| name.as_str().starts_with("access-control-");
    if !headers.keys().any(is_ac) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| is_ac(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// `EXPOSE_HEADERS=*` with credentials: the response's own header names that scripts could not
/// otherwise read (never `Set-Cookie`, which Fetch hides regardless).
fn response_header_names(headers: &HeaderMap) -> Option<HeaderValue> {
    let names: Vec<&str> = headers
        .keys()
        .map(HeaderName::as_str)
        .filter(|n| {
            !fetch::is_safelisted_response_header(n)
                && *n != SET_COOKIE.as_str()
                && *n != VARY.as_str()
                && !n.starts_with("access-control-")
        })
        .collect();
    if names.is_empty() {
        return None;
    }
    HeaderValue::from_str(&names.join(", ")).ok()
}

/// Adds `Origin` to `Vary` unless it is already listed or `Vary: *` (RFC 9110 §12.5.5). Several
/// `Vary` lines are merged into one.
fn merge_vary_origin(headers: &mut HeaderMap) {
    // One lookup through the entry (this runs for every forwarded response).
    let mut entry = match headers.entry(VARY) {
        Entry::Vacant(vacant) => {
            vacant.insert(HeaderValue::from_static("Origin"));
            return;
        }
        Entry::Occupied(entry) => entry,
    };
    let listed = entry.iter().any(|value| {
        value.as_bytes().split(|&b| b == b',').any(|item| {
            let item = item.trim_ascii();
            item == b"*" || item.eq_ignore_ascii_case(b"origin")
        })
    });
    if listed {
        return;
    }
    let mut merged = Vec::new();
    for value in entry.iter() {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            merged.extend_from_slice(value);
            merged.extend_from_slice(b", ");
        }
    }
    merged.extend_from_slice(b"Origin");
    match HeaderValue::from_bytes(&merged) {
        Ok(v) => {
            entry.insert(v);
        }
        // Cannot happen (built from valid values), but a separate line means the same.
        Err(_) => entry.append(HeaderValue::from_static("Origin")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vary_after(lines: &[&'static str]) -> Vec<String> {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(VARY, HeaderValue::from_static(l));
        }
        merge_vary_origin(&mut h);
        h.get_all(VARY)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn vary_merges_without_duplicates() {
        assert_eq!(vary_after(&[]), ["Origin"]);
        assert_eq!(
            vary_after(&["Accept-Encoding"]),
            ["Accept-Encoding, Origin"]
        );
        assert_eq!(
            vary_after(&["accept-encoding", "cookie"]),
            ["accept-encoding, cookie, Origin"]
        );
        assert_eq!(
            vary_after(&["Accept-Encoding, origin"]),
            ["Accept-Encoding, origin"]
        );
        assert_eq!(vary_after(&["ORIGIN"]), ["ORIGIN"]);
        assert_eq!(vary_after(&["*"]), ["*"]);
        assert_eq!(vary_after(&["Accept, *"]), ["Accept, *"]);
        assert_eq!(vary_after(&["Origins"]), ["Origins, Origin"]);
    }

    #[test]
    fn expose_star_with_credentials_lists_response_names() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("1"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert(SET_COOKIE, HeaderValue::from_static("a=b"));
        let cors = ResponseCors::grant(
            HeaderValue::from_static("https://a.test"),
            true,
            Expose::ResponseNames,
        );
        cors.apply(&mut h);
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
    }
}
