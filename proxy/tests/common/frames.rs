//! A raw HTTP/2 client for the flood tests: frames built byte by byte (RFC 9113 §4.1) and written
//! over TLS, so a test can send what a client library never would (a stream reset the moment it
//! opens, a header block that never ends), and the frames the proxy answers read back.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

// Error codes (RFC 9113 §7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Appends one frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame length");
    assert!(len < 1 << 14, "over the default SETTINGS_MAX_FRAME_SIZE");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends a RST_STREAM frame.
pub fn push_reset(out: &mut Vec<u8>, stream: u32, code: u32) {
    push_frame(out, RST_STREAM, 0, stream, &code.to_be_bytes());
}

/// The HPACK block (RFC 7541) of `GET https://{authority}{path}` plus `extra` fields: static-table
/// entries for `:method` and `:scheme`, the rest literals without indexing, so every block stands
/// alone (no dynamic table to keep in step).
pub fn request_block(authority: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        // A 7-bit length prefix, no Huffman coding: enough for the short strings of the tests.
        out.push(
            u8::try_from(s.len())
                .ok()
                .filter(|&n| n < 0x7f)
                .expect("short"),
        );
        out.extend_from_slice(s.as_bytes());
    }
    // :method GET (static index 2), :scheme https (index 7).
    let mut block = vec![0x82, 0x87];
    // Literal without indexing, indexed name: :path (index 4), :authority (index 1).
    block.push(0x04);
    string(&mut block, path);
    block.push(0x01);
    string(&mut block, authority);
    for (name, value) in extra {
        // Literal without indexing, new name.
        block.push(0x00);
        string(&mut block, name);
        string(&mut block, value);
    }
    block
}

/// One frame read from the proxy.
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }

    /// A GOAWAY's debug data: h2 names there the limit the peer went past.
    pub fn debug_data(&self) -> Option<String> {
        let bytes = self.payload.get(8..).filter(|_| self.kind == GOAWAY)?;
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    /// The last stream a GOAWAY says the proxy processed.
    pub fn last_stream_id(&self) -> Option<u32> {
        let bytes = self.payload.get(..4).filter(|_| self.kind == GOAWAY)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?) & 0x7fff_ffff)
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("Frame");
        out.field("kind", &self.kind)
            .field("flags", &self.flags)
            .field("stream", &self.stream);
        match self.kind {
            GOAWAY => out
                .field("last_stream_id", &self.last_stream_id())
                .field("error_code", &self.error_code())
                .field("debug_data", &self.debug_data()),
            _ => out.field("payload_len", &self.payload.len()),
        }
        .finish()
    }
}

/// Reads the next frame; `None` once the connection is closed or fails.
pub async fn read_frame(read: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
    let mut head = [0u8; 9];
    read.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    read.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// A TLS connection (ALPN `h2`) after the HTTP/2 handshake: the preface and an empty SETTINGS
/// sent, the proxy's SETTINGS read and acknowledged (so its settings are in force).
pub async fn handshake(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut hello = PREFACE.to_vec();
    push_frame(&mut hello, SETTINGS, 0, 0, &[]);
    tls.write_all(&hello).await.expect("preface");
    loop {
        let frame = read_frame(&mut tls).await.expect("the proxy's SETTINGS");
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            break;
        }
    }
    let mut ack = Vec::new();
    push_frame(&mut ack, SETTINGS, ACK, 0, &[]);
    tls.write_all(&ack).await.expect("SETTINGS ACK");
    tls
}
