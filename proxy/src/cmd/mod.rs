//! The helper subcommands beside the proxy itself: `proxy cert` (a development certificate) and
//! `proxy healthcheck` (a container health check). `proxy cors explain` lives with the CORS
//! engine it explains.

pub mod devcert;
pub mod healthcheck;
