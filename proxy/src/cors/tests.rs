//! The engine's table: every rule of the CORS issue as a (policy, request) -> outcome case, plus
//! configuration errors and warnings.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::{CorsArgs, CorsConfigError, Policy, RequestInfo, Verdict};

/// Settings as `(ENV_NAME, value)` pairs.
type Settings = &'static [(&'static str, &'static str)];

fn args(settings: Settings) -> CorsArgs {
    let mut a = CorsArgs::default();
    for (key, value) in settings {
        let v = Some(value.to_string());
        match *key {
            "ALLOW_ORIGINS" => a.allow_origins = v,
            "ALLOW_ORIGIN_REGEX" => a.allow_origin_regex = v,
            "ALLOW_CREDENTIALS" => a.allow_credentials = v,
            "ALLOW_METHODS" => a.allow_methods = v,
            "ALLOW_HEADERS" => a.allow_headers = v,
            "EXPOSE_HEADERS" => a.expose_headers = v,
            "MAX_AGE" => a.max_age = v,
            "ALLOW_PRIVATE_NETWORK" => a.allow_private_network = v,
            "CORS_MODE" => a.cors_mode = v,
            other => panic!("unknown setting {other}"),
        }
    }
    a
}

fn policy(settings: Settings) -> Policy {
    match Policy::from_args(&args(settings)) {
        Ok((p, _)) => p,
        Err(e) => panic!("{settings:?}: {e}"),
    }
}

/// The original app's style: one page origin and subdomains, credentials, explicit lists.
const CRED: Settings = &[
    ("ALLOW_ORIGINS", "http://localhost, https://*.example.com"),
    ("ALLOW_CREDENTIALS", "True"),
    ("ALLOW_METHODS", "GET, POST, PUT, DELETE"),
    (
        "ALLOW_HEADERS",
        "Content-Type, Authorization, X-Requested-With",
    ),
    ("EXPOSE_HEADERS", "X-Request-Id"),
];
/// Anything goes, without credentials.
const ANY: Settings = &[
    ("ALLOW_ORIGINS", "*"),
    ("ALLOW_METHODS", "*"),
    ("ALLOW_HEADERS", "*"),
    ("EXPOSE_HEADERS", "*"),
];
/// `*` methods and headers with credentials: echoed.
const STAR_CRED: Settings = &[
    ("ALLOW_ORIGINS", "http://localhost"),
    ("ALLOW_CREDENTIALS", "1"),
    ("ALLOW_METHODS", "*"),
    ("ALLOW_HEADERS", "*"),
];
const REGEX: Settings = &[("ALLOW_ORIGIN_REGEX", r"https://[a-z]+\.example\.org")];
const NULL: Settings = &[("ALLOW_ORIGINS", "null")];
const NORMALISED: Settings = &[("ALLOW_ORIGINS", "HTTP://LocalHost:80")];
const GOOGLE: Settings = &[("ALLOW_ORIGINS", "https://google.com")];
const PNA: Settings = &[
    ("ALLOW_ORIGINS", "http://localhost"),
    ("ALLOW_PRIVATE_NETWORK", "true"),
];
const LOCALHOST: Settings = &[("ALLOW_ORIGINS", "http://localhost")];
const BROWSER: Settings = &[
    ("ALLOW_ORIGINS", "http://localhost"),
    ("CORS_MODE", "browser"),
];
const SHADOW: Settings = &[
    ("ALLOW_ORIGINS", "http://localhost"),
    ("CORS_MODE", "Shadow"),
];
const MAX_AGE_60: Settings = &[("ALLOW_ORIGINS", "http://localhost"), ("MAX_AGE", "60")];

/// What the proxy does.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Answers itself with this status.
    Respond(u16),
    /// Forwards; headers are checked on the app's response after `apply`.
    Forward,
}

struct Case {
    name: &'static str,
    policy: Settings,
    method: &'static str,
    /// Request headers (repeat a name for several lines).
    request: &'static [(&'static str, &'static str)],
    /// The authority the client addressed.
    authority: Option<&'static str>,
    /// The client asked for JSON answers.
    wants_json: bool,
    /// Headers the app's response carries (only for forwarded requests).
    app: &'static [(&'static str, &'static str)],
    outcome: Outcome,
    /// Header name -> all lines joined with " | ".
    has: &'static [(&'static str, &'static str)],
    /// Header names that must be absent; `access-control-allow-*` means any of them.
    lacks: &'static [&'static str],
    /// Substring of the body.
    body: Option<&'static str>,
}

const C: Case = Case {
    name: "",
    policy: CRED,
    method: "GET",
    request: &[],
    authority: Some("localhost:8443"),
    wants_json: false,
    app: &[],
    outcome: Outcome::Forward,
    has: &[],
    lacks: &[],
    body: None,
};

const PREFLIGHT_VARY: (&str, &str) = (
    "vary",
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, \
     Access-Control-Request-Private-Network",
);
const NO_ALLOW: &[&str] = &["access-control-allow-*"];

fn cases() -> Vec<Case> {
    vec![
        // --- preflights: allowed, and refused per part ---
        Case {
            name: "preflight allowed: exact origin, credentials, listed method and headers",
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "PUT"),
                (
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
            ],
            outcome: Outcome::Respond(204),
            has: &[
                ("access-control-allow-origin", "http://localhost"),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET, POST, PUT, DELETE"),
                (
                    "access-control-allow-headers",
                    "content-type, authorization, x-requested-with",
                ),
                ("access-control-max-age", "600"),
                PREFLIGHT_VARY,
            ],
            lacks: &["access-control-allow-private-network", "content-type"],
            body: Some(""),
            ..C
        },
        Case {
            name: "preflight refused: origin not allowed, no allow headers",
            method: "OPTIONS",
            request: &[
                ("origin", "https://evil.test"),
                ("access-control-request-method", "PUT"),
            ],
            outcome: Outcome::Respond(403),
            has: &[PREFLIGHT_VARY],
            lacks: NO_ALLOW,
            body: Some("(origin): https://evil.test is not an allowed origin"),
            ..C
        },
        Case {
            name: "preflight refused: method not allowed",
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "PATCH"),
            ],
            outcome: Outcome::Respond(403),
            lacks: NO_ALLOW,
            body: Some("(method): method PATCH is not allowed"),
            ..C
        },
        Case {
            name: "preflight refused: methods are case-sensitive (put is not PUT)",
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "put"),
            ],
            outcome: Outcome::Respond(403),
            lacks: NO_ALLOW,
            body: Some("(method)"),
            ..C
        },
        Case {
            name: "preflight allowed: safelisted method needs no listing",
            policy: &[
                ("ALLOW_ORIGINS", "http://localhost"),
                ("ALLOW_METHODS", "PUT"),
                ("ALLOW_HEADERS", "x-a"),
            ],
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-a"),
            ],
            outcome: Outcome::Respond(204),
            has: &[
                ("access-control-allow-methods", "PUT"),
                ("access-control-allow-headers", "x-a"),
            ],
            lacks: &["access-control-allow-credentials"],
            ..C
        },
        Case {
            name: "preflight refused: default methods do not include PUT",
            policy: LOCALHOST,
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "PUT"),
            ],
            outcome: Outcome::Respond(403),
            body: Some("method PUT"),
            ..C
        },
        Case {
            name: "preflight refused: header not allowed, named in the body",
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "content-type,x-secret"),
            ],
            outcome: Outcome::Respond(403),
            lacks: NO_ALLOW,
            body: Some("(headers): request header(s) x-secret not allowed"),
            ..C
        },
        Case {
            name: "preflight allowed: header names compare case-insensitively",
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "Content-Type, AUTHORIZATION",
                ),
            ],
            outcome: Outcome::Respond(204),
            ..C
        },
        Case {
            name:
                "preflight refused: content-type (non-safelisted value) must be allowed explicitly",
            policy: LOCALHOST,
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            outcome: Outcome::Respond(403),
            body: Some("application/json must be allowed"),
            ..C
        },
        Case {
            name: "preflight allowed: several ACRH lines are one list",
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
                ("access-control-request-headers", "x-requested-with"),
            ],
            outcome: Outcome::Respond(204),
            ..C
        },
        Case {
            name: "preflight, * without credentials: literal * for origin, methods, headers",
            policy: ANY,
            method: "OPTIONS",
            request: &[
                ("origin", "https://any.test"),
                ("access-control-request-method", "PATCH"),
                ("access-control-request-headers", "x-foo"),
            ],
            outcome: Outcome::Respond(204),
            has: &[
                ("access-control-allow-origin", "*"),
                ("access-control-allow-methods", "*"),
                ("access-control-allow-headers", "*"),
                PREFLIGHT_VARY,
            ],
            lacks: &["access-control-allow-credentials"],
            ..C
        },
        Case {
            name: "preflight, * headers: a literal * never covers Authorization, so it is named",
            policy: ANY,
            method: "OPTIONS",
            request: &[
                ("origin", "https://any.test"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization,x-foo"),
            ],
            outcome: Outcome::Respond(204),
            has: &[("access-control-allow-headers", "*, authorization")],
            ..C
        },
        Case {
            name:
                "preflight, * with credentials: requested headers and method echoed, exact origin",
            policy: STAR_CRED,
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "PATCH"),
                ("access-control-request-headers", "authorization,x-foo"),
            ],
            outcome: Outcome::Respond(204),
            has: &[
                ("access-control-allow-origin", "http://localhost"),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "PATCH"),
                ("access-control-allow-headers", "authorization,x-foo"),
            ],
            ..C
        },
        Case {
            name: "preflight, * with credentials and no requested headers: no allow-headers",
            policy: STAR_CRED,
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "DELETE"),
            ],
            outcome: Outcome::Respond(204),
            has: &[("access-control-allow-methods", "DELETE")],
            lacks: &["access-control-allow-headers"],
            ..C
        },
        Case {
            name: "preflight allowed: private network access when enabled and asked",
            policy: PNA,
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "GET"),
                ("access-control-request-private-network", "true"),
            ],
            outcome: Outcome::Respond(204),
            has: &[("access-control-allow-private-network", "true")],
            ..C
        },
        Case {
            name: "preflight allowed: private network header not sent unless asked",
            policy: PNA,
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "GET"),
            ],
            outcome: Outcome::Respond(204),
            lacks: &["access-control-allow-private-network"],
            ..C
        },
        Case {
            name: "preflight refused: private network access not enabled",
            policy: LOCALHOST,
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "GET"),
                ("access-control-request-private-network", "true"),
            ],
            outcome: Outcome::Respond(403),
            lacks: NO_ALLOW,
            body: Some("(private-network)"),
            ..C
        },
        Case {
            name: "preflight: MAX_AGE is sent as configured",
            policy: MAX_AGE_60,
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "GET"),
            ],
            outcome: Outcome::Respond(204),
            has: &[
                ("access-control-max-age", "60"),
                ("access-control-allow-methods", "GET, HEAD, POST"),
            ],
            ..C
        },
        Case {
            name: "OPTIONS without Access-Control-Request-Method is not a preflight: forwarded",
            method: "OPTIONS",
            request: &[("origin", "http://localhost")],
            outcome: Outcome::Forward,
            has: &[
                ("access-control-allow-origin", "http://localhost"),
                ("vary", "Origin"),
            ],
            ..C
        },
        Case {
            name: "OPTIONS with ACRM but no Origin is not a preflight: forwarded",
            method: "OPTIONS",
            request: &[("access-control-request-method", "PUT")],
            outcome: Outcome::Forward,
            has: &[("vary", "Origin")],
            lacks: NO_ALLOW,
            ..C
        },
        // --- origins: patterns, look-alikes, normalisation, null ---
        Case {
            name: "wildcard subdomain: one label",
            request: &[("origin", "https://app.example.com")],
            has: &[("access-control-allow-origin", "https://app.example.com")],
            ..C
        },
        Case {
            name: "wildcard subdomain: several labels",
            request: &[("origin", "https://a.b.example.com")],
            has: &[("access-control-allow-origin", "https://a.b.example.com")],
            ..C
        },
        Case {
            name: "wildcard subdomain does not match the bare domain",
            request: &[("origin", "https://example.com")],
            outcome: Outcome::Respond(403),
            lacks: NO_ALLOW,
            ..C
        },
        Case {
            name: "look-alike: example.com.evil.net",
            request: &[("origin", "https://app.example.com.evil.net")],
            outcome: Outcome::Respond(403),
            lacks: NO_ALLOW,
            ..C
        },
        Case {
            name: "look-alike: evilexample.com",
            request: &[("origin", "https://evilexample.com")],
            outcome: Outcome::Respond(403),
            ..C
        },
        Case {
            name: "wildcard subdomain: the scheme must match",
            request: &[("origin", "http://app.example.com")],
            outcome: Outcome::Respond(403),
            ..C
        },
        Case {
            name: "regex: full match allowed",
            policy: REGEX,
            request: &[("origin", "https://shop.example.org")],
            has: &[("access-control-allow-origin", "https://shop.example.org")],
            ..C
        },
        Case {
            name: "regex: no suffix match (anchored at the end)",
            policy: REGEX,
            request: &[("origin", "https://shop.example.org.evil.com")],
            outcome: Outcome::Respond(403),
            ..C
        },
        Case {
            name: "regex: no prefix match (anchored at the start)",
            policy: REGEX,
            request: &[("origin", "xhttps://shop.example.org")],
            outcome: Outcome::Respond(403),
            ..C
        },
        Case {
            name: "request origin with a trailing slash is not the origin",
            request: &[("origin", "http://localhost/")],
            outcome: Outcome::Respond(403),
            ..C
        },
        Case {
            name: "request origin upper-case: browsers never send it, no match",
            request: &[("origin", "HTTP://LOCALHOST")],
            outcome: Outcome::Respond(403),
            ..C
        },
        Case {
            name: "request origin with a default port: browsers never send it, no match",
            request: &[("origin", "http://localhost:80")],
            outcome: Outcome::Respond(403),
            ..C
        },
        Case {
            name: "configured origin normalised (case, default port) matches what browsers send",
            policy: NORMALISED,
            request: &[("origin", "http://localhost")],
            has: &[("access-control-allow-origin", "http://localhost")],
            ..C
        },
        Case {
            name: "another port is another origin",
            request: &[("origin", "http://localhost:3000")],
            outcome: Outcome::Respond(403),
            ..C
        },
        Case {
            name: "null allowed when configured",
            policy: NULL,
            request: &[("origin", "null")],
            has: &[("access-control-allow-origin", "null")],
            ..C
        },
        Case {
            name: "null refused when not configured",
            request: &[("origin", "null")],
            outcome: Outcome::Respond(403),
            ..C
        },
        // --- malformed input ---
        Case {
            name: "several Origin headers are refused, never echoed",
            request: &[
                ("origin", "http://localhost"),
                ("origin", "https://evil.test"),
            ],
            outcome: Outcome::Respond(403),
            lacks: NO_ALLOW,
            body: Some("more than one Origin"),
            ..C
        },
        Case {
            name: "an Origin list is refused",
            request: &[("origin", "http://localhost https://evil.test")],
            outcome: Outcome::Respond(403),
            lacks: NO_ALLOW,
            body: Some("holds a list"),
            ..C
        },
        Case {
            name: "a comma-separated Origin list is refused even in browser mode",
            policy: BROWSER,
            request: &[("origin", "http://localhost,https://evil.test")],
            outcome: Outcome::Respond(403),
            ..C
        },
        Case {
            name: "over-long Access-Control-Request-Headers is refused, never echoed",
            policy: STAR_CRED,
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", LONG_ACRH),
            ],
            outcome: Outcome::Respond(403),
            lacks: NO_ALLOW,
            body: Some("(headers): Access-Control-Request-Headers is longer"),
            ..C
        },
        Case {
            name: "Access-Control-Request-Headers that is not a list of names is refused",
            policy: STAR_CRED,
            method: "OPTIONS",
            request: &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-a, x b"),
            ],
            outcome: Outcome::Respond(403),
            lacks: NO_ALLOW,
            ..C
        },
        // --- actual requests and the response side ---
        Case {
            name: "actual request allowed: origin, credentials, expose, Vary",
            method: "POST",
            request: &[("origin", "http://localhost")],
            has: &[
                ("access-control-allow-origin", "http://localhost"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "x-request-id"),
                ("vary", "Origin"),
            ],
            ..C
        },
        Case {
            name: "the app's Access-Control-* are replaced: exactly one Allow-Origin",
            request: &[("origin", "http://localhost")],
            app: &[
                ("access-control-allow-origin", "*"),
                ("access-control-allow-origin", "https://evil.test"),
                ("access-control-allow-methods", "GET"),
                ("access-control-allow-credentials", "false"),
                ("access-control-max-age", "99999"),
            ],
            has: &[
                ("access-control-allow-origin", "http://localhost"),
                ("access-control-allow-credentials", "true"),
            ],
            lacks: &["access-control-allow-methods", "access-control-max-age"],
            ..C
        },
        Case {
            name: "Vary: Origin merged into the app's Vary",
            request: &[("origin", "http://localhost")],
            app: &[("vary", "Accept-Encoding")],
            has: &[("vary", "Accept-Encoding, Origin")],
            ..C
        },
        Case {
            name: "Vary: Origin not duplicated",
            request: &[("origin", "http://localhost")],
            app: &[("vary", "accept-encoding, origin")],
            has: &[("vary", "accept-encoding, origin")],
            ..C
        },
        Case {
            name: "Vary: * left alone",
            request: &[("origin", "http://localhost")],
            app: &[("vary", "*")],
            has: &[("vary", "*")],
            ..C
        },
        Case {
            name: "* origins without credentials: Allow-Origin *, Vary: Origin, expose *",
            policy: ANY,
            request: &[("origin", "https://any.test")],
            has: &[
                ("access-control-allow-origin", "*"),
                ("access-control-expose-headers", "*"),
                ("vary", "Origin"),
            ],
            lacks: &["access-control-allow-credentials"],
            ..C
        },
        Case {
            name: "no Origin: forwarded with Vary: Origin, app's CORS headers removed",
            app: &[("access-control-allow-origin", "*")],
            has: &[("vary", "Origin")],
            lacks: NO_ALLOW,
            ..C
        },
        // --- same-origin ---
        Case {
            name: "same-origin POST is never refused, whatever ALLOW_ORIGINS says",
            policy: GOOGLE,
            method: "POST",
            request: &[
                ("origin", "https://localhost:8443"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            has: &[("vary", "Origin")],
            lacks: NO_ALLOW,
            ..C
        },
        Case {
            name: "same-origin: default port 443 and host case normalised",
            policy: GOOGLE,
            method: "POST",
            request: &[("origin", "https://example.com")],
            authority: Some("Example.COM:443"),
            has: &[("vary", "Origin")],
            ..C
        },
        Case {
            name: "same host over http is another origin",
            policy: GOOGLE,
            method: "POST",
            request: &[("origin", "http://localhost:8443")],
            outcome: Outcome::Respond(403),
            ..C
        },
        Case {
            name: "same-origin preflight (never sent by browsers) is answered, not forwarded",
            policy: GOOGLE,
            method: "OPTIONS",
            request: &[
                ("origin", "https://localhost:8443"),
                ("access-control-request-method", "DELETE"),
            ],
            outcome: Outcome::Respond(204),
            has: &[PREFLIGHT_VARY],
            lacks: NO_ALLOW,
            ..C
        },
        // --- modes ---
        Case {
            name: "enforce: disallowed cross-origin POST refused with a text body",
            policy: LOCALHOST,
            method: "POST",
            request: &[("origin", "https://evil.test")],
            outcome: Outcome::Respond(403),
            has: &[
                ("vary", "Origin"),
                ("content-type", "text/plain; charset=utf-8"),
            ],
            lacks: NO_ALLOW,
            body: Some("CORS request refused (origin)"),
            ..C
        },
        Case {
            name: "enforce: refusal body is JSON when the client asked for JSON",
            policy: LOCALHOST,
            method: "POST",
            request: &[
                ("origin", "https://evil.test"),
                ("x-expected-format", "application/json"),
            ],
            wants_json: true,
            outcome: Outcome::Respond(403),
            has: &[("content-type", "application/json")],
            body: Some(r#""part":"origin""#),
            ..C
        },
        Case {
            name: "browser: disallowed actual request forwarded without CORS headers",
            policy: BROWSER,
            method: "POST",
            request: &[("origin", "https://evil.test")],
            app: &[("access-control-allow-origin", "*")],
            has: &[("vary", "Origin")],
            lacks: NO_ALLOW,
            ..C
        },
        Case {
            name: "browser: disallowed preflight still refused",
            policy: BROWSER,
            method: "OPTIONS",
            request: &[
                ("origin", "https://evil.test"),
                ("access-control-request-method", "PUT"),
            ],
            outcome: Outcome::Respond(403),
            ..C
        },
        Case {
            name: "browser: allowed origin gets its headers",
            policy: BROWSER,
            request: &[("origin", "http://localhost")],
            has: &[("access-control-allow-origin", "http://localhost")],
            ..C
        },
        Case {
            name: "shadow: disallowed actual request forwarded untouched",
            policy: SHADOW,
            method: "POST",
            request: &[("origin", "https://evil.test")],
            app: &[("access-control-allow-origin", "*")],
            has: &[("access-control-allow-origin", "*")],
            lacks: &["vary"],
            ..C
        },
        Case {
            name: "shadow: preflights forwarded untouched too",
            policy: SHADOW,
            method: "OPTIONS",
            request: &[
                ("origin", "https://evil.test"),
                ("access-control-request-method", "PUT"),
            ],
            lacks: &["vary", "access-control-allow-*"],
            ..C
        },
    ]
}

/// 100 names of 24 bytes: well over the limit.
const LONG_ACRH: &str = concat!(
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,",
    "x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa,x-aaaaaaaaaaaaaaaaaaaaaa",
);

fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    h
}

fn joined(h: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = h
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    (!values.is_empty()).then(|| values.join(" | "))
}

fn check_headers(case: &Case, headers: &HeaderMap) {
    for (name, want) in case.has {
        assert_eq!(
            joined(headers, name).as_deref(),
            Some(*want),
            "{}: header {name}",
            case.name
        );
    }
    for name in case.lacks {
        let present: Vec<&str> = match name.strip_suffix('*') {
            Some(prefix) => headers
                .keys()
                .map(|k| k.as_str())
                .filter(|k| k.starts_with(prefix))
                .collect(),
            None => headers
                .keys()
                .map(|k| k.as_str())
                .filter(|k| k == name)
                .collect(),
        };
        assert!(present.is_empty(), "{}: must lack {present:?}", case.name);
    }
}

fn run_case(case: &Case) {
    let p = policy(case.policy);
    let method = Method::from_bytes(case.method.as_bytes()).unwrap();
    let headers = header_map(case.request);
    let req = RequestInfo {
        method: &method,
        headers: &headers,
        path: "/test",
        authority: case.authority,
        wants_json: case.wants_json,
    };
    match (p.check(&req), &case.outcome) {
        (Verdict::Respond(resp), Outcome::Respond(status)) => {
            assert_eq!(resp.status().as_u16(), *status, "{}: status", case.name);
            check_headers(case, resp.headers());
            let body: &Bytes = resp.body();
            if let Some(want) = case.body {
                let body = std::str::from_utf8(body).unwrap();
                if want.is_empty() {
                    assert!(body.is_empty(), "{}: body must be empty", case.name);
                } else {
                    assert!(
                        body.contains(want),
                        "{}: body {body:?} lacks {want:?}",
                        case.name
                    );
                }
            }
        }
        (Verdict::Forward(cors), Outcome::Forward) => {
            let mut response = header_map(case.app);
            cors.apply(&mut response);
            check_headers(case, &response);
        }
        (Verdict::Respond(resp), want) => panic!(
            "{}: expected {want:?}, got response {} {:?}",
            case.name,
            resp.status(),
            resp.body()
        ),
        (Verdict::Forward(_), want) => panic!("{}: expected {want:?}, got Forward", case.name),
    }
}

#[test]
fn decision_table() {
    let cases = cases();
    assert!(cases.len() >= 40, "the issue asks for at least 40 cases");
    for case in &cases {
        run_case(case);
    }
}

#[test]
fn evaluate_agrees_with_check() {
    for case in &cases() {
        let p = policy(case.policy);
        let method = Method::from_bytes(case.method.as_bytes()).unwrap();
        let headers = header_map(case.request);
        let req = RequestInfo {
            method: &method,
            headers: &headers,
            path: "/test",
            authority: case.authority,
            wants_json: case.wants_json,
        };
        let a = super::evaluate(&p, &req, &crate::metrics::Metrics::new());
        let b = p.check(&req);
        let kind = |v: &Verdict| match v {
            Verdict::Respond(r) => format!("{} {:?} {:?}", r.status(), r.headers(), r.body()),
            Verdict::Forward(c) => format!("forward {c:?}"),
        };
        assert_eq!(kind(&a), kind(&b), "{}", case.name);
    }
}

fn config_error(settings: Settings) -> CorsConfigError {
    match Policy::from_args(&args(settings)) {
        Ok((p, _)) => panic!("{settings:?} should be refused, got {p}"),
        Err(e) => e,
    }
}

#[test]
fn config_errors_name_setting_value_and_fix() {
    let cases: &[(Settings, &str, &str, &str)] = &[
        (
            &[("ALLOW_ORIGINS", "http://localhost/")],
            "ALLOW_ORIGINS",
            "http://localhost/",
            "write it as http://localhost",
        ),
        (
            &[("ALLOW_ORIGINS", "http://localhost/app")],
            "ALLOW_ORIGINS",
            "http://localhost/app",
            "has a path",
        ),
        (
            &[("ALLOW_ORIGINS", "localhost:3000")],
            "ALLOW_ORIGINS",
            "localhost:3000",
            "https://localhost:3000",
        ),
        (
            &[("ALLOW_ORIGINS", "http://a.test, *")],
            "ALLOW_ORIGINS",
            "http://a.test, *",
            "`*` inside a list",
        ),
        (
            &[("ALLOW_ORIGINS", "http://a.test,,http://b.test")],
            "ALLOW_ORIGINS",
            "http://a.test,,http://b.test",
            "empty entry",
        ),
        (
            &[("ALLOW_ORIGINS", "http://a.test,")],
            "ALLOW_ORIGINS",
            "http://a.test,",
            "empty entry",
        ),
        (
            &[("ALLOW_ORIGINS", "*"), ("ALLOW_CREDENTIALS", "true")],
            "ALLOW_ORIGINS",
            "*",
            "ALLOW_CREDENTIALS=false",
        ),
        (
            &[("ALLOW_ORIGINS", "https://*.com")],
            "ALLOW_ORIGINS",
            "https://*.com",
            "every site",
        ),
        (
            &[("ALLOW_ORIGINS", "https://foo*.example.com")],
            "ALLOW_ORIGINS",
            "https://foo*.example.com",
            "whole leading labels",
        ),
        (
            &[("ALLOW_ORIGIN_REGEX", "https://(unclosed")],
            "ALLOW_ORIGIN_REGEX",
            "https://(unclosed",
            "not a valid regular expression",
        ),
        (
            // A catch-all regex with credentials is `*` + credentials in disguise.
            &[
                ("ALLOW_ORIGIN_REGEX", "https://.*"),
                ("ALLOW_CREDENTIALS", "true"),
            ],
            "ALLOW_ORIGIN_REGEX",
            "https://.*",
            "set ALLOW_CREDENTIALS=false",
        ),
        (
            &[("ALLOW_CREDENTIALS", "yes please")],
            "ALLOW_CREDENTIALS",
            "yes please",
            "true or false",
        ),
        (
            &[("ALLOW_METHODS", "GET, P OST")],
            "ALLOW_METHODS",
            "P OST",
            "not a valid method name",
        ),
        (
            &[("ALLOW_METHODS", "GET, *")],
            "ALLOW_METHODS",
            "GET, *",
            "`*` inside a list",
        ),
        (
            &[("ALLOW_HEADERS", "x-ok, x(bad)")],
            "ALLOW_HEADERS",
            "x(bad)",
            "not a valid header name",
        ),
        (
            &[("EXPOSE_HEADERS", "x-a;x-b")],
            "EXPOSE_HEADERS",
            "x-a;x-b",
            "not a valid header name",
        ),
        (
            &[("MAX_AGE", "-1")],
            "MAX_AGE",
            "-1",
            "whole number of seconds",
        ),
        (&[("MAX_AGE", "10m")], "MAX_AGE", "10m", "MAX_AGE=600"),
        (
            &[("ALLOW_PRIVATE_NETWORK", "maybe")],
            "ALLOW_PRIVATE_NETWORK",
            "maybe",
            "true or false",
        ),
        (&[("CORS_MODE", "strict")], "CORS_MODE", "strict", "enforce"),
    ];
    for (settings, setting, value, fragment) in cases {
        let e = config_error(settings);
        assert_eq!(e.setting, *setting, "{settings:?}");
        assert_eq!(e.value, *value, "{settings:?}");
        let message = e.to_string();
        assert!(message.contains(fragment), "{settings:?}: {message}");
        assert!(
            message.contains(setting) && message.contains("fix:"),
            "{message}"
        );
    }
}

#[test]
fn original_env_values_work_unchanged() {
    // As in the original app's .env: quoted list with spaces, Python-style booleans, `*` lists.
    let (p, _) = Policy::from_args(&args(&[
        (
            "ALLOW_ORIGINS",
            "\"http://localhost, http://127.0.0.1:5500\"",
        ),
        ("ALLOW_CREDENTIALS", "True"),
        ("ALLOW_METHODS", "*"),
        ("ALLOW_HEADERS", "*"),
    ]))
    .unwrap();
    assert!(p.origins.allows("http://localhost") && p.origins.allows("http://127.0.0.1:5500"));
    assert!(p.credentials);
    for v in ["true", "True", "TRUE", "1"] {
        let a = CorsArgs {
            allow_credentials: Some(v.into()),
            ..CorsArgs::default()
        };
        assert!(Policy::from_args(&a).unwrap().0.credentials, "{v}");
    }
    for v in ["false", "False", "0", ""] {
        let a = CorsArgs {
            allow_credentials: Some(v.into()),
            ..CorsArgs::default()
        };
        assert!(!Policy::from_args(&a).unwrap().0.credentials, "{v:?}");
    }
}

#[test]
fn normalisations_and_risks_warn() {
    let warnings = |settings: Settings| Policy::from_args(&args(settings)).unwrap().1.join("\n");
    let w = warnings(&[("ALLOW_ORIGINS", "HTTPS://App.Example.com:443")]);
    assert!(
        w.contains("lower-cased") && w.contains("default port 443 dropped"),
        "{w}"
    );
    let w = warnings(&[("ALLOW_ORIGINS", "null")]);
    assert!(w.contains("any site can make a request"), "{w}");
    let w = warnings(&[("ALLOW_METHODS", "get, patch")]);
    assert!(
        w.contains("upper-cased to GET") && w.contains("PATCH is not normalised"),
        "{w}"
    );
    let w = warnings(&[("ALLOW_ORIGIN_REGEX", "https://.*")]);
    assert!(w.contains("likely allows any origin"), "{w}");
    let w = warnings(&[
        ("ALLOW_ORIGINS", "http://localhost"),
        ("ALLOW_CREDENTIALS", "true"),
        ("EXPOSE_HEADERS", "*"),
    ]);
    assert!(w.contains("lists each response's header names"), "{w}");
    let w = warnings(&[("MAX_AGE", "86400")]);
    assert!(w.contains("Chromium caps"), "{w}");
    assert!(warnings(&[("ALLOW_ORIGINS", "https://app.example.com")]).is_empty());
}

#[test]
fn default_policy_allows_only_same_origin() {
    let p = Policy::default();
    let h = header_map(&[("origin", "http://localhost")]);
    let req = RequestInfo {
        method: &Method::GET,
        headers: &h,
        path: "/",
        authority: Some("localhost:8443"),
        wants_json: false,
    };
    assert!(matches!(p.check(&req), Verdict::Respond(r) if r.status() == 403));
    assert_eq!(
        p.to_string(),
        "mode=enforce origins=[(none)] credentials=false methods=[GET, HEAD, POST] headers=[(safelisted only)] \
         expose=[(none)] max_age=600s private_network=false"
    );
}
