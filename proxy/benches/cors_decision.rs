//! Micro-benchmark of the CORS decision: times `Policy::check` (and `ResponseCors::apply`) for a
//! few typical requests and prints nanoseconds per decision. Run with `cargo bench -p proxy`.
//!
//! Each case runs several short rounds and reports the fastest: noise from a busy machine only
//! ever adds time, so the minimum is the best estimate of the cost itself.

use std::hint::black_box;
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proxy::cors::{CorsArgs, Policy, RequestInfo, Verdict};

/// Decisions timed per round.
const ITERATIONS: u32 = 100_000;
/// Rounds per case; the fastest is reported.
const ROUNDS: u32 = 10;

/// The best per-iteration time, in nanoseconds, of `ROUNDS` rounds of `ITERATIONS` calls of `f`.
fn best_ns(mut f: impl FnMut()) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..ITERATIONS {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
        })
        .fold(f64::INFINITY, f64::min)
}

fn policy(origins: &str, regex: Option<&str>) -> Policy {
    let args = CorsArgs {
        allow_origins: Some(origins.into()),
        allow_origin_regex: regex.map(str::to_string),
        allow_credentials: Some("true".into()),
        allow_methods: Some("GET, POST, PUT, DELETE".into()),
        allow_headers: Some("content-type, authorization, x-requested-with".into()),
        expose_headers: Some("x-request-id".into()),
        ..CorsArgs::default()
    };
    Policy::from_args(&args)
        .expect("benchmark policy is valid")
        .0
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    // Typical browser headers the policy must look past.
    h.insert(
        "user-agent",
        HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"),
    );
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert(
        "accept-language",
        HeaderValue::from_static("en-GB,en;q=0.9"),
    );
    h.insert(
        "cookie",
        HeaderValue::from_static("session=0123456789abcdef"),
    );
    h
}

fn time(name: &str, policy: &Policy, method: &Method, headers: &HeaderMap) {
    let req = RequestInfo {
        method,
        headers,
        path: "/admin/me",
        authority: Some("localhost:8443"),
        wants_json: false,
    };
    let kind = match policy.check(&req) {
        Verdict::Respond(r) => format!("respond {}", r.status().as_u16()),
        Verdict::Forward(_) => "forward".to_string(),
    };
    let ns = best_ns(|| {
        black_box(policy.check(black_box(&req)));
    });
    println!("{name:<48} {kind:<12} {ns:>8.1} ns/decision");
}

fn time_apply(policy: &Policy) {
    let h = headers(&[("origin", "http://localhost")]);
    let req = RequestInfo {
        method: &Method::GET,
        headers: &h,
        path: "/admin/me",
        authority: Some("localhost:8443"),
        wants_json: false,
    };
    let Verdict::Forward(cors) = policy.check(&req) else {
        panic!("benchmark request should be forwarded");
    };
    let mut response = HeaderMap::new();
    response.insert("content-type", HeaderValue::from_static("application/json"));
    response.insert("content-length", HeaderValue::from_static("42"));
    response.insert("vary", HeaderValue::from_static("Accept-Encoding, Origin"));
    let ns = best_ns(|| {
        let mut r = response.clone();
        cors.apply(black_box(&mut r));
        black_box(r);
    });
    println!(
        "{:<48} {:<12} {ns:>8.1} ns/response (incl. cloning the map)",
        "ResponseCors::apply", ""
    );
}

fn main() {
    let exact = policy(
        "http://localhost, https://app.example.com, https://*.example.org",
        None,
    );
    let regex = policy(
        "http://localhost",
        Some(r"https://[a-z0-9-]+\.example\.net"),
    );
    let get = Method::GET;
    let post = Method::POST;
    let options = Method::OPTIONS;

    time(
        "no Origin (same-site navigation)",
        &exact,
        &get,
        &headers(&[]),
    );
    time(
        "allowed actual GET, exact origin",
        &exact,
        &get,
        &headers(&[("origin", "http://localhost")]),
    );
    time(
        "same-origin form POST",
        &exact,
        &post,
        &headers(&[
            ("origin", "https://localhost:8443"),
            ("content-type", "application/x-www-form-urlencoded"),
        ]),
    );
    time(
        "allowed actual GET, wildcard subdomain",
        &exact,
        &get,
        &headers(&[("origin", "https://a.b.example.org")]),
    );
    time(
        "allowed actual GET, regex",
        &regex,
        &get,
        &headers(&[("origin", "https://shop.example.net")]),
    );
    time(
        "allowed preflight, two headers",
        &exact,
        &options,
        &headers(&[
            ("origin", "http://localhost"),
            ("access-control-request-method", "PUT"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ]),
    );
    time(
        "refused actual POST (enforce, 403)",
        &exact,
        &post,
        &headers(&[("origin", "https://evil.test")]),
    );
    time_apply(&exact);
}
