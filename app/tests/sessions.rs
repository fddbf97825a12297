//! Session tokens and cookies over real sockets: opacity, revocation, idle expiry, the session
//! bound, cookie flags behind an https proxy, HTML escaping of user data, and body limits.

mod common;

use std::time::Duration;

use app::users::{hash_password, Users};
use app::Config;
use common::{start, DEMO_USER};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOGIN_FORM: &str = "username=behai_nguyen%40hotmail.com&password=password";

#[tokio::test]
async fn tokens_are_opaque_and_unique() {
    let app = start(common::config()).await;
    let first = app.login_token().await;
    let second = app.login_token().await;
    assert_ne!(first, second, "two logins, two tokens");
    for token in [&first, &second] {
        assert!(
            !token.contains(DEMO_USER) && !token.contains("behai"),
            "{token}"
        );
        // At least 128 bits: 32+ hex digits.
        assert!(
            token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "{token}"
        );
        assert_eq!(
            app.get("/api/me").bearer(token).send().await.status,
            StatusCode::OK
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_expire_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(300);
    let app = start(Config {
        session_idle_timeout: IDLE,
        ..common::config()
    })
    .await;
    let token = app.login_token().await;
    let cookie = app
        .post("/auth/token")
        .form(LOGIN_FORM)
        .send()
        .await
        .session_cookie()
        .unwrap();
    assert_eq!(
        app.get("/api/me").bearer(&token).send().await.status,
        StatusCode::OK
    );
    app.get("/auth/home")
        .cookie(&cookie)
        .send()
        .await
        .assert_html();
    // The one wait this test needs: past the idle timeout, without touching the sessions.
    tokio::time::sleep(IDLE + Duration::from_millis(100)).await;
    app.get("/api/me")
        .bearer(&token)
        .send()
        .await
        .assert_detail(401, "Invalid authentication credentials");
    app.get("/auth/home")
        .cookie(&cookie)
        .send()
        .await
        .assert_redirect("/auth/login?state=2");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn session_count_is_bounded_by_evicting_the_longest_idle() {
    let app = start(Config {
        max_sessions: 2,
        ..common::config()
    })
    .await;
    let oldest = app.login_token().await;
    let middle = app.login_token().await;
    // Using `oldest` makes `middle` the longest idle.
    assert_eq!(
        app.get("/api/me").bearer(&oldest).send().await.status,
        StatusCode::OK
    );
    let newest = app.login_token().await;
    for (token, status) in [
        (&oldest, StatusCode::OK),
        (&middle, StatusCode::UNAUTHORIZED),
        (&newest, StatusCode::OK),
    ] {
        assert_eq!(app.get("/api/me").bearer(token).send().await.status, status);
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn cookie_flags_with_and_without_https_proxy() {
    let app = start(common::config()).await;
    let plain = app.post("/api/login").form(LOGIN_FORM).send().await;
    let token = plain.session_cookie().unwrap();
    assert_eq!(
        plain.set_cookies(),
        [format!(
            "session={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age=1800"
        )]
    );
    for (name, value) in [
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=192.0.2.1;proto=https"),
    ] {
        let response = app
            .post("/api/login")
            .header(name, value)
            .form(LOGIN_FORM)
            .send()
            .await;
        let token = response.session_cookie().unwrap();
        assert_eq!(
            response.set_cookies(),
            [format!(
                "session={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age=1800; Secure"
            )],
            "{name}: {value}"
        );
        let logout = app
            .post("/auth/logout")
            .cookie(&token)
            .header(name, value)
            .send()
            .await;
        let cleared = logout.set_cookies();
        assert!(cleared[0].ends_with("Max-Age=0; Secure"), "{cleared:?}");
    }
    let http = app
        .post("/api/login")
        .header("x-forwarded-proto", "http")
        .form(LOGIN_FORM)
        .send()
        .await;
    assert!(!http.set_cookies()[0].contains("Secure"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn user_data_is_escaped_in_html() {
    let hash = hash_password("pw").unwrap();
    let users = Users::parse(&format!(
        "x@example.com:<script>:O'Brien & \"Co\" <b>:{hash}"
    ))
    .unwrap();
    let app = start(Config {
        users,
        ..common::config()
    })
    .await;
    let login = app
        .post("/auth/token")
        .form("username=x%40example.com&password=pw")
        .send()
        .await;
    let cookie = login.session_cookie().expect("logged in");
    let home = app.get("/auth/home").cookie(&cookie).send().await.text();
    assert!(
        home.contains("Welcome, &lt;script&gt; O&#x27;Brien &amp; &quot;Co&quot; &lt;b&gt;."),
        "{home}"
    );
    // The page's own script is the only one.
    assert_eq!(home.matches("<script>").count(), 1, "{home}");
    assert!(!home.contains("<b>"));
    let me = app.get("/admin/me").cookie(&cookie).send().await.text();
    assert!(
        me.contains("<div class=\"col-3\">&lt;script&gt;</div>"),
        "{me}"
    );
    assert!(!me.contains("<script>") && !me.contains("<b>"), "{me}");
    // JSON carries the raw value.
    let json = app.get("/api/me").cookie(&cookie).send().await.json();
    assert_eq!(json["first_name"], "<script>");
    // A hostile forwarded host is not echoed as markup either.
    let hostile = app
        .get("/auth/home")
        .cookie(&cookie)
        .header("x-forwarded-host", "<i>evil</i>")
        .send()
        .await
        .text();
    assert!(!hostile.contains("<i>"), "{hostile}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bodies_past_the_limit_get_413() {
    let app = start(Config {
        max_body_bytes: 64,
        ..common::config()
    })
    .await;
    let big = format!("{LOGIN_FORM}&padding={}", "x".repeat(100));
    app.post("/api/login")
        .form(&big)
        .send()
        .await
        .assert_detail(413, "Request body too large");
    // Chunked: no declared length, so the limit trips while reading.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST /api/login HTTP/1.1\r\nhost: test\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 413 "), "{response}");
    // Under the limit still works.
    assert_eq!(
        app.post("/api/login").form(LOGIN_FORM).send().await.status,
        StatusCode::OK
    );
    app.stop().await.unwrap();
}
