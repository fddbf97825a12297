//! CORS through the real proxy over real TLS, in front of a recording upstream that sends its own
//! (wrong) CORS headers: refused requests and every preflight never arrive, allowed requests get
//! exactly the proxy's headers (also on redirects and the proxy's own 502 and 504), same-origin requests
//! always pass, each CORS_MODE, HTTP/2, and policy reload.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{closed_port, collect, h1, h2, proxy_argv, TestPki, TestProxy, TestUpstream};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A plain-HTTP app that records each request (method, path) and answers with CORS
/// headers of its own that the proxy must replace. `/redirect` answers 302.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(Method, String)>>>,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("app addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let recorded = recorded.clone();
                        async move {
                            recorded
                                .lock()
                                .expect("lock")
                                .push((req.method().clone(), req.uri().path().to_owned()));
                            let mut builder = Response::builder()
                                .header("access-control-allow-origin", "*")
                                .header("access-control-allow-origin", "https://evil.test")
                                .header("access-control-allow-credentials", "false")
                                .header("access-control-allow-methods", "DELETE")
                                .header("vary", "Accept-Encoding");
                            if req.uri().path() == "/redirect" {
                                builder = builder
                                    .status(StatusCode::FOUND)
                                    .header("location", "/login");
                            }
                            Ok::<_, Infallible>(
                                builder
                                    .body(Full::new(Bytes::from_static(b"app")))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        App { addr, seen, task }
    }

    /// `(method, path)` of every request the app received.
    fn seen(&self) -> Vec<(Method, String)> {
        self.seen.lock().expect("lock").clone()
    }
}

/// An HTTP/1.1 request to the proxy at `proxy` with `Host: localhost:<port>` and `headers`.
fn request(
    proxy: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Empty<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("localhost:{}", proxy.port()));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Empty::new()).expect("request")
}

/// All `name` lines joined with " | ", or `None`.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    (!values.is_empty()).then(|| values.join(" | "))
}

fn no_allow_headers(headers: &HeaderMap) -> bool {
    !headers
        .keys()
        .any(|k| k.as_str().starts_with("access-control-allow-"))
}

const CREDENTIALED: &[&str] = &[
    "--allow-origins",
    "http://localhost, https://*.example.com",
    "--allow-credentials",
    "True",
    "--allow-methods",
    "GET, POST, PUT, DELETE",
    "--allow-headers",
    "content-type, authorization",
    "--expose-headers",
    "x-request-id",
];

#[tokio::test]
async fn refused_requests_and_preflights_never_reach_the_app() {
    let pki = TestPki::new();
    let app = App::start().await;
    let proxy = TestProxy::start(&pki, app.addr, CREDENTIALED).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let addr = proxy.addr;

    // An allowed preflight: answered by the proxy.
    let (status, h, body) = collect(
        client
            .send_request(request(
                addr,
                "OPTIONS",
                "/auth/login",
                &[
                    ("origin", "http://localhost"),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "content-type,authorization",
                    ),
                ],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    assert_eq!(
        header(&h, "access-control-allow-origin").as_deref(),
        Some("http://localhost")
    );
    assert_eq!(
        header(&h, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(&h, "access-control-allow-methods").as_deref(),
        Some("GET, POST, PUT, DELETE")
    );
    assert_eq!(
        header(&h, "access-control-allow-headers").as_deref(),
        Some("content-type, authorization")
    );
    assert_eq!(header(&h, "access-control-max-age").as_deref(), Some("600"));
    assert_eq!(
        header(&h, "vary").as_deref(),
        Some(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, \
             Access-Control-Request-Private-Network"
        )
    );

    // Refused: each failing part named, no allow header, nothing forwarded.
    type Refused<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let refused: &[Refused] = &[
        (
            "OPTIONS",
            &[
                ("origin", "https://evil.test"),
                ("access-control-request-method", "POST"),
            ],
            "(origin)",
        ),
        (
            "OPTIONS",
            &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "PATCH"),
            ],
            "(method)",
        ),
        (
            "OPTIONS",
            &[
                ("origin", "http://localhost"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-secret"),
            ],
            "x-secret",
        ),
        ("POST", &[("origin", "https://evil.test")], "(origin)"),
        (
            "POST",
            &[("origin", "https://example.com.evil.net")],
            "(origin)",
        ),
        (
            "GET",
            &[
                ("origin", "http://localhost"),
                ("origin", "https://evil.test"),
            ],
            "more than one Origin",
        ),
    ];
    for (method, headers, fragment) in refused {
        let (status, h, body) = collect(
            client
                .send_request(request(addr, method, "/admin/me", headers))
                .await
                .unwrap(),
        )
        .await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {headers:?}");
        assert!(body.contains(fragment), "{method} {headers:?}: {body}");
        assert!(no_allow_headers(&h), "{method} {headers:?}: {h:?}");
    }

    // JSON body when the client asks for JSON (the app's convention).
    let (status, h, body) = collect(
        client
            .send_request(request(
                addr,
                "POST",
                "/auth/login",
                &[
                    ("origin", "https://evil.test"),
                    ("x-expected-format", "application/json"),
                ],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        header(&h, "content-type").as_deref(),
        Some("application/json")
    );
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(json["part"], "origin");

    // The only request the app ever sees is the allowed one sent last (same connection, in order).
    let (status, h, _) = collect(
        client
            .send_request(request(
                addr,
                "GET",
                "/admin/me",
                &[("origin", "https://a.b.example.com")],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header(&h, "access-control-allow-origin").as_deref(),
        Some("https://a.b.example.com")
    );
    assert_eq!(app.seen(), vec![(Method::GET, "/admin/me".to_owned())]);
}

#[tokio::test]
async fn the_proxy_owns_every_cors_header_on_forwarded_responses() {
    let pki = TestPki::new();
    let app = App::start().await;
    let proxy = TestProxy::start(&pki, app.addr, CREDENTIALED).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;

    for path in ["/admin/me", "/redirect"] {
        let (status, h, _) = collect(
            client
                .send_request(request(
                    proxy.addr,
                    "GET",
                    path,
                    &[("origin", "http://localhost")],
                ))
                .await
                .unwrap(),
        )
        .await;
        assert!(
            status == StatusCode::OK || status == StatusCode::FOUND,
            "{path}: {status}"
        );
        // Exactly one Allow-Origin, the app's others gone, Origin merged into the app's Vary.
        assert_eq!(
            header(&h, "access-control-allow-origin").as_deref(),
            Some("http://localhost"),
            "{path}"
        );
        assert_eq!(
            header(&h, "access-control-allow-credentials").as_deref(),
            Some("true"),
            "{path}"
        );
        assert_eq!(
            header(&h, "access-control-expose-headers").as_deref(),
            Some("x-request-id"),
            "{path}"
        );
        assert_eq!(header(&h, "access-control-allow-methods"), None, "{path}");
        assert_eq!(
            header(&h, "vary").as_deref(),
            Some("Accept-Encoding, Origin"),
            "{path}"
        );
    }

    // Without Origin: forwarded, the app's CORS headers removed, Vary: Origin added.
    let (status, h, _) = collect(
        client
            .send_request(request(proxy.addr, "GET", "/", &[]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(no_allow_headers(&h), "{h:?}");
    assert_eq!(
        header(&h, "vary").as_deref(),
        Some("Accept-Encoding, Origin")
    );
    assert_eq!(app.seen().len(), 3);
}

#[tokio::test]
async fn the_proxys_own_502_carries_the_cors_headers() {
    let pki = TestPki::new();
    let proxy = TestProxy::start(&pki, closed_port().await, CREDENTIALED).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let (status, h, _) = collect(
        client
            .send_request(request(
                proxy.addr,
                "GET",
                "/admin/me",
                &[("origin", "http://localhost")],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        header(&h, "access-control-allow-origin").as_deref(),
        Some("http://localhost")
    );
    assert_eq!(
        header(&h, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert!(header(&h, "vary").is_some_and(|v| v.contains("Origin")));
}

#[tokio::test]
async fn the_proxys_own_504_carries_exactly_one_allow_origin_and_vary_origin() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let mut flags = CREDENTIALED.to_vec();
    flags.extend(["--upstream-response-timeout", "300ms"]);
    let proxy = TestProxy::start(&pki, upstream.addr, &flags).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let (status, h, _) = collect(
        client
            .send_request(request(
                proxy.addr,
                "GET",
                "/hang",
                &[("origin", "https://api.example.com")],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(upstream.last().uri.path(), "/hang", "it was forwarded");
    let allow_origin: Vec<_> = h.get_all("access-control-allow-origin").iter().collect();
    assert_eq!(allow_origin, ["https://api.example.com"], "{h:?}");
    assert_eq!(
        header(&h, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let vary_origin = h
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .filter(|token| token.trim().eq_ignore_ascii_case("origin"))
        .count();
    assert_eq!(vary_origin, 1, "{h:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn same_origin_requests_pass_whatever_allow_origins_says() {
    let pki = TestPki::new();
    let app = App::start().await;
    let proxy = TestProxy::start(&pki, app.addr, &["--allow-origins", "https://google.com"]).await;
    let own_origin = format!("https://localhost:{}", proxy.addr.port());

    // HTTP/1.1: the app's own login form posts with Origin = the proxy's origin (Host header).
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let (status, h, _) = collect(
        client
            .send_request(request(
                proxy.addr,
                "POST",
                "/auth/login",
                &[
                    ("origin", &own_origin),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(no_allow_headers(&h), "{h:?}");

    // The same page served over http is another origin: refused, never forwarded.
    let other = format!("http://localhost:{}", proxy.addr.port());
    let (status, _, _) = collect(
        client
            .send_request(request(
                proxy.addr,
                "POST",
                "/auth/login",
                &[("origin", &other)],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // HTTP/2: the authority comes from :authority.
    let mut client = h2::<Empty<Bytes>>(&pki, proxy.addr).await;
    let req = Request::builder()
        .version(Version::HTTP_2)
        .method("POST")
        .uri(format!(
            "https://localhost:{}/auth/logout",
            proxy.addr.port()
        ))
        .header("origin", &own_origin)
        .body(Empty::new())
        .unwrap();
    let (status, _, _) = collect(client.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(
        app.seen(),
        vec![
            (Method::POST, "/auth/login".to_owned()),
            (Method::POST, "/auth/logout".to_owned())
        ]
    );
}

#[tokio::test]
async fn http2_preflight_is_answered_by_the_proxy() {
    let pki = TestPki::new();
    let app = App::start().await;
    let proxy = TestProxy::start(&pki, app.addr, CREDENTIALED).await;
    let mut client = h2::<Empty<Bytes>>(&pki, proxy.addr).await;
    let req = Request::builder()
        .version(Version::HTTP_2)
        .method("OPTIONS")
        .uri(format!("https://localhost:{}/admin/me", proxy.addr.port()))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .body(Empty::new())
        .unwrap();
    let (status, h, _) = collect(client.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        header(&h, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn browser_and_shadow_modes_forward_disallowed_requests() {
    let pki = TestPki::new();

    // browser: forwarded without CORS headers (the app's removed); preflights still refused.
    let app = App::start().await;
    let proxy = TestProxy::start(
        &pki,
        app.addr,
        &[
            "--allow-origins",
            "http://localhost",
            "--cors-mode",
            "browser",
        ],
    )
    .await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let (status, h, _) = collect(
        client
            .send_request(request(
                proxy.addr,
                "POST",
                "/auth/login",
                &[("origin", "https://evil.test")],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(no_allow_headers(&h), "{h:?}");
    let (status, _, _) = collect(
        client
            .send_request(request(
                proxy.addr,
                "OPTIONS",
                "/auth/login",
                &[
                    ("origin", "https://evil.test"),
                    ("access-control-request-method", "PUT"),
                ],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(app.seen(), vec![(Method::POST, "/auth/login".to_owned())]);

    // shadow: everything forwarded untouched, preflights too.
    let app = App::start().await;
    let proxy = TestProxy::start(
        &pki,
        app.addr,
        &[
            "--allow-origins",
            "http://localhost",
            "--cors-mode",
            "shadow",
        ],
    )
    .await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let (status, h, _) = collect(
        client
            .send_request(request(
                proxy.addr,
                "OPTIONS",
                "/auth/login",
                &[
                    ("origin", "https://evil.test"),
                    ("access-control-request-method", "PUT"),
                ],
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header(&h, "access-control-allow-origin").as_deref(),
        Some("* | https://evil.test")
    );
    assert_eq!(
        app.seen(),
        vec![(Method::OPTIONS, "/auth/login".to_owned())]
    );
}

#[tokio::test]
async fn policy_reload_swaps_the_policy_and_keeps_it_when_invalid() {
    let pki = TestPki::new();
    let app = App::start().await;
    let proxy = TestProxy::start(&pki, app.addr, &["--allow-origins", "http://a.test"]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;
    let mut status_for = |origin: &'static str| {
        let req = request(proxy.addr, "POST", "/x", &[("origin", origin)]);
        let sent = client.send_request(req);
        async move { sent.await.unwrap().status() }
    };
    assert_eq!(status_for("http://a.test").await, StatusCode::OK);
    assert_eq!(status_for("http://b.test").await, StatusCode::FORBIDDEN);

    let env = HashMap::new();
    let argv = proxy_argv(&pki, app.addr, &["--allow-origins", "http://b.test"]);
    proxy.proxy.reload(&argv, &env).expect("valid new policy");
    assert_eq!(status_for("http://b.test").await, StatusCode::OK);
    assert_eq!(status_for("http://a.test").await, StatusCode::FORBIDDEN);

    // An invalid new policy is rejected with an error naming the setting; the old one stays.
    let argv = proxy_argv(&pki, app.addr, &["--allow-origins", "http://c.test/"]);
    let err = proxy.proxy.reload(&argv, &env).expect_err("invalid policy");
    assert!(err.to_string().contains("ALLOW_ORIGINS"), "{err}");
    assert_eq!(status_for("http://b.test").await, StatusCode::OK);
    assert_eq!(status_for("http://c.test").await, StatusCode::FORBIDDEN);
}
