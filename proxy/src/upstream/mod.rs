//! The upstream side: connections to the plain-HTTP app (over TCP or a UNIX socket), kept in one
//! pool shared by every client connection.
//!
//! - [`connect`]: resolving the upstream's name (or finding its socket) and opening an HTTP/1.1
//!   connection;
//! - [`stream`]: the TCP or UNIX-socket stream under it;
//! - [`exchange`]: one connection and how it is polled while a request uses it;
//! - [`pool`]: idle connections kept between requests, and the response body that returns them;
//! - [`body`]: the request body as it streams upstream.

pub mod body;
pub mod connect;
pub mod exchange;
pub mod pool;
pub mod stream;

pub use body::{ClientBody, UpstreamBody};
pub use exchange::UpstreamConn;
pub use pool::{Checkout, Pool, PooledBody};
