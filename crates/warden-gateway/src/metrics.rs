//! Prometheus metrics through `prometheus-client`: requests, decisions by outcome, latency
//! histograms per stage, requests in flight, and the policy bundle's reloads.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1,
    1.0,
];

/// The pipeline's stages, whose histograms are made once so a request only looks one up.
const STAGES: [&str; 6] = [
    "identify", "classify", "inspect", "decide", "record", "forward",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    adapter: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

type StageHistograms = Family<StageLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    decisions: Family<OutcomeLabels, Counter>,
    stages: StageHistograms,
    /// `STAGES`' histograms, in order.
    stage_handles: Vec<Histogram>,
    in_flight: Gauge<i64, AtomicI64>,
    policy_watched: Gauge<i64, AtomicI64>,
    policy_reloads: Family<ReloadLabels, Counter>,
    detections: Family<DetectionLabels, Counter>,
    detector_missed: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectionLabels {
    detector: &'static str,
    response: &'static str,
}

fn stage_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "warden_requests",
            "Requests handled, by adapter and HTTP status",
            requests.clone(),
        );
        let decisions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "warden_decisions",
            "Decisions, by outcome",
            decisions.clone(),
        );
        let stages: StageHistograms = Family::new_with_constructor(stage_histogram);
        registry.register(
            "warden_stage_seconds",
            "Time spent per pipeline stage",
            stages.clone(),
        );
        let stage_handles = STAGES
            .iter()
            .map(|stage| stages.get_or_create(&StageLabels { stage }).clone())
            .collect();
        let in_flight = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "warden_requests_in_flight",
            "Requests being handled",
            in_flight.clone(),
        );
        let policy_watched = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "warden_policy_watched",
            "1 while the policy directory is watched for changes (0: edits are not picked up; see the log)",
            policy_watched.clone(),
        );
        let policy_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "warden_policy_reloads",
            "Policy bundle reloads, by result (a failed one keeps the last good bundle)",
            policy_reloads.clone(),
        );
        let detections = Family::<DetectionLabels, Counter>::default();
        registry.register(
            "warden_detections",
            "Detections, by detector and response",
            detections.clone(),
        );
        let detector_missed = Counter::default();
        registry.register(
            "warden_detector_missed_decisions",
            "Decisions the detectors did not see because they fell behind the stream",
            detector_missed.clone(),
        );
        Self {
            registry,
            detections,
            detector_missed,
            requests,
            decisions,
            stages,
            stage_handles,
            in_flight,
            policy_watched,
            policy_reloads,
        }
    }
}

impl Metrics {
    pub fn request(&self, adapter: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { adapter, status })
            .inc();
    }

    pub fn detection(&self, detector: &'static str, response: &'static str) {
        self.detections
            .get_or_create(&DetectionLabels { detector, response })
            .inc();
    }

    pub fn detector_missed(&self, decisions: u64) {
        self.detector_missed.inc_by(decisions);
    }

    pub fn decision(&self, outcome: &'static str) {
        self.decisions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn stage(&self, stage: &'static str, took: Duration) {
        let seconds = took.as_secs_f64();
        match STAGES.iter().position(|s| *s == stage) {
            Some(i) => self.stage_handles[i].observe(seconds),
            None => self
                .stages
                .get_or_create(&StageLabels { stage })
                .observe(seconds),
        }
    }

    pub fn enter(&self) {
        self.in_flight.inc();
    }

    pub fn leave(&self) {
        self.in_flight.dec();
    }

    /// Whether the policy directory is being watched for edits.
    pub fn policy_watched(&self, watched: bool) {
        self.policy_watched.set(i64::from(watched));
    }

    /// A reload of the policy bundle, and whether it loaded.
    pub fn policy_reload(&self, loaded: bool) {
        let result = if loaded { "loaded" } else { "failed" };
        self.policy_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A span for one pipeline stage, under the request's span (exported to OpenTelemetry when a
/// collector is configured; free when nothing listens).
pub fn stage_span(stage: &'static str) -> tracing::Span {
    tracing::info_span!("stage", otel.name = stage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family() {
        let metrics = Metrics::default();
        metrics.request("mcp", 200);
        metrics.decision("deny");
        metrics.stage("decide", Duration::from_micros(7));
        metrics.policy_watched(true);
        metrics.policy_reload(false);
        let text = metrics.render();
        for expected in [
            "warden_requests_total{adapter=\"mcp\",status=\"200\"} 1",
            "warden_decisions_total{outcome=\"deny\"} 1",
            "warden_stage_seconds_count{stage=\"decide\"} 1",
            "warden_requests_in_flight 0",
            "warden_policy_watched 1",
            "warden_policy_reloads_total{result=\"failed\"} 1",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }
}
