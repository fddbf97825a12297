//! The UNIX-socket upstream (`--upstream unix:/path`): requests forwarded over the socket with the
//! same head as over TCP, a missing or dead socket answered with 502 and its reason, and a reload
//! swapping between a socket and a TCP upstream without a pooled connection crossing over.

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{collect, get, h1, h2, TempDir, TestPki, TestProxy, TestUpstream};
use http::{Request, StatusCode};
use http_body_util::{Empty, Full};
use proxy::config::Upstream;

#[tokio::test]
async fn requests_go_over_the_socket_with_the_same_head_as_over_tcp() {
    let pki = TestPki::new();
    let dir = TempDir::new("unix-forward");
    let socket = dir.join("app.sock");
    let upstream = TestUpstream::start_unix(&socket);
    let proxy = TestProxy::start_url(&pki, &upstream.url, &[]).await;

    let mut client = h1::<Full<Bytes>>(&pki, proxy.addr).await;
    for path in ["/one", "/two"] {
        let request = Request::get(path)
            .header("host", "app.example:8443")
            .body(Full::default())
            .unwrap();
        let (status, _, body) = collect(client.send_request(request).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"hello");
    }
    let seen = upstream.last();
    assert_eq!(seen.uri, "/two");
    // The client's Host goes upstream, as over TCP; nothing names the socket.
    assert_eq!(seen.headers["host"], "app.example:8443");
    assert_eq!(seen.headers["x-forwarded-host"], "app.example:8443");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    for (name, value) in &seen.headers {
        let value = value.to_str().unwrap_or_default();
        assert!(!value.contains("app.sock"), "{name}: {value}");
    }
    // The pool kept the socket connection between the two requests.
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);

    // A body streams over the socket and back (a detached connection); HTTP/2 clients too.
    let request = Request::post("/echo")
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(b"over the socket")))
        .unwrap();
    let (status, _, body) = collect(client.send_request(request).await.unwrap()).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"over the socket"[..])
    );
    let mut h2_client = h2::<Empty<Bytes>>(&pki, proxy.addr).await;
    let request = Request::get(format!("https://localhost:{}/h2", proxy.addr.port()))
        .body(Empty::new())
        .unwrap();
    let (status, _, _) = collect(h2_client.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.last().headers["host"],
        format!("localhost:{}", proxy.addr.port())
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_dead_socket_is_502_with_the_reason_and_recovers() {
    let pki = TestPki::new();
    let dir = TempDir::new("unix-missing");
    let socket = dir.join("app.sock");
    let url = format!("unix:{}", socket.display());
    let proxy = TestProxy::start_url(&pki, &url, &["--upstream-connect-timeout", "5s"]).await;
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;

    let json_get = || {
        Request::get("/")
            .header("host", "localhost")
            .header("accept", "application/json")
            .body(Empty::new())
            .unwrap()
    };
    let (status, _, body) = collect(client.send_request(json_get()).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "upstream_unreachable");
    // The path stays in the log, not in the body.
    assert!(!String::from_utf8_lossy(&body).contains("app.sock"));

    // The reason the log gets names the socket and what to check.
    let upstream = Upstream::parse(&url).unwrap();
    let timeout = Duration::from_secs(5);
    let err = proxy::upstream::connect::connect(&upstream, timeout)
        .await
        .err()
        .expect("no socket, no connection");
    let reason = err.to_string();
    assert!(reason.contains(&socket.display().to_string()), "{reason}");
    assert!(reason.contains("no socket there"), "{reason}");

    // A socket file nobody listens on any more (an app that died without removing it): refused,
    // at once, as a refused TCP connect.
    drop(tokio::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let (status, _, _) = collect(client.send_request(json_get()).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let err = proxy::upstream::connect::connect(&upstream, timeout)
        .await
        .err()
        .expect("nothing listens");
    assert!(err.to_string().contains("nothing listening"), "{err}");

    // The app comes up on the same path: the next request reaches it.
    std::fs::remove_file(&socket).unwrap();
    let app = TestUpstream::start_unix(&socket);
    let (status, _, _) = collect(client.send_request(get("/back")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.last().uri, "/back");
    proxy.shutdown().await;
}

/// `argv` without its `--upstream` flag and value, so the environment's `PROXY_UPSTREAM` applies.
fn without_upstream_flag(argv: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = argv.iter();
    while let Some(arg) = args.next() {
        if arg == "--upstream" {
            args.next();
        } else {
            out.push(arg.clone());
        }
    }
    out
}

#[tokio::test]
async fn a_reload_swaps_between_a_socket_and_tcp_without_reusing_a_connection() {
    let pki = TestPki::new();
    let dir = TempDir::new("unix-swap");
    let tcp = TestUpstream::start().await;
    let socket = TestUpstream::start_unix(&dir.join("app.sock"));
    let proxy = TestProxy::start_url(&pki, &tcp.url, &[]).await;
    let argv = without_upstream_flag(&proxy.argv);
    let env = |upstream: &str| HashMap::from([("PROXY_UPSTREAM".to_owned(), upstream.to_owned())]);
    let mut client = h1::<Empty<Bytes>>(&pki, proxy.addr).await;

    // One request leaves an idle TCP connection in the pool.
    collect(client.send_request(get("/tcp-1")).await.unwrap()).await;
    assert_eq!(tcp.seen().len(), 1);

    proxy
        .proxy
        .reload(&argv, &env(&socket.url))
        .expect("reload to the socket");
    for path in ["/socket-1", "/socket-2"] {
        collect(client.send_request(get(path)).await.unwrap()).await;
    }
    // Both went over the socket (on one connection), none over the pooled TCP connection.
    assert_eq!(socket.seen().len(), 2);
    assert_eq!(socket.connections.load(Ordering::SeqCst), 1);
    assert_eq!(tcp.seen().len(), 1);

    proxy
        .proxy
        .reload(&argv, &env(&tcp.url))
        .expect("reload back to TCP");
    collect(client.send_request(get("/tcp-2")).await.unwrap()).await;
    assert_eq!(tcp.last().uri, "/tcp-2");
    assert_eq!(
        socket.seen().len(),
        2,
        "the pooled socket connection is not used for TCP"
    );

    // An invalid socket form is refused and the current upstream keeps serving.
    let err = proxy
        .proxy
        .reload(&argv, &env("unix:relative.sock"))
        .unwrap_err();
    assert!(err.to_string().contains("PROXY_UPSTREAM"), "{err}");
    collect(client.send_request(get("/tcp-3")).await.unwrap()).await;
    assert_eq!(tcp.last().uri, "/tcp-3");
    proxy.shutdown().await;
}
