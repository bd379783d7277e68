//! The gateway's side of human co-signature and event gates, talking to the control plane with
//! the gateway's own token (role `gateway`): filing approval requests bound to the exact call,
//! spending approvals an agent presents, holding a call while approvers decide, and following
//! published events — each checked against the control plane's signature — for event gates.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_lc_rs::digest;
use http::Method;
use serde_json::{Value, json};
use warden_audit::NoteVerifier;
use warden_http::HttpClient;
use warden_model::Event;

/// Events older than this are forgotten (no gate waits longer).
const EVENT_MEMORY_SECS: i64 = 7 * 24 * 3600;
/// Most events kept for gates: the newest.
const MAX_EVENTS: usize = 1000;
const WATCH_SECONDS: u64 = 25;
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

pub struct Desk {
    client: HttpClient,
    base: String,
    authorization: String,
    /// How long a call that needs approval is held while approvers decide (0: answer at once).
    pub hold_for: Duration,
    event_key: NoteVerifier,
    events: RwLock<Arc<Vec<Event>>>,
    /// `server/tool` → the hash of its approved definition, as the control plane last said.
    pinned: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// `sha256:<hex>` of the canonical JSON (keys sorted at every level) of a call's arguments.
pub fn arguments_hash(arguments: Option<&serde_json::Map<String, Value>>) -> String {
    canonical_hash(&arguments.map_or(Value::Null, |a| Value::Object(a.clone())))
}

/// `sha256:<hex>` of a value's canonical JSON (keys sorted at every level).
pub fn canonical_hash(value: &Value) -> String {
    fn canonical(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    canonical(&map[key], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    canonical(value, &mut text);
    let digest = digest::digest(&digest::SHA256, text.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Desk {
    pub fn new(
        client: HttpClient,
        control_url: &str,
        token: &str,
        hold_for: Duration,
        event_key: NoteVerifier,
    ) -> Self {
        Self {
            client,
            base: control_url.trim_end_matches('/').to_owned(),
            authorization: format!("Bearer {}", token.trim()),
            hold_for,
            event_key,
            events: RwLock::new(Arc::new(Vec::new())),
            pinned: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Sends a request to the control plane; an error answer becomes its message.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let bytes = body.map(|b| b.to_string().into_bytes());
        let response = self
            .client
            .send(
                method,
                &url,
                &[
                    ("authorization", &self.authorization),
                    ("content-type", "application/json"),
                    ("accept", "application/json"),
                ],
                bytes,
                MAX_ANSWER_BYTES,
            )
            .await
            .map_err(|e| format!("the control plane is unreachable: {e}"))?;
        let value: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.status.is_success() {
            Ok(value)
        } else {
            Err(value["error"]["message"].as_str().map_or_else(
                || format!("the control plane answered {}", response.status),
                str::to_owned,
            ))
        }
    }

    /// Spends one use of approval `id` on this call; the requirement it satisfies, or why not.
    pub async fn spend(
        &self,
        id: &str,
        binding: &Value,
        decision_id: &str,
    ) -> Result<String, String> {
        let mut body = binding.clone();
        body["decisionId"] = json!(decision_id);
        let answer = self
            .call(
                Method::POST,
                &format!("/v1/approvals/{id}/use"),
                Some(&body),
            )
            .await?;
        answer["requirement"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "the control plane's answer names no requirement".into())
    }

    /// Reports a detection to the control plane, which records it and — when `quarantine` is
    /// asked — quarantines the agent.
    pub async fn report_detection(&self, report: &Value) -> Result<Value, String> {
        self.call(Method::POST, "/v1/detections", Some(report))
            .await
    }

    /// Files an approval request; its id.
    pub async fn file(&self, request: &Value) -> Result<String, String> {
        let answer = self
            .call(Method::POST, "/v1/approvals", Some(request))
            .await?;
        answer["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "the control plane's answer has no approval id".into())
    }

    /// Waits (up to `hold_for`) while approval `id` is pending; its status then.
    pub async fn wait(&self, id: &str) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + self.hold_for;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait = left.as_secs().clamp(1, WATCH_SECONDS);
            let answer = self
                .call(
                    Method::GET,
                    &format!("/v1/approvals/{id}?wait={wait}"),
                    None,
                )
                .await?;
            let status = answer["status"].as_str().unwrap_or("unknown").to_owned();
            if status != "pending" || tokio::time::Instant::now() >= deadline {
                return Ok(status);
            }
        }
    }

    /// Whether a tool's definition is the one pinned for it (the first seen, or the last an
    /// admin approved); a changed one is reported and held pending at the control plane.
    pub async fn tool_approved(
        &self,
        server: &str,
        tool: &str,
        definition: &Value,
    ) -> Result<bool, String> {
        let key = format!("{server}/{tool}");
        let hash = canonical_hash(definition);
        if self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .is_some_and(|h| *h == hash)
        {
            return Ok(true);
        }
        let seen = json!({"server": server, "tool": tool, "hash": hash, "definition": definition});
        let answer = self
            .call(Method::POST, "/v1/tools/observe", Some(&seen))
            .await?;
        let approved = answer["status"] == "approved";
        if approved {
            self.pinned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, hash);
        }
        Ok(approved)
    }

    /// Recent published events, for event gates.
    pub fn events(&self) -> Arc<Vec<Event>> {
        Arc::clone(&self.events.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes in newly published events whose signature checks; others are logged and dropped.
    fn take(&self, answer: &Value) -> u64 {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut fresh = Vec::new();
        for signed in answer["events"].as_array().into_iter().flatten() {
            let note = signed["note"].as_str().unwrap_or_default();
            match self
                .event_key
                .open(note)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_json::from_str::<Event>(text.trim_end()).map_err(|e| e.to_string())
                }) {
                Ok(event) => fresh.push(event),
                Err(e) => tracing::error!("dropping an event whose signature does not check: {e}"),
            }
        }
        if !fresh.is_empty() {
            let mut events = self.events.write().unwrap_or_else(|p| p.into_inner());
            let mut all: Vec<Event> = events
                .iter()
                .cloned()
                .chain(fresh)
                .filter(|e| now - e.time <= EVENT_MEMORY_SECS)
                .collect();
            let excess = all.len().saturating_sub(MAX_EVENTS);
            all.drain(..excess);
            *events = Arc::new(all);
        }
        answer["version"].as_u64().unwrap_or(0)
    }

    /// Follows published events for as long as the gateway runs.
    pub async fn follow_events(self: Arc<Self>) {
        let mut since = 0;
        let mut backoff = Duration::from_millis(250);
        loop {
            let path = format!("/v1/events?since={since}&wait={WATCH_SECONDS}");
            match self.call(Method::GET, &path, None).await {
                Ok(answer) => {
                    since = since.max(self.take(&answer));
                    backoff = Duration::from_millis(250);
                }
                Err(e) => {
                    tracing::warn!("event watch failed, retrying in {backoff:?}: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arguments_hash_ignores_key_order_but_not_values() {
        let a: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "v"}}"#).unwrap_or_default();
        let b: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"a": {"x": "v", "y": [1, 2]}, "b": 1}"#).unwrap_or_default();
        let c: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"a": {"x": "v", "y": [2, 1]}, "b": 1}"#).unwrap_or_default();
        assert_eq!(arguments_hash(Some(&a)), arguments_hash(Some(&b)));
        assert_ne!(arguments_hash(Some(&a)), arguments_hash(Some(&c)));
        assert_ne!(arguments_hash(Some(&a)), arguments_hash(None));
    }
}
