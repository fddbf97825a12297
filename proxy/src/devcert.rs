//! `proxy cert`: generates a development certificate (ECDSA P-256) and prints how to trust it.
//!
//! INTERFACE CONTRACT: `CertArgs` (clap::Args) and `run(&CertArgs) -> Result<(), DevCertError>`.
//! Placeholder until the TLS work lands.
