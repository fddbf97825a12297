//! What the app reads from a request, as pure functions of its parts: the wanted response format, the
//! outside origin (from the proxy's forwarding headers), the session credential, the login form and
//! the login page's `state` query parameter.

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST};
use http::uri::Authority;
use http::HeaderMap;
use serde::Serialize;

use crate::multipart;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "session";
/// The original app's header asking for JSON.
pub const FORMAT_HEADER: &str = "x-expected-format";
const JSON: &str = "application/json";

/// Response format a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An HTML page or a redirect (the default).
    Html,
    /// A JSON body.
    Json,
}

/// JSON when `x-expected-format: application/json` (the original's header) or when `Accept` lists
/// `application/json` with a non-zero q-value (RFC 9110 §12.5.1); HTML otherwise.
pub fn format(headers: &HeaderMap) -> Format {
    let expected = headers
        .get_all(FORMAT_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| media_type(v).eq_ignore_ascii_case(JSON));
    let accepted = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| media_type(range).eq_ignore_ascii_case(JSON) && !q_is_zero(range));
    if expected || accepted {
        Format::Json
    } else {
        Format::Html
    }
}

fn media_type(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

fn q_is_zero(range: &str) -> bool {
    range.split(';').skip(1).any(|param| {
        param.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>() == Ok(0.0)
        })
    })
}

/// The scheme and host the client used, as reported by the proxy in front.
///
/// The app listens on loopback behind the proxy, which sets these headers, so it trusts them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `https` or `http`.
    pub https: bool,
    /// `host[:port]`, validated as a URI authority; `None` if no usable host was sent.
    pub host: Option<String>,
}

impl Origin {
    /// An absolute URL for `path` on the outside origin, if the host is known.
    pub fn url(&self, path: &str) -> Option<String> {
        let scheme = if self.https { "https" } else { "http" };
        self.host
            .as_ref()
            .map(|host| format!("{scheme}://{host}{path}"))
    }
}

/// The outside origin: `X-Forwarded-Proto`/`X-Forwarded-Host` first, then `Forwarded` (RFC 7239),
/// then the `Host` header. With several proxies, the first (client-facing) value wins.
pub fn origin(headers: &HeaderMap) -> Origin {
    let forwarded = first_forwarded_element(headers);
    let param = |name: &str| {
        forwarded.as_deref().and_then(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().trim_matches('"').to_owned())
            })
        })
    };
    let proto = first_list_value(headers, "x-forwarded-proto").or_else(|| param("proto"));
    let host = first_list_value(headers, "x-forwarded-host")
        .or_else(|| param("host"))
        .or_else(|| first_list_value(headers, HOST.as_str()))
        .filter(|h| {
            h.parse::<Authority>()
                .is_ok_and(|a| a.as_str() == h && !h.contains('@'))
        });
    Origin {
        https: proto.is_some_and(|p| p.eq_ignore_ascii_case("https")),
        host,
    }
}

fn first_list_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?;
    let first = value.split(',').next()?.trim();
    (!first.is_empty()).then(|| first.to_owned())
}

fn first_forwarded_element(headers: &HeaderMap) -> Option<String> {
    first_list_value(headers, "forwarded")
}

/// The session token the request carries: `Authorization: Bearer <token>` first, else the session
/// cookie. `None` means "not authenticated"; a token that names no live session is "invalid".
pub fn credential(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    if let Some(token) = bearer {
        return Some(token.to_owned());
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim() == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// One validation failure, shaped like FastAPI's (pydantic v2) so the original's clients parse it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Machine-readable kind: `missing`, `int_parsing`, `string_pattern_mismatch`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Where: `["body", "username"]`, `["query", "state"]`.
    pub loc: [&'static str; 2],
    /// Human-readable message.
    pub msg: String,
    /// The offending input (`null` when missing).
    pub input: Option<String>,
}

impl FieldError {
    fn missing(field: &'static str) -> Self {
        Self {
            kind: "missing",
            loc: ["body", field],
            msg: "Field required".to_owned(),
            input: None,
        }
    }
}

/// The OAuth2 password-flow login form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginForm {
    /// Login name.
    pub username: String,
    /// Password, as typed.
    pub password: String,
}

/// Parses `username` and `password` from a form-urlencoded or multipart/form-data body (browser
/// `FormData` clients send the latter); any other content type, or a malformed multipart body,
/// counts as no fields at all. `grant_type`, if sent, must be `password` (as in
/// OAuth2PasswordRequestForm).
pub fn login_form(headers: &HeaderMap, body: &[u8]) -> Result<LoginForm, Vec<FieldError>> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let fields: Vec<(String, String)> =
        if media_type(content_type).eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            form_urlencoded::parse(body).into_owned().collect()
        } else if let Some(boundary) = multipart::boundary(content_type) {
            multipart::fields(body, boundary).unwrap_or_default()
        } else {
            Vec::new()
        };
    let (mut username, mut password, mut grant_type) = (None, None, None);
    // Repeated fields: the last one wins, as in Starlette's form parsing.
    for (key, value) in fields {
        match &*key {
            "username" => username = Some(value),
            "password" => password = Some(value),
            "grant_type" => grant_type = Some(value),
            _ => {}
        }
    }
    let mut errors = Vec::new();
    if let Some(grant) = grant_type.filter(|g| !g.is_empty() && g != "password") {
        errors.push(FieldError {
            kind: "string_pattern_mismatch",
            loc: ["body", "grant_type"],
            msg: "String should match pattern '^password$'".to_owned(),
            input: Some(grant),
        });
    }
    if username.is_none() {
        errors.push(FieldError::missing("username"));
    }
    if password.is_none() {
        errors.push(FieldError::missing("password"));
    }
    match (username, password) {
        (Some(username), Some(password)) if errors.is_empty() => {
            Ok(LoginForm { username, password })
        }
        _ => Err(errors),
    }
}

/// The login page's optional integer `state` query parameter (the last one wins).
pub fn login_state(query: Option<&str>) -> Result<Option<i64>, FieldError> {
    let raw = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "state")
        .last()
        .map(|(_, v)| v.into_owned());
    match raw {
        None => Ok(None),
        Some(value) => value
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| FieldError {
                kind: "int_parsing",
                loc: ["query", "state"],
                msg: "Input should be a valid integer, unable to parse string as an integer"
                    .to_owned(),
                input: Some(value),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// Request headers of one table-driven case.
    type Pairs = &'static [(&'static str, &'static str)];

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn format_detection() {
        let cases: &[(Pairs, Format)] = &[
            (&[], Format::Html),
            (&[("x-expected-format", "application/json")], Format::Json),
            (
                &[("X-Expected-Format", "Application/JSON; charset=utf-8")],
                Format::Json,
            ),
            (&[("x-expected-format", "text/html")], Format::Html),
            (&[("accept", "application/json")], Format::Json),
            (
                &[("accept", "text/html, application/json;q=0.5")],
                Format::Json,
            ),
            (&[("accept", "application/json;q=0")], Format::Html),
            (&[("accept", "text/html,*/*;q=0.8")], Format::Html),
            (&[("accept", "*/*")], Format::Html),
        ];
        for (pairs, want) in cases {
            assert_eq!(format(&headers(pairs)), *want, "{pairs:?}");
        }
    }

    #[test]
    fn origin_from_forwarding_headers() {
        let cases: &[(Pairs, bool, Option<&str>)] = &[
            (&[("host", "127.0.0.1:8000")], false, Some("127.0.0.1:8000")),
            (
                &[
                    ("host", "127.0.0.1:8000"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-host", "app.example:8443"),
                ],
                true,
                Some("app.example:8443"),
            ),
            (&[("x-forwarded-proto", "HTTPS, http")], true, None),
            (&[("x-forwarded-proto", "http")], false, None),
            (
                &[(
                    "forwarded",
                    "for=1.2.3.4;proto=https;host=\"a.example\", proto=http",
                )],
                true,
                Some("a.example"),
            ),
            // X-Forwarded-* wins over Forwarded.
            (
                &[
                    ("forwarded", "proto=http;host=b.example"),
                    ("x-forwarded-proto", "https"),
                ],
                true,
                Some("b.example"),
            ),
            // Not an authority: dropped rather than echoed into URLs.
            (&[("x-forwarded-host", "evil.example/path")], false, None),
            (&[("x-forwarded-host", "user@evil.example")], false, None),
        ];
        for (pairs, https, host) in cases {
            let got = origin(&headers(pairs));
            assert_eq!(
                (got.https, got.host.as_deref()),
                (*https, *host),
                "{pairs:?}"
            );
        }
        let origin = origin(&headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "a.example"),
        ]));
        assert_eq!(
            origin.url("/api/me").as_deref(),
            Some("https://a.example/api/me")
        );
    }

    #[test]
    fn credential_from_bearer_or_cookie() {
        let cases: &[(Pairs, Option<&str>)] = &[
            (&[], None),
            (&[("authorization", "Bearer abc")], Some("abc")),
            (&[("authorization", "bearer  abc ")], Some("abc")),
            (&[("authorization", "Basic abc")], None),
            (&[("authorization", "Bearer ")], None),
            (&[("cookie", "a=1; session=tok; b=2")], Some("tok")),
            (&[("cookie", "a=1"), ("cookie", "session=tok")], Some("tok")),
            (&[("cookie", "xsession=tok")], None),
            (
                &[
                    ("authorization", "Bearer first"),
                    ("cookie", "session=second"),
                ],
                Some("first"),
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(credential(&headers(pairs)).as_deref(), *want, "{pairs:?}");
        }
    }

    #[test]
    fn login_form_parsing() {
        let form = headers(&[(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )]);
        assert_eq!(
            login_form(&form, b"username=a%40x&password=p+w&grant_type=password"),
            Ok(LoginForm {
                username: "a@x".into(),
                password: "p w".into()
            })
        );
        let missing = login_form(&form, b"username=a").unwrap_err();
        assert_eq!(missing, vec![FieldError::missing("password")]);
        let json = headers(&[("content-type", "application/json")]);
        let not_a_form = login_form(&json, br#"{"username":"a","password":"b"}"#).unwrap_err();
        assert_eq!(
            not_a_form,
            vec![
                FieldError::missing("username"),
                FieldError::missing("password")
            ]
        );
        let multipart = headers(&[("content-type", "multipart/form-data; boundary=b1")]);
        assert_eq!(
            login_form(
                &multipart,
                b"--b1\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\na@x\r\n\
                  --b1\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\np w\r\n--b1--\r\n"
            ),
            Ok(LoginForm {
                username: "a@x".into(),
                password: "p w".into()
            })
        );
        assert_eq!(
            login_form(&multipart, b"not multipart").unwrap_err(),
            vec![
                FieldError::missing("username"),
                FieldError::missing("password")
            ]
        );
        let grant = login_form(
            &form,
            b"username=a&password=b&grant_type=client_credentials",
        )
        .unwrap_err();
        assert_eq!(grant[0].loc, ["body", "grant_type"]);
    }

    #[test]
    fn login_state_parsing() {
        assert_eq!(login_state(None), Ok(None));
        assert_eq!(login_state(Some("other=1")), Ok(None));
        assert_eq!(login_state(Some("state=3")), Ok(Some(3)));
        assert_eq!(login_state(Some("state=1&state=2")), Ok(Some(2)));
        let err = login_state(Some("state=abc")).unwrap_err();
        assert_eq!(
            (err.kind, err.loc, err.input.as_deref()),
            ("int_parsing", ["query", "state"], Some("abc"))
        );
        assert!(login_state(Some("state=")).is_err());
    }
}
