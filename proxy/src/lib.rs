//! TLS-terminating reverse-proxy sidecar with a CORS policy engine.
//! (Overview of the request flow to be written as the modules land.)

pub mod cors;
