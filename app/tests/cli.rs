//! The `app` binary: start-up errors exit 64 with a clear message, `hash-password` prints a usable
//! hash, and a served process logs its address and stops cleanly on SIGTERM.

use std::io::{BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const APP: &str = env!("CARGO_BIN_EXE_app");

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("app-cli-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

/// Runs `app` with `args` and no inherited APP_* settings; returns (exit code, stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(APP)
        .args(args)
        .env_remove("APP_LISTEN")
        .env_remove("APP_USERS_FILE")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts `app` on port 0 and returns it, the address it logged, and the rest of its log lines.
fn spawn_serving() -> (
    std::process::Child,
    String,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    common::process::spawn_serving(APP, &[])
}

#[test]
fn bad_users_file_is_a_start_up_error_naming_line_and_field() {
    let path = temp_file(
        "bad-users",
        "# users\nbehai@example.com:Be Hai:Doe:not-a-hash\n",
    );
    let (code, stderr) = run(&["--users", path.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("line 2") && stderr.contains("argon2id_hash"),
        "{stderr}"
    );
    assert!(stderr.contains("APP_USERS_FILE"), "{stderr}");
}

#[test]
fn missing_users_file_is_a_start_up_error() {
    let (code, stderr) = run(&[
        "--users",
        "/nonexistent/users.txt",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("/nonexistent/users.txt"), "{stderr}");
}

#[test]
fn bad_listen_address_exits_64() {
    let (code, stderr) = run(&["--listen", "not-an-address"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("--listen") && stderr.contains("not-an-address"),
        "{stderr}"
    );
}

#[test]
fn help_exits_0() {
    let (code, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
}

#[test]
fn hash_password_output_loads_as_a_users_file() {
    let mut child = Command::new(APP)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("s3cret"));
    app::users::Users::parse(&format!("a@example.com:A:B:{hash}")).unwrap();

    let mut empty = Command::new(APP)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    empty.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert_eq!(empty.wait_with_output().unwrap().status.code(), Some(64));
}

#[test]
fn serves_logs_its_address_and_stops_on_sigterm() {
    let (mut child, addr, lines) = spawn_serving();
    // The server answers on the logged address.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET /api/me HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 401 "), "{response}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "app did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("SIGTERM")), "{rest:?}");
}

#[test]
fn healthcheck_reports_a_live_app_healthy_and_a_dead_one_unhealthy() {
    let (mut child, addr, _lines) = spawn_serving();
    let check = |addr: &str| {
        Command::new(APP)
            .args(["healthcheck", "--addr", addr, "--timeout-secs", "2"])
            .output()
            .unwrap()
    };
    let healthy = check(&addr);
    assert!(healthy.status.success(), "{healthy:?}");
    assert!(String::from_utf8_lossy(&healthy.stdout).contains("200"));

    child.kill().unwrap();
    child.wait().unwrap();
    let unhealthy = check(&addr);
    assert_eq!(unhealthy.status.code(), Some(1), "{unhealthy:?}");
    assert!(String::from_utf8_lossy(&unhealthy.stderr).contains("unhealthy"));
}

#[test]
fn a_start_up_error_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(APP)
        .args(["--listen", &addr])
        .env_remove("APP_USERS_FILE")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let all = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(all.matches("cannot bind").count(), 1, "{all}");
}

/// `--help` has the one-line-per-setting layout of `-h`, as the proxy's has.
#[test]
fn help_has_the_proxys_layout() {
    let help = |flag: &str| Command::new(APP).arg(flag).output().unwrap().stdout;
    assert_eq!(help("--help"), help("-h"));
}
