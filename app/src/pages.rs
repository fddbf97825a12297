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

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.4rem}form{margin:1rem 0}label{display:block;margin:.5rem 0}\
input{padding:.4rem;width:100%;box-sizing:border-box}button{padding:.4rem 1rem;margin:.2rem .4rem .2rem 0}\
.message{padding:.5rem;background:#fff3cd;border:1px solid #e0c060}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem}dt{font-weight:bold}\
pre,#info{background:#f4f4f4;padding:.5rem;overflow:auto;min-height:1rem}code{word-break:break-all}";

/// The home page's script: the two buttons fetch `/admin/me` from the same origin (the session
/// cookie goes along) and show the answer; HTML answers are parsed, never run.
const HOME_SCRIPT: &str = r#"
const info = document.getElementById("info");
async function myInfo(asJson) {
  const headers = asJson ? { "x-expected-format": "application/json" } : {};
  const response = await fetch("/admin/me", { credentials: "same-origin", headers });
  const text = await response.text();
  if (asJson) {
    const pre = document.createElement("pre");
    pre.textContent = text;
    info.replaceChildren(pre);
  } else {
    const page = new DOMParser().parseFromString(text, "text/html");
    const main = page.querySelector("main");
    info.replaceChildren(main ? document.importNode(main, true) : document.createTextNode(text));
  }
}
document.getElementById("my-info").addEventListener("click", () => myInfo(false));
document.getElementById("my-info-json").addEventListener("click", () => myInfo(true));
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

/// The login form, posting `username` and `password` to `/auth/token`.
pub fn login(message: Option<&str>) -> String {
    let mut main = format!("<h1>{}</h1>\n", escape(LOGIN_TITLE));
    if let Some(message) = message {
        let _ = writeln!(
            main,
            "<p class=\"message\" role=\"alert\">{}</p>",
            escape(message)
        );
    }
    main.push_str(
        "<form method=\"post\" action=\"/auth/token\">\n\
         <label>Email <input type=\"text\" inputmode=\"email\" name=\"username\" autocomplete=\"username\" required></label>\n\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\n\
         <button type=\"submit\">Login</button>\n</form>\n",
    );
    layout(LOGIN_TITLE, &main, None)
}

/// The home page of a logged-in user; `api_url` is the absolute `/api/me` URL on the outside origin.
pub fn home(user: &User, api_url: Option<&str>) -> String {
    let mut main = format!("<h1>{}</h1>\n", escape(HOME_TITLE));
    let _ = writeln!(
        main,
        "<p>Welcome, {} {}.</p>",
        escape(&user.first_name),
        escape(&user.last_name)
    );
    main.push_str(
        "<p><button type=\"button\" id=\"my-info\">My Info</button>\
         <button type=\"button\" id=\"my-info-json\">My Info as JSON</button></p>\n\
         <div id=\"info\" aria-live=\"polite\"></div>\n",
    );
    if let Some(url) = api_url {
        let _ = writeln!(
            main,
            "<p>API: <code>curl -H \"Authorization: Bearer $TOKEN\" {}</code></p>",
            escape(url)
        );
    }
    main.push_str(
        "<form method=\"post\" action=\"/auth/logout\">\n\
         <button type=\"submit\">Logout</button>\n</form>\n",
    );
    layout(HOME_TITLE, &main, Some(HOME_SCRIPT))
}

/// The user's details (never the password hash).
pub fn me(user: &User) -> String {
    let main = format!(
        "<h1>{}</h1>\n<dl>\n<dt>Username</dt><dd>{}</dd>\n<dt>First name</dt><dd>{}</dd>\n\
         <dt>Last name</dt><dd>{}</dd>\n</dl>\n<p><a href=\"/auth/home\">Home</a></p>\n",
        escape(ME_TITLE),
        escape(&user.username),
        escape(&user.first_name),
        escape(&user.last_name)
    );
    layout(ME_TITLE, &main, None)
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
        assert!(login(login_message(Some(2))).contains("Please log in to continue"));
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
