//! The decision pipeline after identification: inspect → decide → record → observe. Protocol
//! adapters classify requests into actions and forward them; only this module decides.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;
use tracing::Instrument as _;
use warden_model::{
    Action, Decision, DecisionRequest, DenyReason, Finding, Outcome, RequestContext,
};
use warden_policy::Engine;

use crate::identify::Caller;
use crate::metrics::{Metrics, stage_span};
use crate::usage::UsageMeter;

/// Looks at content and reports findings (never verdicts). The inspection issue fills this in.
pub trait Inspector: Send + Sync {
    fn inspect_request(&self, action: &Action, body: &[u8]) -> Vec<Finding>;
}

/// Reports nothing: the stage exists, with its interface, until scanners arrive.
pub struct PassThrough;

impl Inspector for PassThrough {
    fn inspect_request(&self, _action: &Action, _body: &[u8]) -> Vec<Finding> {
        Vec::new()
    }
}

/// One decision as recorded and observed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionEvent {
    pub time: i64,
    pub decision_id: String,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<DenyReason>,
    pub deciding: Vec<String>,
    pub bundle: String,
    pub agent: String,
    pub tenant: String,
    /// The caller's address (`ip:port`), when it came over the network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The agents above this one, root first (a sub-agent's lineage).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    pub task: Option<String>,
    pub grant: String,
    pub action: String,
    pub resource: String,
    /// The action's salient attributes: method and path, host, port and address, server and
    /// tool…
    pub target: serde_json::Map<String, serde_json::Value>,
    /// The action's arguments (tool and prompt calls), values hashed when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    pub findings: Vec<Finding>,
    /// Approvals the decision relied on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<String>,
    /// The gateway that decided.
    pub gateway: String,
    pub decide_micros: u64,
}

/// Whether a record is durable, once the recorder says so.
pub enum Recorded {
    /// Kept already (or kept where durability is not waited for).
    Kept,
    /// Resolves when the record is durable, or with why it could not be.
    Pending(std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>),
}

impl Recorded {
    pub async fn durable(self) -> Result<(), String> {
        match self {
            Self::Kept => Ok(()),
            Self::Pending(pending) => pending.await,
        }
    }
}

/// Keeps the record of every decision.
pub trait Recorder: Send + Sync {
    fn record(&self, event: &DecisionEvent) -> Recorded;
}

/// Structured log lines (target `warden::decision`).
pub struct LogRecorder;

impl Recorder for LogRecorder {
    fn record(&self, event: &DecisionEvent) -> Recorded {
        if tracing::enabled!(target: "warden::decision", tracing::Level::INFO) {
            match serde_json::to_string(event) {
                Ok(line) => log_decision(&line),
                Err(e) => tracing::error!(target: "warden::decision", "unrecordable decision: {e}"),
            }
        }
        Recorded::Kept
    }
}

/// One decision as a structured log line (target `warden::decision`).
pub(crate) fn log_decision(line: &str) {
    tracing::info!(target: "warden::decision", "{line}");
}

/// What the pipeline concluded for one action.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub decision: Decision,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.decision.is_allowed()
    }
}

pub struct Pipeline {
    policy: Arc<Engine>,
    inspector: Arc<dyn Inspector>,
    recorder: Arc<dyn Recorder>,
    events: broadcast::Sender<DecisionEvent>,
    metrics: Arc<Metrics>,
    usage: UsageMeter,
    gateway: String,
}

impl Pipeline {
    pub fn new(
        policy: Arc<Engine>,
        inspector: Arc<dyn Inspector>,
        recorder: Arc<dyn Recorder>,
        metrics: Arc<Metrics>,
        gateway: String,
    ) -> Self {
        Self {
            policy,
            inspector,
            recorder,
            events: broadcast::channel(4096).0,
            metrics,
            usage: UsageMeter::new(100_000),
            gateway,
        }
    }

    /// A stream of every decision, for detectors and live views.
    pub fn subscribe(&self) -> broadcast::Receiver<DecisionEvent> {
        self.events.subscribe()
    }

    /// Decides one action: policy AND the caller's grant must allow it. Records and publishes
    /// the decision; an allowed action's record is durable before this returns (fail closed:
    /// a record that cannot be kept turns the decision into a denial).
    pub async fn decide(
        &self,
        caller: &Caller,
        action: Action,
        body: &[u8],
        intent: Option<String>,
    ) -> Verdict {
        let started = Instant::now();
        let findings =
            stage_span("inspect").in_scope(|| self.inspector.inspect_request(&action, body));
        self.metrics.stage("inspect", started.elapsed());
        let span = tracing::info_span!(
            "stage",
            otel.name = "decide",
            warden.decision.id = tracing::field::Empty,
            warden.outcome = tracing::field::Empty,
        );
        let entered = span.enter();
        let decide_started = Instant::now();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let agent = caller.identity.spiffe_id();
        let request = DecisionRequest {
            agent: caller.identity.clone(),
            action,
            context: RequestContext {
                time: Some(now),
                intent: intent.clone(),
                findings: findings.clone(),
                usage: self.usage.usage(agent, now),
                body_bytes: body.len() as u64,
                ..RequestContext::default()
            },
        };
        let mut decision = self.policy.decide(&request);
        if !matches!(decision.outcome, Outcome::Deny { .. })
            && caller.grant.permits(&request.action).is_err()
        {
            decision.outcome = Outcome::denied(DenyReason::OutsideGrant);
            decision.deciding.clear();
        }
        let forwarded_bytes = if decision.is_allowed() {
            body.len() as u64
        } else {
            0
        };
        self.usage.add(agent, now, forwarded_bytes);
        let decide_time = decide_started.elapsed();
        span.record("warden.decision.id", decision.id.as_str());
        span.record("warden.outcome", decision.outcome.label());
        drop(entered);
        self.metrics.stage("decide", decide_time);
        self.metrics.decision(decision.outcome.label());
        let record_span = stage_span("record");
        let record_started = Instant::now();
        let event = self.event(caller, &request, &decision, findings, intent, decide_time);
        let recorded = record_span.in_scope(|| self.recorder.record(&event));
        if decision.is_allowed()
            && let Err(why) = recorded.durable().instrument(record_span).await
        {
            tracing::error!("refusing {}: {why}", event.decision_id);
            decision.outcome = Outcome::denied(DenyReason::AuditUnavailable);
            decision.deciding.clear();
        }
        // No subscriber is fine; a slow one misses events rather than slowing calls.
        let _ = self.events.send(event);
        self.metrics.stage("record", record_started.elapsed());
        Verdict { decision }
    }

    /// Whether the caller could use `action` with suitable arguments — policy and grant —
    /// without recording anything: for filtering listings, where each item is a possibility,
    /// not a call.
    pub fn may(&self, caller: &Caller, action: &Action) -> bool {
        let request = DecisionRequest {
            agent: caller.identity.clone(),
            action: action.clone(),
            context: RequestContext::default(),
        };
        caller.grant.permits(action).is_ok() && self.policy.could_allow(&request)
    }

    fn event(
        &self,
        caller: &Caller,
        request: &DecisionRequest,
        decision: &Decision,
        findings: Vec<Finding>,
        intent: Option<String>,
        took: Duration,
    ) -> DecisionEvent {
        let reason = match &decision.outcome {
            Outcome::Deny { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        DecisionEvent {
            time: time::OffsetDateTime::now_utc().unix_timestamp(),
            decision_id: decision.id.to_string(),
            outcome: decision.outcome.label(),
            reason,
            deciding: decision.deciding.iter().map(ToString::to_string).collect(),
            bundle: decision.bundle.to_string(),
            agent: caller.identity.spiffe_id().to_string(),
            tenant: caller.identity.tenant().to_string(),
            source: caller.source.map(|a| a.to_string()),
            parents: caller
                .identity
                .parents()
                .iter()
                .map(ToString::to_string)
                .collect(),
            task: caller.identity.task().map(ToString::to_string),
            grant: caller.grant.id().to_owned(),
            action: request.action.kind().as_str().to_owned(),
            resource: request.action.resource().to_string(),
            target: target(&request.action),
            arguments: request.action.args().cloned(),
            intent,
            findings,
            approvals: request.context.approved.clone(),
            gateway: self.gateway.clone(),
            decide_micros: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        }
    }
}

/// The action's fields but its kind and arguments (recorded on their own).
fn target(action: &Action) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(action) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.remove("kind");
            fields.remove("args");
            fields
        }
        _ => serde_json::Map::new(),
    }
}
