//! CORS settings as the user writes them (flags, env vars, the original app's `.env` keys), and
//! their validation into a [`Policy`]: every error names the setting, the value and the fix.

use std::collections::HashSet;
use std::fmt;

use http::HeaderValue;
use regex::Regex;

use super::fetch;
use super::origin::{self, OriginEntry, OriginRules};
use super::{AllowList, CorsMode, Expose, Policy, Precomputed};

/// Preflight cache lifetime when `MAX_AGE` is not set (Starlette's default).
pub const DEFAULT_MAX_AGE_SECS: u64 = 600;
/// Chromium caps `Access-Control-Max-Age` at two hours; longer values are silently cut.
const CHROMIUM_MAX_AGE_CAP_SECS: u64 = 7200;
/// Methods allowed when `ALLOW_METHODS` is not set: the CORS-safelisted ones.
pub const DEFAULT_ALLOW_METHODS: &str = "GET, HEAD, POST";
/// An origin that no sensible `ALLOW_ORIGIN_REGEX` should match; if it does, the regex is too broad.
const REGEX_PROBE_ORIGIN: &str = "https://cors-probe.invalid";

/// CORS settings. Each is a raw string, validated by `Policy::from_args`. An empty value counts as
/// not set.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CorsArgs {
    /// Allowed origins: comma-separated list, `*` for any, `https://*.example.com` for
    /// subdomains, `null` (dangerous) [default: none, i.e. only same-origin requests]
    #[arg(long = "allow-origins", env = "ALLOW_ORIGINS")]
    pub allow_origins: Option<String>,
    /// Regular expression an origin must match in full to be allowed (in addition to ALLOW_ORIGINS)
    #[arg(long = "allow-origin-regex", env = "ALLOW_ORIGIN_REGEX")]
    pub allow_origin_regex: Option<String>,
    /// Whether credentialed requests (cookies, Authorization) are allowed: true/false/1/0
    /// [default: false]
    #[arg(long = "allow-credentials", env = "ALLOW_CREDENTIALS")]
    pub allow_credentials: Option<String>,
    /// Allowed methods: comma-separated list or `*` (case-sensitive) [default: GET, HEAD, POST]
    #[arg(long = "allow-methods", env = "ALLOW_METHODS")]
    pub allow_methods: Option<String>,
    /// Allowed request headers: comma-separated list or `*` [default: none beyond the
    /// CORS-safelisted ones]
    #[arg(long = "allow-headers", env = "ALLOW_HEADERS")]
    pub allow_headers: Option<String>,
    /// Response headers exposed to scripts: comma-separated list or `*` [default: none]
    #[arg(long = "expose-headers", env = "EXPOSE_HEADERS")]
    pub expose_headers: Option<String>,
    /// Preflight cache lifetime in seconds [default: 600]
    #[arg(long = "max-age", env = "MAX_AGE")]
    pub max_age: Option<String>,
    /// Answer Private Network Access preflights (Access-Control-Request-Private-Network):
    /// true/false [default: false]
    #[arg(long = "allow-private-network", env = "ALLOW_PRIVATE_NETWORK")]
    pub allow_private_network: Option<String>,
    /// What to do with a cross-origin request from a disallowed origin: enforce (403),
    /// browser (forward without CORS headers), shadow (forward everything untouched, log denials)
    /// [default: enforce]
    #[arg(long = "cors-mode", env = "CORS_MODE")]
    pub cors_mode: Option<String>,
}

/// An invalid CORS setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting} (--{flag}) value {value:?}: {problem}; fix: {fix}")]
pub struct CorsConfigError {
    /// The env var / `.env` key.
    pub setting: &'static str,
    /// The command-line flag, without `--`.
    pub flag: &'static str,
    /// The offending value (the whole setting, or the one bad list entry).
    pub value: String,
    pub problem: String,
    pub fix: String,
}

/// One setting's names, for messages.
#[derive(Clone, Copy)]
struct Setting {
    env: &'static str,
    flag: &'static str,
}

const ALLOW_ORIGINS: Setting = Setting {
    env: "ALLOW_ORIGINS",
    flag: "allow-origins",
};
const ALLOW_ORIGIN_REGEX: Setting = Setting {
    env: "ALLOW_ORIGIN_REGEX",
    flag: "allow-origin-regex",
};
const ALLOW_CREDENTIALS: Setting = Setting {
    env: "ALLOW_CREDENTIALS",
    flag: "allow-credentials",
};
const ALLOW_METHODS: Setting = Setting {
    env: "ALLOW_METHODS",
    flag: "allow-methods",
};
const ALLOW_HEADERS: Setting = Setting {
    env: "ALLOW_HEADERS",
    flag: "allow-headers",
};
const EXPOSE_HEADERS: Setting = Setting {
    env: "EXPOSE_HEADERS",
    flag: "expose-headers",
};
const MAX_AGE: Setting = Setting {
    env: "MAX_AGE",
    flag: "max-age",
};
const ALLOW_PRIVATE_NETWORK: Setting = Setting {
    env: "ALLOW_PRIVATE_NETWORK",
    flag: "allow-private-network",
};
const CORS_MODE: Setting = Setting {
    env: "CORS_MODE",
    flag: "cors-mode",
};

impl Setting {
    fn error(
        self,
        value: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> CorsConfigError {
        CorsConfigError {
            setting: self.env,
            flag: self.flag,
            value: value.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.env)
    }
}

/// A list setting: `*` or explicit entries.
enum ListValue<'a> {
    Star,
    Items(Vec<&'a str>),
}

/// The value of a setting, `None` when unset or blank. A value wrapped whole in one pair of
/// quotes (as some deploy tools pass `.env` lines through literally) is unwrapped with a warning.
fn value<'a>(
    setting: Setting,
    raw: &'a Option<String>,
    warnings: &mut Vec<String>,
) -> Option<&'a str> {
    let v = raw.as_deref()?.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|q| v.strip_prefix(*q).and_then(|s| s.strip_suffix(*q)))
        .filter(|s| !s.contains(['"', '\'']));
    let v = match unquoted {
        Some(inner) => {
            warnings.push(format!("{setting}: surrounding quotes removed from {v}"));
            inner.trim()
        }
        None => v,
    };
    (!v.is_empty()).then_some(v)
}

/// Splits a comma-separated setting: entries trimmed; an empty entry or `*` inside a list is an error.
fn split_list(setting: Setting, v: &str) -> Result<ListValue<'_>, CorsConfigError> {
    if v == "*" {
        return Ok(ListValue::Star);
    }
    let items: Vec<&str> = v.split(',').map(str::trim).collect();
    if items.iter().any(|i| i.is_empty()) {
        return Err(setting.error(
            v,
            "it has an empty entry (a doubled, leading or trailing comma)",
            "remove the extra comma",
        ));
    }
    if items.contains(&"*") {
        return Err(setting.error(
            v,
            "`*` inside a list: `*` means \"any\" only as the whole value",
            format!("write either {setting}=* or a list without `*`"),
        ));
    }
    Ok(ListValue::Items(items))
}

fn parse_bool(
    setting: Setting,
    raw: &Option<String>,
    warnings: &mut Vec<String>,
) -> Result<bool, CorsConfigError> {
    let Some(v) = value(setting, raw, warnings) else {
        return Ok(false);
    };
    if v.eq_ignore_ascii_case("true") || v == "1" {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") || v == "0" {
        Ok(false)
    } else {
        Err(setting.error(
            v,
            "not a boolean",
            "write true or false (True, False, 1 and 0 also work)",
        ))
    }
}

fn header_value(setting: Setting, v: &str) -> Result<HeaderValue, CorsConfigError> {
    HeaderValue::from_str(v)
        .map_err(|_| setting.error(v, "not a valid header value", "use visible ASCII only"))
}

/// Parses and validates the settings into a policy plus warnings for everything normalised or risky.
pub(super) fn build(args: &CorsArgs) -> Result<(Policy, Vec<String>), CorsConfigError> {
    let mut warnings = Vec::new();
    let credentials = parse_bool(ALLOW_CREDENTIALS, &args.allow_credentials, &mut warnings)?;
    let private_network = parse_bool(
        ALLOW_PRIVATE_NETWORK,
        &args.allow_private_network,
        &mut warnings,
    )?;
    let mode = parse_mode(value(CORS_MODE, &args.cors_mode, &mut warnings))?;
    let origins = parse_origins(args, credentials, &mut warnings)?;
    let methods = parse_methods(
        value(ALLOW_METHODS, &args.allow_methods, &mut warnings),
        &mut warnings,
    )?;
    let headers = parse_header_names(
        ALLOW_HEADERS,
        value(ALLOW_HEADERS, &args.allow_headers, &mut warnings),
        &mut warnings,
    )?;
    let expose = match parse_header_names(
        EXPOSE_HEADERS,
        value(EXPOSE_HEADERS, &args.expose_headers, &mut warnings),
        &mut warnings,
    )? {
        AllowList::Any if credentials => {
            warnings.push(
                "EXPOSE_HEADERS=* with ALLOW_CREDENTIALS=true: browsers read a literal `*` as a header \
                 named \"*\" on credentialed responses, so the proxy lists each response's header names instead"
                    .to_string(),
            );
            Expose::ResponseNames
        }
        AllowList::Any => Expose::Value(HeaderValue::from_static("*")),
        AllowList::List(names) if names.is_empty() => Expose::None,
        AllowList::List(names) => Expose::Value(header_value(EXPOSE_HEADERS, &names.join(", "))?),
    };
    let max_age = match value(MAX_AGE, &args.max_age, &mut warnings) {
        None => DEFAULT_MAX_AGE_SECS,
        Some(v) => {
            let secs = v
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| v.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| {
                    MAX_AGE.error(v, "not a whole number of seconds", "write e.g. MAX_AGE=600")
                })?;
            if secs > CHROMIUM_MAX_AGE_CAP_SECS {
                warnings.push(format!(
                    "MAX_AGE={secs}: Chromium caps preflight caching at {CHROMIUM_MAX_AGE_CAP_SECS} seconds and Firefox at 86400"
                ));
            }
            secs
        }
    };

    let values = Precomputed::new(&methods, &headers, credentials, max_age);
    Ok((
        Policy {
            mode,
            origins,
            credentials,
            methods,
            headers,
            expose,
            max_age,
            private_network,
            values,
        },
        warnings,
    ))
}

fn parse_mode(v: Option<&str>) -> Result<CorsMode, CorsConfigError> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("enforce") => Ok(CorsMode::Enforce),
        Some("browser") => Ok(CorsMode::Browser),
        Some("shadow") => Ok(CorsMode::Shadow),
        Some(_) => Err(CORS_MODE.error(
            v.unwrap_or_default(),
            "unknown mode",
            "write enforce (refuse with 403), browser (forward without CORS headers) or shadow (forward untouched, log only)",
        )),
    }
}

fn parse_origins(
    args: &CorsArgs,
    credentials: bool,
    warnings: &mut Vec<String>,
) -> Result<OriginRules, CorsConfigError> {
    let mut rules = OriginRules::default();
    if let Some(v) = value(ALLOW_ORIGINS, &args.allow_origins, warnings) {
        match split_list(ALLOW_ORIGINS, v)? {
            ListValue::Star if credentials => {
                return Err(ALLOW_ORIGINS.error(
                    v,
                    "`*` together with ALLOW_CREDENTIALS=true: the Fetch standard refuses \
                     `Access-Control-Allow-Origin: *` on credentialed requests, and reflecting every \
                     origin instead would let any site act as the signed-in user",
                    "list the origins that may send credentials (e.g. https://app.example.com, \
                     https://*.example.com or ALLOW_ORIGIN_REGEX), or set ALLOW_CREDENTIALS=false",
                ));
            }
            ListValue::Star => rules.any = true,
            ListValue::Items(items) => {
                for item in items {
                    let mut notes = Vec::new();
                    let entry = origin::parse_entry(item, &mut notes)
                        .map_err(|e| ALLOW_ORIGINS.error(item, e.problem, e.fix))?;
                    warnings.extend(notes.into_iter().map(|n| format!("ALLOW_ORIGINS: {n}")));
                    let duplicate = match entry {
                        OriginEntry::Null => std::mem::replace(&mut rules.null, true),
                        OriginEntry::Exact(o) => !rules.exact.insert(o.into_boxed_str()),
                        OriginEntry::Wildcard(w) => {
                            let dup = rules.wildcards.contains(&w);
                            if !dup {
                                rules.wildcards.push(w);
                            }
                            dup
                        }
                    };
                    if duplicate {
                        warnings.push(format!("ALLOW_ORIGINS: {item:?} is listed more than once"));
                    }
                }
            }
        }
    }
    if let Some(src) = value(ALLOW_ORIGIN_REGEX, &args.allow_origin_regex, warnings) {
        let re = Regex::new(&format!("^(?:{src})$")).map_err(|e| {
            ALLOW_ORIGIN_REGEX.error(
                src,
                format!("not a valid regular expression: {e}"),
                "fix the syntax (Rust regex crate), e.g. https://[a-z0-9-]+\\.example\\.com",
            )
        })?;
        if rules.any {
            warnings.push(
                "ALLOW_ORIGIN_REGEX is ignored: ALLOW_ORIGINS=* already allows every origin"
                    .to_string(),
            );
        }
        if re.is_match(REGEX_PROBE_ORIGIN) {
            // A regex that matches a made-up origin matches (nearly) any origin. With credentials
            // that is the hole `*` + credentials is refused for: any site acting as the user.
            if credentials {
                return Err(ALLOW_ORIGIN_REGEX.error(
                    src,
                    format!(
                        "it matches {REGEX_PROBE_ORIGIN}, so with ALLOW_CREDENTIALS=true it would let \
                         any site send credentialed requests as the signed-in user"
                    ),
                    "anchor it to your domain with escaped dots, e.g. https://[a-z0-9-]+\\.example\\.com, \
                     or set ALLOW_CREDENTIALS=false",
                ));
            }
            warnings.push(format!(
                "ALLOW_ORIGIN_REGEX={src:?} matches {REGEX_PROBE_ORIGIN}, so it likely allows any origin; \
                 escape dots (\\.) and name your domain"
            ));
        }
        // `Origin: null` never reaches the regex (only ALLOW_ORIGINS=null allows it), so a regex
        // that happens to match "null" needs no warning.
        rules.regex = Some(re);
        rules.regex_source = Some(src.to_string());
    }
    Ok(rules)
}

fn parse_methods(
    v: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<AllowList, CorsConfigError> {
    let v = v.unwrap_or(DEFAULT_ALLOW_METHODS);
    let items = match split_list(ALLOW_METHODS, v)? {
        ListValue::Star => return Ok(AllowList::Any),
        ListValue::Items(items) => items,
    };
    let mut methods: Vec<String> = Vec::new();
    for item in items {
        if !fetch::is_token(item) {
            return Err(ALLOW_METHODS.error(
                item,
                "not a valid method name (an HTTP token)",
                "write method names such as GET, POST, PUT, DELETE, PATCH",
            ));
        }
        let method = match fetch::normalize_method(item) {
            Some(upper) if upper != item => {
                warnings.push(format!(
                    "ALLOW_METHODS: {item:?} upper-cased to {upper}: browsers normalise it and methods compare case-sensitively"
                ));
                upper.to_string()
            }
            _ => item.to_string(),
        };
        if method.bytes().any(|b| b.is_ascii_lowercase()) {
            warnings.push(format!(
                "ALLOW_METHODS: {method:?} is not upper-case; methods compare case-sensitively and fetch() sends \
                 it exactly as the script wrote it (PATCH is not normalised), so {:?} would not match",
                method.to_ascii_uppercase()
            ));
        }
        if fetch::is_forbidden_method(&method) {
            warnings.push(format!(
                "ALLOW_METHODS: browsers never send {method}, so listing it has no effect"
            ));
        }
        if methods.contains(&method) {
            warnings.push(format!("ALLOW_METHODS: {method} is listed more than once"));
        } else {
            methods.push(method);
        }
    }
    Ok(AllowList::List(methods))
}

/// `ALLOW_HEADERS` / `EXPOSE_HEADERS`: header names, lower-cased (they compare case-insensitively).
fn parse_header_names(
    setting: Setting,
    v: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<AllowList, CorsConfigError> {
    let Some(v) = v else {
        return Ok(AllowList::List(Vec::new()));
    };
    let items = match split_list(setting, v)? {
        ListValue::Star => return Ok(AllowList::Any),
        ListValue::Items(items) => items,
    };
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for item in items {
        if !fetch::is_token(item) {
            return Err(setting.error(
                item,
                "not a valid header name (an HTTP token)",
                "write header names such as Content-Type, Authorization, X-Requested-With",
            ));
        }
        let name = item.to_ascii_lowercase();
        if setting.env == ALLOW_HEADERS.env && fetch::is_forbidden_request_header(&name) {
            warnings.push(format!(
                "ALLOW_HEADERS: browsers never let scripts set {name}, so listing it has no effect"
            ));
        }
        if seen.insert(name.clone()) {
            names.push(name);
        } else {
            warnings.push(format!("{setting}: {item} is listed more than once"));
        }
    }
    Ok(AllowList::List(names))
}
