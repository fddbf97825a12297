//! A real, throwaway `redis-server` (Debian's) on a free loopback port, for the Redis store tests.
//! Missing `redis-server`: the test is skipped with a message, except with `CI=true`, where the CI
//! script has installed it and its absence is a failure.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started redis-server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A running redis-server, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts one on a free port, or `None` (skip) when redis-server is not installed locally.
    pub fn start(test: &str) -> Option<Self> {
        let port = free_port();
        match Self::start_on(port) {
            Ok(server) => Some(server),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "{test}: redis-server is not installed, and CI=true requires the Redis tests to run \
                     (apt-get install redis-server)"
                );
                eprintln!(
                    "SKIP {test}: redis-server not found (apt-get install redis-server to run it)"
                );
                None
            }
            Err(error) => panic!("{test}: starting redis-server: {error}"),
        }
    }

    /// Starts one on `port` (a restart on the port of a stopped one) and waits until it accepts.
    pub fn start_on(port: u16) -> std::io::Result<Self> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = Self { port, child };
        let deadline = Instant::now() + START_DEADLINE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                panic!("redis-server on port {port} exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} not accepting after {START_DEADLINE:?}"
            );
            std::thread::yield_now();
        }
        Ok(server)
    }

    /// The URL the app is given.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops it and waits until it is gone.
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
