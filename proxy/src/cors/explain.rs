//! `proxy cors explain`: evaluates a hypothetical request against the effective policy.
//!
//! INTERFACE CONTRACT: `ExplainArgs` (clap::Args) and `run(&ExplainArgs, &Policy) -> String`.
//! Placeholder until the CORS engine lands.
