//! CORS policy engine: a request's parts in, a decision out, no I/O.
//!
//! INTERFACE CONTRACT (shared by the proxy server and the CORS engine; keep these signatures):
//! - `config::CorsArgs` is flattened into the proxy's clap `Args` (flags + env vars + `.env`).
//! - `Policy::from_args(&CorsArgs) -> Result<(Policy, Vec<String> /* warnings */), CorsConfigError>`
//!   validates at start-up and on reload.
//! - `Policy::check(&self, &RequestInfo) -> Verdict` is the pure decision.
//! - `evaluate(&Policy, &RequestInfo) -> Verdict` is what the server calls before anything is
//!   forwarded: `check` plus the (rate-limited) refusal log and counters.
//! - `Verdict::Respond(resp)`: the proxy sends `resp` itself and never forwards (preflight, refusal).
//! - `Verdict::Forward(cors)`: the proxy forwards, then calls `cors.apply(resp.headers_mut())` on
//!   whatever response it sends back (the app's, a redirect, or the proxy's own 502/504).
//!
//! This file is a placeholder pass-through until the engine lands.

pub mod config;

pub use config::{CorsArgs, CorsConfigError};

use bytes::Bytes;
use http::{HeaderMap, Method};

/// The parts of a request the policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub path: &'a str,
    /// The authority the client addressed (HTTP/2 `:authority` or HTTP/1.1 `Host`), used to
    /// recognise same-origin requests (`https://<authority>`).
    pub authority: Option<&'a str>,
}

/// What the proxy must do with a request.
#[derive(Debug)]
pub enum Verdict {
    /// Answer now, never forward.
    Respond(http::Response<Bytes>),
    /// Forward, then apply these headers to the response.
    Forward(ResponseCors),
}

/// CORS headers to put on a forwarded (or proxy-generated) response.
#[derive(Debug, Default)]
pub struct ResponseCors {}

impl ResponseCors {
    /// Rewrites the response's CORS headers.
    pub fn apply(&self, _headers: &mut HeaderMap) {}
}

/// A validated CORS policy.
#[derive(Debug, Default)]
pub struct Policy {}

impl Policy {
    /// Validates the settings.
    pub fn from_args(_args: &CorsArgs) -> Result<(Policy, Vec<String>), CorsConfigError> {
        Ok((Policy {}, Vec::new()))
    }

    /// Decides what to do with a request.
    pub fn check(&self, _req: &RequestInfo<'_>) -> Verdict {
        Verdict::Forward(ResponseCors::default())
    }
}

/// The server's entry point: the pure decision plus logging of refusals.
pub fn evaluate(policy: &Policy, req: &RequestInfo<'_>) -> Verdict {
    policy.check(req)
}
