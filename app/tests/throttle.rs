//! Login throttling over real sockets: a scripted guesser is answered 429 with Retry-After after
//! its free failures, in JSON or HTML; the real user still logs in from an address that is not
//! failing; and forwarding headers count only from trusted proxy peers.

mod common;

use app::client::TrustedProxies;
use app::Config;
use common::{start, TestApp};
use hyper::StatusCode;

const RIGHT: &str = "username=behai_nguyen%40hotmail.com&password=password";
const WRONG: &str = "username=behai_nguyen%40hotmail.com&password=guess";
const GUESSER: &str = "203.0.113.66";
const REAL_USER: &str = "198.51.100.7";

async fn guess(app: &TestApp, from: &str, form: &str) -> common::TestResponse {
    app.post("/api/login")
        .header("x-forwarded-for", from)
        .form(form)
        .send()
        .await
}

#[tokio::test]
async fn a_guesser_is_slowed_and_the_real_user_still_logs_in_elsewhere() {
    let app = start(common::config()).await;
    for n in 1..=5 {
        let response = guess(&app, GUESSER, WRONG).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "free failure {n}");
    }
    let throttled = guess(&app, GUESSER, WRONG).await;
    throttled.assert_detail(429, "Too many failed logins; try again in 1 seconds");
    assert_eq!(throttled.header("retry-after"), Some("1"));
    // While it waits, even the right password from the guessing address is refused unchecked.
    assert_eq!(
        guess(&app, GUESSER, RIGHT).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // HTML clients get a page with the same status and header.
    let page = app
        .post("/auth/token")
        .header("x-forwarded-for", GUESSER)
        .form(WRONG)
        .send()
        .await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(page.header("retry-after"), Some("1"));
    assert!(
        page.text().contains("Too many failed logins"),
        "{}",
        page.text()
    );
    // The real user, from an address that is not failing, is not made to wait.
    let real = guess(&app, REAL_USER, RIGHT).await;
    assert_eq!(real.status, StatusCode::OK, "{}", real.text());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let app = start(Config {
        trusted_proxies: TrustedProxies::parse("").unwrap(),
        ..common::config()
    })
    .await;
    for _ in 0..5 {
        guess(&app, GUESSER, WRONG).await;
    }
    // Both "addresses" are the untrusted peer itself (loopback), so the pair is locked for both.
    assert_eq!(
        guess(&app, REAL_USER, WRONG).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await.unwrap();
}
