//! Upgraded connections through the proxy (WebSocket-style `Upgrade` over HTTP/1.1): both ways
//! joined, kept open through the shutdown drain, closed when idle while holding a connection slot.

mod common;

use std::time::Duration;

use common::{open_tunnel, TestPki, TestProxy, TestUpstream};

#[tokio::test]
async fn upgrade_is_joined_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &[]).await;
    let mut io = open_tunnel(&pki, proxy.addr).await;
    let seen = upstream.last().headers;
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["connection"], "upgrade");
    for message in [&b"ping"[..], &b"a second message"[..]] {
        io.write_all(message).await.unwrap();
        let mut echoed = vec![0; message.len()];
        io.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_open_tunnel_runs_on_through_the_shutdown_grace_period() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let mut proxy = TestProxy::start(&pki, upstream.addr, &["--shutdown-grace", "1s"]).await;
    let mut io = open_tunnel(&pki, proxy.addr).await;
    let began = std::time::Instant::now();
    proxy.begin_shutdown();
    // Still joined while the server drains.
    io.write_all(b"during the drain").await.unwrap();
    let mut echoed = [0u8; 16];
    io.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"during the drain");
    // The drain waits for the tunnel, up to the grace period.
    tokio::time::timeout(Duration::from_secs(10), proxy.join())
        .await
        .expect("run() returns after the grace period");
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_and_counts_against_the_connection_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(
        &pki,
        upstream.addr,
        &["--max-connections", "1", "--client-idle-timeout", "1s"],
    )
    .await;
    let mut io = open_tunnel(&pki, proxy.addr).await;
    io.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    io.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");

    // While the tunnel is open it holds the only connection slot: a second client is not served.
    let opened = std::time::Instant::now();
    let second = tokio::spawn({
        // The TCP connect lands in the kernel's backlog; the TLS handshake needs the proxy to accept.
        let config = pki.client_config_alpn(&[b"http/1.1"]);
        let addr = proxy.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .expect("the second client's handshake");
            std::time::Instant::now()
        }
    });
    // Without traffic the tunnel is closed after the idle timeout: the client's read ends (EOF or
    // a reset, either means closed) instead of hanging.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut rest))
        .await
        .expect("the idle tunnel is closed within the test's limit");
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        opened.elapsed()
    );
    // ...and only then does the second client get its slot.
    let served_at = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second client is served once the tunnel is gone")
        .unwrap();
    assert!(served_at.duration_since(opened) >= Duration::from_millis(900));
    proxy.shutdown().await;
}
