//! JSON-RPC 2.0 as MCP and A2A use it: one message per request, Warden's refusals and errors.

use serde_json::{Value, json};
use warden_model::Outcome;

use crate::pipeline::Verdict;

/// The error codes a protocol reserves for Warden's refusals (each protocol defines its own
/// codes in the server-error range, so Warden's must not collide with them).
#[derive(Clone, Copy)]
pub struct Codes {
    pub denied: i64,
    pub needs_approval: i64,
}

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
#[derive(Debug)]
pub struct Invalid {
    pub code: i64,
    pub message: String,
}

/// Redacts a request's `params` where the pipeline is configured to, before it is classified and
/// decided; when anything was redacted, `body` becomes the request rebuilt around the redacted
/// params (what is forwarded). Returns what was redacted, for the record.
pub fn redact_request(
    pipeline: &crate::pipeline::Pipeline,
    id: &Value,
    method: &str,
    params: &mut Value,
    body: &mut bytes::Bytes,
) -> Vec<warden_model::Finding> {
    if !pipeline.redacts_requests() {
        return Vec::new();
    }
    let redacted = pipeline.redact_request(params);
    if !redacted.is_empty() {
        let mut message = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method});
        if !params.is_null() {
            message["params"] = params.clone();
        }
        *body = bytes::Bytes::from(message.to_string());
    }
    redacted
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

/// The JSON-RPC error a refused call gets: what was refused and the decision id, nothing about
/// which policies exist.
pub fn refusal(id: &Value, verdict: &Verdict, what: &str, codes: Codes) -> Value {
    let decision = &verdict.decision;
    match &decision.outcome {
        Outcome::NeedsApproval { requirements } => {
            let mut message = format!(
                "{what} needs approval before it can run (decision {})",
                decision.id
            );
            if let Some(filed) = verdict.filed.first() {
                message.push_str(&format!(
                    "; approval request {filed} is with the approvers: once approved, retry \
                     with it (`_meta[\"warden/approval\"]` or the `Warden-Approval` header)"
                ));
            }
            for problem in &verdict.approval_problems {
                message.push_str(&format!("; {problem}"));
            }
            json!({
                "jsonrpc": "2.0", "id": id,
                "error": {
                    "code": codes.needs_approval,
                    "message": message,
                    "data": {
                        "outcome": "needs-approval",
                        "decisionId": decision.id.as_str(),
                        "approvals": verdict.filed,
                        "approvalProblems": verdict.approval_problems,
                        "requirements": requirements.iter().map(|r| json!({
                            "id": r.id, "group": r.group.as_str(), "required": r.required.get(),
                            "validForSeconds": r.valid_for_secs,
                        })).collect::<Vec<_>>(),
                    },
                },
            })
        }
        Outcome::Deny { reason, .. } => {
            let why = match reason {
                warden_model::DenyReason::NoMatchingGrant => "no policy allows it",
                warden_model::DenyReason::Forbidden => "a policy forbids it",
                warden_model::DenyReason::EvaluationError => "policy evaluation failed",
                warden_model::DenyReason::OutsideGrant => "the task grant does not cover it",
                warden_model::DenyReason::AuditUnavailable => {
                    "the audit log could not record it; nothing was forwarded"
                }
                warden_model::DenyReason::Quarantined => "the agent is quarantined",
                warden_model::DenyReason::Frozen => {
                    "all agent traffic is frozen (the kill switch is thrown)"
                }
                warden_model::DenyReason::ToolWithheld => {
                    "the tool is withheld: its definition changed since it was approved, or its description carries instructions (an admin approves it with `warden tools approve`)"
                }
            };
            json!({
                "jsonrpc": "2.0", "id": id,
                "error": {
                    "code": codes.denied,
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
}
