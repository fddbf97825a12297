//! Table cases: origins, malformed input, actual requests, same-origin requests and modes.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
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
