//! The detectors' task: reads the decision stream off the request path, records what they find
//! and, where configured, has the control plane quarantine the agent.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use warden_detect::{Detector, Detectors, Observation};

use crate::config::DetectSettings;
use crate::desk::Desk;
use crate::pipeline::DecisionEvent;
use crate::plumbing::State;

/// Follows the gateway's decisions until the stream closes.
pub(crate) async fn watch(state: Arc<State>, settings: DetectSettings, desk: Option<Arc<Desk>>) {
    let pipeline = &state.pipeline;
    let mut events = pipeline.subscribe();
    let mut detectors = Detectors::new(settings.detectors());
    let quarantine = settings.quarantine && desk.is_some();
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    "detectors fell behind the decision stream: {missed} decisions not seen"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(observation) = observation(&event) else {
            continue;
        };
        for detection in detectors.observe(&observation) {
            // A scan is an agent doing what no task needs; a storm of refusals may be a confused
            // agent as well as a probing one, so it is reported, not acted on.
            let quarantines = quarantine && detection.detector != Detector::DenyStorm;
            let response = if quarantines { "quarantine" } else { "alert" };
            tracing::warn!(
                agent = %detection.agent,
                detector = detection.detector.as_str(),
                "detection: {} ({response})",
                detection.summary
            );
            pipeline.record_detection(&detection, response);
            let Some(desk) = desk.as_ref().filter(|_| quarantines) else {
                continue;
            };
            let report = json!({
                "agent": detection.agent,
                "detector": detection.detector.as_str(),
                "summary": detection.summary,
                "evidence": detection.evidence,
                "quarantine": true,
            });
            if let Err(e) = desk.report_detection(&report).await {
                tracing::error!(agent = %detection.agent, "the detection's quarantine failed: {e}");
            }
        }
    }
}

/// A decision as the detectors read it; `None` for what is not an identified agent's call.
fn observation(event: &DecisionEvent) -> Option<Observation<'_>> {
    if event.agent.is_empty() || event.phase.is_some() {
        return None;
    }
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
        allowed: event.outcome == "allow",
        destination,
    })
}
