//! A latency histogram of atomic counters: observing is a short scan of the bucket bounds and
//! three relaxed atomic adds (`prometheus-client`'s own histogram takes a lock per observation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets in microseconds (5 ms to 10 s); `+Inf` follows them.
const BOUNDS_US: [u64; 11] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

/// Durations counted per bucket (not cumulative: encoding sums them up).
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound, then `+Inf`.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Sum in seconds, count, and `(upper bound in seconds, count)` per bucket, the last bound
    /// being `f64::MAX` (`+Inf` to the encoder).
    pub(super) fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = BOUNDS_US.get(i).map_or(f64::MAX, |&us| us as f64 / 1e6);
                (bound, n.load(Ordering::Relaxed))
            })
            .collect();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, self.count.load(Ordering::Relaxed), buckets)
    }

    /// Durations observed.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_by_upper_bound() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(6));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 60.011).abs() < 1e-9);
        assert_eq!(buckets[0], (0.005, 1));
        assert_eq!(buckets[1], (0.01, 1));
        assert_eq!(buckets[BOUNDS_US.len()], (f64::MAX, 1));
    }
}
