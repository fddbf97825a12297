//! Running the built `app` binary as a process: start it on port 0 and read the address it logs.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

/// Starts `app` (the binary at `path`) on port 0 with `args`, without inherited store or users
/// settings; returns it, the address it logged, and the rest of its log lines.
pub fn spawn_serving(path: &str, args: &[&str]) -> (Child, String, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(path)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("APP_USERS_FILE")
        .env_remove("APP_SESSIONS")
        .env_remove("REDIS_URL")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("log line before exit").unwrap();
        if let Some(rest) = line
            .split("addr=")
            .nth(1)
            .filter(|_| line.contains("listening"))
        {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    (child, addr, lines)
}
