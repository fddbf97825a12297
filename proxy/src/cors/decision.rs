//! `Policy::check`: classifies a request (no Origin, same-origin, preflight, actual) and decides
//! it by the Fetch standard's CORS protocol (§3.2), then `CORS_MODE` turns that into a `Verdict`.

use std::fmt;

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, CONTENT_TYPE, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::origin::{self, BadOrigin};
use super::response::ResponseCors;
use super::{fetch, AllowList, CorsMode, Policy, RequestInfo, Verdict};

/// Longest `Access-Control-Request-Headers` (all lines together) the proxy accepts; browsers send
/// a few dozen bytes, and a longer one is refused rather than echoed.
pub(crate) const MAX_REQUEST_HEADERS_BYTES: usize = 2048;
/// Most names `Access-Control-Request-Headers` may list.
pub(crate) const MAX_REQUEST_HEADERS_COUNT: usize = 64;

/// Private Network Access request and response headers (WICG PNA spec).
pub(crate) const REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
pub(crate) const ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");
/// The `Vary` every preflight answer carries: it depends on every request header a preflight is
/// judged on, the Private Network Access one included (a cache must not answer a PNA preflight
/// with a non-PNA one's answer, which lacks `Access-Control-Allow-Private-Network`).
pub(crate) const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, \
     Access-Control-Request-Private-Network",
);

/// The policy's judgement of a request, before `CORS_MODE` decides what the proxy does.
#[derive(Debug, Clone)]
pub enum Assessment {
    /// No `Origin`: not a CORS request.
    NoOrigin,
    /// `Origin` is the proxy's own origin: never refused.
    SameOrigin { preflight: bool },
    /// An allowed preflight and the grants for its answer.
    Preflight(Grant),
    /// An allowed cross-origin request; the value for `Access-Control-Allow-Origin`.
    Actual { allow_origin: HeaderValue },
    /// Not allowed, and why.
    Denied { preflight: bool, refusal: Refusal },
}

/// What an allowed preflight's answer grants.
#[derive(Debug, Clone)]
pub struct Grant {
    pub(crate) allow_origin: HeaderValue,
    pub(crate) allow_methods: Option<HeaderValue>,
    pub(crate) allow_headers: Option<HeaderValue>,
    pub(crate) private_network: bool,
}

/// Why a request was refused. `part()` names what failed: origin, method, headers, private-network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    MultipleOrigins,
    OriginList,
    MalformedOrigin,
    OriginNotAllowed { origin: String },
    MalformedRequestMethod,
    MethodNotAllowed { method: String },
    MalformedRequestHeaders,
    RequestHeadersTooLong,
    HeadersNotAllowed { headers: Vec<String> },
    PrivateNetworkNotAllowed,
}

impl Refusal {
    /// The part of the request that failed.
    pub fn part(&self) -> &'static str {
        match self {
            Refusal::MultipleOrigins
            | Refusal::OriginList
            | Refusal::MalformedOrigin
            | Refusal::OriginNotAllowed { .. } => "origin",
            Refusal::MalformedRequestMethod | Refusal::MethodNotAllowed { .. } => "method",
            Refusal::MalformedRequestHeaders
            | Refusal::RequestHeadersTooLong
            | Refusal::HeadersNotAllowed { .. } => "headers",
            Refusal::PrivateNetworkNotAllowed => "private-network",
        }
    }
}

impl fmt::Display for Refusal {
    /// The reason, written for the person reading the 403 body or the log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::MultipleOrigins => f.write_str("the request has more than one Origin header"),
            Refusal::OriginList => f.write_str("the Origin header holds a list; browsers send exactly one origin"),
            Refusal::MalformedOrigin => f.write_str("the Origin header is empty, too long or not ASCII"),
            Refusal::OriginNotAllowed { origin } => write!(
                f,
                "{origin} is not an allowed origin (ALLOW_ORIGINS / ALLOW_ORIGIN_REGEX)"
            ),
            Refusal::MalformedRequestMethod => f.write_str(
                "Access-Control-Request-Method is not exactly one method name",
            ),
            Refusal::MethodNotAllowed { method } => write!(
                f,
                "method {method} is not allowed (ALLOW_METHODS; methods are case-sensitive)"
            ),
            Refusal::MalformedRequestHeaders => f.write_str(
                "Access-Control-Request-Headers is not a comma-separated list of header names",
            ),
            Refusal::RequestHeadersTooLong => write!(
                f,
                "Access-Control-Request-Headers is longer than {MAX_REQUEST_HEADERS_BYTES} bytes or {MAX_REQUEST_HEADERS_COUNT} names"
            ),
            Refusal::HeadersNotAllowed { headers } => {
                write!(f, "request header(s) {} not allowed (ALLOW_HEADERS)", headers.join(", "))?;
                if headers.iter().any(|h| h == "content-type") {
                    f.write_str(
                        "; content-type is only safelisted for text/plain, multipart/form-data and \
                         application/x-www-form-urlencoded, so e.g. application/json must be allowed",
                    )?;
                }
                Ok(())
            }
            Refusal::PrivateNetworkNotAllowed => f.write_str(
                "the preflight asks for private network access (ALLOW_PRIVATE_NETWORK is false)",
            ),
        }
    }
}

/// A CORS-preflight request: `OPTIONS` with `Origin` and `Access-Control-Request-Method` (Fetch §3.2.2).
fn is_preflight(req: &RequestInfo<'_>) -> bool {
    *req.method == Method::OPTIONS && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The names in `Access-Control-Request-Headers` (all lines), trimmed, empty elements skipped.
fn requested_header_names(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|n| n.trim_ascii())
        .filter(|n| !n.is_empty())
}

impl Policy {
    /// The policy's judgement of `req`, independent of `CORS_MODE`.
    pub fn assess(&self, req: &RequestInfo<'_>) -> Assessment {
        let mut origins = req.headers.get_all(ORIGIN).iter();
        let Some(origin_value) = origins.next() else {
            return Assessment::NoOrigin;
        };
        let preflight = is_preflight(req);
        let denied = |refusal| Assessment::Denied { preflight, refusal };
        if origins.next().is_some() {
            return denied(Refusal::MultipleOrigins);
        }
        let origin = match origin::request_origin(origin_value) {
            Ok(o) => o,
            Err(BadOrigin::List) => return denied(Refusal::OriginList),
            Err(BadOrigin::Malformed) => return denied(Refusal::MalformedOrigin),
        };
        if req
            .authority
            .is_some_and(|a| origin::is_same_origin(origin, a))
        {
            return Assessment::SameOrigin { preflight };
        }
        if !self.origins.allows(origin) {
            return denied(Refusal::OriginNotAllowed {
                origin: origin.to_string(),
            });
        }
        // `*` only without credentials (validated at start-up); otherwise the exact origin.
        let allow_origin = if self.origins.any {
            HeaderValue::from_static("*")
        } else {
            origin_value.clone()
        };
        if !preflight {
            return Assessment::Actual { allow_origin };
        }
        match self.assess_preflight(req.headers, allow_origin) {
            Ok(grant) => Assessment::Preflight(grant),
            Err(refusal) => denied(refusal),
        }
    }

    /// Fetch §4.8 "CORS-preflight fetch", steps checking methods, headers and private network.
    fn assess_preflight(
        &self,
        headers: &HeaderMap,
        allow_origin: HeaderValue,
    ) -> Result<Grant, Refusal> {
        let mut methods = headers.get_all(ACCESS_CONTROL_REQUEST_METHOD).iter();
        let method_value = methods.next().ok_or(Refusal::MalformedRequestMethod)?;
        if methods.next().is_some() {
            return Err(Refusal::MalformedRequestMethod);
        }
        let method = method_value
            .to_str()
            .ok()
            .filter(|m| fetch::is_token(m))
            .ok_or(Refusal::MalformedRequestMethod)?;
        let method_ok = match &self.methods {
            AllowList::Any => true,
            AllowList::List(list) => {
                fetch::is_safelisted_method(method) || list.iter().any(|m| m == method)
            }
        };
        if !method_ok {
            return Err(Refusal::MethodNotAllowed {
                method: method.to_string(),
            });
        }

        let mut total = 0;
        let mut count = 0;
        let mut authorization = false;
        let mut refused = Vec::new();
        for value in headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            total += value.len() + 1;
        }
        if total > MAX_REQUEST_HEADERS_BYTES {
            return Err(Refusal::RequestHeadersTooLong);
        }
        for name in requested_header_names(headers) {
            count += 1;
            if count > MAX_REQUEST_HEADERS_COUNT {
                return Err(Refusal::RequestHeadersTooLong);
            }
            // A token is ASCII, so the conversion below cannot fail once this holds.
            let Some(name) = std::str::from_utf8(name)
                .ok()
                .filter(|n| fetch::is_token(n))
            else {
                return Err(Refusal::MalformedRequestHeaders);
            };
            authorization |= name.eq_ignore_ascii_case("authorization");
            if let AllowList::List(list) = &self.headers {
                if !list.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                    refused.push(name.to_ascii_lowercase());
                }
            }
        }
        if !refused.is_empty() {
            return Err(Refusal::HeadersNotAllowed { headers: refused });
        }

        let private_network = headers
            .get(REQUEST_PRIVATE_NETWORK)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        if private_network && !self.private_network {
            return Err(Refusal::PrivateNetworkNotAllowed);
        }

        let allow_methods = match &self.methods {
            AllowList::Any if self.credentials => Some(method_value.clone()),
            _ => self.values.allow_methods.clone(),
        };
        let allow_headers = match &self.headers {
            AllowList::Any if self.credentials => echo_request_headers(headers, count),
            AllowList::Any if authorization => {
                Some(self.values.allow_headers_star_authorization.clone())
            }
            _ => self.values.allow_headers.clone(),
        };
        Ok(Grant {
            allow_origin,
            allow_methods,
            allow_headers,
            private_network,
        })
    }

    /// Turns a judgement into what the proxy does, by `CORS_MODE`.
    pub(crate) fn verdict(&self, assessment: Assessment, wants_json: bool) -> Verdict {
        if self.mode == CorsMode::Shadow {
            return Verdict::Forward(ResponseCors::untouched());
        }
        match assessment {
            Assessment::NoOrigin | Assessment::SameOrigin { preflight: false } => {
                Verdict::Forward(ResponseCors::vary_origin())
            }
            // Browsers never preflight same-origin requests; answer without granting anything.
            Assessment::SameOrigin { preflight: true } => {
                Verdict::Respond(preflight_response(HeaderMap::new()))
            }
            Assessment::Preflight(grant) => Verdict::Respond(self.grant_response(grant)),
            Assessment::Actual { allow_origin } => Verdict::Forward(ResponseCors::grant(
                allow_origin,
                self.credentials,
                self.expose.clone(),
            )),
            Assessment::Denied {
                preflight: false,
                refusal: Refusal::OriginNotAllowed { .. },
            } if self.mode == CorsMode::Browser => Verdict::Forward(ResponseCors::vary_origin()),
            Assessment::Denied { preflight, refusal } => {
                Verdict::Respond(refusal_response(&refusal, preflight, wants_json))
            }
        }
    }

    fn grant_response(&self, grant: Grant) -> http::Response<Bytes> {
        let mut h = HeaderMap::with_capacity(8);
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, grant.allow_origin);
        if self.credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = grant.allow_methods {
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if let Some(v) = grant.allow_headers {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        h.insert(ACCESS_CONTROL_MAX_AGE, self.values.max_age.clone());
        if grant.private_network {
            h.insert(ALLOW_PRIVATE_NETWORK, HeaderValue::from_static("true"));
        }
        preflight_response(h)
    }
}

/// `*` with credentials: name each requested header (validated above). One line is copied as is.
fn echo_request_headers(headers: &HeaderMap, count: usize) -> Option<HeaderValue> {
    if count == 0 {
        return None;
    }
    let mut lines = headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS).iter();
    match (lines.next(), lines.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => {
            let joined: Vec<&str> = requested_header_names(headers)
                .filter_map(|n| std::str::from_utf8(n).ok())
                .collect();
            HeaderValue::from_str(&joined.join(", ")).ok()
        }
    }
}

/// 204, empty body, the preflight `Vary` (Fetch §4.8; RFC 9110 §12.5.5).
fn preflight_response(mut headers: HeaderMap) -> http::Response<Bytes> {
    headers.insert(VARY, PREFLIGHT_VARY);
    let mut resp = http::Response::new(Bytes::new());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    *resp.headers_mut() = headers;
    resp
}

/// The 403 for a refused request: a body naming the failed part, never an `Access-Control-Allow-*`.
pub(crate) fn refusal_response(
    refusal: &Refusal,
    preflight: bool,
    wants_json: bool,
) -> http::Response<Bytes> {
    let (content_type, body) = if wants_json {
        let body = serde_json::json!({
            "error": "cors_refused",
            "part": refusal.part(),
            "reason": refusal.to_string(),
        });
        ("application/json", format!("{body}\n"))
    } else {
        (
            "text/plain; charset=utf-8",
            format!("CORS request refused ({}): {refusal}\n", refusal.part()),
        )
    };
    let mut resp = http::Response::new(Bytes::from(body));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        VARY,
        if preflight {
            PREFLIGHT_VARY
        } else {
            HeaderValue::from_static("Origin")
        },
    );
    resp
}
