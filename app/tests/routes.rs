//! Every route in both formats, for success and each failure, over real sockets.

mod common;

use common::{start, TestApp, DEMO_PASSWORD, DEMO_USER};
use hyper::StatusCode;
use serde_json::json;

const LOGIN_FORM: &str = "username=behai_nguyen%40hotmail.com&password=password";
const WRONG_PASSWORD: &str = "username=behai_nguyen%40hotmail.com&password=nope";
const UNKNOWN_USER: &str = "username=nobody%40example.com&password=password";

async fn app() -> TestApp {
    start(common::config()).await
}

/// Logs in through the HTML form and returns the session cookie value.
async fn html_login(app: &TestApp) -> String {
    let response = app.post("/auth/token").form(LOGIN_FORM).send().await;
    response.assert_redirect("/auth/home");
    response.session_cookie().expect("session cookie")
}

#[tokio::test]
async fn login_page_and_its_states() {
    let app = app().await;
    for path in ["/", "/auth/login"] {
        let page = app.get(path).send().await;
        page.assert_html();
        let text = page.text();
        assert!(text.contains(r#"action="/auth/token""#), "{text}");
        assert!(text.contains(r#"name="username""#) && text.contains(r#"name="password""#));
        assert!(!text.contains("<h4"));
    }
    for (state, message) in [
        (1, "This session has not been logged in before"),
        (2, "Please log in to continue"),
        (3, "Incorrect username or password"),
    ] {
        let page = app.get(&format!("/auth/login?state={state}")).send().await;
        page.assert_html();
        assert!(page.text().contains(message), "state {state}");
    }
    let unknown_state = app.get("/auth/login?state=0").send().await;
    unknown_state.assert_html();
    assert!(!unknown_state.text().contains("<h4"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn login_page_rejects_a_non_integer_state_with_422() {
    let app = app().await;
    let response = app.get("/auth/login?state=abc").send().await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let detail = &response.json()["detail"][0];
    assert_eq!(detail["loc"], json!(["query", "state"]));
    assert_eq!(detail["type"], "int_parsing");
    assert_eq!(detail["input"], "abc");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn login_page_redirects_home_when_logged_in() {
    let app = app().await;
    let cookie = html_login(&app).await;
    for path in ["/", "/auth/login?state=2"] {
        app.get(path)
            .cookie(&cookie)
            .send()
            .await
            .assert_redirect("/auth/home");
    }
    let token = app.login_token().await;
    app.get("/auth/login")
        .bearer(&token)
        .send()
        .await
        .assert_redirect("/auth/home");
    // A stale cookie is no login.
    app.get("/auth/login")
        .cookie("stale")
        .send()
        .await
        .assert_html();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn token_json_success_sets_token_and_cookie() {
    let app = app().await;
    for json_request in [
        app.post("/auth/token").json_format(),
        app.post("/auth/token").header("accept", "application/json"),
        app.post("/api/login"),
    ] {
        let response = json_request.form(LOGIN_FORM).send().await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        let body = response.json();
        assert_eq!(body["token_type"], "bearer");
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(response.session_cookie().as_deref(), Some(token));
        assert_eq!(response.header("cache-control"), Some("no-store"));
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn token_json_bad_credentials_is_400() {
    let app = app().await;
    for path in ["/auth/token", "/api/login"] {
        for form in [WRONG_PASSWORD, UNKNOWN_USER] {
            let response = app.post(path).json_format().form(form).send().await;
            response.assert_detail(400, "Incorrect username or password");
            assert!(response.session_cookie().is_none());
        }
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn token_missing_fields_or_not_a_form_is_422_naming_the_field() {
    let app = app().await;
    for path in ["/auth/token", "/api/login"] {
        // The HTML flavour answers validation errors in JSON too, like FastAPI.
        for json in [true, false] {
            let request = |body: &str| {
                let r = app.post(path).form(body);
                if json {
                    r.json_format()
                } else {
                    r
                }
            };
            let response = request("username=a%40b").send().await;
            assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(
                response.json()["detail"],
                json!([{"type": "missing", "loc": ["body", "password"], "msg": "Field required", "input": null}])
            );
            let response = request("password=x").send().await;
            assert_eq!(
                response.json()["detail"][0]["loc"],
                json!(["body", "username"])
            );
        }
        let not_a_form = app
            .post(path)
            .json_format()
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"username":"{DEMO_USER}","password":"{DEMO_PASSWORD}"}}"#
            ))
            .send()
            .await;
        assert_eq!(not_a_form.status, StatusCode::UNPROCESSABLE_ENTITY);
        let locs: Vec<_> = not_a_form.json()["detail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["loc"][1].clone())
            .collect();
        assert_eq!(locs, [json!("username"), json!("password")]);
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn token_html_success_and_failure_redirect() {
    let app = app().await;
    let cookie = html_login(&app).await;
    app.get("/auth/home")
        .cookie(&cookie)
        .send()
        .await
        .assert_html();
    for form in [WRONG_PASSWORD, UNKNOWN_USER] {
        let response = app.post("/auth/token").form(form).send().await;
        response.assert_redirect("/auth/login?state=3");
        assert!(response.session_cookie().is_none());
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn token_when_already_logged_in() {
    let app = app().await;
    let token = app.login_token().await;
    for path in ["/auth/token", "/api/login"] {
        let response = app
            .post(path)
            .json_format()
            .bearer(&token)
            .form(LOGIN_FORM)
            .send()
            .await;
        response.assert_detail(200, "Already logged in");
    }
    app.post("/api/login")
        .cookie(&token)
        .form(LOGIN_FORM)
        .send()
        .await
        .assert_detail(200, "Already logged in");
    let response = app
        .post("/auth/token")
        .cookie(&token)
        .form(LOGIN_FORM)
        .send()
        .await;
    response.assert_redirect("/auth/home");
    assert_eq!(
        response.session_cookie().as_deref(),
        Some(token.as_str()),
        "no second session: the live one's cookie, refreshed"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn home_page_for_a_logged_in_user() {
    let app = app().await;
    let cookie = html_login(&app).await;
    let page = app.get("/auth/home").cookie(&cookie).send().await;
    page.assert_html();
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(
        csp.contains("script-src 'sha256-") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let text = page.text();
    for needle in [
        "Be Hai Doe",
        "<h1 class=\"h3 mb-3 fw-normal\">Home</h1>",
        "id=\"meBtn\"",
        "id=\"meForm\"",
        "id=\"logoutForm\"",
        ">My Info</button>",
        ">My Info as JSON</button>",
        r#"fetch("/admin/me""#,
        r#"credentials: "same-origin""#,
        r#"action="/auth/logout""#,
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
    // The bearer header works for the page too.
    let token = app.login_token().await;
    app.get("/auth/home")
        .bearer(&token)
        .send()
        .await
        .assert_html();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn home_page_uses_the_forwarded_origin_for_absolute_urls() {
    let app = app().await;
    let cookie = html_login(&app).await;
    let page = app
        .get("/auth/home")
        .cookie(&cookie)
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example:8443")
        .send()
        .await;
    assert!(
        page.text().contains("https://app.example:8443/api/me"),
        "{}",
        page.text()
    );
    let page = app
        .get("/auth/home")
        .cookie(&cookie)
        .header("forwarded", "proto=https;host=other.example")
        .send()
        .await;
    assert!(page.text().contains("https://other.example/api/me"));
    let page = app.get("/auth/home").cookie(&cookie).send().await;
    assert!(page.text().contains(&format!("http://{}/api/me", app.addr)));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn home_page_redirects_when_not_logged_in() {
    let app = app().await;
    app.get("/auth/home")
        .send()
        .await
        .assert_redirect("/auth/login?state=2");
    app.get("/auth/home")
        .cookie("bogus")
        .send()
        .await
        .assert_redirect("/auth/login?state=2");
    app.get("/auth/home")
        .bearer("bogus")
        .send()
        .await
        .assert_redirect("/auth/login?state=2");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn me_json_success_never_leaks_the_hash() {
    let app = app().await;
    let token = app.login_token().await;
    let want = json!({"username": DEMO_USER, "first_name": "Be Hai", "last_name": "Doe"});
    for request in [
        app.get("/admin/me").json_format().bearer(&token),
        app.get("/admin/me")
            .header("accept", "application/json")
            .cookie(&token),
        app.get("/api/me").bearer(&token),
        app.get("/api/me").cookie(&token),
    ] {
        let response = request.send().await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(response.json(), want);
        assert_eq!(response.header("cache-control"), Some("no-store"));
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn me_json_failures_are_401_with_www_authenticate() {
    let app = app().await;
    for (request, detail) in [
        (app.get("/admin/me").json_format(), "Not authenticated"),
        (app.get("/api/me"), "Not authenticated"),
        (
            app.get("/api/me").header("authorization", "Basic dTpw"),
            "Not authenticated",
        ),
        (
            app.get("/admin/me").json_format().bearer("bogus"),
            "Invalid authentication credentials",
        ),
        (
            app.get("/api/me").bearer("bogus"),
            "Invalid authentication credentials",
        ),
        (
            app.get("/api/me").cookie("bogus"),
            "Invalid authentication credentials",
        ),
        // The email, which the original used as its token, is no credential here.
        (
            app.get("/api/me").bearer(DEMO_USER),
            "Invalid authentication credentials",
        ),
    ] {
        let response = request.send().await;
        response.assert_detail(401, detail);
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn me_html_success_and_failures() {
    let app = app().await;
    let cookie = html_login(&app).await;
    let page = app.get("/admin/me").cookie(&cookie).send().await;
    page.assert_html();
    let text = page.text();
    assert!(text.contains(DEMO_USER) && text.contains("Be Hai") && text.contains("Doe"));
    assert!(!text.contains("argon2"));
    app.get("/admin/me")
        .send()
        .await
        .assert_redirect("/auth/login?state=2");
    app.get("/admin/me")
        .cookie("bogus")
        .send()
        .await
        .assert_redirect("/auth/login?state=2");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn logout_html_revokes_and_clears_the_cookie() {
    let app = app().await;
    let cookie = html_login(&app).await;
    let response = app.post("/auth/logout").cookie(&cookie).send().await;
    response.assert_redirect("/auth/login?state=0");
    let cleared = response.set_cookies();
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("session=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    // The revoked session is gone for every route.
    app.get("/auth/home")
        .cookie(&cookie)
        .send()
        .await
        .assert_redirect("/auth/login?state=2");
    app.get("/api/me")
        .cookie(&cookie)
        .send()
        .await
        .assert_detail(401, "Invalid authentication credentials");
    // Logging out again, or without a session, is "not logged in".
    app.post("/auth/logout")
        .cookie(&cookie)
        .send()
        .await
        .assert_redirect("/auth/login?state=1");
    app.post("/auth/logout")
        .send()
        .await
        .assert_redirect("/auth/login?state=1");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn logout_json_revokes_the_bearer_token() {
    let app = app().await;
    let token = app.login_token().await;
    let other = app.login_token().await;
    let response = app.post("/api/logout").bearer(&token).send().await;
    response.assert_detail(200, "Logged out");
    assert!(response
        .set_cookies()
        .iter()
        .any(|c| c.contains("Max-Age=0")));
    let revoked = app.get("/api/me").bearer(&token).send().await;
    revoked.assert_detail(401, "Invalid authentication credentials");
    assert_eq!(revoked.header("www-authenticate"), Some("Bearer"));
    // Only that session ended.
    assert_eq!(
        app.get("/api/me").bearer(&other).send().await.status,
        StatusCode::OK
    );
    // The JSON flavour of /auth/logout behaves the same.
    app.post("/auth/logout")
        .json_format()
        .bearer(&other)
        .send()
        .await
        .assert_detail(200, "Logged out");
    let again = app.post("/api/logout").bearer(&token).send().await;
    again.assert_detail(401, "Invalid authentication credentials");
    assert_eq!(again.header("www-authenticate"), Some("Bearer"));
    app.post("/api/logout")
        .send()
        .await
        .assert_detail(401, "Not authenticated");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let app = app().await;
    for path in ["/nope", "/api/me//", "/auth", "/nope/"] {
        app.get(path).send().await.assert_detail(404, "Not Found");
    }
    for (request, allow) in [
        (app.get("/auth/token"), "POST"),
        (app.get("/api/login"), "POST"),
        (app.get("/api/logout"), "POST"),
        (app.post("/admin/me"), "GET"),
        (app.post("/auth/home"), "GET"),
        (app.request(hyper::Method::OPTIONS, "/api/me"), "GET"),
        (app.request(hyper::Method::DELETE, "/"), "GET"),
    ] {
        let response = request.send().await;
        response.assert_detail(405, "Method Not Allowed");
        assert_eq!(response.header("allow"), Some(allow));
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_app_never_emits_cors_headers() {
    let app = app().await;
    let token = app.login_token().await;
    for request in [
        app.get("/api/me")
            .bearer(&token)
            .header("origin", "https://elsewhere.example"),
        app.request(hyper::Method::OPTIONS, "/api/me")
            .header("origin", "https://elsewhere.example")
            .header("access-control-request-method", "GET"),
    ] {
        let response = request.send().await;
        assert!(
            !response
                .headers
                .keys()
                .any(|k| k.as_str().starts_with("access-control-")),
            "{:?}",
            response.headers
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn trailing_slash_forms_redirect_with_307_keeping_the_query() {
    let app = app().await;
    for (request, location) in [
        (app.get("/auth/login/"), "/auth/login"),
        (app.get("/auth/login/?state=2"), "/auth/login?state=2"),
        (app.get("/api/me/"), "/api/me"),
        (app.get("/admin/me/?a=1&b=%2F"), "/admin/me?a=1&b=%2F"),
        (app.post("/auth/token/"), "/auth/token"),
        (app.post("/api/logout/"), "/api/logout"),
    ] {
        let response = request.send().await;
        assert_eq!(
            response.status,
            StatusCode::TEMPORARY_REDIRECT,
            "{location}"
        );
        assert_eq!(response.location(), Some(location));
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn multipart_login_bodies_work_like_urlencoded_ones() {
    let app = app().await;
    let body = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\n{DEMO_USER}\r\n\
         --XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\n{DEMO_PASSWORD}\r\n--XyZ--\r\n"
    );
    let response = app
        .post("/api/login")
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body.clone())
        .send()
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let token = response.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get("/api/me").bearer(&token).send().await.status,
        StatusCode::OK
    );
    let wrong = body.replace(&format!("\r\n\r\n{DEMO_PASSWORD}\r\n"), "\r\n\r\nnope\r\n");
    app.post("/api/login")
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(wrong)
        .send()
        .await
        .assert_detail(400, "Incorrect username or password");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_live_session_gets_its_cookie_again_on_every_response() {
    let app = app().await;
    let cookie = html_login(&app).await;
    for request in [
        app.get("/auth/home").cookie(&cookie),
        app.get("/admin/me").cookie(&cookie),
        app.get("/api/me").cookie(&cookie),
        app.get("/auth/login").cookie(&cookie),
        app.post("/api/login").cookie(&cookie).form(LOGIN_FORM),
    ] {
        let response = request.send().await;
        assert_eq!(response.session_cookie().as_deref(), Some(cookie.as_str()));
        assert!(
            response.set_cookies()[0].contains("HttpOnly; SameSite=Lax; Path=/; Max-Age=1800"),
            "{:?}",
            response.set_cookies()
        );
    }
    // No session, no cookie.
    assert!(app
        .get("/auth/home")
        .cookie("stale")
        .send()
        .await
        .set_cookies()
        .is_empty());
    assert!(app.get("/auth/login").send().await.set_cookies().is_empty());
    app.stop().await.unwrap();
}
