//! The helper subcommands beside the proxy itself: `proxy cert` (a development certificate from
//! the local CA) and `proxy healthcheck` (a container health check). `proxy cors explain` lives with the CORS
//! engine it explains.

pub mod devcert;
pub(crate) mod files;
pub mod healthcheck;
pub mod localca;
