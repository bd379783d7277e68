//! Prometheus metrics: requests, decisions by outcome, and latency histograms per stage.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1,
    1.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    decisions: Mutex<BTreeMap<&'static str, u64>>,
    stages: Mutex<BTreeMap<&'static str, Histogram>>,
    in_flight: AtomicU64,
}

impl Metrics {
    pub fn request(&self, adapter: &'static str, status: u16) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((adapter, status)).or_default() += 1;
        }
    }

    pub fn decision(&self, outcome: &'static str) {
        if let Ok(mut d) = self.decisions.lock() {
            *d.entry(outcome).or_default() += 1;
        }
    }

    pub fn stage(&self, stage: &'static str, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Ok(mut stages) = self.stages.lock() {
            let h = stages.entry(stage).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }

    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out += "# HELP warden_requests_total Requests handled, by adapter and HTTP status.\n# TYPE warden_requests_total counter\n";
        if let Ok(r) = self.requests.lock() {
            for ((adapter, status), n) in r.iter() {
                out += &format!(
                    "warden_requests_total{{adapter=\"{adapter}\",status=\"{status}\"}} {n}\n"
                );
            }
        }
        out += "# HELP warden_decisions_total Decisions, by outcome.\n# TYPE warden_decisions_total counter\n";
        if let Ok(d) = self.decisions.lock() {
            for (outcome, n) in d.iter() {
                out += &format!("warden_decisions_total{{outcome=\"{outcome}\"}} {n}\n");
            }
        }
        out += "# HELP warden_stage_seconds Time spent per pipeline stage.\n# TYPE warden_stage_seconds histogram\n";
        if let Ok(stages) = self.stages.lock() {
            for (stage, h) in stages.iter() {
                for (bound, count) in BUCKETS.iter().zip(h.counts) {
                    out += &format!(
                        "warden_stage_seconds_bucket{{stage=\"{stage}\",le=\"{bound}\"}} {count}\n"
                    );
                }
                out += &format!(
                    "warden_stage_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}\nwarden_stage_seconds_sum{{stage=\"{stage}\"}} {}\nwarden_stage_seconds_count{{stage=\"{stage}\"}} {}\n",
                    h.count, h.sum, h.count
                );
            }
        }
        out += &format!(
            "# HELP warden_requests_in_flight Requests being handled.\n# TYPE warden_requests_in_flight gauge\nwarden_requests_in_flight {}\n",
            self.in_flight.load(Ordering::Relaxed)
        );
        out
    }
}

/// A span for one pipeline stage, under the request's span (exported to OpenTelemetry when a
/// collector is configured; free when nothing listens).
pub fn stage_span(stage: &'static str) -> tracing::Span {
    tracing::info_span!("stage", otel.name = stage)
}
