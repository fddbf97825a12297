//! `/metrics`: the counters read once into a [`Snapshot`], which `prometheus-client` encodes as a
//! collector. Every metric's name, help and labels are here; docs/metrics.md lists them for
//! operators and must follow any change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{
    ClientTimeout, ConnectFailure, CorsOutcome, CorsRefusal, HandshakeFailure, Metrics, Refused,
    METHODS, STATUS_CLASSES,
};

/// A labelled value: label pairs and the value.
type Row<const N: usize> = ([(&'static str, &'static str); N], u64);

/// A histogram's sum, count and buckets.
type HistogramValues = (f64, u64, Vec<(f64, u64)>);

/// Every value at one moment (each read on its own: a scrape is not a transaction).
#[derive(Debug)]
struct Snapshot {
    requests: Vec<Row<3>>,
    request_duration: HistogramValues,
    upstream_duration: HistogramValues,
    request_body_bytes: u64,
    response_body_bytes: u64,
    upstream_opened: u64,
    upstream_reused: u64,
    upstream_failed: Vec<Row<1>>,
    gateway_errors: Vec<Row<1>>,
    upstream_retries: u64,
    upstream_idle: i64,
    connections_open: i64,
    connections_total: u64,
    handshakes: Vec<Row<2>>,
    handshake_failures: Vec<Row<1>>,
    slot_waits: u64,
    client_timeouts: Vec<Row<1>>,
    refused: Vec<Row<1>>,
    cors: Vec<Row<1>>,
    cors_refusals: Vec<Row<1>>,
    reloads: Vec<Row<2>>,
    cert_expiry_seconds: Option<i64>,
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn rows<const K: usize>(
    name: &'static str,
    labels: [&'static str; K],
    counters: &[AtomicU64; K],
) -> Vec<Row<1>> {
    labels
        .iter()
        .zip(counters)
        .map(|(&label, counter)| ([(name, label)], load(counter)))
        .collect()
}

impl Snapshot {
    fn of(m: &Metrics) -> Snapshot {
        let mut requests = Vec::new();
        for (p, protocol) in ["h1", "h2"].into_iter().enumerate() {
            for (i, method) in METHODS.into_iter().enumerate() {
                for (s, status) in STATUS_CLASSES.into_iter().enumerate() {
                    let n = load(&m.requests[p][i][s]);
                    // Label sets that never happened are left out, which keeps a scrape short.
                    if n != 0 {
                        let labels = [
                            ("protocol", protocol),
                            ("method", method),
                            ("status", status),
                        ];
                        requests.push((labels, n));
                    }
                }
            }
        }
        let handshakes = ["tls1.2", "tls1.3", "other"]
            .into_iter()
            .zip(&m.handshakes)
            .map(|(version, n)| ([("version", version), ("outcome", "success")], load(n)))
            .chain(std::iter::once((
                [("version", "none"), ("outcome", "failure")],
                m.handshake_failures.iter().map(load).sum(),
            )))
            .collect();
        let reloads = [("config", 0), ("certificate", 1)]
            .into_iter()
            .flat_map(|(kind, k)| {
                [("success", 0), ("failure", 1)]
                    .into_iter()
                    .map(move |(outcome, o)| ([("kind", kind), ("outcome", outcome)], (k, o)))
            })
            .map(|(labels, (k, o))| (labels, load(&m.reloads[k][o])))
            .collect();
        let cert_expiry_seconds = m.certificate_loaded().then(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            m.cert_not_after.load(Ordering::Relaxed).saturating_sub(now)
        });
        Snapshot {
            requests,
            request_duration: m.request_duration.snapshot(),
            upstream_duration: m.upstream_duration.snapshot(),
            request_body_bytes: load(&m.request_body_bytes),
            response_body_bytes: load(&m.response_body_bytes),
            upstream_opened: load(&m.upstream_opened),
            upstream_reused: load(&m.upstream_reused),
            upstream_failed: rows("cause", ConnectFailure::LABELS, &m.upstream_failed),
            gateway_errors: rows("status", ["502", "504"], &m.gateway_errors),
            upstream_retries: load(&m.upstream_retries),
            upstream_idle: i64::try_from(load(&m.upstream_idle)).unwrap_or(i64::MAX),
            connections_open: m.connections_open.load(Ordering::Relaxed),
            connections_total: load(&m.connections_total),
            handshakes,
            handshake_failures: rows("reason", HandshakeFailure::LABELS, &m.handshake_failures),
            slot_waits: load(&m.slot_waits),
            client_timeouts: rows("phase", ClientTimeout::LABELS, &m.client_timeouts),
            refused: rows("reason", Refused::LABELS, &m.refused),
            cors: rows("outcome", CorsOutcome::LABELS, &m.cors),
            cors_refusals: rows("reason", CorsRefusal::LABELS, &m.cors_refusals),
            reloads,
            cert_expiry_seconds,
        }
    }
}

/// One metric without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let metric_encoder = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(metric_encoder)
}

/// A counter with one value per label set.
fn counters<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[Row<N>],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    (sum, count, buckets): &HistogramValues,
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut e;
        single(
            e,
            "proxy_build",
            "The proxy's version",
            None,
            &prometheus_client::metrics::info::Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        )?;
        counters(
            e,
            "proxy_requests",
            "Requests answered, by client protocol, method class and status class",
            &self.requests,
        )?;
        histogram(
            e,
            "proxy_request_duration",
            "Time from a request's head to the end of its response",
            &self.request_duration,
        )?;
        histogram(
            e,
            "proxy_upstream_response_duration",
            "Time from forwarding a request to the upstream's response head",
            &self.upstream_duration,
        )?;
        let bytes = Some(&Unit::Bytes);
        let counter = |v: u64| ConstCounter::new(v);
        single(
            e,
            "proxy_request_body",
            "Request body bytes received from clients and forwarded",
            bytes,
            &counter(self.request_body_bytes),
        )?;
        single(
            e,
            "proxy_response_body",
            "Response body bytes sent to clients",
            bytes,
            &counter(self.response_body_bytes),
        )?;
        single(
            e,
            "proxy_upstream_connections_opened",
            "New upstream connections set up",
            None,
            &counter(self.upstream_opened),
        )?;
        single(
            e,
            "proxy_upstream_connections_reused",
            "Requests sent on a pooled upstream connection",
            None,
            &counter(self.upstream_reused),
        )?;
        counters(
            e,
            "proxy_upstream_connect_failures",
            "New upstream connections that failed, by cause",
            &self.upstream_failed,
        )?;
        counters(
            e,
            "proxy_upstream_errors",
            "Responses the proxy made for the upstream: 502 (unreachable, failed) and 504 (too slow)",
            &self.gateway_errors,
        )?;
        single(
            e,
            "proxy_upstream_retries",
            "Idempotent requests sent again on a fresh connection after a pooled one failed",
            None,
            &counter(self.upstream_retries),
        )?;
        single(
            e,
            "proxy_upstream_idle_connections",
            "Idle connections in the upstream pool",
            None,
            &ConstGauge::new(self.upstream_idle),
        )?;
        single(
            e,
            "proxy_client_connections_open",
            "Client connections open (from accept to close)",
            None,
            &ConstGauge::new(self.connections_open),
        )?;
        single(
            e,
            "proxy_client_connections",
            "Client connections accepted",
            None,
            &counter(self.connections_total),
        )?;
        counters(
            e,
            "proxy_tls_handshakes",
            "Client TLS handshakes, by agreed version and outcome",
            &self.handshakes,
        )?;
        counters(
            e,
            "proxy_tls_handshake_failures",
            "Failed client TLS handshakes, by reason",
            &self.handshake_failures,
        )?;
        single(
            e,
            "proxy_client_connection_slot_waits",
            "Times the accept loop found every PROXY_MAX_CONNECTIONS slot taken and waited",
            None,
            &counter(self.slot_waits),
        )?;
        counters(
            e,
            "proxy_client_timeouts",
            "Client connections closed by a deadline, by phase",
            &self.client_timeouts,
        )?;
        counters(
            e,
            "proxy_requests_refused",
            "Requests the proxy refused itself (bad Host, method, framing, body size), by reason",
            &self.refused,
        )?;
        counters(
            e,
            "proxy_cors_decisions",
            "What the CORS policy did with requests",
            &self.cors,
        )?;
        counters(
            e,
            "proxy_cors_refusals",
            "CORS refusals (also those browser/shadow mode forward), by the part of the request refused",
            &self.cors_refusals,
        )?;
        counters(
            e,
            "proxy_reloads",
            "Reloads of the configuration (SIGHUP) and of the certificate, by outcome",
            &self.reloads,
        )?;
        if let Some(seconds) = self.cert_expiry_seconds {
            single(
                e,
                "proxy_tls_certificate_expiry",
                "Seconds until the served certificate expires (negative: expired)",
                Some(&Unit::Seconds),
                &ConstGauge::new(seconds),
            )?;
        }
        Ok(())
    }
}

/// The exposition of `metrics`.
pub(super) fn encode(metrics: &Metrics) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot::of(metrics)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, StatusCode};

    use super::super::{Protocol, Reload};
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::new();
        m.request(
            Protocol::Http2,
            &Method::GET,
            StatusCode::OK,
            Duration::from_millis(3),
            Some(Duration::from_millis(2)),
            5,
        );
        m.upstream_failed(ConnectFailure::Refused);
        m.reload(Reload::Certificate, false);
        let text = m.encode().unwrap();
        for line in [
            "proxy_build_info{version=\"",
            "proxy_requests_total{protocol=\"h2\",method=\"GET\",status=\"2xx\"} 1\n",
            "proxy_request_duration_seconds_bucket{le=\"0.005\"} 1\n",
            "proxy_request_duration_seconds_count 1\n",
            "proxy_response_body_bytes_total 5\n",
            "proxy_upstream_connect_failures_total{cause=\"refused\"} 1\n",
            "proxy_reloads_total{kind=\"certificate\",outcome=\"failure\"} 1\n",
            "# EOF\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        // No certificate known yet: no expiry.
        assert!(!text.contains("proxy_tls_certificate_expiry"));
    }
}
