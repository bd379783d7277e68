//! Events that unlock actions for a while (event gates): published by authorised publishers —
//! monitoring systems and people with the publisher role, never agents, which hold no admin
//! token — recorded in the control audit trail, and signed by the control plane so gateways
//! (and anyone holding `control-audit.pub`) can check them wherever they travel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use warden_model::{Event, EventType};

use crate::control::{AdminRecord, Control, ControlError, bad, now, random_hex};
use crate::store::EVENTS;

const MAX_ATTRIBUTES: usize = 32;
const MAX_ATTRIBUTE_BYTES: usize = 256;
/// Most events one answer carries; a gateway asks again from the last one.
const MAX_EVENTS_PER_ANSWER: usize = 1000;

/// What a publisher sends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishEvent {
    #[serde(rename = "type")]
    pub event_type: EventType,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// A published event, its sequence number, and the control plane's signature over it: a C2SP
/// signed note whose text is the event's JSON on one line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedEvent {
    pub sequence: u64,
    pub event: Event,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsView {
    /// The newest sequence number this answer reaches.
    pub version: u64,
    pub events: Vec<SignedEvent>,
}

impl Control {
    pub fn publish_event(
        &self,
        request: PublishEvent,
        publisher: &AdminRecord,
    ) -> Result<SignedEvent, ControlError> {
        if request.attributes.len() > MAX_ATTRIBUTES {
            return Err(bad(format!("at most {MAX_ATTRIBUTES} attributes")));
        }
        if let Some((key, _)) = request.attributes.iter().find(|(k, v)| {
            k.is_empty() || k.len() > MAX_ATTRIBUTE_BYTES || v.len() > MAX_ATTRIBUTE_BYTES
        }) {
            return Err(bad(format!(
                "attribute `{key}`: names are 1 to {MAX_ATTRIBUTE_BYTES} bytes, values at most {MAX_ATTRIBUTE_BYTES}"
            )));
        }
        let event = Event {
            id: format!("evt_{}", random_hex(12)?),
            event_type: request.event_type,
            time: now().unix_timestamp(),
            publisher: publisher.name.clone(),
            attributes: request.attributes,
        };
        let line =
            serde_json::to_string(&event).map_err(|e| ControlError::Internal(e.to_string()))?;
        let note = self.trail().sign(&format!("{line}\n"));
        // Recorded before it is published: an event nobody can account for never unlocks anything.
        self.trail()
            .record(json!({"action": "event.published", "event": event}))?;
        let mut signed = SignedEvent {
            sequence: 0,
            event,
            note,
        };
        signed.sequence = self.store().append_numbered(EVENTS, &signed)?;
        self.events_version().send_replace(signed.sequence);
        Ok(signed)
    }

    /// Events after sequence `since`, oldest first (at most a thousand per answer).
    pub fn events_since(&self, since: u64) -> Result<EventsView, ControlError> {
        let events: Vec<SignedEvent> = self
            .store()
            .numbered_since(EVENTS, since, MAX_EVENTS_PER_ANSWER)?
            .into_iter()
            .map(|(sequence, mut signed): (u64, SignedEvent)| {
                signed.sequence = sequence;
                signed
            })
            .collect();
        let version = events.last().map_or(since, |e| e.sequence);
        Ok(EventsView { version, events })
    }

    /// The key that checks events' signatures (and the control audit trail's checkpoints).
    pub fn event_key(&self) -> String {
        self.trail().verifier_key()
    }
}
