//! A minimal TLS server with the proxy's TLS config (no HTTP stack behind it), and a client that
//! reports what it saw of the handshake: for tests of the certificate store and of the helper
//! subcommands.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use proxy::tls::{self, CertStore};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Serves TLS with the proxy's config on 127.0.0.1:0: reads one request and answers 204.
pub async fn serve(store: Arc<CertStore>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(tls::server_config(store));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                if matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = tls
                        .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                        .await;
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// What a client saw of one connection.
pub struct Handshake {
    pub cert: CertificateDer<'static>,
    pub kind: HandshakeKind,
    pub alpn: Option<Vec<u8>>,
    pub version: rustls::ProtocolVersion,
}

/// One connection to [`serve`]: handshake, one request, read to the end (which also takes in
/// TLS 1.3 tickets).
pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<Handshake> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    let (_, conn) = tls.get_ref();
    let seen = Handshake {
        cert: conn.peer_certificates().unwrap()[0].clone().into_owned(),
        kind: conn.handshake_kind().unwrap(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version().unwrap(),
    };
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await?;
    assert!(response.starts_with(b"HTTP/1.1 204"), "{response:?}");
    Ok(seen)
}
