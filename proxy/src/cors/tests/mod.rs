//! The engine's table: every rule of the CORS issue as a (policy, request) -> outcome case
//! (preflights.rs, requests.rs), plus configuration errors and warnings (config.rs).

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

mod config;
mod preflights;
mod requests;

/// Every case of the table: preflights, then actual requests.
fn cases() -> Vec<Case> {
    let mut cases = preflights::cases();
    cases.extend(requests::cases());
    cases
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
