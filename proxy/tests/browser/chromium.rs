//! Headless Chromium for the browser test, driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`): no port to find, no sleeps. Every wait is for a DevTools message,
//! bounded by a named timeout, so a hung browser fails the test with the phase it hung in.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Time for Chromium to start and answer its first DevTools command. The limits are generous:
/// they only bound a failure, and a loaded CI machine is slow.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for one DevTools command, including an awaited page script (a whole fetch flow).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for a navigation (or a form submission) to reach the new page's load event.
pub const NAVIGATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for Chromium to exit after `Browser.close`.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// No background traffic, no first-run UI, no QUIC (the proxy speaks TCP).
/// `--disable-dev-shm-usage` because containers give /dev/shm 64 MiB, which Chromium outgrows.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--remote-debugging-pipe",
    // Tests talk to loopback only: every other host name fails to resolve, so nothing Chromium
    // does on its own can leave the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
    // Tall enough that a screenshot shows the demo page's results, not just its form.
    "--window-size=1000,1400",
];

/// A failure while driving the browser, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("DevTools pipe: {0}")]
    Pipe(#[from] std::io::Error),
    #[error("Chromium closed the DevTools pipe")]
    Closed,
    #[error("DevTools message is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("DevTools {method} failed: {error}")]
    Command { method: String, error: Value },
    #[error("DevTools {method} answered without {field}: {result}")]
    Missing {
        method: &'static str,
        field: &'static str,
        result: Value,
    },
    #[error("navigating to {url}: {error}")]
    Navigation { url: String, error: String },
    #[error("page script threw: {0}")]
    Script(String),
    #[error("screenshot: {0}")]
    Screenshot(String),
    #[error("timed out after {limit:?} in phase {phase}")]
    Timeout {
        phase: &'static str,
        limit: Duration,
    },
}

async fn within<T>(
    phase: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, BrowserError>>,
) -> Result<T, BrowserError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| BrowserError::Timeout { phase, limit })?
}

/// The Chromium binary: `$CHROMIUM` when set, else the first usual name found on `PATH`.
pub fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(path.into());
    }
    let dirs = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&dirs).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// One request as the browser's network stack saw it.
#[derive(Debug, Clone)]
pub struct Exchange {
    request_id: String,
    /// `OPTIONS` for the CORS preflights the browser sends on its own.
    pub method: String,
    pub url: String,
    /// The response status, when a response arrived.
    pub status: Option<u64>,
    /// Why the request failed, when it did (e.g. a CORS error).
    pub failure: Option<String>,
}

/// One tab in its own browser context, so each scenario starts with no cookies or cache.
pub struct Page {
    session: String,
}

/// A running Chromium and the DevTools connection to it.
pub struct Browser {
    child: Child,
    to_browser: ChildStdin,
    from_browser: BufReader<ChildStdout>,
    next_id: u64,
    /// Events read while waiting for a command's answer, kept for `wait_event`.
    events: VecDeque<Value>,
    /// Console messages and browser log entries, per session: the only place a page can see why
    /// the browser refused a cross-origin answer.
    console: Vec<(String, String)>,
    /// Every request the pages made, preflights included, per session.
    network: Vec<(String, Exchange)>,
    /// Chromium's stderr.
    log: PathBuf,
}

impl Browser {
    /// Starts Chromium with a fresh profile in `profile`, trusting certificates whose SPKI sha256
    /// (base64) is in `spki_pins` (no certificate flag at all when empty), with `HOME` set to
    /// `home` when given (Chromium on Linux reads the user's CAs from `$HOME/.pki/nssdb`), writing
    /// its stderr to `log`, and waits until DevTools answers.
    pub async fn launch(
        binary: &Path,
        spki_pins: &[String],
        home: Option<&Path>,
        profile: &Path,
        log: &Path,
    ) -> Result<Self, BrowserError> {
        std::fs::create_dir_all(profile)?;
        let log_path = log.to_owned();
        let log = std::fs::File::create(log)?;
        // DevTools reads commands on fd 3 and writes answers on fd 4. std maps no extra fds
        // without `unsafe` pre_exec, so a shell moves our stdin/stdout pipes there.
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(r#"exec "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg("sh")
            .arg(binary)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()));
        if !spki_pins.is_empty() {
            command.arg(format!(
                "--ignore-certificate-errors-spki-list={}",
                spki_pins.join(",")
            ));
        }
        if let Some(home) = home {
            command.env("HOME", home);
        }
        command
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| BrowserError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
        let to_browser = child.stdin.take().ok_or(BrowserError::Closed)?;
        let from_browser = BufReader::new(child.stdout.take().ok_or(BrowserError::Closed)?);
        let mut browser = Browser {
            child,
            to_browser,
            from_browser,
            next_id: 1,
            events: VecDeque::new(),
            console: Vec::new(),
            network: Vec::new(),
            log: log_path,
        };
        within(
            "launch",
            LAUNCH_TIMEOUT,
            browser.send(None, "Browser.getVersion", json!({})),
        )
        .await?;
        Ok(browser)
    }

    /// Chromium's own log (its stderr), for failure messages.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Opens a tab in a new browser context and subscribes to its page, runtime and log events.
    pub async fn new_page(&mut self) -> Result<Page, BrowserError> {
        let context = self
            .call(None, "Target.createBrowserContext", json!({}))
            .await?;
        let context = field(context, "Target.createBrowserContext", "browserContextId")?;
        let target = self
            .call(
                None,
                "Target.createTarget",
                json!({ "url": "about:blank", "browserContextId": context }),
            )
            .await?;
        let target = field(target, "Target.createTarget", "targetId")?;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await?;
        let session = field(attached, "Target.attachToTarget", "sessionId")?;
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
            "Network.enable",
        ] {
            self.call(Some(&session), domain, json!({})).await?;
        }
        Ok(Page { session })
    }

    /// Loads `url` in `page` and waits for its load event.
    pub async fn navigate(&mut self, page: &Page, url: &str) -> Result<(), BrowserError> {
        self.forget_events(&page.session);
        let answer = self
            .call(Some(&page.session), "Page.navigate", json!({ "url": url }))
            .await?;
        if let Some(error) = answer.get("errorText").and_then(Value::as_str) {
            return Err(BrowserError::Navigation {
                url: url.to_owned(),
                error: error.to_owned(),
            });
        }
        let loader = answer["loaderId"].as_str().map(str::to_owned);
        self.wait_loaded(page, loader.as_deref()).await
    }

    /// Runs `expression` in the page, awaits it if it is a promise, and returns its JSON value.
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Result<Value, BrowserError> {
        let answer = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .await?;
        if let Some(details) = answer.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("unknown exception");
            return Err(BrowserError::Script(text.to_owned()));
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Runs `expression` (which navigates, e.g. submits a form) and waits until the page it
    /// leads to (after any redirects) has loaded.
    pub async fn eval_and_wait_load(
        &mut self,
        page: &Page,
        expression: &str,
    ) -> Result<(), BrowserError> {
        self.forget_events(&page.session);
        self.eval(page, expression).await?;
        self.wait_loaded(page, None).await
    }

    /// Waits for the main frame to commit a new document (from `loader` when known) and then for
    /// that document's load event. Events arrive in order, so the first load event after the
    /// commit belongs to the new document.
    async fn wait_loaded(&mut self, page: &Page, loader: Option<&str>) -> Result<(), BrowserError> {
        self.wait_event(&page.session, |event| {
            let frame = &event["params"]["frame"];
            event["method"] == "Page.frameNavigated"
                && frame.get("parentId").is_none()
                && loader.is_none_or(|id| frame["loaderId"] == id)
        })
        .await?;
        self.wait_event(&page.session, |event| {
            event["method"] == "Page.loadEventFired"
        })
        .await
    }

    /// Saves a PNG of what `page` shows.
    pub async fn screenshot(&mut self, page: &Page, path: &Path) -> Result<(), BrowserError> {
        let shot = self
            .call(
                Some(&page.session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await?;
        let data = shot["data"]
            .as_str()
            .ok_or_else(|| BrowserError::Screenshot("no data".into()))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| BrowserError::Screenshot(e.to_string()))?;
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Console messages and browser log entries of `page` so far.
    pub fn console(&self, page: &Page) -> Vec<String> {
        self.console
            .iter()
            .filter(|(session, _)| *session == page.session)
            .map(|(_, text)| text.clone())
            .collect()
    }

    /// The requests `page` made so far, in order.
    pub fn network(&self, page: &Page) -> Vec<Exchange> {
        self.network
            .iter()
            .filter(|(session, _)| *session == page.session)
            .map(|(_, exchange)| exchange.clone())
            .collect()
    }

    /// Reads events until `done` holds for what the pages have logged and requested so far; fails
    /// after `STEP_TIMEOUT`, naming `phase`. For what arrives from the browser's network stack,
    /// which is not ordered with a page script's result.
    pub async fn wait_until(
        &mut self,
        phase: &'static str,
        done: impl Fn(&Browser) -> bool,
    ) -> Result<(), BrowserError> {
        within(phase, STEP_TIMEOUT, async {
            while !done(self) {
                let event = self.read().await?;
                self.keep(event);
            }
            Ok(())
        })
        .await
    }

    /// Asks Chromium to exit and waits for it; kills it if it does not.
    pub async fn close(mut self) {
        let closed = within(
            "close",
            CLOSE_TIMEOUT,
            self.send(None, "Browser.close", json!({})),
        )
        .await;
        let exited = tokio::time::timeout(CLOSE_TIMEOUT, self.child.wait()).await;
        if closed.is_err() || exited.is_err() {
            let _ = self.child.kill().await;
        }
    }

    async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, BrowserError> {
        within(
            "devtools command",
            STEP_TIMEOUT,
            self.send(session, method, params),
        )
        .await
    }

    async fn send(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, BrowserError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.to_browser.write_all(&bytes).await?;
        self.to_browser.flush().await?;
        loop {
            let mut message = self.read().await?;
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    return Err(BrowserError::Command {
                        method: method.to_owned(),
                        error: error.clone(),
                    });
                }
                return Ok(message["result"].take());
            }
            self.keep(message);
        }
    }

    /// Waits for an event of `session` matching `wanted`; it and the session's older events are
    /// consumed, so a later wait only sees what came after.
    async fn wait_event(
        &mut self,
        session: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<(), BrowserError> {
        let ours = |event: &Value| event["sessionId"].as_str() == Some(session);
        if let Some(at) = self.events.iter().position(|e| ours(e) && wanted(e)) {
            let mut index = 0;
            self.events.retain(|e| {
                index += 1;
                index > at + 1 || !ours(e)
            });
            return Ok(());
        }
        self.forget_events(session);
        within("page load", NAVIGATION_TIMEOUT, async {
            loop {
                let event = self.read().await?;
                if ours(&event) && wanted(&event) {
                    // Whatever of ours was queued meanwhile is older than the match.
                    self.forget_events(session);
                    return Ok(());
                }
                self.keep(event);
            }
        })
        .await
    }

    /// Drops the queued events of `session`: a wait after this sees only newer ones.
    fn forget_events(&mut self, session: &str) {
        self.events
            .retain(|event| event["sessionId"].as_str() != Some(session));
    }

    /// Files an event: console text and network traffic aside, the rest for `wait_event`.
    fn keep(&mut self, event: Value) {
        let session = event["sessionId"].as_str().unwrap_or_default().to_owned();
        let params = &event["params"];
        let request_id = params["requestId"].as_str().unwrap_or_default();
        match event["method"].as_str() {
            Some("Network.requestWillBeSent") => {
                let exchange = Exchange {
                    request_id: request_id.to_owned(),
                    method: params["request"]["method"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    url: params["request"]["url"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    status: None,
                    failure: None,
                };
                self.network.push((session, exchange));
                return;
            }
            Some("Network.responseReceived") => {
                if let Some(exchange) = exchange_mut(&mut self.network, &session, request_id) {
                    exchange.status = params["response"]["status"].as_u64();
                }
                return;
            }
            Some("Network.loadingFailed") => {
                if let Some(exchange) = exchange_mut(&mut self.network, &session, request_id) {
                    let cors = params["corsErrorStatus"]["corsError"].as_str();
                    let error = params["errorText"].as_str().unwrap_or_default();
                    exchange.failure = Some(match cors {
                        Some(cors) => format!("{error} (CORS: {cors})"),
                        None => error.to_owned(),
                    });
                }
                return;
            }
            Some(method) if method.starts_with("Network.") => return,
            _ => {}
        }
        let text = match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") => Some(
                params["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|arg| match &arg["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => arg["description"].as_str().unwrap_or("").to_owned(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Some("Runtime.exceptionThrown") => params["exceptionDetails"]["exception"]
                ["description"]
                .as_str()
                .map(str::to_owned),
            Some("Log.entryAdded") => params["entry"]["text"].as_str().map(str::to_owned),
            _ => None,
        };
        match text {
            Some(text) => self.console.push((session, text)),
            None => self.events.push_back(event),
        }
    }

    async fn read(&mut self) -> Result<Value, BrowserError> {
        let mut buf = Vec::new();
        if self.from_browser.read_until(0, &mut buf).await? == 0 {
            return Err(BrowserError::Closed);
        }
        buf.pop();
        Ok(serde_json::from_slice(&buf)?)
    }
}

fn field(
    mut result: Value,
    method: &'static str,
    name: &'static str,
) -> Result<String, BrowserError> {
    match result[name].take() {
        Value::String(s) => Ok(s),
        _ => Err(BrowserError::Missing {
            method,
            field: name,
            result,
        }),
    }
}

/// The latest exchange of `session` with DevTools request id `id`.
fn exchange_mut<'a>(
    network: &'a mut [(String, Exchange)],
    session: &str,
    id: &str,
) -> Option<&'a mut Exchange> {
    network
        .iter_mut()
        .rev()
        .find(|(s, e)| s == session && e.request_id == id)
        .map(|(_, e)| e)
}
