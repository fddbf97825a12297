//! Table cases: preflights, allowed and refused per part.

use super::*;

pub(super) fn cases() -> Vec<Case> {
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
    ]
}
