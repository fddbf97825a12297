//! One session test-suite run against every store (memory, SQLite in a temporary folder, a real
//! redis-server): expiry, sliding, revocation and the bound behave the same in each, and so does a
//! login over HTTP. Then what only shared stores do: survive a backend swap (SQLite shared by two
//! apps), and answer 503 while Redis is down, recovering when it is back.

mod common;

use std::time::Duration;

use app::sessions::{SessionStore, StoreSpec};
use app::Config;
use common::redis_server::RedisServer;
use common::{start, DEMO_USER};
use hyper::StatusCode;

const LOGIN_FORM: &str = "username=behai_nguyen%40hotmail.com&password=password";
/// Short enough to wait out, long enough that two requests in a row never cross it.
const IDLE: Duration = Duration::from_millis(600);

/// The suite, against the store `spec` names.
async fn suite(spec: &StoreSpec) {
    let store = SessionStore::open(spec, Duration::from_secs(60), 2)
        .await
        .unwrap();
    let a = store.create("a@x").await.unwrap();
    assert_eq!(store.touch(&a).await.unwrap().as_deref(), Some("a@x"));
    assert!(
        store.revoke(&a).await.unwrap(),
        "{spec:?}: revoke a live session"
    );
    assert!(!store.revoke(&a).await.unwrap(), "{spec:?}: revoke twice");
    assert_eq!(store.touch(&a).await.unwrap(), None, "{spec:?}: revoked");

    // The bound: the longest-idle session goes when a third arrives.
    let x = store.create("x@x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await; // distinct last-use times, millisecond clocks
    let y = store.create("y@x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(store.touch(&x).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let z = store.create("z@x").await.unwrap();
    assert_eq!(
        store.touch(&y).await.unwrap(),
        None,
        "{spec:?}: y was the longest idle"
    );
    assert!(store.touch(&x).await.unwrap().is_some(), "{spec:?}");
    assert!(store.touch(&z).await.unwrap().is_some(), "{spec:?}");

    // Idle expiry, slid by each use. The waits are the store's own timeout passing.
    let store = SessionStore::open(spec, IDLE, 10).await.unwrap();
    let t = store.create("t@x").await.unwrap();
    tokio::time::sleep(IDLE / 2).await;
    assert!(store.touch(&t).await.unwrap().is_some(), "{spec:?}");
    tokio::time::sleep(IDLE * 3 / 4).await;
    assert!(
        store.touch(&t).await.unwrap().is_some(),
        "{spec:?}: the touch slid the timeout"
    );
    tokio::time::sleep(IDLE + Duration::from_millis(100)).await;
    assert_eq!(store.touch(&t).await.unwrap(), None, "{spec:?}: expired");
    assert!(
        !store.revoke(&t).await.unwrap(),
        "{spec:?}: an expired session is not live"
    );

    // Over HTTP: log in, use the cookie and the token, log out.
    let app = start(Config {
        sessions: spec.clone(),
        ..common::config()
    })
    .await;
    let token = app.login_token().await;
    let me = app.get("/api/me").bearer(&token).send().await;
    assert_eq!(me.status, StatusCode::OK, "{spec:?}: {}", me.text());
    assert_eq!(me.json()["username"], DEMO_USER);
    assert_eq!(me.session_cookie().as_deref(), Some(token.as_str()));
    let cookie = app
        .post("/auth/token")
        .form(LOGIN_FORM)
        .send()
        .await
        .session_cookie()
        .unwrap();
    app.get("/auth/home")
        .cookie(&cookie)
        .send()
        .await
        .assert_html();
    app.post("/auth/logout")
        .cookie(&cookie)
        .send()
        .await
        .assert_redirect("/auth/login?state=0");
    app.get("/auth/home")
        .cookie(&cookie)
        .send()
        .await
        .assert_redirect("/auth/login?state=2");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn memory_store() {
    suite(&StoreSpec::Memory).await;
}

#[tokio::test]
async fn sqlite_store() {
    let dir = common::temp_dir("sqlite-suite");
    suite(&StoreSpec::Sqlite(dir.join("sessions.db"))).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn redis_store() {
    let Some(redis) = RedisServer::start("redis_store") else {
        return;
    };
    suite(&StoreSpec::Redis(redis.url())).await;
}

#[tokio::test]
async fn sqlite_sessions_survive_a_swap_to_another_backend_on_the_same_file() {
    let dir = common::temp_dir("sqlite-swap");
    let config = || Config {
        sessions: StoreSpec::Sqlite(dir.join("sessions.db")),
        ..common::config()
    };
    let blue = start(config()).await;
    let token = blue.login_token().await;
    let cookie = blue
        .post("/auth/token")
        .form(LOGIN_FORM)
        .send()
        .await
        .session_cookie()
        .unwrap();
    blue.stop().await.unwrap();
    let green = start(config()).await;
    assert_eq!(
        green.get("/api/me").bearer(&token).send().await.status,
        StatusCode::OK
    );
    green
        .get("/auth/home")
        .cookie(&cookie)
        .send()
        .await
        .assert_html();
    green.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn an_unwritable_sqlite_path_is_a_start_up_error_naming_the_setting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = app::run(
        listener,
        Config {
            sessions: StoreSpec::Sqlite("/nonexistent/dir/sessions.db".into()),
            ..common::config()
        },
        std::future::pending(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("APP_SESSIONS") && error.contains("/nonexistent/dir/sessions.db"),
        "{error}"
    );
}

#[tokio::test]
async fn redis_down_is_503_in_json_and_html_and_recovers_when_it_is_back() {
    let Some(redis) = RedisServer::start("redis_down") else {
        return;
    };
    let app = start(Config {
        sessions: StoreSpec::Redis(redis.url()),
        ..common::config()
    })
    .await;
    let token = app.login_token().await;
    let port = redis.stop();

    let started = std::time::Instant::now();
    let json = app.get("/api/me").bearer(&token).send().await;
    json.assert_detail(503, "Session store unavailable; try again shortly");
    assert_eq!(json.header("retry-after"), Some("5"));
    app.post("/api/login")
        .form(LOGIN_FORM)
        .send()
        .await
        .assert_detail(503, "Session store unavailable; try again shortly");
    let page = app.get("/auth/home").bearer(&token).send().await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.text().contains("Sessions are unavailable"),
        "{}",
        page.text()
    );
    // Refused connections fail at once; a stuck Redis is bounded by the operation timeout.
    assert!(started.elapsed() < app::sessions::redis_operation_timeout() * 3);

    // A new, empty Redis on the same port: the app reconnects; the old session died with the
    // old server (nothing was saved), so the token is now invalid and a new login works.
    let _redis = RedisServer::start_on(port).unwrap();
    app.get("/api/me")
        .bearer(&token)
        .send()
        .await
        .assert_detail(401, "Invalid authentication credentials");
    let fresh = app.login_token().await;
    assert_eq!(
        app.get("/api/me").bearer(&fresh).send().await.status,
        StatusCode::OK
    );
    app.stop().await.unwrap();
}
