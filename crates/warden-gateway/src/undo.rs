//! Undo: the compensating call of a reversible tool call, made on the original agent's behalf at
//! an admin's request (`POST /actions/undo` with the admin's token; `warden actions undo`). The
//! decision to undo comes from this gateway's audit log, the compensating call from the policy
//! bundle's ToolCatalog (`undo:`), and the call goes through the same pipeline — decided by
//! policy for the original agent, recorded with `undoOf` and `undoneBy` — before it is sent.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use warden_model::{Action, AgentIdentity, Name, SpiffeId, TaskId};
use warden_policy::UndoArgument;

use crate::config::UpstreamKind;
use crate::identify::{Authority, Caller, ClientAddress};
use crate::pipeline::Said;
use crate::plumbing::{
    Body, State, Upstream, call_upstream, json_response, problem, read_body, read_request_body,
};
use crate::sse::SseRewriter;

const MAX_ANSWER_BYTES: usize = 1 << 20;

fn refuse(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    problem(status, code, message)
}

/// GETs `path` from the control plane with the admin's token: the answer's status and JSON.
async fn control_get(
    state: &State,
    token: &str,
    path: &str,
) -> Result<(StatusCode, Value), Response<Body>> {
    let url = format!("{}{path}", state.config.control_url.trim_end_matches('/'));
    let auth = format!("Bearer {token}");
    let answer = state
        .client
        .send(
            Method::GET,
            &url,
            &[("authorization", &auth)],
            None,
            MAX_ANSWER_BYTES,
        )
        .await
        .map_err(|e| {
            refuse(
                StatusCode::BAD_GATEWAY,
                "control_unreachable",
                &e.to_string(),
            )
        })?;
    Ok((
        answer.status,
        serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
    ))
}

/// Asks the control plane who the token belongs to; only admins undo.
async fn admin_name(state: &State, token: &str) -> Result<String, Response<Body>> {
    let (status, who) = control_get(state, token, "/v1/whoami").await?;
    if !status.is_success() {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            who["error"]["message"]
                .as_str()
                .unwrap_or("unknown admin token"),
        ));
    }
    if who["role"] != "admin" {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "undo needs an admin token (role admin)",
        ));
    }
    Ok(who["name"].as_str().unwrap_or_default().to_owned())
}

/// The labels the registry holds for the agent an ID names (its last `agent/<name>`).
async fn registry_labels(
    state: &State,
    token: &str,
    id: &SpiffeId,
) -> Result<Value, Response<Body>> {
    let segments: Vec<&str> = id.segments().collect();
    let (Some(tenant), Some(name)) = (segments.get(1), segments.iter().rev().nth(1)) else {
        return Err(refuse(
            StatusCode::CONFLICT,
            "not_an_agent",
            "the record names no agent",
        ));
    };
    let (status, agent) = control_get(state, token, &format!("/v1/agents/{tenant}/{name}")).await?;
    if !status.is_success() {
        return Err(refuse(
            StatusCode::CONFLICT,
            "agent_unknown",
            &format!("agent {tenant}/{name} is not registered any more"),
        ));
    }
    Ok(agent["labels"].clone())
}

/// The record of decision `id`, and whether a later record already undid it.
fn find(dir: &std::path::Path, id: &str) -> Result<(Option<Value>, Option<String>), String> {
    let reader = warden_audit::LogReader::open(dir).map_err(|e| e.to_string())?;
    let (mut found, mut undone) = (None, None);
    for record in reader.records(0).map_err(|e| e.to_string())? {
        let (_, bytes) = record.map_err(|e| e.to_string())?;
        let Ok(record) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if record["decisionId"] == id {
            found = Some(record);
        } else if record["undoOf"] == id && record["outcome"] == "allow" {
            undone = record["decisionId"].as_str().map(str::to_owned);
        }
    }
    Ok((found, undone))
}

/// The compensating call's arguments from the original call's.
fn arguments(
    spec: &std::collections::BTreeMap<String, UndoArgument>,
    original: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    spec.iter()
        .map(|(name, source)| match source {
            UndoArgument::Value(value) => Ok((name.clone(), value.clone())),
            UndoArgument::Arg(arg) => original
                .get(arg)
                .cloned()
                .map(|value| (name.clone(), value))
                .ok_or_else(|| format!("the original call has no argument `{arg}` for `{name}`")),
        })
        .collect()
}

pub async fn handle(state: &State, request: Request<Incoming>) -> Response<Body> {
    if request.method() != Method::POST {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST {\"decisionId\": …}",
        );
    }
    let Some(token) = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send an admin token: `Authorization: Bearer wdn_…`",
        );
    };
    let source = request.extensions().get::<ClientAddress>().map(|a| a.0);
    let admin = match admin_name(state, &token).await {
        Ok(name) => name,
        Err(response) => return response,
    };
    let (head, body) = request.into_parts();
    let body = match read_request_body(state, &head.headers, body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let decision = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["decisionId"].as_str().map(str::to_owned))
        .filter(|d| d.len() == 32 && d.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(decision) = decision else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "send {\"decisionId\": \"<32 hex digits>\"}",
        );
    };
    if !state.config.audit.enabled {
        return refuse(
            StatusCode::CONFLICT,
            "no_audit_log",
            "undo finds decisions in the audit log, which is off on this gateway",
        );
    }
    if state.config.audit.redact_arguments {
        return refuse(
            StatusCode::CONFLICT,
            "arguments_redacted",
            "this gateway records arguments as hashes (redactArguments), so no compensating call can be built from them",
        );
    }
    let dir = state.config.audit.dir();
    let lookup = {
        let decision = decision.clone();
        tokio::task::spawn_blocking(move || find(&dir, &decision)).await
    };
    let record = match lookup {
        Ok(Ok((Some(record), None))) => record,
        Ok(Ok((None, _))) => {
            return refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no decision {decision} in this gateway's audit log"),
            );
        }
        Ok(Ok((Some(_), Some(by)))) => {
            return refuse(
                StatusCode::CONFLICT,
                "already_undone",
                &format!("decision {decision} was undone already (decision {by})"),
            );
        }
        Ok(Err(e)) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "audit_unreadable", &e),
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            );
        }
    };
    if record["outcome"] != "allow" || record["action"] != "mcp.tools/call" {
        return refuse(
            StatusCode::CONFLICT,
            "not_undoable",
            &format!("decision {decision} is not an allowed MCP tool call; only those are undone"),
        );
    }
    let (server, tool) = (
        record["target"]["server"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        record["target"]["tool"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    let bundle = state.pipeline.policy().current();
    let Some(spec) = bundle.undo_for(&server, &tool).cloned() else {
        return refuse(
            StatusCode::CONFLICT,
            "not_reversible",
            &format!("tool {server}/{tool} is not declared reversible (a ToolCatalog `undo:`)"),
        );
    };
    let original = record["arguments"].as_object().cloned().unwrap_or_default();
    let args = match arguments(&spec.arguments, &original) {
        Ok(args) => args,
        Err(e) => return refuse(StatusCode::CONFLICT, "not_undoable", &e),
    };
    let Some(upstream) = state
        .upstreams
        .iter()
        .find(|u| u.config.name.as_str() == server && u.config.kind == UpstreamKind::Mcp)
    else {
        return refuse(
            StatusCode::CONFLICT,
            "no_upstream",
            &format!("no streamable-HTTP MCP upstream {server} on this gateway"),
        );
    };
    // The original agent, as the registry describes it now.
    let identity = match record["agent"].as_str().and_then(|a| SpiffeId::new(a).ok()) {
        Some(id) => {
            let labels = match registry_labels(state, &token, &id).await {
                Ok(labels) => labels,
                Err(response) => return response,
            };
            let task = record["task"].as_str().and_then(|t| TaskId::new(t).ok());
            match serde_json::from_value(labels)
                .map_err(|e| e.to_string())
                .and_then(|labels| AgentIdentity::new(id, labels, task).map_err(|e| e.to_string()))
            {
                Ok(identity) => identity,
                Err(e) => return refuse(StatusCode::CONFLICT, "not_an_agent", &e),
            }
        }
        None => {
            return refuse(
                StatusCode::CONFLICT,
                "not_an_agent",
                "the record names no agent",
            );
        }
    };
    let (Ok(server_name), Ok(tool_name)) =
        (Name::new(server.clone()), Name::new(spec.tool.clone()))
    else {
        return refuse(
            StatusCode::CONFLICT,
            "not_undoable",
            "the compensating call names an invalid tool",
        );
    };
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": spec.tool, "arguments": args}});
    let caller = Caller {
        identity,
        authority: Authority::Undo {
            by: admin.clone(),
            of: decision.clone(),
        },
        source,
        process: None,
        answer_after: crate::gate::AnswerGate::default(),
    };
    let action = Action::McpToolsCall {
        server: server_name,
        tool: tool_name,
        args: args.clone(),
    };
    let said = Said {
        intent: Some(format!("undo of decision {decision}, asked by {admin}")),
        ..Said::default()
    };
    let verdict = state
        .pipeline
        .decide(&caller, action, call.to_string().as_bytes(), said)
        .await;
    if !verdict.allowed() {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": {"code": "refused", "message": format!(
                "policy does not allow the compensating call {server}/{} for this agent: {} (decision {})",
                spec.tool, verdict.decision.outcome.label(), verdict.decision.id)},
                "decisionId": verdict.decision.id.as_str(), "outcome": verdict.decision.outcome.label()}),
        );
    }
    let answered = call_tool(state, upstream, &call).await;
    // The admin's answer waits for the compensating call's record to be on disk, as an agent's.
    if let Err(why) = caller.answer_after.opened().await {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            &format!(
                "the compensating call was forwarded, but its record could not be made durable: {why}"
            ),
        );
    }
    match answered {
        Ok(result) => json_response(
            StatusCode::OK,
            &json!({"decisionId": verdict.decision.id.as_str(), "undoOf": decision,
                    "call": {"server": server, "tool": spec.tool, "arguments": args}, "result": result}),
        ),
        Err(e) => refuse(
            StatusCode::BAD_GATEWAY,
            "upstream_failed",
            &format!(
                "the compensating call was allowed (decision {}) but failed: {e}",
                verdict.decision.id
            ),
        ),
    }
}

/// One JSON-RPC exchange with a streamable-HTTP MCP server: the answer to `message` (JSON or
/// in the SSE stream), and the session id the server gave.
async fn exchange(
    state: &State,
    upstream: &Upstream,
    session: Option<&str>,
    message: &Value,
) -> Result<(Option<String>, Option<Value>), String> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    if let Some(session) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert("mcp-session-id", session);
    }
    let response = call_upstream(
        state,
        upstream,
        Method::POST,
        &upstream.config.url,
        &headers,
        |_| true,
        Bytes::from(message.to_string()),
    )
    .await
    .map_err(|r| format!("the upstream answered {}", r.status()))?;
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = response.status();
    let body = tokio::time::timeout(
        Duration::from_secs(30),
        read_body(state, response.into_body()),
    )
    .await
    .map_err(|_| "the upstream did not answer in 30 s".to_owned())?
    .map_err(|r| format!("the upstream's answer was unreadable ({})", r.status()))?;
    if !status.is_success() {
        return Err(format!("the upstream answered {status}"));
    }
    let id = &message["id"];
    if id.is_null() {
        return Ok((session, None));
    }
    let answer = serde_json::from_slice::<Value>(&body).ok().or_else(|| {
        let mut payloads = Vec::new();
        let mut events = SseRewriter::new(|_: &str, data: &str| {
            payloads.push(data.to_owned());
            String::new()
        });
        events.feed(&body);
        events.finish();
        drop(events);
        payloads
            .iter()
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .find(|v| v["id"] == *id)
    });
    Ok((session, answer))
}

/// Calls one tool in a fresh session (initialize, initialized, the call, end of session).
async fn call_tool(state: &State, upstream: &Upstream, call: &Value) -> Result<Value, String> {
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "warden-undo", "version": env!("CARGO_PKG_VERSION")}}});
    let (session, answer) = exchange(state, upstream, None, &initialize).await?;
    if answer.as_ref().is_none_or(|a| a.get("result").is_none()) {
        return Err(format!(
            "initialize failed: {}",
            answer.unwrap_or(Value::Null)
        ));
    }
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    exchange(state, upstream, session.as_deref(), &initialized).await?;
    let (_, answer) = exchange(state, upstream, session.as_deref(), call).await?;
    if let Some(session) = session
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        let mut headers = HeaderMap::new();
        headers.insert("mcp-session-id", session);
        let _ = call_upstream(
            state,
            upstream,
            Method::DELETE,
            &upstream.config.url,
            &headers,
            |_| true,
            Bytes::new(),
        )
        .await;
    }
    match answer {
        Some(answer) if answer.get("result").is_some() => Ok(answer["result"].clone()),
        Some(answer) => Err(format!("the server refused the call: {}", answer["error"])),
        None => Err("the server gave no answer".into()),
    }
}
