//! Serves MCP upstreams: `/mcp/<server>` over streamable HTTP, and `/mcp/<server>/sse` with
//! `/mcp/<server>/messages` over the older HTTP+SSE transport (protocol 2024-11-05). Both
//! identify the caller, screen each JSON-RPC message with the pipeline, keep sessions with the
//! agent that opened them, and filter listings to what the caller may use.

// The `Err` of the server helpers is the early response that ends the request.
#![allow(clippy::result_large_err)]

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use tokio::sync::mpsc;
use warden_model::{Action, DenyReason, Name};

use crate::identify::Caller;
use crate::jsonrpc::{self, Message};
use crate::legacy::LegacySession;
use crate::mcp::{self, Awaited, Classified, Listing};
use crate::pipeline::{Pipeline, Said};
use crate::plumbing::{
    AgentRequest, Body, BoxError, State, Upstream, call_upstream, describe, full, json_response,
    problem, relay,
};
use crate::reviewed::{
    Asked, is_event_stream, read_whole, relay_awaited, relay_reviewed, unreadable_answer,
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
pub(crate) enum Screened {
    /// Forward it; filter the answer if it is a listing (the listing, and the request's id).
    Forward(Option<(Listing, Value)>),
    /// Forward it, and inspect the result (a tool's, a resource's, a prompt's) as it returns:
    /// the action, and the request's JSON-RPC id (what the answer carries).
    Inspect(Action, Value),
    /// Not forwarded: the JSON-RPC error to answer with, and whether it is the answer to a
    /// request (on the request's own channel) or a refusal of what has no answer — a
    /// notification, a response, a body that is no message — given as an HTTP error.
    Refused {
        answer: Value,
        answers_request: bool,
    },
}

impl Screened {
    fn refused(answer: Value, answers_request: bool) -> Self {
        Self::Refused {
            answer,
            answers_request,
        }
    }
}

/// Classifies and decides one message from the client. Every message is screened: requests are
/// decided (session plumbing only checked against quarantine and the kill switch), notifications
/// forwarded only when MCP defines them for clients, answers to the server's own requests
/// inspected and decided; everything else is refused and recorded.
pub(crate) async fn screen(
    pipeline: &Pipeline,
    caller: &Caller,
    server: &Name,
    body: &mut Bytes,
    headers_said: &Said,
) -> Screened {
    let started = Instant::now();
    let (id, method, classified, said) =
        crate::metrics::stage_span("classify").in_scope(|| match jsonrpc::parse(body) {
            Err(invalid) => (
                None,
                "invalid".to_owned(),
                Classified::Refused(invalid),
                headers_said.clone(),
            ),
            Ok(Message::Notification { method, params }) => {
                let classified = mcp::classify_notification(server, &method);
                let said = headers_said.with_metadata(mcp::metadata(&params));
                (None, method, classified, said)
            }
            Ok(Message::Response) => (
                None,
                "response".to_owned(),
                Classified::Action(mcp::client_message(server, "response")),
                headers_said.clone(),
            ),
            Ok(Message::Request {
                id,
                method,
                mut params,
            }) => {
                let redacted = jsonrpc::redact_request(pipeline, &id, &method, &mut params, body);
                let mut said = headers_said.with_metadata(mcp::metadata(&params));
                said.redacted = redacted;
                let classified = mcp::classify(server, &method, &params);
                (Some(id), method, classified, said)
            }
        });
    pipeline.metrics().stage("classify", started.elapsed());
    let answers_request = id.is_some();
    let id_or_null = id.clone().unwrap_or(Value::Null);
    let (action, listing) = match classified {
        Classified::Refused(invalid) => {
            pipeline.refuse(
                caller,
                mcp::client_message(server, &method),
                DenyReason::NotForwarded,
            );
            return Screened::refused(jsonrpc::error(&id_or_null, &invalid), answers_request);
        }
        Classified::Plumbing => {
            if let Some(reason) = pipeline.stopped(caller) {
                let action = mcp::client_message(server, &method);
                let what = describe(&action);
                let verdict = pipeline.refuse(caller, action, reason);
                let refusal = jsonrpc::refusal(&id_or_null, &verdict, &what, mcp::CODES);
                return Screened::refused(refusal, answers_request);
            }
            return Screened::Forward(None);
        }
        Classified::Action(action) => (Some(action), None),
        Classified::Listing(listing, action) => (action, id.clone().map(|id| (listing, id))),
    };
    if let Some(action) = action {
        let what = describe(&action);
        let returns_content = mcp::returns_content(&action);
        let verdict = pipeline.decide(caller, action.clone(), body, said).await;
        if !verdict.allowed() {
            let refusal = jsonrpc::refusal(&id_or_null, &verdict, &what, mcp::CODES);
            return Screened::refused(refusal, answers_request);
        }
        if returns_content && let Some(id) = id {
            return Screened::Inspect(action, id);
        }
    }
    Screened::Forward(listing)
}

/// The HTTP answer to a refusal of what has no JSON-RPC answer of its own.
fn unanswered(answer: &Value) -> Response<Body> {
    let denied = answer["error"]["code"]
        .as_i64()
        .is_some_and(|code| code == mcp::DENIED || code == mcp::NEEDS_APPROVAL);
    let status = if denied {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::BAD_REQUEST
    };
    json_response(status, answer)
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
    upstream: &Upstream,
    request: AgentRequest,
) -> Response<Body> {
    let AgentRequest {
        caller,
        head,
        mut body,
    } = request;
    let agent = caller.identity.spiffe_id().clone();
    let session = head
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(session) = &session
        && !state.sessions.owned_by(session, &agent)
    {
        return unknown_session();
    }
    let (method, headers) = (head.method, head.headers);
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
            let server = &upstream.config.name;
            let (listing, inspect) =
                match screen(&state.pipeline, &caller, server, &mut body, &said).await {
                    Screened::Forward(listing) => (listing, None),
                    Screened::Inspect(action, id) => (None, Some((action, id))),
                    Screened::Refused {
                        answer,
                        answers_request: true,
                    } => return json_response(StatusCode::OK, &answer),
                    Screened::Refused { answer, .. } => return unanswered(&answer),
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
                (Some((listing, id)), _) => {
                    filtered(state, &caller, server, listing, &id, response).await
                }
                (None, Some((action, id))) => {
                    relay_reviewed(
                        state,
                        &caller,
                        Asked { action, id },
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
/// upstream answered with JSON or with an SSE stream. What cannot be read is not relayed: an
/// unfiltered listing would show what the caller may not use.
async fn filtered(
    state: &State,
    caller: &Caller,
    server: &Name,
    listing: Listing,
    id: &Value,
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
        Listing::Tools => {
            state
                .pipeline
                .withhold_tools(server, &messages(&bytes, is_sse))
                .await
        }
        _ => HashSet::new(),
    };
    let may = |action: &Action| {
        state.pipeline.may(caller, action)
            && !matches!(action, Action::McpToolsCall { tool, .. } if hidden.contains(tool.as_str()))
    };
    let rewrite = |_kind: &str, data: &str| -> String {
        if data.trim().is_empty() {
            return data.to_owned();
        }
        match crate::json::parse_strict(data.as_bytes()) {
            Ok(mut message) => {
                mcp::filter_listing(&mut message, listing, server, &may);
                message.to_string()
            }
            Err(_) => unreadable_answer(id).to_string(),
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
        return crate::json::parse_strict(bytes).into_iter().collect();
    }
    let mut found = Vec::new();
    let mut events = SseRewriter::new(|_: &str, data: &str| {
        found.extend(crate::json::parse_strict(data.as_bytes()).ok());
        String::new()
    });
    events.feed(bytes);
    events.finish();
    drop(events);
    found
}

impl LegacySession {
    /// Notes that the answer to request `id` is to be checked when it arrives on the stream;
    /// the error to answer with when it cannot be (a reused id, too many in flight).
    fn expect(&self, id: &Value, awaited: Awaited) -> Result<(), Value> {
        self.awaiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expect(id, awaited)
            .map_err(|invalid| jsonrpc::error(id, &invalid))
    }

    /// Answers the client on its stream, as the transport expects.
    async fn answer(&self, answer: &Value) -> Response<Body> {
        let event = format!("event: message\ndata: {answer}\n\n");
        if self.inject.send(Bytes::from(event)).await.is_ok() {
            accepted()
        } else {
            unknown_session()
        }
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
    upstream: &Upstream,
    request: AgentRequest,
) -> Response<Body> {
    if let Err(refused) = request.require(
        Method::GET,
        "open the event stream with GET; post messages to the endpoint it announces",
    ) {
        return refused;
    }
    let AgentRequest { caller, head, .. } = request;
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
        &head.headers,
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
        awaiting: Mutex::new(mcp::Awaiting::new(MAX_PENDING)),
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
        // Tools a listing on its way withholds, found (asynchronously: pins are checked with the
        // control plane) before the listing is rewritten: a probe sees each chunk's events
        // first, the rewriter then relays them.
        let hidden: Mutex<HashSet<String>> = Mutex::default();
        let listings: Mutex<Vec<String>> = Mutex::default();
        let mut probe = SseRewriter::new(|kind: &str, data: &str| {
            if kind != "endpoint" && data.contains("\"tools\"") {
                listings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(data.to_owned());
            }
            String::new()
        });
        let mut events = SseRewriter::new(|kind: &str, data: &str| {
            if kind == "endpoint" {
                *session
                    .upstream_endpoint
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = resolve(&base, data.trim());
                return endpoint.clone();
            }
            let hidden = hidden.lock().unwrap_or_else(|p| p.into_inner());
            let mut awaiting = session.awaiting.lock().unwrap_or_else(|p| p.into_inner());
            relay_awaited(
                &state.pipeline,
                &session.caller,
                &server,
                &mut awaiting,
                &hidden,
                data,
            )
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
            probe.feed(chunk);
            let found = std::mem::take(&mut *listings.lock().unwrap_or_else(|p| p.into_inner()));
            let tool_listings: Vec<Value> = found
                .iter()
                .filter_map(|data| crate::json::parse_strict(data.as_bytes()).ok())
                .filter(|m| {
                    m.get("id").is_some_and(|id| {
                        session
                            .awaiting
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .awaits_tool_listing(id)
                    })
                })
                .collect();
            if !tool_listings.is_empty() {
                let withheld = state.pipeline.withhold_tools(&server, &tool_listings).await;
                *hidden.lock().unwrap_or_else(|p| p.into_inner()) = withheld;
            }
            let out = events.feed(chunk);
            if !out.is_empty() && inject.send(Bytes::from(out)).await.is_err() {
                break;
            }
            if events.overflowed() || probe.overflowed() {
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
    upstream: &Upstream,
    request: AgentRequest,
) -> Response<Body> {
    if let Err(refused) = request.require(Method::POST, "post messages to this endpoint") {
        return refused;
    }
    let AgentRequest {
        caller,
        head,
        mut body,
    } = request;
    let session = head
        .uri
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
    let headers = head.headers;
    let said = Said::from_headers(&headers);
    let server = &upstream.config.name;
    let awaited = match screen(&state.pipeline, &caller, server, &mut body, &said).await {
        Screened::Refused {
            answer,
            answers_request: true,
        } => return session.answer(&answer).await,
        Screened::Refused { answer, .. } => return unanswered(&answer),
        Screened::Forward(Some((listing, id))) => Some((id, Awaited::Listing(listing))),
        Screened::Inspect(action, id) => Some((id, Awaited::Result(action))),
        Screened::Forward(None) => jsonrpc::request_id(&body).map(|id| (id, Awaited::Plain)),
    };
    if let Some((id, awaited)) = awaited
        && let Err(refusal) = session.expect(&id, awaited)
    {
        return session.answer(&refusal).await;
    }
    // The answer will come on the client's stream, which no gate holds: on this transport the
    // record is on disk before the message is forwarded at all.
    if let Err(why) = caller.answer_after.opened().await {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            &format!("the call's record could not be made durable, so it was not forwarded: {why}"),
        );
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

#[cfg(test)]
mod screening {
    use super::*;
    use crate::testing::fixture;

    fn screened(body: &str) -> Screened {
        let f = fixture();
        let server = Name::new("tools").unwrap();
        let mut body = Bytes::from(body.to_owned());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(screen(
            &f.pipeline,
            &f.caller,
            &server,
            &mut body,
            &Said::default(),
        ))
    }

    fn refusal(screened: Screened) -> (Value, bool) {
        match screened {
            Screened::Refused {
                answer,
                answers_request,
            } => (answer, answers_request),
            _ => panic!("expected a refusal"),
        }
    }

    /// Every message is screened before any adapter relays it: what has no id is refused unless
    /// MCP defines it for clients, what carries text out is decided.
    #[test]
    fn messages_without_an_id_and_answers_to_the_server_are_screened() {
        let (answer, answers) = refusal(screened(
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_records"}}"#,
        ));
        assert!(!answers);
        assert_eq!(answer["error"]["code"], -32600);
        assert!(matches!(
            screened(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Screened::Forward(None)
        ));
        let (answer, _) = refusal(screened(
            r#"{"jsonrpc":"2.0","id":"s1","result":{"content":{"type":"text","text":"AKIAQ3EGRJH6WXKQ7VZN"}}}"#,
        ));
        assert_eq!(answer["error"]["data"]["reason"], "forbidden", "{answer}");
        assert!(matches!(
            screened(r#"{"jsonrpc":"2.0","id":"s2","result":{"action":"decline"}}"#),
            Screened::Forward(None)
        ));
    }

    #[test]
    fn requests_are_decided_and_answered_on_their_own_channel() {
        let call = |args: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"echo","arguments":{args}}}}}"#
            )
        };
        assert!(matches!(
            screened(&call(r#"{"text":"hi"}"#)),
            Screened::Inspect(_, id) if id == 7
        ));
        let (answer, answers) = refusal(screened(&call(r#"{"text":"AKIAQ3EGRJH6WXKQ7VZN"}"#)));
        assert!(answers);
        assert_eq!(answer["id"], 7);
        assert_eq!(answer["error"]["code"], mcp::DENIED);
        // Read two ways is not read at all.
        let (answer, _) = refusal(screened(&call(r#"{"text":"a","text":"b"}"#)));
        assert_eq!(answer["error"]["code"], -32700);
        // A listing is forwarded to be filtered; plumbing passes.
        assert!(matches!(
            screened(r#"{"jsonrpc":"2.0","id":8,"method":"tools/list"}"#),
            Screened::Forward(Some((Listing::Tools, _)))
        ));
        assert!(matches!(
            screened(r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#),
            Screened::Forward(None)
        ));
    }
}
