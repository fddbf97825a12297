//! Serving on a UNIX socket (`--listen unix:/path`): requests are answered over it, and the
//! socket file is gone once the app has stopped.

use std::time::Duration;

use app::listen::{ListenAddr, Listener};
use app::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[tokio::test]
async fn the_app_serves_on_a_socket_and_removes_it_at_exit() {
    let dir = std::env::temp_dir().join(format!("app-unix-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    let addr = ListenAddr::Unix(path.clone());
    let config = Config {
        listen: addr.clone(),
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    };
    // Bound before the server starts, so connecting cannot race it.
    let listener = Listener::bind(&addr, config.socket_mode).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app::run(listener, config, async move {
        let _ = stopped.await;
    }));

    let mut stream = UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(b"GET /auth/login HTTP/1.1\r\nhost: app.example\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");

    // The health check finds it there too (it runs off the async threads: it blocks).
    let check = addr.clone();
    let status = tokio::task::spawn_blocking(move || {
        app::healthcheck::check(&check, Duration::from_secs(2))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 200);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!path.exists(), "the socket file is removed at exit");
}
