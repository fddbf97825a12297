//! CORS settings as the user writes them (flags, env vars, the original app's `.env` keys).

/// CORS settings. Each is a raw string, validated by `Policy::from_args`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CorsArgs {
    /// Allowed origins: comma-separated list, `*` for any, `https://*.example.com` for subdomains.
    #[arg(long = "allow-origins", env = "ALLOW_ORIGINS")]
    pub allow_origins: Option<String>,
    /// Regular expression an origin must match in full to be allowed.
    #[arg(long = "allow-origin-regex", env = "ALLOW_ORIGIN_REGEX")]
    pub allow_origin_regex: Option<String>,
    /// Whether credentialed requests are allowed (true/false/1/0).
    #[arg(long = "allow-credentials", env = "ALLOW_CREDENTIALS")]
    pub allow_credentials: Option<String>,
    /// Allowed methods: comma-separated list or `*`.
    #[arg(long = "allow-methods", env = "ALLOW_METHODS")]
    pub allow_methods: Option<String>,
    /// Allowed request headers: comma-separated list or `*`.
    #[arg(long = "allow-headers", env = "ALLOW_HEADERS")]
    pub allow_headers: Option<String>,
    /// Response headers exposed to scripts.
    #[arg(long = "expose-headers", env = "EXPOSE_HEADERS")]
    pub expose_headers: Option<String>,
    /// Preflight cache lifetime in seconds.
    #[arg(long = "max-age", env = "MAX_AGE")]
    pub max_age: Option<String>,
    /// Answer Private Network Access preflights.
    #[arg(long = "allow-private-network", env = "ALLOW_PRIVATE_NETWORK")]
    pub allow_private_network: Option<String>,
    /// enforce | browser | shadow.
    #[arg(long = "cors-mode", env = "CORS_MODE")]
    pub cors_mode: Option<String>,
}

/// An invalid CORS setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting}={value:?}: {problem}")]
pub struct CorsConfigError {
    pub setting: &'static str,
    pub value: String,
    pub problem: String,
}
