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
    Notification {
        method: String,
        params: Value,
    },
    /// A response to a request the server sent (sampling, elicitation, roots): a `result` or an
    /// `error`, which the agent's text goes out in.
    Response,
}

/// A JSON-RPC id as a key that matches by value: the upstream's `1.0` answers the request `1`,
/// the string `"1"` does not. `None` for what is not an id.
pub fn id_key(id: &Value) -> Option<String> {
    match id {
        Value::String(s) => Some(format!("s{s}")),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(format!("n{i}"))
            } else if let Some(u) = n.as_u64() {
                Some(format!("n{u}"))
            } else {
                let f = n.as_f64()?;
                // Integral floats inside i64 stand for that integer; anything else never matches
                // a request (requests' ids are checked to be exact integers or strings).
                (f.fract() == 0.0 && f.abs() < 9.2e18).then(|| format!("n{}", f as i64))
            }
        }
        _ => None,
    }
}

/// Whether a request id comes back exactly as sent: a string, or an integer that fits 64 bits
/// (a larger or fractional number would be read as a float and answered rounded).
fn exact_id(id: &Value) -> bool {
    match id {
        Value::String(s) => s.len() <= 1024,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        _ => false,
    }
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

/// Reads one JSON-RPC message from a client, strictly (see [`crate::json`]): a request needs an
/// id that comes back exactly as sent; a message with a method and no id is a notification;
/// one with an id and a `result` or `error` is a response to the server.
pub fn parse(body: &[u8]) -> Result<Message, Invalid> {
    let value = crate::json::parse_strict(body).map_err(|e| Invalid {
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
    let (result, error) = (object.remove("result"), object.remove("error"));
    let params = object.remove("params").unwrap_or(Value::Null);
    if !matches!(params, Value::Object(_) | Value::Array(_) | Value::Null) {
        return Err(invalid("`params` must be an object or an array"));
    }
    match (method, id) {
        (Some(Value::String(_)), Some(id)) if !exact_id(&id) => Err(invalid(
            "`id` must be a string (at most 1 KiB) or an integer within 64 bits, so its answer carries it back exactly",
        )),
        (Some(Value::String(method)), Some(id)) if result.is_none() && error.is_none() => {
            Ok(Message::Request { id, method, params })
        }
        (Some(Value::String(method)), None) if result.is_none() && error.is_none() => {
            Ok(Message::Notification { method, params })
        }
        (None, Some(id)) if exact_id(&id) && params.is_null() => match (result, error) {
            (Some(_), None) | (None, Some(_)) => Ok(Message::Response),
            _ => Err(invalid(
                "a response carries exactly one of `result` and `error`",
            )),
        },
        _ => Err(invalid(
            "not a JSON-RPC request, notification or response (check `method`, `id`, `result` and `error`)",
        )),
    }
}

/// The id of a body that is a JSON-RPC request (read as [`parse`] reads it), if it is one.
pub fn request_id(body: &[u8]) -> Option<Value> {
    match parse(body) {
        Ok(Message::Request { id, .. }) => Some(id),
        _ => None,
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
                warden_model::DenyReason::NotForwarded => "the message is not one Warden forwards",
                warden_model::DenyReason::Unidentified => "the caller could not be identified",
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
            b"{\"jsonrpc\":\"2.0\",\"id\":18446744073709551616,\"method\":\"ping\"}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"ping\"}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"result\":{}}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{},\"error\":{}}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":\"x\"}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"name\":\"b\"}}",
        ] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn messages_without_an_id_are_notifications_and_answers_are_responses() {
        let body = br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_records"}}"#;
        assert!(
            matches!(parse(body), Ok(Message::Notification { method, .. }) if method == "tools/call")
        );
        let body = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#;
        assert!(matches!(parse(body), Ok(Message::Response)));
    }

    #[test]
    fn ids_match_by_value() {
        let key = |text: &str| id_key(&serde_json::from_str(text).unwrap());
        assert_eq!(key("1"), key("1.0"));
        assert_ne!(key("1"), key("\"1\""));
        assert_eq!(key("-3"), key("-3.0"));
        assert_eq!(key("1.5"), None);
        assert_eq!(key("null"), None);
    }
}
