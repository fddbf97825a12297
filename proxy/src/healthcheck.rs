//! `proxy healthcheck`: a container health check that needs no shell or curl.
//!
//! INTERFACE CONTRACT: `HealthcheckArgs` (clap::Args) and `run(&HealthcheckArgs) -> ExitCode`-like
//! result. Placeholder until the TLS work lands.
