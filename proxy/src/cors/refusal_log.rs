//! The CORS refusal log and counts: one structured line per refusal (origin, method, requested
//! headers, path, reason), rate-limited by a token bucket so a flood cannot fill the disk, and
//! every decision counted in the proxy's [`Metrics`] (which outlive a policy reload).

use std::sync::Mutex;
use std::time::Instant;

use http::header::{ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN};
use http::HeaderMap;

use super::{Assessment, CorsMode, Policy, Refusal, RequestInfo};
use crate::metrics::{CorsOutcome, CorsRefusal, Metrics};

/// Refusal lines that may be written in a burst.
const REFUSAL_LOG_BURST: f64 = 20.0;
/// Refusal lines per second once the burst is spent.
const REFUSAL_LOG_PER_SECOND: f64 = 2.0;
/// Longest header value copied into a log line.
const LOGGED_VALUE_MAX_CHARS: usize = 200;

/// A token bucket: `burst` lines at once, then `per_second`.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    state: Mutex<Bucket>,
    burst: f64,
    per_second: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
    /// Lines dropped since the last one written.
    suppressed: u64,
}

impl RateLimiter {
    pub(crate) const fn new(burst: f64, per_second: f64) -> RateLimiter {
        RateLimiter {
            state: Mutex::new(Bucket {
                tokens: burst,
                last: None,
                suppressed: 0,
            }),
            burst,
            per_second,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were dropped before it.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked mid-update; the bucket is still usable.
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = b.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_second;
            b.tokens = (b.tokens + refill).min(self.burst);
        }
        b.last = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }
}

static REFUSAL_LOG: RateLimiter = RateLimiter::new(REFUSAL_LOG_BURST, REFUSAL_LOG_PER_SECOND);

fn header_text(headers: &HeaderMap, name: http::header::HeaderName) -> &str {
    let value = headers
        .get(name)
        .map_or("", |v| v.to_str().unwrap_or("(not ASCII)"));
    match value.char_indices().nth(LOGGED_VALUE_MAX_CHARS) {
        Some((i, _)) => &value[..i],
        None => value,
    }
}

/// The metrics' label for the part of the request a refusal is about.
fn refusal_reason(refusal: &Refusal) -> CorsRefusal {
    match refusal {
        Refusal::MultipleOrigins
        | Refusal::OriginList
        | Refusal::MalformedOrigin
        | Refusal::OriginNotAllowed { .. } => CorsRefusal::Origin,
        Refusal::MalformedRequestMethod | Refusal::MethodNotAllowed { .. } => CorsRefusal::Method,
        Refusal::MalformedRequestHeaders
        | Refusal::RequestHeadersTooLong
        | Refusal::HeadersNotAllowed { .. } => CorsRefusal::Headers,
        Refusal::PrivateNetworkNotAllowed => CorsRefusal::PrivateNetwork,
    }
}

/// Counts the outcome and writes the refusal line (rate-limited).
pub(crate) fn record(
    policy: &Policy,
    req: &RequestInfo<'_>,
    assessment: &Assessment,
    metrics: &Metrics,
) {
    let (preflight, refusal) = match assessment {
        Assessment::Denied { preflight, refusal } => (*preflight, refusal),
        // In shadow mode even preflights go to the app.
        Assessment::Preflight(_) | Assessment::SameOrigin { preflight: true }
            if policy.mode != CorsMode::Shadow =>
        {
            metrics.cors(CorsOutcome::PreflightAllowed, None);
            return;
        }
        _ => {
            metrics.cors(CorsOutcome::Forwarded, None);
            return;
        }
    };
    let reason = Some(refusal_reason(refusal));
    let action = match policy.mode {
        CorsMode::Shadow => {
            metrics.cors(CorsOutcome::ShadowDenied, reason);
            "forwarded (shadow)"
        }
        CorsMode::Browser if !preflight && matches!(refusal, Refusal::OriginNotAllowed { .. }) => {
            metrics.cors(CorsOutcome::ForwardedWithoutCors, reason);
            "forwarded without CORS headers (browser)"
        }
        _ => {
            metrics.cors(CorsOutcome::Refused, reason);
            "refused with 403"
        }
    };
    let Some(suppressed) = REFUSAL_LOG.admit(Instant::now()) else {
        return;
    };
    tracing::warn!(
        origin = header_text(req.headers, ORIGIN),
        method = %req.method,
        request_method = header_text(req.headers, ACCESS_CONTROL_REQUEST_METHOD),
        request_headers = header_text(req.headers, ACCESS_CONTROL_REQUEST_HEADERS),
        path = req.path,
        preflight,
        part = refusal.part(),
        reason = %refusal,
        mode = policy.mode.as_str(),
        action,
        suppressed_since_last = suppressed,
        "cors request denied"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate_and_counts_drops() {
        let limiter = RateLimiter::new(3.0, 1.0);
        let t0 = Instant::now();
        assert_eq!(limiter.admit(t0), Some(0));
        assert_eq!(limiter.admit(t0), Some(0));
        assert_eq!(limiter.admit(t0), Some(0));
        assert_eq!(limiter.admit(t0), None);
        assert_eq!(limiter.admit(t0 + Duration::from_millis(100)), None);
        // One second later one token is back; the line reports the two dropped before it.
        assert_eq!(limiter.admit(t0 + Duration::from_millis(1100)), Some(2));
        assert_eq!(limiter.admit(t0 + Duration::from_millis(1100)), None);
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(limiter.admit(later), Some(1));
        assert_eq!(limiter.admit(later), Some(0));
        assert_eq!(limiter.admit(later), Some(0));
        assert_eq!(limiter.admit(later), None);
    }
}
