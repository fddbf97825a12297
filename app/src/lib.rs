//! A minimal hyper backend carrying the business routes of the original FastAPI tutorial app:
//! a login page, password login issuing opaque session tokens, a home page, "me", and logout.
//!
//! A request's path through the modules:
//! [`server`] accepts the connection and hands each request to [`routes`], which matches path and
//! method, reads what it needs from the request with [`request`] (format wanted, outside origin,
//! session credential, login form, with [`multipart`] bodies) and [`client`] (the client address),
//! slows password guessing with [`throttle`], checks passwords with [`users`] on the [`hashing`]
//! pool and sessions with [`sessions`] (memory, SQLite or Redis), and answers with [`pages`] (HTML)
//! or [`response`] (JSON, redirects, cookies, error statuses).
//! [`config`] holds the settings and the command line that builds them; [`listen`] the TCP or
//! UNIX-socket listener.
//!
//! The app never sees TLS and knows nothing of CORS: the proxy in front does both and tells the
//! app the outside scheme and host in `X-Forwarded-Proto` / `X-Forwarded-Host` (or `Forwarded`).

pub mod client;
pub mod config;
pub mod hashing;
pub mod healthcheck;
pub mod listen;
pub mod multipart;
pub mod pages;
pub mod request;
pub mod response;
pub mod routes;
pub mod server;
pub mod sessions;
pub mod throttle;
pub mod users;

pub use config::Config;
pub use server::{run, AppError};
