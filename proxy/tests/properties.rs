//! Property tests (proptest) over the parsers and builders a hostile client or a careless setting
//! reaches: the CORS configuration and origin handling (no panic; at most one
//! `Access-Control-Allow-Origin`, and only for an origin that was sent) and the forwarding-header
//! builder (no panic; exactly one client address from an untrusted peer; nothing the client sent
//! becomes a separate `Forwarded` element or field).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};
use proptest::prelude::*;
use proxy::cors::{self, CorsArgs, Policy, RequestInfo, Verdict};
use proxy::forward::headers::{set_forwarding_headers, strip_hop_by_hop, Peer};
use proxy::metrics::Metrics;

/// Text that looks like a list of origins and patterns, with the characters that matter to the
/// parser (separators, wildcards, quotes, ports, schemes) over-represented.
fn origin_list() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        r#"(["' ]?(https?|null|\*|ftp)?(://)?(\*\.)?[a-z0-9.\-\[\]:*]{0,20}(:[0-9]{0,6})?/?["' ]?,?){0,4}"#,
    )
    .expect("a valid regex")
}

/// A header value a client could send (visible ASCII, spaces, and some obs-text bytes).
fn header_value() -> impl Strategy<Value = HeaderValue> {
    proptest::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..0xff], 0..60)
        .prop_map(|bytes| HeaderValue::from_bytes(&bytes).expect("visible bytes make a value"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cors_policies_never_panic_and_grant_at_most_one_origin(
        allow_origins in origin_list(),
        credentials in prop::bool::ANY,
        origin in prop_oneof![
            origin_list(),
            Just("https://app.example".to_owned()),
            Just("null".to_owned()),
        ],
        preflight in prop::bool::ANY,
    ) {
        let args = CorsArgs {
            allow_origins: Some(allow_origins),
            allow_credentials: Some(credentials.to_string()),
            ..CorsArgs::default()
        };
        let Ok((policy, _warnings)) = Policy::from_args(&args) else {
            // Refused settings are fine: the property is about what is accepted.
            return Ok(());
        };
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&origin) {
            headers.insert(http::header::ORIGIN, value);
        }
        let method = if preflight {
            headers.insert(
                http::header::ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_static("PUT"),
            );
            Method::OPTIONS
        } else {
            Method::GET
        };
        let info = RequestInfo {
            method: &method,
            headers: &headers,
            path: "/",
            authority: Some("localhost:8443"),
            wants_json: false,
        };
        let response_headers = match cors::evaluate(&policy, &info, &Metrics::new()) {
            Verdict::Respond(response) => response.headers().clone(),
            Verdict::Forward(cors) => {
                let mut app = HeaderMap::new();
                app.insert("access-control-allow-origin", HeaderValue::from_static("*"));
                cors.apply(&mut app);
                app
            }
        };
        let granted: Vec<_> = response_headers
            .get_all("access-control-allow-origin")
            .iter()
            .collect();
        prop_assert!(granted.len() <= 1, "{granted:?}");
        if let Some(granted) = granted.first() {
            // `*` or the very origin sent; never another one.
            prop_assert!(
                *granted == "*" || Some(*granted) == headers.get(http::header::ORIGIN),
                "{granted:?} for {origin:?}"
            );
            if *granted == "*" {
                prop_assert!(!response_headers.contains_key("access-control-allow-credentials"));
            }
        }
    }

    #[test]
    fn forwarding_headers_cannot_be_injected(
        host in header_value(),
        xff in header_value(),
        forwarded in header_value(),
        connection in header_value(),
        version in prop_oneof![Just(Version::HTTP_11), Just(Version::HTTP_2)],
    ) {
        let peer = Peer::new("203.0.113.7".parse().unwrap(), &[]);
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", xff);
        headers.append("forwarded", forwarded);
        headers.append("connection", connection);
        headers.append(HeaderName::from_static("x-real-ip"), HeaderValue::from_static("6.6.6.6"));
        strip_hop_by_hop(&mut headers, false);
        set_forwarding_headers(&mut headers, &peer, Some(&host), version);

        let xff: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        prop_assert_eq!(xff, vec!["203.0.113.7"]);
        prop_assert!(!headers.contains_key("x-real-ip"));
        prop_assert!(!headers.contains_key("connection"));
        let forwarded: Vec<_> = headers.get_all("forwarded").iter().collect();
        prop_assert_eq!(forwarded.len(), 1);
        let element = forwarded[0].to_str().expect("the proxy writes ASCII");
        // `for=203.0.113.7[;host="..."];proto=https`, with no quote or backslash in the host.
        let inner = element
            .strip_prefix("for=203.0.113.7")
            .and_then(|rest| rest.strip_suffix(";proto=https"));
        prop_assert!(inner.is_some(), "{element}");
        let inner = inner.unwrap_or_default();
        if !inner.is_empty() {
            let quoted = inner
                .strip_prefix(";host=\"")
                .and_then(|rest| rest.strip_suffix('"'));
            prop_assert!(quoted.is_some(), "{element}");
            let quoted = quoted.unwrap_or_default();
            prop_assert!(!quoted.contains('"') && !quoted.contains('\\'), "{element}");
        }
        let vias: Vec<_> = headers.get_all("via").iter().collect();
        prop_assert_eq!(vias.len(), 1);
    }
}
