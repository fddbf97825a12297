//! The `proxy` binary as a process: start-up errors exit 64 naming the setting or file (also a
//! certificate file without a certificate and a key that does not match); a running proxy
//! reads `.env`, serves HTTPS and the plain-HTTP redirect (naming the published HTTPS port when
//! told it), reloads its certificate on SIGHUP and exits 0 after SIGTERM.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{collect, get, h1, h2, TestPki, TestUpstream};
use http::StatusCode;
use http_body_util::Empty;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_proxy");

/// Runs the binary to completion with a clean environment, in `dir`.
fn run_to_exit(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run proxy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn start_up_errors_exit_64_and_name_the_setting() {
    let pki = TestPki::new();
    let dir = common::TempDir::new("startup");
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = occupied.local_addr().unwrap().to_string();
    let cert = pki.cert_path.to_str().unwrap();
    let key = pki.key_path.to_str().unwrap();
    // (flags, environment, text the error must contain)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--env-file", "missing.env"], &[], "missing.env"),
        (
            &[],
            &[("PROXY_ENV_FILE", "also-missing.env")],
            "also-missing.env",
        ),
        (&["--upstream", "https://app:8000"], &[], "PROXY_UPSTREAM"),
        (&[], &[("PROXY_LISTEN", "nonsense")], "PROXY_LISTEN"),
        (
            &["--upstream-response-timeout", "soon"],
            &[],
            "PROXY_UPSTREAM_RESPONSE_TIMEOUT",
        ),
        (&["--max-connections", "many"], &[], "--max-connections"),
        (
            &[],
            &[("PROXY_REDIRECT_HTTPS_PORT", "443")],
            "PROXY_REDIRECT_HTTP (--redirect-http) is not set",
        ),
        (&["--no-such-flag"], &[], "--no-such-flag"),
        (&["--tls-cert", "nope/cert.pem"], &[], "nope/cert.pem"),
        (
            &["--tls-cert", cert, "--tls-key", key, "--listen", &busy],
            &[],
            &busy,
        ),
    ];
    for (args, env, needle) in cases {
        let (code, output) = run_to_exit(dir.path(), args, env);
        assert_eq!(code, 64, "{args:?} {env:?}: {output}");
        assert!(
            output.contains(needle),
            "{args:?} {env:?}: {needle} not in {output}"
        );
    }
    let (code, output) = run_to_exit(dir.path(), &["--help"], &[]);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("PROXY_UPSTREAM"), "{output}");
}

/// A bad certificate/key pair: the binary exits 64 before serving, naming the file at fault.
/// Run with a deadline, so a proxy that wrongly starts serving fails the test instead of hanging it.
#[tokio::test]
async fn unusable_tls_pair_exits_64_and_names_the_file() {
    let pki = TestPki::new();
    let dir = common::TempDir::new("bad-pair");
    let cert = pki.cert_path.to_str().unwrap();
    let key = pki.key_path.to_str().unwrap();
    // A PEM file holding only a key, given as the certificate (the classic swap).
    let key_as_cert = dir.join("key-as-cert.pem");
    std::fs::copy(&pki.key_path, &key_as_cert).unwrap();
    // A text file with no PEM block at all.
    let no_pem = dir.join("empty-cert.pem");
    std::fs::write(&no_pem, "this is not a certificate\n").unwrap();
    // A valid key of the right type, but not the certificate's.
    let other_key = dir.join("other-key.pem");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let key_as_cert = key_as_cert.to_str().unwrap();
    let no_pem = no_pem.to_str().unwrap();
    let other_key = other_key.to_str().unwrap();
    // (certificate file, key file, the file the message must name, text it must also contain)
    let cases = [
        (key_as_cert, key, key_as_cert, "no PEM certificate"),
        (no_pem, key, no_pem, "no PEM certificate"),
        (cert, other_key, other_key, "does not match"),
    ];
    for (cert, key, named, problem) in cases {
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ];
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(BIN)
                .args(args)
                .env_clear()
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{args:?}: the proxy started instead of refusing the pair"))
        .expect("run proxy");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.code(), Some(64), "{args:?}: {text}");
        assert!(text.contains(named), "{args:?}: {named} not in {text}");
        assert!(
            text.contains(problem),
            "{args:?}: {problem:?} not in {text}"
        );
    }
}

/// A running `proxy` process and the address it reported.
struct Running {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    /// The plain-HTTP redirect listener's address.
    redirect: std::net::SocketAddr,
    /// The log lines written before both listeners were up.
    startup: Vec<serde_json::Value>,
    /// The log lines written since.
    log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Running {
    /// The next access-log line, as JSON fields.
    async fn next_access_line(&mut self) -> serde_json::Value {
        let wait = async {
            while let Some(line) = self.log.recv().await {
                let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if json["target"] == "access" {
                    return json["fields"].clone();
                }
            }
            panic!("the proxy exited before logging the request");
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("an access-log line")
    }

    /// The start-up log line with this message.
    fn startup_line(&self, message: &str) -> Option<&serde_json::Value> {
        self.startup
            .iter()
            .find(|line| line["fields"]["message"] == message)
    }
}

async fn spawn_proxy(dir: &Path, env: &[(&str, &str)]) -> Running {
    let mut child = tokio::process::Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .env("LOG_FORMAT", "json")
        .env("PROXY_LISTEN", "127.0.0.1:0")
        .env("PROXY_REDIRECT_HTTP", "127.0.0.1:0")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn proxy");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (addr, redirect, startup) = tokio::time::timeout(Duration::from_secs(30), async {
        let (mut https, mut http) = (None, None);
        let mut startup = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            startup.push(json.clone());
            let addr = || json["fields"]["addr"].as_str().unwrap().parse().unwrap();
            if json["fields"]["message"] == "listening (https)" {
                https = Some(addr());
            } else if json["fields"]["message"] == "listening (http redirect)" {
                http = Some(addr());
            }
            if let (Some(https), Some(http)) = (https, http) {
                return (https, http, startup);
            }
        }
        panic!("the proxy exited before listening");
    })
    .await
    .expect("the proxy reports its addresses");
    // Keep draining stdout so the proxy never blocks on a full pipe; the lines go to `log`.
    let (tx, log) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    Running {
        child,
        addr,
        redirect,
        startup,
        log,
    }
}

fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = Command::new("kill")
        .args([name, &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

async fn served_certificate(pki: &TestPki, addr: std::net::SocketAddr) -> Vec<u8> {
    let tls = common::tls_connect(pki, addr, &[b"http/1.1"])
        .await
        .expect("TLS");
    tls.get_ref().1.peer_certificates().expect("certificate")[0].to_vec()
}

/// The `Location` the plain-HTTP listener at `addr` answers for `path` (with a 308).
async fn redirect_location(addr: std::net::SocketAddr, path: &str) -> String {
    let mut plain = common::plain_h1(addr).await;
    let (status, headers, _) = collect(plain.send_request(get(path)).await.unwrap()).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    headers["location"].to_str().unwrap().to_owned()
}

/// HTTPS published under another port than the proxy's own (443 → 8443 in a container): the
/// redirect names the published one, and 443 not at all.
#[tokio::test]
async fn redirect_names_the_published_https_port() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let dir = common::TempDir::new("redirect-port");
    let upstream_url = format!("http://{}", upstream.addr);
    for (port, expected) in [
        ("443", "https://localhost/a?b"),
        ("9443", "https://localhost:9443/a?b"),
    ] {
        let running = spawn_proxy(
            dir.path(),
            &[
                ("PROXY_UPSTREAM", upstream_url.as_str()),
                ("TLS_CERT_FILE", pki.cert_path.to_str().unwrap()),
                ("TLS_KEY_FILE", pki.key_path.to_str().unwrap()),
                ("PROXY_REDIRECT_HTTPS_PORT", port),
            ],
        )
        .await;
        assert_eq!(redirect_location(running.redirect, "/a?b").await, expected);
    }
}

#[tokio::test]
async fn process_reads_env_file_reloads_on_sighup_and_exits_cleanly_on_sigterm() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let dir = common::TempDir::new("process");
    // The original app's `.env` keys sit beside ours; unknown ones (REDIS_URL) are ignored.
    std::fs::write(
        dir.join(".env"),
        format!(
            "PROXY_UPSTREAM=http://{}\nTLS_CERT_FILE={}\nTLS_KEY_FILE={}\nREDIS_URL=redis://localhost\nALLOW_ORIGINS=http://localhost\n",
            upstream.addr,
            pki.cert_path.display(),
            pki.key_path.display()
        ),
    )
    .unwrap();
    // Only SIGHUP may reload here: the file watcher is slowed down out of the way.
    let mut running = spawn_proxy(dir.path(), &[("PROXY_CERT_WATCH_INTERVAL", "1h")]).await;

    let mut client = h1::<Empty<Bytes>>(&pki, running.addr).await;
    let (status, _, body) = collect(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    let before = served_certificate(&pki, running.addr).await;

    // The plain listener redirects to the https port.
    assert_eq!(
        redirect_location(running.redirect, "/a?b").await,
        format!("https://localhost:{}/a?b", running.addr.port())
    );

    let rotated = pki.write_server_pair("rotated");
    assert_ne!(before, rotated);
    signal(&running.child, "-HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if served_certificate(&pki, running.addr).await == rotated {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::task::yield_now().await;
    }
    // The connection opened before the reload still works.
    let (status, _, _) = collect(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);

    signal(&running.child, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), running.child.wait())
        .await
        .expect("the proxy exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn start_up_log_names_the_env_file_the_sources_and_misspelt_keys() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let dir = common::TempDir::new("provenance");
    std::fs::write(
        dir.join(".env"),
        format!(
            "# the original app's keys beside ours\nSQLALCHEMY_DATABASE_URL = \"sqlite:///./sql_app.db\"\n\
             REDIS_URL = \"redis://localhost:6379\"\nPROXY_UPSTREAM=http://{}\nTLS_CERT_FILE={}\n\
             TLS_KEY_FILE={}\nALLOW_CREDENTAILS=true\nallow_origins=http://localhost\n",
            upstream.addr,
            pki.cert_path.display(),
            pki.key_path.display()
        ),
    )
    .unwrap();
    let running = spawn_proxy(dir.path(), &[("MAX_AGE", "60")]).await;
    let warnings: Vec<&str> = running
        .startup
        .iter()
        .filter(|line| line["fields"]["message"] == "env file")
        .filter_map(|line| line["fields"]["warning"].as_str())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains(
            "ALLOW_CREDENTAILS is not a setting and is ignored; did you mean ALLOW_CREDENTIALS?"
        ),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("did you mean ALLOW_ORIGINS?"),
        "{warnings:?}"
    );
    let read = running
        .startup_line("settings read (the others have their defaults)")
        .expect("the settings' sources are logged");
    let fields = &read["fields"];
    assert!(
        fields["env_file"].as_str().unwrap().ends_with(".env"),
        "{fields}"
    );
    let list = |name: &str| -> Vec<String> {
        let value = fields[name].as_str().unwrap_or_default();
        value
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    assert_eq!(
        list("from_env_file"),
        ["PROXY_UPSTREAM", "TLS_CERT_FILE", "TLS_KEY_FILE"]
    );
    let from_env = list("from_environment");
    for name in [
        "MAX_AGE",
        "PROXY_LISTEN",
        "LOG_FORMAT",
        "PROXY_REDIRECT_HTTP",
    ] {
        assert!(from_env.iter().any(|n| n == name), "{name}: {from_env:?}");
    }
    assert!(list("from_flags").is_empty(), "{fields}");
}

#[tokio::test]
async fn access_log_lines_carry_the_connection_and_round_durations() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let dir = common::TempDir::new("access-log");
    let upstream_url = format!("http://{}", upstream.addr);
    let (cert, key) = (
        pki.cert_path.display().to_string(),
        pki.key_path.display().to_string(),
    );
    let mut running = spawn_proxy(
        dir.path(),
        &[
            ("PROXY_UPSTREAM", upstream_url.as_str()),
            ("TLS_CERT_FILE", cert.as_str()),
            ("TLS_KEY_FILE", key.as_str()),
        ],
    )
    .await;
    let mut http1 = h1::<Empty<Bytes>>(&pki, running.addr).await;
    let (status, _, _) = collect(http1.send_request(get("/one")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let one = running.next_access_line().await;
    let mut http2 = h2::<Empty<Bytes>>(&pki, running.addr).await;
    let (status, _, _) = collect(http2.send_request(get("/two")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let two = running.next_access_line().await;
    for (line, path, protocol) in [(&one, "/one", "http/1.1"), (&two, "/two", "h2")] {
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["protocol"], protocol, "{line}");
        assert_eq!(line["tls"], "TLSv1_3", "{line}");
        assert!(
            line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
        for field in ["upstream_ms", "total_ms"] {
            let text = line[field].to_string();
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 3, "{field}={text}");
        }
    }
}

#[test]
fn help_and_version_work_everywhere() {
    let dir = common::TempDir::new("help");
    let help = |flag: &str| run_to_exit(dir.path(), &[flag], &[]);
    // One layout for `-h` and `--help`, like the app's.
    assert_eq!(help("--help"), help("-h"));
    for args in [
        &["--version"][..],
        &["cert", "--version"],
        &["healthcheck", "--version"],
    ] {
        let (code, out) = run_to_exit(dir.path(), args, &[]);
        assert_eq!(code, 0, "{args:?}: {out}");
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{args:?}: {out}");
    }
}
