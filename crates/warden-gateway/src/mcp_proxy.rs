//! Serves MCP upstreams: `/mcp/<server>` over streamable HTTP, and `/mcp/<server>/sse` with
//! `/mcp/<server>/messages` over the older HTTP+SSE transport (protocol 2024-11-05). Both
//! identify the caller, screen each JSON-RPC message with the pipeline, keep sessions with the
//! agent that opened them, and filter listings to what the caller may use.

// The `Err` of the server helpers is the early response that ends the request.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use tokio::sync::mpsc;
use warden_model::{Action, Name, SpiffeId};

use crate::identify::Caller;
use crate::jsonrpc::{self, Message};
use crate::mcp::{self, Awaited, Classified, Listing};
use crate::pipeline::Said;
use crate::reviewed::{is_event_stream, read_whole, relay_reviewed, review_answer};
use crate::server::{
    Body, BoxError, State, Upstream, call_upstream, describe, full, identify, identify_method,
    json_response, problem, read_body, relay,
};
use crate::sse::SseRewriter;

/// Headers a client's request may carry to an MCP upstream; everything else (its credentials
/// above all) stays at the gateway.
const FORWARDED: [&str; 5] = [
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];
const RESPONSE_HEADERS: [&str; 3] = ["content-type", "mcp-session-id", "mcp-protocol-version"];
/// Requests of one HTTP+SSE session awaiting their checked answers on its stream.
const MAX_PENDING: usize = 1024;

/// What the pipeline made of one client message.
enum Screened {
    /// Forward it; filter the answer if it is a listing.
    Forward(Option<(Listing, Value)>),
    /// Forward it, and inspect the result (a tool's, a resource's, a prompt's) as it returns:
    /// the action, and the request's JSON-RPC id (what the answer carries).
    Inspect(Action, Value),
    /// Not JSON-RPC Warden forwards: the error, for a 400.
    Malformed(Value),
    /// Refused: the JSON-RPC answer to give the client instead.
    Refused(Value),
}

/// Classifies and decides one message from the client.
async fn screen(
    state: &State,
    caller: &Caller,
    server: &Name,
    body: &mut Bytes,
    headers_said: &Said,
) -> Screened {
    let started = Instant::now();
    let classified = crate::metrics::stage_span("classify").in_scope(|| {
        let (id, rpc, mut params) = match jsonrpc::parse(body) {
            Err(invalid) => {
                return Err(Screened::Malformed(jsonrpc::error(&Value::Null, &invalid)));
            }
            // Session plumbing and answers to the server's own requests touch nothing.
            Ok(Message::Notification | Message::Response) => return Err(Screened::Forward(None)),
            Ok(Message::Request { id, method, params }) => (id, method, params),
        };
        let redacted = jsonrpc::redact_request(&state.pipeline, &id, &rpc, &mut params, body);
        let mut said = headers_said.with_metadata(mcp::metadata(&params));
        said.redacted = redacted;
        match mcp::classify(server, &rpc, &params) {
            Classified::Refused(invalid) => Err(Screened::Refused(jsonrpc::error(&id, &invalid))),
            Classified::Plumbing => Err(Screened::Forward(None)),
            Classified::Action(action) => Ok((id, said, Some(action), None)),
            Classified::Listing(listing, action) => {
                Ok((id.clone(), said, action, Some((listing, id))))
            }
        }
    });
    state.metrics.stage("classify", started.elapsed());
    let (id, mut said, action, listing) = match classified {
        Ok(classified) => classified,
        Err(screened) => return screened,
    };
    if let Some(action) = action {
        if let Action::McpToolsCall { server, tool, .. } = &action
            && state
                .withheld_tools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&format!("{server}/{tool}"))
        {
            said.findings.push(warden_model::Finding {
                kind: warden_model::FindingKind::ToolDrift,
                rule: "tool.withheld".into(),
                location: String::new(),
                score: 100,
            });
        }
        let what = describe(&action);
        let returns_content = mcp::returns_content(&action);
        let verdict = state
            .pipeline
            .decide(caller, action.clone(), body, said)
            .await;
        if !verdict.allowed() {
            return Screened::Refused(jsonrpc::refusal(&id, &verdict, &what, mcp::CODES));
        }
        if returns_content && listing.is_none() {
            return Screened::Inspect(action, id);
        }
    }
    Screened::Forward(listing)
}

fn unknown_session() -> Response<Body> {
    // Unknown and foreign sessions look the same: the client starts a new one.
    problem(
        StatusCode::NOT_FOUND,
        "unknown_session",
        "unknown MCP session; initialize a new one",
    )
}

/// Streamable HTTP: one endpoint, POST for messages, GET for the server's stream, DELETE to end.
pub async fn streamable(
    state: &Arc<State>,
    peer: Option<&SpiffeId>,
    upstream: &Upstream,
    request: Request<Incoming>,
) -> Response<Body> {
    let caller = match identify(state, peer, &request) {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let agent = caller.identity.spiffe_id().clone();
    let session = request
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(session) = &session
        && !state.sessions.owned_by(session, &agent)
    {
        return unknown_session();
    }
    let method = request.method().clone();
    let headers = request.headers().clone();
    let said = Said::from_headers(&headers);
    let keep = |name: &str| FORWARDED.contains(&name);
    match method {
        Method::GET | Method::DELETE => {
            let Some(session) = session else {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "no_session",
                    "GET and DELETE need an Mcp-Session-Id",
                );
            };
            let response = match call_upstream(
                state,
                upstream,
                method.clone(),
                &upstream.config.url,
                &headers,
                keep,
                Bytes::new(),
            )
            .await
            {
                Ok(r) => r,
                Err(response) => return response,
            };
            if method == Method::DELETE && response.status().is_success() {
                state.sessions.end(&session);
            }
            relay(response, &RESPONSE_HEADERS)
        }
        Method::POST => {
            let mut body = match read_body(state, request.into_body()).await {
                Ok(b) => b,
                Err(response) => return response,
            };
            let server = &upstream.config.name;
            let (listing, inspect) = match screen(state, &caller, server, &mut body, &said).await {
                Screened::Forward(listing) => (listing.map(|(listing, _)| listing), None),
                Screened::Inspect(action, _) => (None, Some(action)),
                Screened::Malformed(error) => {
                    return json_response(StatusCode::BAD_REQUEST, &error);
                }
                Screened::Refused(answer) => return json_response(StatusCode::OK, &answer),
            };
            let response = match call_upstream(
                state,
                upstream,
                Method::POST,
                &upstream.config.url,
                &headers,
                keep,
                body,
            )
            .await
            {
                Ok(r) => r,
                Err(response) => return response,
            };
            if session.is_none()
                && let Some(new) = response
                    .headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
            {
                state.sessions.bind(new, &agent);
            }
            match (listing, inspect) {
                (Some(listing), _) => filtered(state, &caller, server, listing, response).await,
                (None, Some(action)) => {
                    relay_reviewed(
                        state,
                        &caller,
                        action,
                        response,
                        &RESPONSE_HEADERS,
                        mcp::CODES,
                        |_| {},
                    )
                    .await
                }
                (None, None) => relay(response, &RESPONSE_HEADERS),
            }
        }
        _ => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "MCP uses POST, GET and DELETE",
        ),
    }
}

/// Relays a listing response with the items the caller may not use removed, whether the
/// upstream answered with JSON or with an SSE stream.
async fn filtered(
    state: &State,
    caller: &Caller,
    server: &Name,
    listing: Listing,
    response: Response<Incoming>,
) -> Response<Body> {
    let is_sse = is_event_stream(&response);
    let (head, bytes) = match read_whole(
        response,
        &RESPONSE_HEADERS,
        "the upstream's listing is too large",
    )
    .await
    {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    let hidden = match listing {
        Listing::Tools => withhold_tools(state, server, &messages(&bytes, is_sse)).await,
        _ => HashSet::new(),
    };
    let may = |action: &Action| {
        state.pipeline.may(caller, action)
            && !matches!(action, Action::McpToolsCall { tool, .. } if hidden.contains(tool.as_str()))
    };
    let rewrite = |_kind: &str, data: &str| -> String {
        match serde_json::from_str::<Value>(data) {
            Ok(mut message) => {
                mcp::filter_listing(&mut message, listing, server, &may);
                message.to_string()
            }
            Err(_) => data.to_owned(),
        }
    };
    let out = if is_sse {
        let mut rewriter = SseRewriter::new(rewrite);
        let mut out = rewriter.feed(&bytes);
        out.extend(rewriter.finish());
        out
    } else {
        rewrite("message", &String::from_utf8_lossy(&bytes)).into_bytes()
    };
    Response::from_parts(head, full(out))
}

/// The JSON-RPC messages of an answer: the body, or each SSE event's data.
fn messages(bytes: &[u8], is_sse: bool) -> Vec<Value> {
    if !is_sse {
        return serde_json::from_slice(bytes).into_iter().collect();
    }
    let mut found = Vec::new();
    let mut events = SseRewriter::new(|_: &str, data: &str| {
        found.extend(serde_json::from_str::<Value>(data).ok());
        String::new()
    });
    events.feed(bytes);
    events.finish();
    drop(events);
    found
}

/// Which tools of a listing are withheld from agents: those whose definition (name,
/// description, input schema) is not the pinned one — a rug pull — or whose description or
/// schema carries instructions for the model. Calls to them are refused until a person approves.
async fn withhold_tools(state: &State, server: &Name, messages: &[Value]) -> HashSet<String> {
    let mut hidden = HashSet::new();
    // Collected first: an iterator of closures held across the awaits below is not `Send`.
    let tools: Vec<&Value> = messages
        .iter()
        .filter_map(|m| m.get("result")?.get("tools")?.as_array())
        .flatten()
        .collect();
    for tool in tools {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            continue;
        };
        let Ok(tool_name) = Name::new(name) else {
            continue;
        };
        let definition = serde_json::json!({
            "name": name,
            "description": tool.get("description"),
            "inputSchema": tool.get("inputSchema"),
        });
        let action = Action::McpToolsCall {
            server: server.clone(),
            tool: tool_name,
            args: serde_json::Map::new(),
        };
        let poisoned = state
            .pipeline
            .inspect_content(&action, &definition)
            .iter()
            .any(|f| f.kind == warden_model::FindingKind::Injection && f.score >= 70);
        let approved = match state.pipeline.desk() {
            Some(desk) => desk
                .tool_approved(server.as_str(), name, &definition)
                .await
                .unwrap_or_else(|e| {
                    // Unknown is not approved: fail closed.
                    tracing::warn!("cannot check tool {server}/{name}'s pin: {e}");
                    false
                }),
            None => true,
        };
        let key = format!("{server}/{name}");
        let mut withheld = state
            .withheld_tools
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if poisoned || !approved {
            tracing::warn!(
                "withholding tool {key}: {}",
                if poisoned {
                    "its description carries instructions"
                } else {
                    "its definition changed since it was approved"
                }
            );
            hidden.insert(name.to_owned());
            withheld.insert(key);
        } else {
            withheld.remove(&key);
        }
    }
    hidden
}

/// One client of the HTTP+SSE transport: its stream, and where its messages go upstream.
pub struct LegacySession {
    agent: SpiffeId,
    caller: Caller,
    /// Where the upstream said to post messages, once its `endpoint` event has arrived.
    upstream_endpoint: Mutex<Option<String>>,
    /// Events for the client's stream from the gateway itself (refusals).
    inject: mpsc::Sender<Bytes>,
    /// Requests in flight whose answers, arriving on the stream, are checked: by JSON-RPC id.
    pending: Mutex<HashMap<String, Awaited>>,
}

impl LegacySession {
    /// Notes that the answer to request `id` is to be checked when it arrives on the stream.
    fn expect(&self, id: &Value, pending: Awaited) -> Result<(), Response<Body>> {
        let mut awaited = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if awaited.len() >= MAX_PENDING {
            return Err(problem(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_pending",
                "too many requests await their answers on this stream; wait for them",
            ));
        }
        awaited.insert(id.to_string(), pending);
        Ok(())
    }
}

/// Open HTTP+SSE sessions, by the id the gateway gave the client.
#[derive(Default)]
pub struct LegacySessions(Mutex<HashMap<String, Arc<LegacySession>>>);

impl LegacySessions {
    fn get(&self, id: &str) -> Option<Arc<LegacySession>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
    fn insert(&self, id: String, session: Arc<LegacySession>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, session);
    }
    fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A response body fed from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// `GET /mcp/<server>/sse`: opens the upstream's stream and relays it, with the `endpoint` it
/// announces replaced by the gateway's own, and listing answers filtered.
pub async fn legacy_stream(
    state: &Arc<State>,
    peer: Option<&SpiffeId>,
    upstream: &Upstream,
    request: Request<Incoming>,
) -> Response<Body> {
    let caller = match identify_method(
        state,
        peer,
        &request,
        Method::GET,
        "open the event stream with GET; post messages to the endpoint it announces",
    ) {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    if state.legacy_sessions.len() >= state.config.limits.max_sessions {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            "too many open MCP streams; retry shortly",
        );
    }
    let response = match call_upstream(
        state,
        upstream,
        Method::GET,
        &upstream.config.url,
        request.headers(),
        |name| name == "accept" || name == "last-event-id",
        Bytes::new(),
    )
    .await
    {
        Ok(r) => r,
        Err(response) => return response,
    };
    if !response.status().is_success() || !is_event_stream(&response) {
        return problem(
            StatusCode::BAD_GATEWAY,
            "upstream_not_sse",
            &format!(
                "the upstream answered {} without an event stream",
                response.status()
            ),
        );
    }
    let mut id = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut id).is_err() {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no_randomness",
            "the gateway could not draw a session id",
        );
    }
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
    let (inject, events) = mpsc::channel::<Bytes>(64);
    let session = Arc::new(LegacySession {
        agent: caller.identity.spiffe_id().clone(),
        caller,
        upstream_endpoint: Mutex::new(None),
        inject: inject.clone(),
        pending: Mutex::new(HashMap::new()),
    });
    state
        .legacy_sessions
        .insert(id.clone(), Arc::clone(&session));
    let endpoint = format!(
        "{}/mcp/{}/messages?session_id={id}",
        state.public_url, upstream.config.name
    );
    let base = upstream.config.url.clone();
    let server = upstream.config.name.clone();
    let pump_state = Arc::clone(state);
    let mut upstream_body = response.into_body();
    tokio::spawn(async move {
        let state = pump_state;
        let mut events = SseRewriter::new(|kind: &str, data: &str| {
            if kind == "endpoint" {
                *session
                    .upstream_endpoint
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = resolve(&base, data.trim());
                return endpoint.clone();
            }
            let Ok(mut message) = serde_json::from_str::<Value>(data) else {
                return data.to_owned();
            };
            let pending = message.get("id").and_then(|id| {
                session
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id.to_string())
            });
            match pending {
                Some(Awaited::Listing(listing)) => {
                    let may = |action: &Action| state.pipeline.may(&session.caller, action);
                    mcp::filter_listing(&mut message, listing, &server, &may);
                    message.to_string()
                }
                Some(Awaited::Result(action)) => {
                    match review_answer(
                        &state.pipeline,
                        &session.caller,
                        &action,
                        &mut message,
                        mcp::CODES,
                    ) {
                        Err(refusal) => refusal.to_string(),
                        Ok(true) => message.to_string(),
                        Ok(false) => data.to_owned(),
                    }
                }
                None => data.to_owned(),
            }
        });
        loop {
            // A client that went away ends the upstream stream too, even while it is idle.
            let frame = tokio::select! {
                frame = upstream_body.frame() => frame,
                () = inject.closed() => break,
            };
            let Some(Ok(frame)) = frame else { break };
            let Some(chunk) = frame.data_ref() else {
                continue;
            };
            let out = events.feed(chunk);
            if !out.is_empty() && inject.send(Bytes::from(out)).await.is_err() {
                break;
            }
            if events.overflowed() {
                tracing::warn!("upstream {server} sent an event over 16 MiB; stream closed");
                break;
            }
        }
        state.legacy_sessions.remove(&id);
    });
    let mut relayed = Response::new(ChannelBody(events).boxed());
    relayed.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    relayed.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    relayed
}

/// The upstream's announced endpoint as an absolute URL on the upstream's own origin (an
/// endpoint elsewhere is not followed).
fn resolve(base: &str, endpoint: &str) -> Option<String> {
    let base: http::Uri = base.parse().ok()?;
    let origin = format!("{}://{}", base.scheme_str()?, base.authority()?);
    if endpoint.starts_with('/') {
        return Some(format!("{origin}{endpoint}"));
    }
    let absolute: http::Uri = endpoint.parse().ok()?;
    let same_origin =
        absolute.scheme_str() == base.scheme_str() && absolute.authority() == base.authority();
    same_origin.then(|| endpoint.to_owned())
}

/// `POST /mcp/<server>/messages?session_id=…`: one client message, screened, then posted to the
/// upstream's endpoint; a refusal is answered on the client's stream, as the transport expects.
pub async fn legacy_message(
    state: &State,
    peer: Option<&SpiffeId>,
    upstream: &Upstream,
    request: Request<Incoming>,
) -> Response<Body> {
    let caller = match identify_method(
        state,
        peer,
        &request,
        Method::POST,
        "post messages to this endpoint",
    ) {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let session = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "session_id")
        .and_then(|(_, id)| state.legacy_sessions.get(&id));
    let Some(session) = session.filter(|s| &s.agent == caller.identity.spiffe_id()) else {
        return unknown_session();
    };
    let Some(endpoint) = session
        .upstream_endpoint
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "session_not_ready",
            "the upstream has not announced its message endpoint yet; retry shortly",
        );
    };
    let headers = request.headers().clone();
    let said = Said::from_headers(&headers);
    let mut body = match read_body(state, request.into_body()).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let server = &upstream.config.name;
    match screen(state, &caller, server, &mut body, &said).await {
        Screened::Malformed(error) => return json_response(StatusCode::BAD_REQUEST, &error),
        Screened::Refused(answer) => {
            let event = format!("event: message\ndata: {answer}\n\n");
            return if session.inject.send(Bytes::from(event)).await.is_ok() {
                accepted()
            } else {
                unknown_session()
            };
        }
        Screened::Forward(Some((listing, id))) => {
            if let Err(busy) = session.expect(&id, Awaited::Listing(listing)) {
                return busy;
            }
        }
        Screened::Inspect(action, id) => {
            if let Err(busy) = session.expect(&id, Awaited::Result(action)) {
                return busy;
            }
        }
        Screened::Forward(None) => {}
    }
    match call_upstream(
        state,
        upstream,
        Method::POST,
        &endpoint,
        &headers,
        |name| name == "content-type",
        body,
    )
    .await
    {
        Ok(response) => relay(response, &["content-type"]),
        Err(response) => response,
    }
}

fn accepted() -> Response<Body> {
    let mut response = Response::new(full("Accepted"));
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_endpoints_stay_on_the_upstreams_origin() {
        let base = "http://127.0.0.1:9000/sse";
        assert_eq!(
            resolve(base, "/messages/?session_id=abc").as_deref(),
            Some("http://127.0.0.1:9000/messages/?session_id=abc")
        );
        assert_eq!(
            resolve(base, "http://127.0.0.1:9000/m?x=1").as_deref(),
            Some("http://127.0.0.1:9000/m?x=1")
        );
        assert_eq!(resolve(base, "http://169.254.169.254/latest"), None);
        assert_eq!(resolve(base, "https://127.0.0.1:9000/m"), None);
    }
}
