//! CORS policy engine: a request's parts in, a decision out, no I/O (Fetch standard, "CORS protocol").
//!
//! How the server uses it (the contract shared with the proxy server; keep these signatures):
//! - `config::CorsArgs` is flattened into the proxy's clap `Args` (flags + env vars + `.env`).
//! - `Policy::from_args(&CorsArgs) -> Result<(Policy, Vec<String> /* warnings */), CorsConfigError>`
//!   validates at start-up and on reload.
//! - `Policy::check(&self, &RequestInfo) -> Verdict` is the pure decision.
//! - `evaluate(&Policy, &RequestInfo, &Metrics) -> Verdict` is what the server calls before
//!   anything is forwarded: `check` plus the rate-limited refusal log and the decision counted.
//! - `Verdict::Respond(resp)`: the proxy sends `resp` itself and never forwards (preflight, refusal).
//! - `Verdict::Forward(cors)`: the proxy forwards, then calls `cors.apply(resp.headers_mut())` on
//!   whatever response it sends back (the app's, a redirect, or the proxy's own 502/504).
//!
//! Inside: `config` turns settings into a `Policy`, `origin` matches origins, `fetch` holds the
//! Fetch standard's tables, `decision` is `check`, `response` rewrites response headers,
//! `refusal_log` rate-limits the refusal log and counts decisions, `explain` serves
//! `proxy cors explain`.

pub mod config;
mod decision;
pub mod explain;
mod fetch;
mod origin;
mod refusal_log;
mod response;

#[cfg(test)]
mod tests;

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use crate::metrics::Metrics;

pub use config::{CorsArgs, CorsConfigError};
pub use decision::{Assessment, Grant, Refusal};
pub use explain::{CorsCommand, ExplainArgs};
pub(crate) use refusal_log::RateLimiter;
pub use response::ResponseCors;

/// The parts of a request the policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub path: &'a str,
    /// The authority the client addressed (HTTP/2 `:authority` or HTTP/1.1 `Host`), used to
    /// recognise same-origin requests (`https://<authority>`).
    pub authority: Option<&'a str>,
    /// The client asked for JSON answers (`Accept` or the original app's `x-expected-format`):
    /// a refusal's body is JSON then.
    pub wants_json: bool,
}

/// What the proxy must do with a request.
#[derive(Debug)]
pub enum Verdict {
    /// Answer now, never forward.
    Respond(http::Response<Bytes>),
    /// Forward, then apply these headers to the response.
    Forward(ResponseCors),
}

/// What happens to a cross-origin request from a disallowed origin (`CORS_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorsMode {
    /// Refuse with 403 without forwarding: a cross-site form POST never reaches the app.
    Enforce,
    /// Forward without CORS headers; the browser blocks the read (Starlette's behaviour).
    Browser,
    /// Forward everything untouched, preflights too; only log and count what `enforce` would refuse.
    Shadow,
}

impl CorsMode {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CorsMode::Enforce => "enforce",
            CorsMode::Browser => "browser",
            CorsMode::Shadow => "shadow",
        }
    }
}

/// `ALLOW_METHODS` / `ALLOW_HEADERS` after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AllowList {
    /// `*`: anything (echoed back when credentials are allowed).
    Any,
    /// Methods as written (case-sensitive) or header names lower-cased.
    List(Vec<String>),
}

/// `EXPOSE_HEADERS` after validation.
#[derive(Debug, Clone)]
pub(crate) enum Expose {
    None,
    /// A list, or `*` without credentials.
    Value(HeaderValue),
    /// `*` with credentials: a literal `*` would name a header "*", so list the response's names.
    ResponseNames,
}

/// Header values computed once at configuration time so that `check` copies instead of formatting.
#[derive(Debug, Clone)]
pub(crate) struct Precomputed {
    /// `Access-Control-Allow-Methods` unless it is echoed (`*` with credentials).
    pub(crate) allow_methods: Option<HeaderValue>,
    /// `Access-Control-Allow-Headers` unless it is echoed (`*` with credentials).
    pub(crate) allow_headers: Option<HeaderValue>,
    /// `*, authorization`: a literal `*` never covers `Authorization` (Fetch "CORS non-wildcard
    /// request-header name"), so it is named when it was requested.
    pub(crate) allow_headers_star_authorization: HeaderValue,
    pub(crate) max_age: HeaderValue,
}

impl Precomputed {
    fn new(
        methods: &AllowList,
        headers: &AllowList,
        credentials: bool,
        max_age: u64,
    ) -> Precomputed {
        let list = |l: &AllowList| match l {
            AllowList::Any if credentials => None,
            AllowList::Any => Some(HeaderValue::from_static("*")),
            AllowList::List(items) if items.is_empty() => None,
            // Entries are validated tokens, so the joined value is always a valid header value.
            AllowList::List(items) => HeaderValue::from_str(&items.join(", ")).ok(),
        };
        Precomputed {
            allow_methods: list(methods),
            allow_headers: list(headers),
            allow_headers_star_authorization: HeaderValue::from_static("*, authorization"),
            max_age: HeaderValue::from(max_age),
        }
    }
}

/// A validated CORS policy.
#[derive(Debug)]
pub struct Policy {
    pub(crate) mode: CorsMode,
    pub(crate) origins: origin::OriginRules,
    pub(crate) credentials: bool,
    pub(crate) methods: AllowList,
    pub(crate) headers: AllowList,
    pub(crate) expose: Expose,
    pub(crate) max_age: u64,
    pub(crate) private_network: bool,
    pub(crate) values: Precomputed,
}

impl Default for Policy {
    /// The policy with no CORS settings: same-origin only, enforced.
    fn default() -> Policy {
        Policy::from_args(&CorsArgs::default())
            .map(|(policy, _)| policy)
            .expect("the default CORS settings are valid")
    }
}

impl Policy {
    /// Validates the settings; the warnings name each normalised or risky setting.
    pub fn from_args(args: &CorsArgs) -> Result<(Policy, Vec<String>), CorsConfigError> {
        config::build(args)
    }

    /// Decides what to do with a request (pure: no logging, no counters).
    pub fn check(&self, req: &RequestInfo<'_>) -> Verdict {
        self.verdict(self.assess(req), req.wants_json)
    }

    /// The configured `CORS_MODE`.
    pub fn mode(&self) -> CorsMode {
        self.mode
    }
}

impl fmt::Display for Policy {
    /// One line for the start-up log: the effective policy.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |l: &AllowList| match l {
            AllowList::Any => "*".to_string(),
            AllowList::List(items) if items.is_empty() => "(safelisted only)".to_string(),
            AllowList::List(items) => items.join(", "),
        };
        let expose = match &self.expose {
            Expose::None => "(none)".to_string(),
            Expose::Value(v) => v.to_str().unwrap_or("?").to_string(),
            Expose::ResponseNames => "* (each response's header names)".to_string(),
        };
        write!(
            f,
            "mode={} origins=[{}] credentials={} methods=[{}] headers=[{}] expose=[{}] max_age={}s private_network={}",
            self.mode.as_str(),
            self.origins.describe(),
            self.credentials,
            list(&self.methods),
            list(&self.headers),
            expose,
            self.max_age,
            self.private_network,
        )
    }
}

/// The server's entry point: the pure decision plus the rate-limited refusal log, and the
/// decision counted in `metrics`.
pub fn evaluate(policy: &Policy, req: &RequestInfo<'_>, metrics: &Metrics) -> Verdict {
    let assessment = policy.assess(req);
    refusal_log::record(policy, req, &assessment, metrics);
    policy.verdict(assessment, req.wants_json)
}
