//! The process's open-files limit (`RLIMIT_NOFILE`): raised to the hard limit at start, and
//! checked against what the connection limits can open. Under a soft limit of 1,024 (a common
//! default) the default `PROXY_MAX_CONNECTIONS` could never be reached: accepts and upstream
//! connects would fail with `EMFILE` long before, and take legitimate clients down with them.

use tracing::{info, warn};

use crate::config::Limits;

/// Descriptors kept for everything but connections: listeners, the log writer, certificate
/// files being read, the runtime's own.
const RESERVED_FDS: u64 = 64;

/// The descriptors the limits can hold open at once: each client connection, every upstream
/// connection (in use or idle in the pool), and a reserve for everything else.
pub fn needed(limits: &Limits) -> u64 {
    (limits.max_connections as u64)
        .saturating_add(limits.upstream_max_connections as u64)
        .saturating_add(RESERVED_FDS)
}

/// Raises the soft open-files limit to the hard limit, logs the result, and warns when it cannot
/// hold [`needed`] descriptors (the proxy still starts: a lower `PROXY_MAX_CONNECTIONS`, or a
/// higher hard limit from the container runtime, is the fix, and only the operator can choose).
pub fn raise_and_check(limits: &Limits) {
    let need = needed(limits);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            info!(
                open_files = soft,
                needed = need,
                "open-files limit (RLIMIT_NOFILE)"
            );
            if soft < need {
                warn!(
                    open_files = soft,
                    needed = need,
                    max_connections = limits.max_connections,
                    upstream_max_connections = limits.upstream_max_connections,
                    "the open-files limit cannot hold PROXY_MAX_CONNECTIONS client connections \
                     and PROXY_UPSTREAM_MAX_CONNECTIONS upstream connections: lower them or raise \
                     the hard limit (ulimit -Hn, docker --ulimit nofile=...)"
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot read or raise the open-files limit (RLIMIT_NOFILE)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_needed_by_the_limits() {
        let limits = Limits {
            max_connections: 4096,
            max_header_bytes: 65536,
            max_headers: 100,
            upstream_max_idle: 256,
            upstream_max_connections: 1024,
        };
        // The default limits do not fit the common soft limit of 1,024.
        assert_eq!(needed(&limits), 4096 + 1024 + 64);
        assert!(needed(&limits) > 1024);
        let small = Limits {
            max_connections: 600,
            upstream_max_connections: 300,
            ..limits
        };
        assert!(needed(&small) <= 1024);
    }
}
