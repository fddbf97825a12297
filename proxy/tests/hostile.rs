//! The hostile-input corpus: raw request bytes over TLS (HTTP/1.1), and hand-made HTTP/2
//! requests, each with the status the client must get and exactly what the upstream must see
//! (nothing, or one correctly framed request).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{collect, h2, TestPki, TestProxy, TestUpstream};
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the upstream must have received for a case.
enum Upstream {
    /// No request.
    Nothing,
    /// One request, with this target, these fields (`None`: absent) and the echoed body length
    /// (`/collect` answers with it).
    Got {
        uri: &'static str,
        fields: &'static [(&'static str, Option<&'static str>)],
    },
    /// A request head may have arrived (a body cut off on its way), but no complete request.
    Cut,
}

struct Case {
    name: &'static str,
    request: &'static str,
    status: u16,
    /// A text the response body must contain.
    body: Option<&'static str>,
    upstream: Upstream,
}

/// The body limit the corpus's proxy runs with.
const MAX_BODY: &str = "16";

fn cases() -> Vec<Case> {
    use Upstream::*;
    vec![
        // --- Host (RFC 9112 §3.2) ---
        Case {
            name: "a plain request is forwarded",
            request: "GET /plain HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            status: 200,
            body: Some("hello"),
            upstream: Got {
                uri: "/plain",
                fields: &[("host", Some("localhost"))],
            },
        },
        Case {
            name: "no Host",
            request: "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            status: 400,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "two Host lines",
            request: "GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            status: 400,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "an empty Host",
            request: "GET / HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
            status: 400,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "a Host with user information",
            request: "GET / HTTP/1.1\r\nHost: user@localhost\r\nConnection: close\r\n\r\n",
            status: 400,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "a Host with a space",
            request: "GET / HTTP/1.1\r\nHost: local host\r\nConnection: close\r\n\r\n",
            status: 400,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "a Host with a path",
            request: "GET / HTTP/1.1\r\nHost: localhost/x\r\nConnection: close\r\n\r\n",
            status: 400,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "absolute form: its authority is the Host",
            request: "GET http://other.example/abs?q=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            status: 200,
            body: None,
            upstream: Got {
                uri: "/abs?q=1",
                fields: &[
                    ("host", Some("other.example")),
                    ("x-forwarded-host", Some("other.example")),
                ],
            },
        },
        Case {
            name: "HTTP/1.0 without Host",
            request: "GET /old HTTP/1.0\r\n\r\n",
            status: 200,
            body: None,
            upstream: Got {
                uri: "/old",
                fields: &[("host", None)],
            },
        },
        // --- methods and targets ---
        Case {
            name: "CONNECT",
            request: "CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\nConnection: close\r\n\r\n",
            status: 405,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "TRACE",
            request: "TRACE / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            status: 405,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "GET *",
            request: "GET * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            status: 400,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "OPTIONS * is forwarded",
            request: "OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            status: 200,
            body: None,
            upstream: Got {
                uri: "*",
                fields: &[],
            },
        },
        // --- header names ---
        Case {
            name: "an underscored name is dropped",
            request: "GET /u HTTP/1.1\r\nHost: localhost\r\nX_Forwarded_For: 6.6.6.6\r\nX-Ok: 1\r\nConnection: close\r\n\r\n",
            status: 200,
            body: None,
            upstream: Got {
                uri: "/u",
                fields: &[
                    ("x_forwarded_for", None),
                    ("x-forwarded-for", Some("127.0.0.1")),
                    ("x-ok", Some("1")),
                ],
            },
        },
        // --- upgrades ---
        Case {
            name: "Upgrade: h2c is not forwarded",
            request: "GET /plain HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            status: 200,
            body: None,
            upstream: Got {
                uri: "/plain",
                fields: &[("upgrade", None), ("http2-settings", None), ("connection", None)],
            },
        },
        Case {
            name: "a 101 the request did not ask for is a 502, never a tunnel",
            request: "GET /switch/h2c HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            status: 502,
            body: None,
            upstream: Got {
                uri: "/switch/h2c",
                fields: &[("upgrade", None)],
            },
        },
        Case {
            name: "a 101 naming another protocol than the one asked for is a 502",
            request: "GET /switch/h2c HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            status: 502,
            body: None,
            upstream: Got {
                uri: "/switch/h2c",
                fields: &[("upgrade", Some("websocket"))],
            },
        },
        Case {
            name: "an upgrade to an unlisted protocol goes on as a plain request",
            request: "GET /plain HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: foo, websocket\r\nConnection: close\r\n\r\n",
            status: 200,
            body: None,
            upstream: Got {
                uri: "/plain",
                fields: &[("upgrade", Some("websocket"))],
            },
        },
        // --- body framing and size ---
        Case {
            name: "a transfer coding other than chunked",
            request: "POST /collect HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            status: 501,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "a declared body over the limit",
            request: "POST /collect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 17\r\n\r\n12345678901234567",
            status: 413,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "a declared body at the limit",
            request: "POST /collect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 16\r\nConnection: close\r\n\r\n1234567890123456",
            status: 200,
            body: Some("16"),
            upstream: Got {
                uri: "/collect",
                fields: &[("content-length", Some("16"))],
            },
        },
        Case {
            name: "a chunked body passing the limit",
            request: "POST /collect HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n1234567890123456\r\n1\r\nx\r\n0\r\n\r\n",
            status: 413,
            body: None,
            upstream: Cut,
        },
        Case {
            name: "a malformed chunk is the client's error",
            request: "POST /collect HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            status: 400,
            body: None,
            upstream: Cut,
        },
        Case {
            name: "a GET with a chunked body keeps its body",
            request: "GET /collect HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            status: 200,
            body: Some("5"),
            upstream: Got {
                uri: "/collect",
                fields: &[("transfer-encoding", Some("chunked"))],
            },
        },
        // --- smuggling: refused by hyper's parser before the proxy sees a request ---
        Case {
            name: "two different Content-Lengths",
            request: "POST /collect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello",
            status: 400,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "Content-Length with Transfer-Encoding: chunked framing wins, the length is dropped",
            request: "POST /collect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            status: 200,
            body: Some("5"),
            upstream: Got {
                uri: "/collect",
                fields: &[
                    ("content-length", None),
                    ("transfer-encoding", Some("chunked")),
                ],
            },
        },
        Case {
            name: "bare LF line ends",
            request: "GET /lf HTTP/1.1\nHost: localhost\nConnection: close\n\n",
            status: 200,
            body: None,
            upstream: Got {
                uri: "/lf",
                fields: &[("host", Some("localhost"))],
            },
        },
        Case {
            name: "a NUL in a value",
            request: "GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\0b\r\n\r\n",
            status: 400,
            body: None,
            upstream: Nothing,
        },
        Case {
            name: "a bare CR in a value",
            request: "GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\n\r\n",
            status: 400,
            body: None,
            upstream: Nothing,
        },
    ]
}

/// Sends `request` on a new TLS connection (ALPN http/1.1) and reads until the proxy closes
/// it, or until a first response head is in and nothing more comes for a moment (a kept-alive
/// connection, or a tunnel). Returns the status and the whole text read.
async fn raw_exchange(pki: &TestPki, addr: SocketAddr, request: &str) -> (u16, String) {
    let mut tls = common::tls_connect(pki, addr, &[b"http/1.1"])
        .await
        .expect("TLS");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let wait = if read.windows(4).any(|w| w == b"\r\n\r\n") {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(10)
        };
        match tokio::time::timeout(wait, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&read).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn hostile_http1_requests() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--max-body-bytes", MAX_BODY]).await;
    let mut failures = Vec::new();
    for case in cases() {
        let before = upstream.seen().len();
        let (status, text) = raw_exchange(&pki, proxy.addr, case.request).await;
        let seen = upstream.seen();
        let new = &seen[before..];
        let mut problems = Vec::new();
        if status != case.status {
            problems.push(format!("status {status}, expected {}", case.status));
        }
        if let Some(body) = case.body {
            let (_, response_body) = text.split_once("\r\n\r\n").unwrap_or_default();
            if !response_body.contains(body) {
                problems.push(format!("body lacks {body:?}"));
            }
        }
        match (&case.upstream, new) {
            (Upstream::Nothing, []) => {}
            (Upstream::Nothing, got) => problems.push(format!("upstream got {got:?}")),
            (Upstream::Cut, [] | [_]) => {}
            (Upstream::Cut, got) => problems.push(format!("upstream got {got:?}")),
            (Upstream::Got { uri, fields }, [got]) => {
                if got.uri != *uri {
                    problems.push(format!("upstream target {}, expected {uri}", got.uri));
                }
                for (name, value) in *fields {
                    let values: Vec<_> = got.headers.get_all(*name).iter().collect();
                    match value {
                        None if !values.is_empty() => {
                            problems.push(format!("upstream got {name}: {values:?}"))
                        }
                        Some(value) if values != [*value] => {
                            problems.push(format!("upstream {name}: {values:?}, expected {value}"))
                        }
                        _ => {}
                    }
                }
            }
            (Upstream::Got { .. }, got) => {
                problems.push(format!("upstream got {} requests, expected 1", got.len()))
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}\n{text}", case.name, problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let metrics = proxy.proxy.metrics().encode().unwrap();
    assert!(
        metrics.contains("proxy_requests_refused_total{reason=\"missing_host\"} 1"),
        "{metrics}"
    );
    proxy.shutdown().await;
}

/// HTTP/2 (RFC 9113 §8.3.1): `:authority` and `Host` must agree, and one of them is needed;
/// CONNECT, TRACE and a body over the limit are refused as over HTTP/1.1.
#[tokio::test]
async fn hostile_http2_requests() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--max-body-bytes", MAX_BODY]).await;
    let authority = format!("localhost:{}", proxy.addr.port());
    let mut client = h2::<Full<Bytes>>(&pki, proxy.addr).await;

    let request = |method: &str, host: Option<&str>, body: &'static str| {
        let mut builder = Request::builder()
            .method(method)
            .version(Version::HTTP_2)
            .uri(format!("https://{authority}/h2"));
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(Full::new(Bytes::from(body))).unwrap()
    };
    let cases: Vec<(Request<Full<Bytes>>, StatusCode, bool)> = vec![
        (request("GET", None, ""), StatusCode::OK, true),
        (request("GET", Some(&authority), ""), StatusCode::OK, true),
        (
            request("GET", Some("evil.example"), ""),
            StatusCode::BAD_REQUEST,
            false,
        ),
        (
            request("TRACE", None, ""),
            StatusCode::METHOD_NOT_ALLOWED,
            false,
        ),
        (
            request("POST", None, "12345678901234567"),
            StatusCode::PAYLOAD_TOO_LARGE,
            false,
        ),
    ];
    for (request, status, forwarded) in cases {
        let described = format!(
            "{} host={:?}",
            request.method(),
            request.headers().get("host")
        );
        let before = upstream.seen().len();
        let response = client.send_request(request).await.expect("a response");
        let (got, _, _) = collect(response).await;
        assert_eq!(got, status, "{described}");
        assert_eq!(
            upstream.seen().len() - before,
            usize::from(forwarded),
            "{described}"
        );
        if forwarded {
            assert_eq!(upstream.last().headers["host"], authority.as_str());
        }
    }

    // A body of unknown length (no content-length) passing the limit as it streams.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut streaming = h2::<common::ChannelBody>(&pki, proxy.addr).await;
    let request = Request::builder()
        .method("POST")
        .version(Version::HTTP_2)
        .uri(format!("https://{authority}/collect"))
        .body(common::ChannelBody(rx))
        .unwrap();
    let response = tokio::spawn(streaming.send_request(request));
    tx.send(Bytes::from_static(b"1234567890")).await.unwrap();
    tx.send(Bytes::from_static(b"1234567890")).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered once the body passes the limit")
        .unwrap()
        .expect("a response");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    drop(tx);

    proxy.shutdown().await;
}
