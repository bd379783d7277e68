//! The MCP adapter (streamable HTTP): classifies JSON-RPC messages into actions, forwards them,
//! filters listings to what the caller may use, and binds sessions to the agent that opened them.
//! It never decides; the pipeline does.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Map, Value, json};
use warden_model::{Action, Name, Outcome, SpiffeId};

use crate::pipeline::Verdict;

/// JSON-RPC error codes Warden answers with (the implementation-defined server-error range).
pub const DENIED: i64 = -32001;
pub const NEEDS_APPROVAL: i64 = -32002;

/// A JSON-RPC message from the client.
pub enum Message {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification,
    /// A response to a request the server sent (sampling, elicitation).
    Response,
}

/// Why a body is not a JSON-RPC message Warden will forward.
pub struct Invalid {
    pub code: i64,
    pub message: String,
}

pub fn parse(body: &[u8]) -> Result<Message, Invalid> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Invalid {
        code: -32700,
        message: format!("parse error: {e}"),
    })?;
    let invalid = |message: &str| Invalid {
        code: -32600,
        message: message.to_owned(),
    };
    let Value::Object(mut object) = value else {
        return Err(invalid(
            "send one JSON-RPC message per request; batches are not accepted",
        ));
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("`jsonrpc` must be \"2.0\""));
    }
    let method = object.remove("method");
    let id = object.remove("id");
    match (method, id) {
        (Some(Value::String(method)), Some(id)) if id.is_string() || id.is_number() => {
            Ok(Message::Request {
                id,
                method,
                params: object.remove("params").unwrap_or(Value::Null),
            })
        }
        (Some(Value::String(_)), None) => Ok(Message::Notification),
        (None, Some(_)) if object.contains_key("result") || object.contains_key("error") => {
            Ok(Message::Response)
        }
        _ => Err(invalid(
            "not a JSON-RPC request, notification or response (check `method` and `id`)",
        )),
    }
}

/// A listing whose result Warden filters to what the caller may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    Tools,
    Resources,
    Prompts,
}

impl Listing {
    fn key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Resources => "resources",
            Self::Prompts => "prompts",
        }
    }

    /// The action a listed item stands for, if the item is well-formed.
    fn item_action(self, server: &Name, item: &Value) -> Option<Action> {
        match self {
            Self::Tools => Some(Action::McpToolsCall {
                server: server.clone(),
                tool: Name::new(item.get("name")?.as_str()?).ok()?,
                args: Map::new(),
            }),
            Self::Resources => Some(Action::McpResourcesRead {
                server: server.clone(),
                uri: item.get("uri")?.as_str()?.to_owned(),
            }),
            Self::Prompts => Some(Action::McpPromptsGet {
                server: server.clone(),
                prompt: Name::new(item.get("name")?.as_str()?).ok()?,
                args: Map::new(),
            }),
        }
    }
}

/// What a request means for the pipeline.
pub enum Classified {
    /// Decide this action; forward only if allowed.
    Action(Action),
    /// Forward (decided as `Some(action)` first, if given), then filter the listing in the result.
    Listing(Listing, Option<Action>),
    /// Session plumbing that touches nothing: forwarded for any identified caller.
    Plumbing,
    /// Not forwarded.
    Refused(Invalid),
}

fn arguments(params: &Value) -> Result<Map<String, Value>, Invalid> {
    match params.get("arguments") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(args)) => Ok(args.clone()),
        Some(_) => Err(Invalid {
            code: -32602,
            message: "`arguments` must be an object".into(),
        }),
    }
}

fn name_param(params: &Value, what: &str) -> Result<Name, Invalid> {
    let raw = params.get("name").and_then(Value::as_str).ok_or(Invalid {
        code: -32602,
        message: format!("`params.name` (the {what}) is required"),
    })?;
    Name::new(raw).map_err(|e| Invalid {
        code: -32602,
        message: format!(
            "{what} name `{}`: {e}",
            raw.chars().take(80).collect::<String>()
        ),
    })
}

pub fn classify(server: &Name, method: &str, params: &Value) -> Classified {
    let action = match method {
        "tools/call" => name_param(params, "tool").and_then(|tool| {
            Ok(Action::McpToolsCall {
                server: server.clone(),
                tool,
                args: arguments(params)?,
            })
        }),
        "prompts/get" => name_param(params, "prompt").and_then(|prompt| {
            Ok(Action::McpPromptsGet {
                server: server.clone(),
                prompt,
                args: arguments(params)?,
            })
        }),
        "resources/read" => match params.get("uri").and_then(Value::as_str) {
            Some(uri) if uri.len() <= Action::MAX_URI_LEN => Ok(Action::McpResourcesRead {
                server: server.clone(),
                uri: uri.to_owned(),
            }),
            _ => Err(Invalid {
                code: -32602,
                message: "`params.uri` is required (at most 8 KiB)".into(),
            }),
        },
        "tools/list" => {
            return Classified::Listing(
                Listing::Tools,
                Some(Action::McpToolsList {
                    server: server.clone(),
                }),
            );
        }
        "resources/list" => return Classified::Listing(Listing::Resources, None),
        "prompts/list" => return Classified::Listing(Listing::Prompts, None),
        "initialize"
        | "ping"
        | "logging/setLevel"
        | "completion/complete"
        | "resources/templates/list"
        | "resources/subscribe"
        | "resources/unsubscribe" => {
            return Classified::Plumbing;
        }
        other => {
            return Classified::Refused(Invalid {
                code: -32601,
                message: format!(
                    "method `{}` is not forwarded by Warden",
                    other.chars().take(80).collect::<String>()
                ),
            });
        }
    };
    match action {
        Ok(action) => Classified::Action(action),
        Err(invalid) => Classified::Refused(invalid),
    }
}

/// The stated intent: `params._meta["warden/intent"]`, else the `Warden-Intent` header.
pub fn intent(params: &Value, header: Option<&str>) -> Option<String> {
    params
        .get("_meta")
        .and_then(|m| m.get("warden/intent"))
        .and_then(Value::as_str)
        .or(header)
        .map(|s| s.chars().take(1024).collect())
}

/// The JSON-RPC error a refused call gets: what was refused and the decision id, nothing about
/// which policies exist.
pub fn refusal(id: &Value, verdict: &Verdict, what: &str) -> Value {
    let decision = &verdict.decision;
    match &decision.outcome {
        Outcome::NeedsApproval { requirements } => json!({
            "jsonrpc": "2.0", "id": id,
            "error": {
                "code": NEEDS_APPROVAL,
                "message": format!("{what} needs approval before it can run (decision {})", decision.id),
                "data": {
                    "outcome": "needs-approval",
                    "decisionId": decision.id.as_str(),
                    "requirements": requirements.iter().map(|r| json!({
                        "id": r.id, "group": r.group.as_str(), "required": r.required.get(),
                        "validForSeconds": r.valid_for_secs,
                    })).collect::<Vec<_>>(),
                },
            },
        }),
        Outcome::Deny { reason, .. } => {
            let why = match reason {
                warden_model::DenyReason::NoMatchingGrant => "no policy allows it",
                warden_model::DenyReason::Forbidden => "a policy forbids it",
                warden_model::DenyReason::EvaluationError => "policy evaluation failed",
                warden_model::DenyReason::OutsideGrant => "the task grant does not cover it",
            };
            json!({
                "jsonrpc": "2.0", "id": id,
                "error": {
                    "code": DENIED,
                    "message": format!("Warden denied {what}: {why} (decision {})", decision.id),
                    "data": {"outcome": "deny", "reason": reason, "decisionId": decision.id.as_str()},
                },
            })
        }
        Outcome::Allow => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
    }
}

pub fn error(id: &Value, invalid: &Invalid) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": invalid.code, "message": invalid.message}})
}

/// Removes from a JSON-RPC response to a listing every item `may` refuses. Other messages are
/// returned unchanged.
pub fn filter_listing(
    message: &mut Value,
    listing: Listing,
    server: &Name,
    may: &dyn Fn(&Action) -> bool,
) {
    let Some(items) = message
        .get_mut("result")
        .and_then(|r| r.get_mut(listing.key()))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    items.retain(|item| {
        listing
            .item_action(server, item)
            .is_some_and(|action| may(&action))
    });
}

/// Which agent opened each MCP session; another agent presenting the id is treated as unknown.
pub struct Sessions {
    capacity: usize,
    inner: Mutex<(HashMap<String, SpiffeId>, VecDeque<String>)>,
}

impl Sessions {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    pub fn bind(&self, session: &str, agent: &SpiffeId) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (owners, order) = &mut *guard;
        while owners.len() >= self.capacity {
            match order.pop_front() {
                Some(oldest) => {
                    owners.remove(&oldest);
                }
                None => break,
            }
        }
        if owners.insert(session.to_owned(), agent.clone()).is_none() {
            order.push_back(session.to_owned());
        }
    }

    /// Whether `agent` opened `session`.
    pub fn owned_by(&self, session: &str, agent: &SpiffeId) -> bool {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.get(session) == Some(agent)
    }

    pub fn end(&self, session: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.remove(session);
        guard.1.retain(|s| s != session);
    }
}

/// Splits an SSE stream into events as bytes arrive, and rewrites each `data:` payload with
/// `rewrite`; comments, ids and event names pass unchanged.
pub struct SseRewriter<F> {
    buffer: Vec<u8>,
    rewrite: F,
}

impl<F: FnMut(&str) -> String> SseRewriter<F> {
    pub fn new(rewrite: F) -> Self {
        Self {
            buffer: Vec::new(),
            rewrite,
        }
    }

    /// Feeds bytes; returns the complete events rewritten.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some((end, sep)) = event_end(&self.buffer) {
            let event: Vec<u8> = self.buffer.drain(..end + sep).collect();
            out.extend(self.rewrite_event(&event[..end]));
            out.extend_from_slice(b"\n\n");
        }
        out
    }

    /// Whatever remains when the stream ends.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.buffer);
        if rest.is_empty() {
            Vec::new()
        } else {
            self.rewrite_event(&rest)
        }
    }

    fn rewrite_event(&mut self, event: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(event);
        let mut data = Vec::new();
        let mut other = Vec::new();
        for line in text.lines() {
            match line.strip_prefix("data:") {
                Some(d) => data.push(d.strip_prefix(' ').unwrap_or(d)),
                None => other.push(line),
            }
        }
        let mut out = other.join("\n");
        if !data.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            out += "data: ";
            out += &(self.rewrite)(&data.join("\n"));
        }
        out.into_bytes()
    }
}

/// Where the first event ends in `buffer`, and the length of the blank-line separator.
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_malformed_messages_are_refused() {
        for body in [
            &b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]"[..],
            b"{",
            b"{\"id\":1,\"method\":\"ping\"}",
            b"{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"ping\"}",
            b"\"x\"",
        ] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn sse_events_are_rewritten_across_chunk_boundaries() {
        let mut r = SseRewriter::new(|d: &str| d.to_uppercase());
        let mut out = r.feed(b"event: message\nid: 1\ndata: {\"a\"");
        assert!(out.is_empty());
        out.extend(r.feed(b":1}\n\n: keepalive\n\ndata: x\r\n\r\n"));
        out.extend(r.finish());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "event: message\nid: 1\ndata: {\"A\":1}\n\n: keepalive\n\ndata: X\n\n"
        );
    }

    #[test]
    fn sessions_are_bound_to_their_agent_and_bounded() {
        let a = SpiffeId::new("spiffe://td/tenant/t/agent/a/1").unwrap();
        let b = SpiffeId::new("spiffe://td/tenant/t/agent/b/1").unwrap();
        let sessions = Sessions::new(2);
        sessions.bind("s1", &a);
        assert!(sessions.owned_by("s1", &a) && !sessions.owned_by("s1", &b));
        sessions.bind("s2", &b);
        sessions.bind("s3", &b);
        assert!(
            !sessions.owned_by("s1", &a),
            "the oldest session was evicted"
        );
        sessions.end("s3");
        assert!(!sessions.owned_by("s3", &b));
    }
}
