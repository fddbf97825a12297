//! The HTML pages: self-contained (inline CSS and script, nothing fetched from elsewhere), every
//! printed value escaped, and a Content-Security-Policy that only runs the page's own script.

use std::fmt::Write as _;
use std::sync::LazyLock;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::users::User;

const LOGIN_TITLE: &str = "Learn FastAPI Login";
const HOME_TITLE: &str = "Learn FastAPI Home";
const ME_TITLE: &str = "Learn FastAPI My Info";

/// The pages' own CSS, with the class names of the original's markup (which took them from
/// Bootstrap) so its structure stays. `#info` wraps long JSON rather than scrolling sideways.
const STYLE: &str = "\
body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}\
.h3{font-size:1.75rem;line-height:1.2}.mb-3{margin-bottom:1rem}.fw-normal{font-weight:400}\
h4{font-size:1.1rem;padding:.5rem;background:#fff3cd;border:1px solid #e0c060}\
form{margin:1rem 0}label{display:block;margin:.5rem 0}\
input{padding:.4rem;width:100%;box-sizing:border-box}\
.btn{display:inline-block;padding:.4rem 1rem;margin:.2rem .4rem .2rem 0;border:1px solid transparent;\
border-radius:.3rem;font:inherit;cursor:pointer}\
.btn-primary{color:#fff;background:#0d6efd;border-color:#0d6efd}.btn-link{color:#0d6efd;background:none;text-decoration:underline}\
.row{display:flex;flex-wrap:wrap;gap:1rem;margin:.3rem 0}.col-2{flex:0 0 8rem;font-weight:bold}.col-3{flex:1 1 12rem;overflow-wrap:anywhere}\
#info{background:#f4f4f4;padding:.5rem;min-height:1rem;white-space:pre-wrap;overflow-wrap:anywhere;max-width:100%}\
code{word-break:break-all}";

/// The home page's script: the "My Info as JSON" button fetches `/admin/me` as JSON from the same
/// origin (the session cookie goes along) and shows the text, never running it.
const HOME_SCRIPT: &str = r#"
const info = document.getElementById("info");
document.getElementById("meBtn").addEventListener("click", async () => {
  const headers = { "x-expected-format": "application/json" };
  const response = await fetch("/admin/me", { credentials: "same-origin", headers });
  info.textContent = await response.text();
});
"#;

/// Content-Security-Policy for every page: inline CSS, only the home page's own script (by hash),
/// fetches and form posts to this origin only.
pub static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    let digest = Sha256::digest(HOME_SCRIPT.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(digest);
    format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
});

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

fn layout(title: &str, main: &str, script: Option<&str>) -> String {
    let mut page = String::with_capacity(STYLE.len() + main.len() + 512);
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(page, "<title>{}</title>", escape(title));
    let _ = writeln!(page, "<style>{STYLE}</style>\n</head>\n<body>");
    let _ = writeln!(page, "<main>\n{main}</main>");
    if let Some(script) = script {
        let _ = writeln!(page, "<script>{script}</script>");
    }
    page.push_str("</body>\n</html>\n");
    page
}

/// The message the login page shows for a `state` value (the original's texts).
pub fn login_message(state: Option<i64>) -> Option<&'static str> {
    match state {
        Some(1) => Some("This session has not been logged in before"),
        Some(2) => Some("Please log in to continue"),
        Some(3) => Some("Incorrect username or password"),
        _ => None,
    }
}

/// The page heading, with the original's classes.
fn heading(text: &str) -> String {
    format!("<h1 class=\"h3 mb-3 fw-normal\">{}</h1>\n", escape(text))
}

/// The login form, posting `username` and `password` to `/auth/token`.
pub fn login(message: Option<&str>) -> String {
    let mut main = heading("Please login");
    if let Some(message) = message {
        let _ = writeln!(main, "<h4 role=\"alert\">{}</h4>", escape(message));
    }
    main.push_str(
        "<form id=\"loginForm\" method=\"post\" action=\"/auth/token\">\n\
         <label>Email <input type=\"text\" inputmode=\"email\" name=\"username\" autocomplete=\"username\" required></label>\n\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\n\
         <button type=\"submit\" class=\"btn btn-primary\">Login</button>\n</form>\n",
    );
    layout(LOGIN_TITLE, &main, None)
}

/// The home page of a logged-in user; `api_url` is the absolute `/api/me` URL on the outside origin.
pub fn home(user: &User, api_url: Option<&str>) -> String {
    let mut main = heading("Home");
    let _ = writeln!(
        main,
        "<p>Welcome, {} {}.</p>",
        escape(&user.first_name),
        escape(&user.last_name)
    );
    main.push_str(
        "<button type=\"button\" id=\"meBtn\" class=\"btn btn-link\">My Info as JSON</button>\n\
         <pre id=\"info\" aria-live=\"polite\"></pre>\n\
         <form id=\"meForm\" method=\"get\" action=\"/admin/me\">\n\
         <button type=\"submit\" class=\"btn btn-primary\">My Info</button>\n</form>\n",
    );
    if let Some(url) = api_url {
        let _ = writeln!(
            main,
            "<p>API: <code>curl -H \"Authorization: Bearer $TOKEN\" {}</code></p>",
            escape(url)
        );
    }
    main.push_str(
        "<form id=\"logoutForm\" method=\"post\" action=\"/auth/logout\">\n\
         <button type=\"submit\" class=\"btn btn-primary\">Logout</button>\n</form>\n",
    );
    layout(HOME_TITLE, &main, Some(HOME_SCRIPT))
}

/// The user's details (never the password hash), one row per field.
pub fn me(user: &User) -> String {
    let mut main = heading("My Info");
    for (label, value) in [
        ("User name:", &user.username),
        ("First name:", &user.first_name),
        ("Last name:", &user.last_name),
    ] {
        let _ = writeln!(
            main,
            "<div class=\"row\"><div class=\"col-2\">{label}</div><div class=\"col-3\">{}</div></div>",
            escape(value)
        );
    }
    main.push_str("<p><a href=\"/auth/home\">Home</a></p>\n");
    layout(ME_TITLE, &main, None)
}

/// A page for an error a browser user can meet (throttled login, sessions unavailable).
pub fn error(heading_text: &str, message: &str) -> String {
    let main = format!(
        "{}<h4 role=\"alert\">{}</h4>\n<p><a href=\"/auth/login\">Back to login</a></p>\n",
        heading(heading_text),
        escape(message)
    );
    layout(heading_text, &main, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;y&#x27;"
        );
    }

    #[test]
    fn login_messages() {
        assert_eq!(
            login_message(Some(3)),
            Some("Incorrect username or password")
        );
        assert_eq!(login_message(Some(0)), None);
        assert!(login(login_message(Some(2)))
            .contains("<h4 role=\"alert\">Please log in to continue</h4>"));
    }

    #[test]
    fn the_original_structure_is_kept() {
        let user = crate::users::Users::demo().iter().next().unwrap().clone();
        let pages = [
            (login(Some("x")), &[
                "<h1 class=\"h3 mb-3 fw-normal\">Please login</h1>",
                "<h4 role=\"alert\">x</h4>",
                "<form id=\"loginForm\" method=\"post\" action=\"/auth/token\">",
                "name=\"username\"",
                "name=\"password\"",
            ][..]),
            (home(&user, None), &[
                "<h1 class=\"h3 mb-3 fw-normal\">Home</h1>",
                "<button type=\"button\" id=\"meBtn\" class=\"btn btn-link\">My Info as JSON</button>",
                "<form id=\"meForm\" method=\"get\" action=\"/admin/me\">\n<button type=\"submit\" class=\"btn btn-primary\">My Info</button>",
                "<form id=\"logoutForm\" method=\"post\" action=\"/auth/logout\">\n<button type=\"submit\" class=\"btn btn-primary\">Logout</button>",
            ]),
            (me(&user), &[
                "<h1 class=\"h3 mb-3 fw-normal\">My Info</h1>",
                "<div class=\"row\"><div class=\"col-2\">User name:</div><div class=\"col-3\">behai_nguyen@hotmail.com</div></div>",
                "<div class=\"row\"><div class=\"col-2\">First name:</div><div class=\"col-3\">Be Hai</div></div>",
                "<div class=\"row\"><div class=\"col-2\">Last name:</div><div class=\"col-3\">Doe</div></div>",
                "<a href=\"/auth/home\">",
            ]),
        ];
        for (page, needles) in pages {
            for needle in needles {
                assert!(page.contains(needle), "missing {needle:?} in {page}");
            }
        }
        // Every class the markup uses is styled here, and the JSON box wraps.
        for class in [
            ".h3",
            ".mb-3",
            ".fw-normal",
            ".btn-link",
            ".btn-primary",
            ".row",
            ".col-2",
            ".col-3",
        ] {
            assert!(STYLE.contains(&format!("{class}{{")), "{class}");
        }
        assert!(STYLE.contains("#info{") && STYLE.contains("white-space:pre-wrap"));
        assert!(!STYLE.contains("overflow:auto"));
    }

    #[test]
    fn csp_hash_matches_the_script() {
        let digest = Sha256::digest(HOME_SCRIPT.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest);
        assert!(CONTENT_SECURITY_POLICY.contains(&hash));
        assert!(home(
            &crate::users::Users::demo().iter().next().unwrap().clone(),
            None
        )
        .contains(&format!("<script>{HOME_SCRIPT}</script>")));
    }
}
