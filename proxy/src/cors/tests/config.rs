//! Configuration errors, the original app's `.env` values and the warnings a policy gives.

use super::*;

fn config_error(settings: Settings) -> CorsConfigError {
    match Policy::from_args(&args(settings)) {
        Ok((p, _)) => panic!("{settings:?} should be refused, got {p}"),
        Err(e) => e,
    }
}

#[test]
fn config_errors_name_setting_value_and_fix() {
    let cases: &[(Settings, &str, &str, &str)] = &[
        (
            &[("ALLOW_ORIGINS", "http://localhost/")],
            "ALLOW_ORIGINS",
            "http://localhost/",
            "write it as http://localhost",
        ),
        (
            &[("ALLOW_ORIGINS", "http://localhost/app")],
            "ALLOW_ORIGINS",
            "http://localhost/app",
            "has a path",
        ),
        (
            &[("ALLOW_ORIGINS", "localhost:3000")],
            "ALLOW_ORIGINS",
            "localhost:3000",
            "https://localhost:3000",
        ),
        (
            &[("ALLOW_ORIGINS", "http://a.test, *")],
            "ALLOW_ORIGINS",
            "http://a.test, *",
            "`*` inside a list",
        ),
        (
            &[("ALLOW_ORIGINS", "http://a.test,,http://b.test")],
            "ALLOW_ORIGINS",
            "http://a.test,,http://b.test",
            "empty entry",
        ),
        (
            &[("ALLOW_ORIGINS", "http://a.test,")],
            "ALLOW_ORIGINS",
            "http://a.test,",
            "empty entry",
        ),
        (
            &[("ALLOW_ORIGINS", "*"), ("ALLOW_CREDENTIALS", "true")],
            "ALLOW_ORIGINS",
            "*",
            "ALLOW_CREDENTIALS=false",
        ),
        (
            &[("ALLOW_ORIGINS", "https://*.com")],
            "ALLOW_ORIGINS",
            "https://*.com",
            "every site",
        ),
        (
            &[("ALLOW_ORIGINS", "https://foo*.example.com")],
            "ALLOW_ORIGINS",
            "https://foo*.example.com",
            "whole leading labels",
        ),
        (
            &[("ALLOW_ORIGIN_REGEX", "https://(unclosed")],
            "ALLOW_ORIGIN_REGEX",
            "https://(unclosed",
            "not a valid regular expression",
        ),
        (
            // A catch-all regex with credentials is `*` + credentials in disguise.
            &[
                ("ALLOW_ORIGIN_REGEX", "https://.*"),
                ("ALLOW_CREDENTIALS", "true"),
            ],
            "ALLOW_ORIGIN_REGEX",
            "https://.*",
            "set ALLOW_CREDENTIALS=false",
        ),
        (
            &[("ALLOW_CREDENTIALS", "yes please")],
            "ALLOW_CREDENTIALS",
            "yes please",
            "true or false",
        ),
        (
            &[("ALLOW_METHODS", "GET, P OST")],
            "ALLOW_METHODS",
            "P OST",
            "not a valid method name",
        ),
        (
            &[("ALLOW_METHODS", "GET, *")],
            "ALLOW_METHODS",
            "GET, *",
            "`*` inside a list",
        ),
        (
            &[("ALLOW_HEADERS", "x-ok, x(bad)")],
            "ALLOW_HEADERS",
            "x(bad)",
            "not a valid header name",
        ),
        (
            &[("EXPOSE_HEADERS", "x-a;x-b")],
            "EXPOSE_HEADERS",
            "x-a;x-b",
            "not a valid header name",
        ),
        (
            &[("MAX_AGE", "-1")],
            "MAX_AGE",
            "-1",
            "whole number of seconds",
        ),
        (&[("MAX_AGE", "10m")], "MAX_AGE", "10m", "MAX_AGE=600"),
        (
            &[("ALLOW_PRIVATE_NETWORK", "maybe")],
            "ALLOW_PRIVATE_NETWORK",
            "maybe",
            "true or false",
        ),
        (&[("CORS_MODE", "strict")], "CORS_MODE", "strict", "enforce"),
    ];
    for (settings, setting, value, fragment) in cases {
        let e = config_error(settings);
        assert_eq!(e.setting, *setting, "{settings:?}");
        assert_eq!(e.value, *value, "{settings:?}");
        let message = e.to_string();
        assert!(message.contains(fragment), "{settings:?}: {message}");
        assert!(
            message.contains(setting) && message.contains("fix:"),
            "{message}"
        );
    }
}

#[test]
fn original_env_values_work_unchanged() {
    // As in the original app's .env: quoted list with spaces, Python-style booleans, `*` lists.
    let (p, _) = Policy::from_args(&args(&[
        (
            "ALLOW_ORIGINS",
            "\"http://localhost, http://127.0.0.1:5500\"",
        ),
        ("ALLOW_CREDENTIALS", "True"),
        ("ALLOW_METHODS", "*"),
        ("ALLOW_HEADERS", "*"),
    ]))
    .unwrap();
    assert!(p.origins.allows("http://localhost") && p.origins.allows("http://127.0.0.1:5500"));
    assert!(p.credentials);
    for v in ["true", "True", "TRUE", "1"] {
        let a = CorsArgs {
            allow_credentials: Some(v.into()),
            ..CorsArgs::default()
        };
        assert!(Policy::from_args(&a).unwrap().0.credentials, "{v}");
    }
    for v in ["false", "False", "0", ""] {
        let a = CorsArgs {
            allow_credentials: Some(v.into()),
            ..CorsArgs::default()
        };
        assert!(!Policy::from_args(&a).unwrap().0.credentials, "{v:?}");
    }
}

#[test]
fn normalisations_and_risks_warn() {
    let warnings = |settings: Settings| Policy::from_args(&args(settings)).unwrap().1.join("\n");
    let w = warnings(&[("ALLOW_ORIGINS", "HTTPS://App.Example.com:443")]);
    assert!(
        w.contains("lower-cased") && w.contains("default port 443 dropped"),
        "{w}"
    );
    let w = warnings(&[("ALLOW_ORIGINS", "null")]);
    assert!(w.contains("any site can make a request"), "{w}");
    let w = warnings(&[("ALLOW_METHODS", "get, patch")]);
    assert!(
        w.contains("upper-cased to GET") && w.contains("PATCH is not normalised"),
        "{w}"
    );
    let w = warnings(&[("ALLOW_ORIGIN_REGEX", "https://.*")]);
    assert!(w.contains("likely allows any origin"), "{w}");
    let w = warnings(&[
        ("ALLOW_ORIGINS", "http://localhost"),
        ("ALLOW_CREDENTIALS", "true"),
        ("EXPOSE_HEADERS", "*"),
    ]);
    assert!(w.contains("lists each response's header names"), "{w}");
    let w = warnings(&[("MAX_AGE", "86400")]);
    assert!(w.contains("Chromium caps"), "{w}");
    assert!(warnings(&[("ALLOW_ORIGINS", "https://app.example.com")]).is_empty());
}

#[test]
fn default_policy_allows_only_same_origin() {
    let p = Policy::default();
    let h = header_map(&[("origin", "http://localhost")]);
    let req = RequestInfo {
        method: &Method::GET,
        headers: &h,
        path: "/",
        authority: Some("localhost:8443"),
        wants_json: false,
    };
    assert!(matches!(p.check(&req), Verdict::Respond(r) if r.status() == 403));
    assert_eq!(
        p.to_string(),
        "mode=enforce origins=[(none)] credentials=false methods=[GET, HEAD, POST] headers=[(safelisted only)] \
         expose=[(none)] max_age=600s private_network=false"
    );
}
