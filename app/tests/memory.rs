//! The app's memory after a login flood: password checks run on a fixed number of threads that
//! reuse their argon2 buffers, so the resident size stays bounded by the workers' buffers instead of
//! growing with the flood (it once reached hundreds of MB and never came back).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const APP: &str = env!("CARGO_BIN_EXE_app");
/// Logins in the flood, and how many are in flight at once.
const LOGINS: usize = 96;
const CONCURRENCY: usize = 16;
/// Two workers, each with one 19 MiB argon2 buffer, plus the runtime, sessions and sockets.
const HASH_WORKERS: &str = "2";
const RSS_BOUND_KB: u64 = 64 * 1024;
const FLOOD_DEADLINE: Duration = Duration::from_secs(120);

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn login(addr: &str) -> String {
    let body = "username=behai_nguyen%40hotmail.com&password=password";
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(FLOOD_DEADLINE)).unwrap();
    write!(
        stream,
        "POST /api/login HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\
         content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn rss_after_a_login_flood_stays_bounded() {
    let (mut child, addr, lines) =
        common::process::spawn_serving(APP, &["--hash-workers", HASH_WORKERS]);
    // Drain the log so the app never blocks writing it.
    std::thread::spawn(move || lines.for_each(drop));
    let idle = rss_kb(child.id());

    let started = Instant::now();
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                (0..LOGINS / CONCURRENCY)
                    .map(|_| login(&addr))
                    .filter(|r| r.starts_with("HTTP/1.1 200 "))
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let flood = started.elapsed();
    let after = rss_kb(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    println!("idle RSS {idle} kB, after {LOGINS} logins in {flood:?}: {after} kB");
    assert_eq!(ok, LOGINS, "every login succeeded");
    assert!(
        after < RSS_BOUND_KB,
        "RSS {after} kB after the flood (idle {idle} kB)"
    );
}
