//! The upstream setting: `http://host:port` or `unix:/path`, parsed with errors that show the fix,
//! and compared as the pool's key.

use std::path::Path;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::Uri;

use crate::error::ConfigError;

/// The plain-HTTP upstream every request is forwarded to, and the key the pool keeps its
/// connections under: a connection made to one upstream is never used for another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `http://host[:port]` over TCP; the name is resolved again for each new connection.
    Tcp(Authority),
    /// `unix:/path`: HTTP/1.1 over a UNIX stream socket on this host (a sidecar's app).
    Unix(Arc<Path>),
}

/// The forms `PROXY_UPSTREAM` accepts, for error messages.
const UPSTREAM_FORMS: &str = "use http://host:port or unix:/absolute/path/to/app.sock";

/// The longest socket path the kernel takes (`sun_path` is 108 bytes with its terminating NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;

impl Upstream {
    /// Parses `http://host[:port][/]` or `unix:/path`; anything else names the problem.
    pub fn parse(value: &str) -> Result<Upstream, ConfigError> {
        const SETTING: &str = "PROXY_UPSTREAM";
        if let Some(path) = value.strip_prefix("unix:") {
            return Self::parse_unix(value, path);
        }
        if !value.contains("://") {
            let suggestion = format!("http://{}", value.trim().trim_start_matches('/'));
            return Err(ConfigError::invalid(
                SETTING,
                value,
                format!("the scheme is missing: use {suggestion}"),
            ));
        }
        let uri: Uri = value.parse().map_err(|e| {
            ConfigError::invalid(SETTING, value, format!("not a URL ({e}); {UPSTREAM_FORMS}"))
        })?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(ConfigError::invalid(
                SETTING,
                value,
                format!(
                    "the upstream must be plain http:// or a UNIX socket (the proxy terminates \
                     TLS); {UPSTREAM_FORMS}"
                ),
            ));
        }
        let Some(authority) = uri.authority().cloned() else {
            return Err(ConfigError::invalid(
                SETTING,
                value,
                "no host; use http://host:port",
            ));
        };
        if authority.as_str().contains('@') {
            return Err(ConfigError::invalid(
                SETTING,
                value,
                "credentials in the URL are not supported",
            ));
        }
        if authority.port_u16() == Some(0) {
            return Err(ConfigError::invalid(
                SETTING,
                value,
                "port 0 is not a port the app can listen on: use the app's port, e.g. http://127.0.0.1:8000",
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(ConfigError::invalid(
                SETTING,
                value,
                "a path or query is not supported; requests keep their own path (use http://host:port)",
            ));
        }
        Ok(Upstream::Tcp(authority))
    }

    /// `path` is what follows `unix:` in `value`: an absolute path (a relative one would depend
    /// on the directory the proxy was started in, which a reload cannot see).
    fn parse_unix(value: &str, path: &str) -> Result<Upstream, ConfigError> {
        const SETTING: &str = "PROXY_UPSTREAM";
        if path.starts_with("//") {
            return Err(ConfigError::invalid(
                SETTING,
                value,
                "write a socket as unix: followed by its absolute path, e.g. unix:/run/app/app.sock",
            ));
        }
        if !path.starts_with('/') {
            return Err(ConfigError::invalid(
                SETTING,
                value,
                "the socket path must be absolute, e.g. unix:/run/app/app.sock",
            ));
        }
        if path.ends_with('/') {
            return Err(ConfigError::invalid(
                SETTING,
                value,
                "that names a directory; name the socket file in it, e.g. unix:/run/app/app.sock",
            ));
        }
        if path.len() > MAX_SOCKET_PATH_BYTES {
            return Err(ConfigError::invalid(
                SETTING,
                value,
                format!(
                    "a socket path is at most {MAX_SOCKET_PATH_BYTES} bytes (the kernel's limit); \
                     use a shorter path"
                ),
            ));
        }
        Ok(Upstream::Unix(Arc::from(Path::new(path))))
    }

    /// Whether `other` is the same upstream. Usually they share one buffer (the pool keeps a
    /// clone of the live upstream), which settles it without comparing the text.
    pub fn same(&self, other: &Upstream) -> bool {
        match (self, other) {
            (Upstream::Tcp(a), Upstream::Tcp(b)) => std::ptr::eq(a.as_str(), b.as_str()) || a == b,
            (Upstream::Unix(a), Upstream::Unix(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Tcp(authority) => write!(f, "http://{authority}"),
            Upstream::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_show_the_fix() {
        let cases = [
            (
                "localhost:8000",
                "the scheme is missing: use http://localhost:8000",
            ),
            ("127.0.0.1:5000", "use http://127.0.0.1:5000"),
            ("http://127.0.0.1:0", "port 0"),
            ("https://app:8000", "plain http://"),
        ];
        for (value, message) in cases {
            let err = Upstream::parse(value).unwrap_err().to_string();
            assert!(err.contains(message), "{value}: {err}");
        }
        assert_eq!(
            Upstream::parse("http://app:8000/").unwrap().to_string(),
            "http://app:8000"
        );
    }

    #[test]
    fn upstreams_parse_and_compare_by_kind() {
        let socket = Upstream::parse("unix:/run/app/app.sock").unwrap();
        assert_eq!(
            socket,
            Upstream::Unix(Arc::from(Path::new("/run/app/app.sock")))
        );
        assert_eq!(socket.to_string(), "unix:/run/app/app.sock");
        let tcp = Upstream::parse("http://app:8000/").unwrap();
        assert_eq!(tcp.to_string(), "http://app:8000");

        // Host names compare without case; a prefix of the text is another authority.
        let live = Upstream::parse("http://app:8000").unwrap();
        assert!(live.same(&live.clone()));
        assert!(live.same(&Upstream::parse("http://APP:8000").unwrap()));
        assert!(!live.same(&Upstream::parse("http://app:8001").unwrap()));
        assert!(!live.same(&Upstream::parse("http://app").unwrap()));

        assert!(socket.same(&socket.clone()));
        assert!(socket.same(&Upstream::parse("unix:/run/app/app.sock").unwrap()));
        assert!(!socket.same(&Upstream::parse("unix:/run/app/other.sock").unwrap()));
        assert!(!socket.same(&tcp) && !tcp.same(&socket));
        // A host named like the socket is still another upstream.
        let lookalike = Upstream::parse("http://unix:80").unwrap();
        assert!(!lookalike.same(&Upstream::parse("unix:/80").unwrap()));

        let long = format!("unix:/{}", "a".repeat(MAX_SOCKET_PATH_BYTES));
        let err = Upstream::parse(&long).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        let err = Upstream::parse("ftp://app").unwrap_err();
        assert!(err.to_string().contains("unix:/"), "{err}");
    }
}
