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
    AgentRequest, Body, BoxError, State, Upstream, call_upstream, forbidden, full, json_response,
    problem, relay,
};
use crate::reviewed::{
    Asked, is_event_stream, read_whole, relay_awaited, relay_reviewed, unreadable_answer,
};
use crate::sse::SseRewriter;
use crate::stack::{Adapter, Ask, Classification, Refusal, check};

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

/// What follows from one client message once its actions are allowed.
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

/// One client message as read: its id, and what follows once its actions are allowed.
pub(crate) struct Reading {
    id: Option<Value>,
    then: Then,
}

enum Then {
    /// Forward it; a listing's answer is filtered.
    Relay(Option<Listing>),
    /// Forward it and inspect the result it returns.
    Review(Action),
    /// Refused as read: the JSON-RPC error that answers it.
    Unreadable(Value),
}

impl Reading {
    pub fn allowed(self) -> Screened {
        match (self.then, self.id) {
            (Then::Relay(Some(listing)), Some(id)) => Screened::Forward(Some((listing, id))),
            (Then::Review(action), Some(id)) => Screened::Inspect(action, id),
            (Then::Relay(_) | Then::Review(_), _) => Screened::Forward(None),
            // Its ask is a refusal, so it is never allowed; should it be, it still goes nowhere.
            (Then::Unreadable(answer), id) => Screened::Refused {
                answer,
                answers_request: id.is_some(),
            },
        }
    }

    /// The JSON-RPC error that answers the message, and whether it answers a request.
    pub fn refused(self, refusal: Refusal) -> (Value, bool) {
        let answers_request = self.id.is_some();
        let id = self.id.unwrap_or(Value::Null);
        let answer = match self.then {
            Then::Unreadable(answer) => answer,
            _ => jsonrpc::refusal(&id, &refusal.verdict, &refusal.what, mcp::CODES),
        };
        (answer, answers_request)
    }
}

/// Reads one message from the client as what it asks for. Every message is screened: requests
/// are decided (session plumbing only checked against quarantine and the kill switch),
/// notifications forwarded only when MCP defines them for clients, answers to the server's own
/// requests inspected and decided; everything else is refused and recorded.
pub(crate) fn read_message(
    pipeline: &Pipeline,
    server: &Name,
    body: &mut Bytes,
    headers_said: &Said,
) -> Classification<Reading> {
    let (id, method, classified, said) = match jsonrpc::parse(body) {
        Err(invalid) => (
            None,
            "invalid".to_owned(),
            Classified::Refused(invalid),
            None,
        ),
        Ok(Message::Notification { method, params }) => {
            let classified = mcp::classify_notification(server, &method);
            let said = headers_said.with_metadata(mcp::metadata(&params));
            (None, method, classified, Some(said))
        }
        Ok(Message::Response) => (
            None,
            "response".to_owned(),
            Classified::Action(mcp::client_message(server, "response")),
            None,
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
            (Some(id), method, classified, Some(said))
        }
    };
    let said = said.unwrap_or_else(|| headers_said.clone());
    let (asks, then) = match classified {
        Classified::Refused(invalid) => {
            let answer = jsonrpc::error(id.as_ref().unwrap_or(&Value::Null), &invalid);
            let ask = Ask::refuse(
                mcp::client_message(server, &method),
                DenyReason::NotForwarded,
            );
            (vec![ask], Then::Unreadable(answer))
        }
        Classified::Plumbing => (
            vec![Ask::plumbing(mcp::client_message(server, &method))],
            Then::Relay(None),
        ),
        Classified::Action(action) => {
            let then = if mcp::returns_content(&action) {
                Then::Review(action.clone())
            } else {
                Then::Relay(None)
            };
            (vec![Ask::decide(action, said)], then)
        }
        Classified::Listing(listing, action) => (
            action.map(|a| Ask::decide(a, said)).into_iter().collect(),
            Then::Relay(Some(listing)),
        ),
    };
    Classification {
        asks,
        plan: Reading { id, then },
    }
}

/// Reads and decides one client message where no HTTP stack runs (`warden mcp-stdio`).
pub(crate) async fn screen(
    pipeline: &Pipeline,
    caller: &Caller,
    server: &Name,
    body: &mut Bytes,
    headers_said: &Said,
) -> Screened {
    let started = Instant::now();
    let read = crate::metrics::stage_span("classify")
        .in_scope(|| read_message(pipeline, server, body, headers_said));
    pipeline.metrics().stage("classify", started.elapsed());
    match check(pipeline, caller, body, read.asks).await {
        Ok(()) => read.plan.allowed(),
        Err(refusal) => {
            let (answer, answers_request) = read.plan.refused(refusal);
            Screened::Refused {
                answer,
                answers_request,
            }
        }
    }
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

/// The answer to a refused client message: on the request's own channel when it answers one.
fn refused_message(reading: Reading, refusal: Refusal) -> Response<Body> {
    match reading.refused(refusal) {
        (answer, true) => json_response(StatusCode::OK, &answer),
        (answer, false) => unanswered(&answer),
    }
}

/// The session an MCP request names.
fn session_of(head: &http::request::Parts) -> Option<String> {
    head.headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Streamable HTTP: one endpoint, POST for messages, GET for the server's stream, DELETE to end.
pub(crate) struct Streamable<'a>(pub &'a Upstream);

pub(crate) struct StreamablePlan {
    session: Option<String>,
    /// What a POST's message was read as (GET and DELETE carry none).
    message: Option<Reading>,
}

impl Adapter for Streamable<'_> {
    type Plan = StreamablePlan;

    fn classify(
        &self,
        state: &State,
        request: &mut AgentRequest,
    ) -> Result<Classification<StreamablePlan>, Response<Body>> {
        let server = &self.0.config.name;
        let session = session_of(&request.head);
        if let Some(session) = &session
            && !state
                .sessions
                .owned_by(session, request.caller.identity.spiffe_id())
        {
            return Err(unknown_session());
        }
        match request.head.method {
            Method::GET | Method::DELETE => {
                if session.is_none() {
                    return Err(problem(
                        StatusCode::BAD_REQUEST,
                        "no_session",
                        "GET and DELETE need an Mcp-Session-Id",
                    ));
                }
                let what = if request.head.method == Method::GET {
                    "stream"
                } else {
                    "session/end"
                };
                Ok(Classification {
                    asks: vec![Ask::plumbing(mcp::client_message(server, what))],
                    plan: StreamablePlan {
                        session,
                        message: None,
                    },
                })
            }
            Method::POST => {
                let said = Said::from_headers(&request.head.headers);
                let read = read_message(&state.pipeline, server, &mut request.body, &said);
                Ok(Classification {
                    asks: read.asks,
                    plan: StreamablePlan {
                        session,
                        message: Some(read.plan),
                    },
                })
            }
            _ => Err(problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "MCP uses POST, GET and DELETE",
            )),
        }
    }

    async fn refuse(&self, plan: StreamablePlan, refusal: Refusal) -> Response<Body> {
        match plan.message {
            Some(reading) => refused_message(reading, refusal),
            None => forbidden(&refusal.verdict, &refusal.what, mcp::CODES),
        }
    }

    async fn forward(
        &self,
        state: &Arc<State>,
        request: AgentRequest,
        plan: StreamablePlan,
    ) -> Response<Body> {
        let upstream = self.0;
        let AgentRequest { caller, head, body } = request;
        let keep = |name: &str| FORWARDED.contains(&name);
        // Only a POST carries a message.
        let body = if plan.message.is_some() {
            body
        } else {
            Bytes::new()
        };
        let response = match call_upstream(
            state,
            upstream,
            head.method.clone(),
            &upstream.config.url,
            &head.headers,
            keep,
            body,
        )
        .await
        {
            Ok(r) => r,
            Err(response) => return response,
        };
        let Some(reading) = plan.message else {
            if head.method == Method::DELETE
                && response.status().is_success()
                && let Some(session) = &plan.session
            {
                state.sessions.end(session);
            }
            return relay(response, &RESPONSE_HEADERS);
        };
        if plan.session.is_none()
            && let Some(new) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
        {
            state.sessions.bind(new, caller.identity.spiffe_id());
        }
        let server = &upstream.config.name;
        match reading.allowed() {
            Screened::Forward(Some((listing, id))) => {
                filtered(state, &caller, server, listing, &id, response).await
            }
            Screened::Inspect(action, id) => {
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
            _ => relay(response, &RESPONSE_HEADERS),
        }
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
pub(crate) struct SseStream<'a>(pub &'a Upstream);

impl Adapter for SseStream<'_> {
    type Plan = ();

    fn classify(
        &self,
        state: &State,
        request: &mut AgentRequest,
    ) -> Result<Classification<()>, Response<Body>> {
        request.require(
            Method::GET,
            "open the event stream with GET; post messages to the endpoint it announces",
        )?;
        if state.legacy_sessions.len() >= state.config.limits.max_sessions {
            return Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_sessions",
                "too many open MCP streams; retry shortly",
            ));
        }
        Ok(Classification {
            asks: vec![Ask::plumbing(mcp::client_message(
                &self.0.config.name,
                "stream",
            ))],
            plan: (),
        })
    }

    async fn refuse(&self, (): (), refusal: Refusal) -> Response<Body> {
        forbidden(&refusal.verdict, &refusal.what, mcp::CODES)
    }

    async fn forward(&self, state: &Arc<State>, request: AgentRequest, (): ()) -> Response<Body> {
        open_stream(state, self.0, request).await
    }
}

async fn open_stream(
    state: &Arc<State>,
    upstream: &Upstream,
    request: AgentRequest,
) -> Response<Body> {
    let AgentRequest { caller, head, .. } = request;
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
pub(crate) struct SseMessage<'a>(pub &'a Upstream);

pub(crate) struct SseMessagePlan {
    session: Arc<LegacySession>,
    /// The upstream's endpoint for this session's messages.
    endpoint: String,
    reading: Reading,
}

impl Adapter for SseMessage<'_> {
    type Plan = SseMessagePlan;

    fn classify(
        &self,
        state: &State,
        request: &mut AgentRequest,
    ) -> Result<Classification<SseMessagePlan>, Response<Body>> {
        request.require(Method::POST, "post messages to this endpoint")?;
        let session = request
            .head
            .uri
            .query()
            .into_iter()
            .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
            .find(|(k, _)| k == "session_id")
            .and_then(|(_, id)| state.legacy_sessions.get(&id));
        let Some(session) = session.filter(|s| &s.agent == request.caller.identity.spiffe_id())
        else {
            return Err(unknown_session());
        };
        let Some(endpoint) = session
            .upstream_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "session_not_ready",
                "the upstream has not announced its message endpoint yet; retry shortly",
            ));
        };
        let said = Said::from_headers(&request.head.headers);
        let read = read_message(
            &state.pipeline,
            &self.0.config.name,
            &mut request.body,
            &said,
        );
        Ok(Classification {
            asks: read.asks,
            plan: SseMessagePlan {
                session,
                endpoint,
                reading: read.plan,
            },
        })
    }

    async fn refuse(&self, plan: SseMessagePlan, refusal: Refusal) -> Response<Body> {
        match plan.reading.refused(refusal) {
            (answer, true) => plan.session.answer(&answer).await,
            (answer, false) => unanswered(&answer),
        }
    }

    async fn forward(
        &self,
        state: &Arc<State>,
        request: AgentRequest,
        plan: SseMessagePlan,
    ) -> Response<Body> {
        let AgentRequest { caller, head, body } = request;
        let SseMessagePlan {
            session,
            endpoint,
            reading,
        } = plan;
        let awaited = match reading.allowed() {
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
        // The answer will come on the client's stream, which no gate holds: on this transport
        // the record is on disk before the message is forwarded at all.
        if let Err(why) = caller.answer_after.opened().await {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                &format!(
                    "the call's record could not be made durable, so it was not forwarded: {why}"
                ),
            );
        }
        match call_upstream(
            state,
            self.0,
            Method::POST,
            &endpoint,
            &head.headers,
            |name| name == "content-type",
            body,
        )
        .await
        {
            Ok(response) => relay(response, &["content-type"]),
            Err(response) => response,
        }
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
