//! The detectors' task: reads the decision stream off the request path, records what they find
//! and, where configured, has the control plane quarantine the agent.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use warden_detect::{Detector, Detectors, Observation};
use warden_policy::DetectionAction;

use crate::config::DetectSettings;
use crate::desk::Desk;
use crate::pipeline::DecisionEvent;
use crate::plumbing::State;

/// Follows the gateway's decisions until the stream closes.
pub(crate) async fn watch(state: Arc<State>, settings: DetectSettings, desk: Option<Arc<Desk>>) {
    let pipeline = &state.pipeline;
    let mut events = pipeline.subscribe();
    let mut detectors = Detectors::new(settings.detectors());
    let quarantine_possible = desk.is_some();
    let quarantine = settings.quarantine && quarantine_possible;
    // Baselines outlive the gateway: a restart must not start learning afresh.
    let baselines = settings.baselines_file(&state.config.audit);
    match load_baselines(&baselines) {
        Ok(saved) => detectors.restore_baselines(saved),
        Err(e) => tracing::warn!(
            "detectors: cannot read the saved baselines {} ({e}); learning afresh",
            baselines.display()
        ),
    }
    let mut save = tokio::time::interval(SAVE_EVERY);
    let mut unsaved = false;
    loop {
        let received = tokio::select! {
            received = events.recv() => received,
            _ = save.tick() => {
                if std::mem::take(&mut unsaved) {
                    save_baselines(&baselines, detectors.saved_baselines()).await;
                }
                continue;
            }
        };
        let event = match received {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                pipeline.metrics().detector_missed(missed);
                tracing::warn!(
                    "detectors fell behind the decision stream: {missed} decisions not seen"
                );
                continue;
            }
            Err(RecvError::Closed) => {
                save_baselines(&baselines, detectors.saved_baselines()).await;
                return;
            }
        };
        let reach = Reach::of(&event);
        let Some(observation) = observation(&event, &reach) else {
            continue;
        };
        unsaved |= observation.reach.is_some() && observation.allowed;
        for detection in detectors.observe(&observation) {
            // A DetectionPolicy selecting the agent decides; without one, the gateway's
            // settings do.
            let by_policy = policy_response(&state, &detection);
            let (quarantines, for_secs) = match &by_policy {
                Some(response) => (
                    quarantine_possible && response.action == DetectionAction::Quarantine,
                    response.for_secs,
                ),
                None => (
                    quarantine && default_quarantines(&settings, detection.detector),
                    settings.quarantine_secs,
                ),
            };
            let response = if quarantines { "quarantine" } else { "alert" };
            tracing::warn!(
                agent = %detection.agent,
                detector = detection.detector.as_str(),
                "detection: {} ({response})",
                detection.summary
            );
            pipeline.record_detection(
                &detection,
                response,
                by_policy.as_ref().map(|r| r.policy.as_str()),
            );
            pipeline
                .metrics()
                .detection(detection.detector.as_str(), response);
            let Some(desk) = desk.as_ref().filter(|_| quarantines) else {
                continue;
            };
            let mut report = json!({
                "agent": detection.agent,
                "detector": detection.detector.as_str(),
                "summary": detection.summary,
                "evidence": detection.evidence,
                "quarantine": true,
            });
            if for_secs > 0 {
                report["forSecs"] = json!(for_secs);
            }
            if let Err(e) = desk.report_detection(&report).await {
                tracing::error!(agent = %detection.agent, "the detection's quarantine failed: {e}");
            }
        }
    }
}

/// How often learned baselines are written down (what a crash can lose).
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn load_baselines(file: &std::path::Path) -> Result<Vec<warden_detect::SavedBaseline>, String> {
    let text = match std::fs::read(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let saved: Vec<serde_json::Value> =
        serde_json::from_slice(&text).map_err(|e| format!("not the baselines' JSON: {e}"))?;
    Ok(saved
        .into_iter()
        .filter_map(|b| {
            Some(warden_detect::SavedBaseline {
                agent: b.get("agent")?.as_str()?.to_owned(),
                started: b.get("started")?.as_i64()?,
                last_seen: b.get("lastSeen")?.as_i64()?,
                reaches: b
                    .get("reaches")?
                    .as_array()?
                    .iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect(),
            })
        })
        .collect())
}

/// Writes the baselines beside the audit log: a new file, synced, then renamed over the old,
/// so a crash leaves the previous save or this one, never half of one.
async fn save_baselines(file: &std::path::Path, saved: Vec<warden_detect::SavedBaseline>) {
    let target = file.to_owned();
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let file = target;
        use std::io::Write as _;
        let document: Vec<serde_json::Value> = saved
            .into_iter()
            .map(|b| {
                json!({"agent": b.agent, "started": b.started, "lastSeen": b.last_seen, "reaches": b.reaches})
            })
            .collect();
        let temporary = file.with_extension("json.tmp");
        let mut out = std::fs::File::create(&temporary)?;
        out.write_all(&serde_json::to_vec(&document).map_err(std::io::Error::other)?)?;
        out.sync_all()?;
        std::fs::rename(&temporary, &file)
    })
    .await;
    if let Ok(Err(e)) = written {
        tracing::warn!(
            "detectors: cannot save the baselines to {}: {e}",
            file.display()
        );
    }
}

/// Without a DetectionPolicy: a scan is an agent doing what no task needs, and is quarantined.
/// A storm of refusals may be a confused agent as well as a probing one, a grant from two
/// addresses a client behind a changing NAT, and a toxic flow rests on an injection finding,
/// which can be wrong: these are reported, and a toxic flow quarantines only when asked.
fn default_quarantines(settings: &DetectSettings, detector: Detector) -> bool {
    match detector {
        Detector::HostScan | Detector::PortScan => true,
        Detector::ToxicFlow => settings.quarantine_toxic_flows,
        Detector::DenyStorm | Detector::SharedGrant | Detector::NewReach | Detector::RateSpike => {
            false
        }
    }
}

/// What the bundle's DetectionPolicies say about this detection (agents are known to detectors
/// by SPIFFE ID alone).
fn policy_response(
    state: &State,
    detection: &warden_detect::Detection,
) -> Option<warden_policy::DetectionResponse> {
    let id = warden_model::SpiffeId::new(&detection.agent).ok()?;
    let agent = warden_model::AgentIdentity::new(id, warden_model::Labels::default(), None).ok()?;
    state
        .pipeline
        .policy()
        .current()
        .detection_response(&agent, detection.detector.as_str())
}

/// A decision as the detectors read it; `None` for what is not an identified agent's call or
/// the review of its result.
/// Whose baseline a decision belongs to, and what it reached, as baselines keep them.
struct Reach {
    baseline: String,
    reached: Option<String>,
}

impl Reach {
    fn of(event: &DecisionEvent) -> Self {
        // The agent across instances: `spiffe://td/tenant/t` and each `/agent/<name>` of
        // `/agent/<name>/<instance>`, without the instance.
        let segments: Vec<&str> = event.agent.split('/').collect();
        let (head, agents) = segments.split_at(segments.len().min(5));
        let mut kept = head.to_vec();
        for triple in agents.chunks(3) {
            kept.extend(triple.iter().take(2));
        }
        let baseline = kept.join("/");
        let text = |name: &str| event.target.get(name).and_then(|v| v.as_str());
        let reached = match event.action.as_str() {
            "http" => Some(format!(
                "http {} {} {}",
                event.resource,
                text("method").unwrap_or_default(),
                warden_policy::route_pattern(text("path").unwrap_or_default())
            )),
            "mcp.client/message" | "detect" | "identify" | "" => None,
            action => Some(format!("{action} {}", event.resource)),
        };
        Self { baseline, reached }
    }
}

fn observation<'a>(event: &'a DecisionEvent, reach: &'a Reach) -> Option<Observation<'a>> {
    let review = match event.phase {
        None => false,
        Some("result") => true,
        Some(_) => return None,
    };
    if event.agent.is_empty() {
        return None;
    }
    let allowed = event.outcome == "allow";
    let destination = (event.action == "egress.connect")
        .then(|| {
            let host = event.target.get("host")?.as_str()?;
            let port = u16::try_from(event.target.get("port")?.as_u64()?).ok()?;
            Some((host, port))
        })
        .flatten();
    Some(Observation {
        time: event.time,
        agent: &event.agent,
        decision_id: &event.decision_id,
        allowed,
        destination,
        review,
        // What a review let through, and did not redact, reached the agent's model.
        tainted: review
            && allowed
            && event.findings.iter().any(|f| {
                f.kind == warden_model::FindingKind::Injection
                    && !event
                        .redacted
                        .iter()
                        .any(|r| r.rule == f.rule && r.location == f.location)
            }),
        sensitive: !review && sensitive(event),
        grant: &event.grant,
        // The address without the port: a client reconnecting is the same client.
        source: event
            .source
            .as_deref()
            .map(|s| s.rsplit_once(':').map_or(s, |(ip, _)| ip)),
        baseline: &reach.baseline,
        reach: reach.reached.as_deref(),
    })
}

/// Words in a tool's name that mark it as acting on the world rather than reading it.
const SENSITIVE_TOOL_WORDS: [&str; 16] = [
    "send", "delete", "remove", "drop", "transfer", "write", "exec", "run", "post", "upload",
    "email", "mail", "pay", "destroy", "shell", "publish",
];

/// Whether a call acts outward: egress, delegating to another agent, a write to an HTTP API, or
/// a tool whose name says it sends, deletes or executes.
fn sensitive(event: &DecisionEvent) -> bool {
    let field = |name: &str| event.target.get(name).and_then(serde_json::Value::as_str);
    match event.action.as_str() {
        "egress.connect" | "a2a.message/send" | "a2a.message/stream" => true,
        "http" => !matches!(field("method"), Some("GET" | "HEAD" | "OPTIONS")),
        "mcp.tools/call" => field("tool").is_some_and(|tool| {
            let tool = tool.to_ascii_lowercase();
            SENSITIVE_TOOL_WORDS.iter().any(|word| tool.contains(word))
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use warden_model::{Finding, FindingKind};

    use super::*;

    #[test]
    fn baselines_are_per_agent_across_instances_and_routes_not_ids() {
        let event = DecisionEvent {
            agent: "spiffe://td/tenant/t/agent/bot/i-1/agent/helper/h-9".into(),
            action: "http".into(),
            resource: "service billing".into(),
            target: json!({"service": "billing", "method": "GET", "path": "/v1/invoices/42"})
                .as_object()
                .cloned()
                .unwrap(),
            ..DecisionEvent::default()
        };
        let reach = Reach::of(&event);
        assert_eq!(
            reach.baseline,
            "spiffe://td/tenant/t/agent/bot/agent/helper"
        );
        assert_eq!(
            reach.reached.as_deref(),
            Some("http service billing GET /v1/invoices/*")
        );
    }

    /// DetectionPolicies are checked against the policy crate's list of detector names: it must
    /// be exactly the detectors there are (the match fails to compile when one is added).
    #[test]
    fn detection_policies_know_every_detector_by_name() {
        let every = |detector: Detector| match detector {
            Detector::HostScan
            | Detector::PortScan
            | Detector::DenyStorm
            | Detector::ToxicFlow
            | Detector::SharedGrant
            | Detector::NewReach
            | Detector::RateSpike => detector.as_str(),
        };
        let names: Vec<&str> = [
            Detector::HostScan,
            Detector::PortScan,
            Detector::DenyStorm,
            Detector::ToxicFlow,
            Detector::SharedGrant,
            Detector::NewReach,
            Detector::RateSpike,
        ]
        .into_iter()
        .map(every)
        .collect();
        let mut known = warden_policy::DETECTORS.to_vec();
        let mut names_sorted = names.clone();
        known.sort_unstable();
        names_sorted.sort_unstable();
        assert_eq!(known, names_sorted);
    }

    fn event(
        action: &str,
        target: serde_json::Value,
        phase: Option<&'static str>,
    ) -> DecisionEvent {
        DecisionEvent {
            agent: "spiffe://td/tenant/t/agent/a/i-1".into(),
            decision_id: "d".into(),
            outcome: "allow",
            action: action.into(),
            target: target.as_object().cloned().unwrap_or_default(),
            phase,
            ..DecisionEvent::default()
        }
    }

    #[test]
    fn calls_are_read_as_sensitive_by_what_they_do_and_reviews_as_taint() {
        let tool = |name: &str| event("mcp.tools/call", json!({"server": "s", "tool": name}), None);
        let read = |e: &DecisionEvent| {
            let reach = Reach::of(e);
            observation(e, &reach).map(|o| (o.sensitive, o.tainted, o.review))
        };
        assert_eq!(read(&tool("send_email")), Some((true, false, false)));
        assert_eq!(read(&tool("DeleteRecords")), Some((true, false, false)));
        assert_eq!(read(&tool("get_issue")), Some((false, false, false)));
        let http = |method: &str| event("http", json!({"service": "api", "method": method}), None);
        assert_eq!(read(&http("GET")), Some((false, false, false)));
        assert_eq!(read(&http("POST")), Some((true, false, false)));
        let egress = event(
            "egress.connect",
            json!({"host": "x.example", "port": 443}),
            None,
        );
        assert_eq!(
            observation(&egress, &Reach::of(&egress))
                .unwrap()
                .destination,
            Some(("x.example", 443))
        );
        assert!(observation(&egress, &Reach::of(&egress)).unwrap().sensitive);
        // A result that let an injection through taints; one that was refused does not.
        let mut result = tool("get_issue");
        result.phase = Some("result");
        result.findings = vec![Finding {
            kind: FindingKind::Injection,
            rule: "injection.override".into(),
            location: "/result".into(),
            score: 60,
        }];
        assert_eq!(read(&result), Some((false, true, true)));
        let redacted = result.findings.clone();
        result.redacted = redacted;
        assert_eq!(
            read(&result),
            Some((false, false, true)),
            "redacted, never read"
        );
        result.redacted.clear();
        result.outcome = "deny";
        assert_eq!(read(&result), Some((false, false, true)));
        // Refused identifications and detections themselves are not read.
        for (action, phase) in [("identify", "identify"), ("detect", "detect")] {
            let event = event(action, json!({}), Some(phase));
            assert!(observation(&event, &Reach::of(&event)).is_none());
        }
    }
}
