//! `proxy cors explain`: plays a browser's part for a hypothetical request (does it preflight,
//! with which headers) against the effective policy, and prints each decision, the headers the
//! proxy would send and the reason.

use std::fmt::Write as _;

use http::header::{ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::decision::REQUEST_PRIVATE_NETWORK;
use super::origin::{self, OriginMatch};
use super::{fetch, Assessment, CorsMode, Policy, RequestInfo, Verdict};

/// `proxy cors <command>`: ready to nest under the binary's `Command` as
/// `Cors { #[command(subcommand)] command: CorsCommand }`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CorsCommand {
    /// Evaluate a hypothetical browser request against the effective CORS policy and print the
    /// decision, the headers the proxy would send, and the reason.
    Explain(ExplainArgs),
}

/// Arguments of `proxy cors explain`.
// The fields' doc comments are the `--help` text, written for a terminal: a bare URL and a
// `host[:port]` are meant as they read there, not as rustdoc links.
#[allow(rustdoc::bare_urls, rustdoc::broken_intra_doc_links)]
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// The origin of the page making the request, e.g. https://app.example.com
    #[arg(long)]
    pub origin: String,
    /// The method the script uses (fetch() upper-cases get, post, put, delete, head, options)
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// A header the script sets: `Name` or `Name: value` (repeatable). With a value, the
    /// CORS-safelist check (e.g. content-type: text/plain) is applied as a browser would.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// The proxy's host[:port] as the browser addresses it, to recognise same-origin requests
    #[arg(long, visible_alias = "authority")]
    pub host: Option<String>,
    /// The request path
    #[arg(long, default_value = "/")]
    pub path: String,
    /// The page is public and the proxy on a private network (Private Network Access preflight)
    #[arg(long)]
    pub private_network: bool,
}

/// Evaluates the request described by `args` against `policy` and returns the report.
pub fn run(args: &ExplainArgs, policy: &Policy) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = explain(args, policy, &mut out);
    out
}

fn explain(args: &ExplainArgs, policy: &Policy, out: &mut String) -> std::fmt::Result {
    writeln!(out, "policy:    {policy}")?;

    let method = fetch::normalize_method(&args.method)
        .unwrap_or(&args.method)
        .to_string();
    let Ok(parsed_method) = Method::from_bytes(method.as_bytes()) else {
        writeln!(
            out,
            "decision:  INVALID INPUT: {:?} is not a method name",
            args.method
        )?;
        return Ok(());
    };
    let mut headers: Vec<(String, Option<String>)> = Vec::new();
    for h in &args.headers {
        let (name, value) = match h.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (h.trim(), None),
        };
        if !fetch::is_token(name) {
            writeln!(
                out,
                "decision:  INVALID INPUT: {name:?} is not a header name"
            )?;
            return Ok(());
        }
        headers.push((name.to_string(), value));
    }
    let target = args.host.as_deref().unwrap_or("<proxy>");
    writeln!(
        out,
        "request:   {method} https://{target}{} from a page at {}",
        args.path, args.origin
    )?;
    if method != args.method {
        writeln!(
            out,
            "           (fetch() upper-cases {:?} to {method})",
            args.method
        )?;
    } else if method.bytes().any(|b| b.is_ascii_lowercase()) {
        writeln!(
            out,
            "           (fetch() sends {method:?} as written: only DELETE, GET, HEAD, OPTIONS, POST and PUT are upper-cased)"
        )?;
    }
    for (name, _) in headers
        .iter()
        .filter(|(n, _)| fetch::is_forbidden_request_header(n))
    {
        writeln!(
            out,
            "           (header {name} ignored: browsers do not let scripts set it)"
        )?;
    }

    // The origin part, in words.
    let origin_note = match origin::request_origin(
        &HeaderValue::from_str(&args.origin).unwrap_or(HeaderValue::from_static("")),
    ) {
        Err(_) => "not a single serialised origin: refused as malformed".to_string(),
        Ok(o)
            if args
                .host
                .as_deref()
                .is_some_and(|h| origin::is_same_origin(o, h)) =>
        {
            "same-origin with the proxy: never refused, no CORS headers needed".to_string()
        }
        Ok(o) => match policy.origins.find(o) {
            Some(OriginMatch::Any) => "allowed: ALLOW_ORIGINS=* (any origin)".to_string(),
            Some(OriginMatch::Null) => {
                "allowed: ALLOW_ORIGINS lists null (dangerous: any site can send it)".to_string()
            }
            Some(OriginMatch::Exact) => format!("allowed: ALLOW_ORIGINS lists {o}"),
            Some(OriginMatch::Wildcard(p)) => format!("allowed: matches ALLOW_ORIGINS pattern {p}"),
            Some(OriginMatch::Regex(r)) => {
                format!("allowed: matches ALLOW_ORIGIN_REGEX {r} in full")
            }
            None => format!("not allowed: {}", origin_hint(policy, o)),
        },
    };
    writeln!(out, "origin:    {origin_note}")?;
    writeln!(
        out,
        "credentials: {}",
        if policy.credentials {
            "allowed (Access-Control-Allow-Credentials: true): cookies and credentials: 'include' work"
        } else {
            "not allowed: a request made with credentials: 'include' / withCredentials is blocked by the browser"
        }
    )?;

    let unsafe_names = fetch::cors_unsafe_request_header_names(&headers);
    let mut why = Vec::new();
    if !fetch::is_safelisted_method(&method) {
        why.push(format!("method {method} is not GET, HEAD or POST"));
    }
    if !unsafe_names.is_empty() {
        why.push(format!(
            "header(s) {} are not CORS-safelisted",
            unsafe_names.join(", ")
        ));
    }
    if args.private_network {
        why.push("the request goes to a private network".to_string());
    }

    let origin_value = HeaderValue::from_str(&args.origin).ok();
    let mut base = HeaderMap::new();
    if let Some(v) = &origin_value {
        base.insert(ORIGIN, v.clone());
    }

    if why.is_empty() {
        writeln!(
            out,
            "preflight: none (a CORS-safelisted method with CORS-safelisted headers)"
        )?;
    } else {
        writeln!(out, "preflight: needed, because {}", why.join("; "))?;
        let mut pre = base.clone();
        if let Ok(v) = HeaderValue::from_str(&method) {
            pre.insert(ACCESS_CONTROL_REQUEST_METHOD, v);
        }
        if !unsafe_names.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&unsafe_names.join(",")) {
                pre.insert(ACCESS_CONTROL_REQUEST_HEADERS, v);
            }
        }
        if args.private_network {
            pre.insert(REQUEST_PRIVATE_NETWORK, HeaderValue::from_static("true"));
        }
        write_request(out, "OPTIONS", &args.path, &pre)?;
        let req = RequestInfo {
            method: &Method::OPTIONS,
            headers: &pre,
            path: &args.path,
            authority: args.host.as_deref(),
            wants_json: false,
        };
        let assessment = policy.assess(&req);
        let refused = describe(out, policy, &assessment, policy.check(&req))?;
        if let Some(reason) = refused {
            writeln!(
                out,
                "actual request: not sent (the browser stops after a failed preflight)"
            )?;
            return write_decision(out, policy, "REFUSED", &reason);
        }
    }

    let mut actual = base;
    for (name, value) in &headers {
        if let (Ok(n), Some(Ok(v))) = (
            HeaderName::from_bytes(name.as_bytes()),
            value.as_deref().map(HeaderValue::from_str),
        ) {
            actual.append(n, v);
        }
    }
    write_request(out, &method, &args.path, &actual)?;
    let req = RequestInfo {
        method: &parsed_method,
        headers: &actual,
        path: &args.path,
        authority: args.host.as_deref(),
        wants_json: false,
    };
    let assessment = policy.assess(&req);
    match describe(out, policy, &assessment, policy.check(&req))? {
        Some(reason) => write_decision(out, policy, "REFUSED", &reason),
        None => match (&assessment, policy.mode) {
            (Assessment::Denied { refusal, .. }, CorsMode::Browser) => write_decision(
                out,
                policy,
                "FORWARDED WITHOUT CORS HEADERS (the app sees the request, the browser blocks the read)",
                &refusal.to_string(),
            ),
            (Assessment::Denied { refusal, .. }, _) => write_decision(
                out,
                policy,
                "FORWARDED (shadow mode; enforce would refuse it)",
                &refusal.to_string(),
            ),
            (Assessment::NoOrigin, _) => write_decision(out, policy, "FORWARDED", "no Origin: not a CORS request"),
            (Assessment::SameOrigin { .. }, _) => write_decision(out, policy, "ALLOWED", "same-origin request"),
            _ => write_decision(out, policy, "ALLOWED", &origin_note),
        },
    }
}

/// Prints a request's CORS-relevant headers.
fn write_request(
    out: &mut String,
    method: &str,
    path: &str,
    headers: &HeaderMap,
) -> std::fmt::Result {
    writeln!(out, "  {method} {path}")?;
    for (name, value) in headers {
        writeln!(out, "    {name}: {}", value.to_str().unwrap_or("?"))?;
    }
    Ok(())
}

/// Prints what the proxy does; returns the refusal reason when it answers 403.
fn describe(
    out: &mut String,
    policy: &Policy,
    assessment: &Assessment,
    verdict: Verdict,
) -> Result<Option<String>, std::fmt::Error> {
    match verdict {
        Verdict::Respond(resp) => {
            let status = resp.status();
            writeln!(
                out,
                "  -> {} {}, answered by the proxy (never forwarded to the app)",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )?;
            for (name, value) in resp.headers() {
                writeln!(out, "    {name}: {}", value.to_str().unwrap_or("?"))?;
            }
            match assessment {
                Assessment::Denied { refusal, .. } => {
                    writeln!(out, "  refused part: {}: {refusal}", refusal.part())?;
                    Ok(Some(format!("{}: {refusal}", refusal.part())))
                }
                _ => Ok(None),
            }
        }
        Verdict::Forward(cors) => {
            let mut headers = HeaderMap::new();
            cors.apply(&mut headers);
            if policy.mode == CorsMode::Shadow {
                writeln!(
                    out,
                    "  -> forwarded to the app untouched (CORS_MODE=shadow)"
                )?;
                if let Assessment::Denied { refusal, .. } = assessment {
                    writeln!(
                        out,
                        "  enforce would refuse it: {}: {refusal}",
                        refusal.part()
                    )?;
                }
            } else {
                writeln!(
                    out,
                    "  -> forwarded to the app; the proxy sets on its response:"
                )?;
                for (name, value) in &headers {
                    writeln!(out, "    {name}: {}", value.to_str().unwrap_or("?"))?;
                }
            }
            Ok(None)
        }
    }
}

fn write_decision(
    out: &mut String,
    policy: &Policy,
    decision: &str,
    reason: &str,
) -> std::fmt::Result {
    writeln!(out, "decision:  {decision}")?;
    writeln!(out, "reason:    {reason}")?;
    if policy.mode != CorsMode::Enforce {
        writeln!(out, "mode:      CORS_MODE={}", policy.mode.as_str())?;
    }
    Ok(())
}

/// Why an origin did not match, with the near misses people make.
fn origin_hint(policy: &Policy, origin: &str) -> String {
    let mut hint = format!(
        "{origin} matches no entry of ALLOW_ORIGINS [{}]",
        policy.origins.describe()
    );
    let swapped = origin
        .strip_prefix("http://")
        .map(|r| format!("https://{r}"))
        .or_else(|| {
            origin
                .strip_prefix("https://")
                .map(|r| format!("http://{r}"))
        });
    if let Some(other) = swapped.filter(|o| policy.origins.allows(o)) {
        let _ = write!(
            hint,
            "; {other} is allowed, but the scheme is part of the origin"
        );
    }
    if let Some((scheme, host)) = origin.split_once("://") {
        let sub = format!("{scheme}://x.{host}");
        if policy
            .origins
            .wildcards
            .iter()
            .any(|w| w.pattern().ends_with(host))
            && policy.origins.allows(&sub)
        {
            let _ = write!(
                hint,
                "; a *.{host} pattern matches subdomains only, so list {origin} itself too"
            );
        }
    }
    if origin.bytes().any(|b| b.is_ascii_uppercase())
        || origin.ends_with(":443")
        || origin.ends_with(":80")
    {
        let _ = write!(
            hint,
            "; browsers send origins lower-case without a default port"
        );
    }
    hint
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cors::{AllowList, CorsArgs};

    fn policy(origins: &str, credentials: bool, headers: Option<&str>) -> Policy {
        let args = CorsArgs {
            allow_origins: Some(origins.into()),
            allow_credentials: Some(credentials.to_string()),
            allow_methods: Some("GET, POST, PUT, DELETE".into()),
            allow_headers: headers.map(str::to_string),
            ..CorsArgs::default()
        };
        Policy::from_args(&args).expect("valid policy").0
    }

    fn args(origin: &str, method: &str, headers: &[&str]) -> ExplainArgs {
        ExplainArgs {
            origin: origin.into(),
            method: method.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            host: Some("localhost:8443".into()),
            path: "/auth/login".into(),
            private_network: false,
        }
    }

    #[test]
    fn allowed_preflight_and_actual_request() {
        let p = policy(
            "http://localhost",
            true,
            Some("content-type, authorization"),
        );
        let out = run(
            &args(
                "http://localhost",
                "post",
                &["Content-Type: application/json", "Authorization: Bearer x"],
            ),
            &p,
        );
        assert!(
            out.contains("(fetch() upper-cases \"post\" to POST)"),
            "{out}"
        );
        assert!(out.contains("preflight: needed, because header(s) authorization, content-type are not CORS-safelisted"), "{out}");
        assert!(
            out.contains("access-control-request-headers: authorization,content-type"),
            "{out}"
        );
        assert!(
            out.contains("-> 204 No Content, answered by the proxy"),
            "{out}"
        );
        assert!(
            out.contains("access-control-allow-credentials: true"),
            "{out}"
        );
        assert!(
            out.contains("-> forwarded to the app; the proxy sets on its response:"),
            "{out}"
        );
        assert!(out.contains("decision:  ALLOWED"), "{out}");
        assert!(
            out.contains("allowed: ALLOW_ORIGINS lists http://localhost"),
            "{out}"
        );
    }

    #[test]
    fn simple_request_needs_no_preflight() {
        let p = policy("http://localhost", false, None);
        let out = run(
            &args(
                "http://localhost",
                "POST",
                &["content-type: text/plain;charset=UTF-8"],
            ),
            &p,
        );
        assert!(out.contains("preflight: none"), "{out}");
        assert!(out.contains("decision:  ALLOWED"), "{out}");
    }

    #[test]
    fn refused_preflight_names_the_header_and_stops() {
        let p = policy("http://localhost", false, None);
        let out = run(
            &args(
                "http://localhost",
                "POST",
                &["content-type: application/json"],
            ),
            &p,
        );
        assert!(out.contains("-> 403 Forbidden"), "{out}");
        assert!(
            out.contains("refused part: headers: request header(s) content-type not allowed"),
            "{out}"
        );
        assert!(out.contains("actual request: not sent"), "{out}");
        assert!(out.contains("decision:  REFUSED"), "{out}");
        assert!(!out.contains("access-control-allow-origin"), "{out}");
    }

    #[test]
    fn refused_origin_gets_a_hint() {
        let p = policy("https://*.example.com, http://localhost:3000", false, None);
        let out = run(&args("https://example.com", "GET", &[]), &p);
        assert!(out.contains("decision:  REFUSED"), "{out}");
        assert!(out.contains("matches subdomains only"), "{out}");
        let out = run(&args("https://localhost:3000", "GET", &[]), &p);
        assert!(out.contains("the scheme is part of the origin"), "{out}");
    }

    #[test]
    fn same_origin_is_allowed_whatever_the_list() {
        let p = policy("https://google.com", false, None);
        let out = run(
            &args(
                "https://localhost:8443",
                "POST",
                &["content-type: application/x-www-form-urlencoded"],
            ),
            &p,
        );
        assert!(out.contains("same-origin with the proxy"), "{out}");
        assert!(out.contains("decision:  ALLOWED"), "{out}");
    }

    #[test]
    fn patch_is_not_upper_cased_by_fetch() {
        let p = policy("http://localhost", false, None);
        let out = run(&args("http://localhost", "patch", &[]), &p);
        assert!(
            out.contains("only DELETE, GET, HEAD, OPTIONS, POST and PUT are upper-cased"),
            "{out}"
        );
        assert!(
            out.contains("refused part: method: method patch is not allowed"),
            "{out}"
        );
    }

    #[test]
    fn wildcard_headers_without_credentials_name_authorization() {
        let p = policy("http://localhost", false, Some("*"));
        let out = run(
            &args("http://localhost", "GET", &["Authorization: Bearer t"]),
            &p,
        );
        assert!(
            out.contains("access-control-allow-headers: *, authorization"),
            "{out}"
        );
        let AllowList::Any = p.headers else {
            panic!("headers should be *");
        };
    }
}
