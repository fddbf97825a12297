//! `proxy cert --trust` as a browser sees it, with a temporary HOME: after it, headless Chromium
//! (HOME pointed there, so it reads that NSS database; no certificate flag, no pin) loads
//! `https://localhost:PORT/` from the proxy serving a certificate from the local CA; after
//! `--untrust` the same load fails with a certificate error. The NSS part is real (`certutil`);
//! the system store is a temporary directory and its update command `/bin/true`, so the test
//! never changes the machine's store.
//!
//! Needs `certutil` (libnss3-tools) and Chromium: without them it says so and passes, except under
//! `CI=true`, where it fails.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::chromium::{Browser, BrowserError, Page};
use super::common::{proxy_argv_files, TempDir, TestUpstream};

const BIN: &str = env!("CARGO_BIN_EXE_proxy");
const CA_NAME: &str = proxy::cmd::localca::CA_NAME;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_local_ca_makes_chromium_load_the_page_and_untrust_undoes_it() {
    let Some(certutil) = certutil_or_skip() else {
        return;
    };
    let dir = TempDir::new("trust");
    let home = dir.join("home");
    let system = dir.join("system");
    std::fs::create_dir_all(&home).expect("temporary HOME");
    std::fs::create_dir_all(&system).expect("temporary system store");
    let nssdb = home.join(".pki/nssdb");
    let ca_pem = home.join(".local/share/proxy/ca.pem");
    let run = |args: &[&str]| run_proxy(args, &home, &system, dir.path());

    let trusted = run(&["cert", "--trust"]);
    assert!(trusted.contains("local CA (made now)"), "{trusted}");
    assert!(
        trusted.contains(&format!("changed    NSS database {}", nssdb.display())),
        "{trusted}"
    );
    assert!(trusted.contains("created the database"), "{trusted}");
    assert!(trusted.contains("changed    system store"), "{trusted}");
    assert_eq!(
        std::fs::read(system.join("proxy-dev-ca.crt")).expect("installed in the system store"),
        std::fs::read(&ca_pem).expect("the CA")
    );
    assert!(nss_lists_ca(&certutil, &nssdb), "{trusted}");
    let again = run(&["cert", "--trust"]);
    assert_eq!(again.matches("unchanged").count(), 2, "{again}");

    // The proxy serves a certificate issued from that CA.
    let leaf = dir.join("leaf");
    run(&["cert", "--out-dir", leaf.to_str().expect("UTF-8 path")]);
    let upstream = TestUpstream::start().await;
    let (addr, _stop) = start_proxy(&leaf, &upstream.url).await;
    let url = format!("https://localhost:{}/", addr.port());

    let chromium = super::chromium_or_skip();
    if let Some(binary) = &chromium {
        let (browser, tab) = open(binary, &home, &dir, "trusted").await;
        let loaded = load(browser, &tab, &url).await;
        assert_eq!(loaded.as_deref(), Ok("hello"), "with the CA trusted");
    }

    let untrusted = run(&["cert", "--untrust"]);
    assert!(
        untrusted.contains(&format!(
            "changed    NSS database {}: removed",
            nssdb.display()
        )),
        "{untrusted}"
    );
    assert!(!system.join("proxy-dev-ca.crt").exists(), "{untrusted}");
    assert!(!nss_lists_ca(&certutil, &nssdb), "{untrusted}");

    if let Some(binary) = &chromium {
        let (browser, tab) = open(binary, &home, &dir, "untrusted").await;
        let loaded = load(browser, &tab, &url).await;
        let error = loaded.expect_err("the load must fail once the CA is untrusted");
        assert!(error.contains("ERR_CERT_AUTHORITY_INVALID"), "{error}");
    }
}

/// Runs the proxy binary with only `HOME`, `PATH` and the system-store targets set; returns its
/// output, failing the test if it failed.
fn run_proxy(args: &[&str], home: &Path, system: &Path, cwd: &Path) -> String {
    let output = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PROXY_TRUST_SYSTEM_DIR", system)
        .env("PROXY_TRUST_SYSTEM_UPDATE", "/bin/true")
        .current_dir(cwd)
        .output()
        .expect("run proxy");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {text}");
    text
}

fn nss_lists_ca(certutil: &Path, db: &Path) -> bool {
    let output = Command::new(certutil)
        .args(["-L", "-d"])
        .arg(format!("sql:{}", db.display()))
        .output()
        .expect("certutil -L");
    String::from_utf8_lossy(&output.stdout).contains(CA_NAME)
}

/// Starts the proxy in-process with the pair in `leaf`; it stops when the sender is dropped.
async fn start_proxy(leaf: &Path, upstream: &str) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let argv = proxy_argv_files(&leaf.join("cert.pem"), &leaf.join("key.pem"), upstream, &[]);
    let cli = proxy::cli::parse(&argv, &HashMap::new()).expect("proxy configuration");
    let assembled = proxy::build(&cli).expect("proxy assembles");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("proxy address");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(assembled.serve(listener, None, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Chromium with `HOME` = `home` and no certificate flags, and a tab.
async fn open(binary: &Path, home: &Path, dir: &TempDir, name: &str) -> (Browser, Page) {
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-trust-{name}.log"));
    let mut browser = Browser::launch(
        binary,
        &[],
        Some(home),
        &dir.join(format!("profile-{name}")),
        &log,
    )
    .await
    .expect("start Chromium");
    let tab = browser.new_page().await.expect("open a tab");
    (browser, tab)
}

/// Loads `url` and returns the page's text, or the navigation error; closes the browser.
async fn load(mut browser: Browser, tab: &Page, url: &str) -> Result<String, String> {
    let result = match browser.navigate(tab, url).await {
        Ok(()) => browser
            .eval(tab, "document.body.innerText")
            .await
            .map(|text| text.as_str().unwrap_or_default().trim().to_owned())
            .map_err(|e| e.to_string()),
        Err(BrowserError::Navigation { error, .. }) => Err(error),
        Err(e) => panic!(
            "driving Chromium: {e} (log: {})",
            browser.log_path().display()
        ),
    };
    browser.close().await;
    result
}

/// `certutil`, or `None` (with a message) when it is missing, except under `CI=true`.
fn certutil_or_skip() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("certutil"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_some() {
        return found;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("certutil not found but CI=true: install it (apt-get install -y libnss3-tools)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED trust test: certutil not found (apt-get install -y libnss3-tools)"
    );
    None
}
