//! The helper subcommands beside the proxy itself: `proxy cert` (a development certificate from
//! the local CA; with `--trust`/`--untrust`, the CA installed where browsers look) and `proxy healthcheck` (a container health check). `proxy cors explain` lives with the CORS
//! engine it explains.

pub mod devcert;
pub(crate) mod files;
pub mod healthcheck;
pub mod localca;
pub mod trust;
