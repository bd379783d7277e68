//! Serves `/a2a/<peer>` (JSON-RPC) and `/a2a/<peer>/.well-known/agent-card.json`: identifies the
//! caller, lets the pipeline decide, keeps every task with the agent that created it, forwards
//! with the peer's own credential, and relays answers (streams as they arrive).

// The `Err` of the server helpers is the early response that ends the request.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;
use warden_model::{A2aMethod, Action, Host, Protocol};

use crate::a2a::{self, Call};
use crate::jsonrpc::{self, Invalid, Message};
use crate::pipeline::Said;
use crate::plumbing::{
    AgentRequest, Body, State, Upstream, call_upstream, describe, forbidden, full, json_response,
    problem,
};
use crate::reviewed::{Asked, is_event_stream, read_whole, relay_reviewed, review_answer};
use crate::stack::{Adapter, Ask, Classification, Refusal};

/// Headers a client's request may carry to an A2A peer; its credentials stay at the gateway.
const FORWARDED: [&str; 5] = [
    "content-type",
    "accept",
    "a2a-version",
    "a2a-extensions",
    "last-event-id",
];
const RESPONSE_HEADERS: [&str; 3] = ["content-type", "a2a-version", "a2a-extensions"];
/// Largest agent card the gateway reads to check and rewrite.
const MAX_CARD_BYTES: usize = 1024 * 1024;

/// The paths agent cards are published at (0.3 and later; 0.2).
pub const CARD_PATHS: [&str; 2] = [".well-known/agent-card.json", ".well-known/agent.json"];

/// `GET /a2a/<peer>/.well-known/agent-card.json`: the peer's card, reviewed, pointing at the
/// gateway.
pub(crate) struct Card<'a>(pub &'a Upstream);

impl Adapter for Card<'_> {
    /// The card's action, for its review.
    type Plan = Action;

    fn classify(
        &self,
        _state: &State,
        request: &mut AgentRequest,
    ) -> Result<Classification<Action>, Response<Body>> {
        request.require(Method::GET, "agent cards are read with GET")?;
        let action = Action::A2a {
            peer: self.0.config.name.clone(),
            method: A2aMethod::AgentCard,
        };
        let said = Said::from_headers(&request.head.headers);
        Ok(Classification {
            asks: vec![Ask::decide_alone(action.clone(), said)],
            plan: action,
        })
    }

    async fn refuse(&self, _: Action, refusal: Refusal) -> Response<Body> {
        forbidden(&refusal.verdict, &refusal.what, a2a::CODES)
    }

    async fn forward(
        &self,
        state: &Arc<State>,
        request: AgentRequest,
        action: Action,
    ) -> Response<Body> {
        let upstream = self.0;
        let AgentRequest { caller, head, .. } = request;
        let response = match call_upstream(
            state,
            upstream,
            Method::GET,
            &upstream.config.card_url(),
            &head.headers,
            |name| name == "accept",
            Bytes::new(),
        )
        .await
        {
            Ok(r) => r,
            Err(response) => return response,
        };
        if !response.status().is_success() {
            return problem(
                StatusCode::BAD_GATEWAY,
                "no_agent_card",
                &format!("the peer answered {} for its agent card", response.status()),
            );
        }
        match read_json(response.into_body()).await {
            Ok(mut card) => {
                // A card's descriptions and skills are read by agents' models, as tools' are.
                let review = state.pipeline.review(&caller, &action, &mut card);
                if review.refused()
                    && let Some(verdict) = review.verdict
                {
                    let what = format!("the card of {}", describe(&action));
                    return forbidden(&verdict, &what, a2a::CODES);
                }
                a2a::rewrite_card(&mut card, &rpc_url(state, upstream));
                json_response(StatusCode::OK, &card)
            }
            Err(response) => response,
        }
    }
}

/// The address agents call the peer at: through the gateway.
fn rpc_url(state: &State, upstream: &Upstream) -> String {
    format!("{}/a2a/{}", state.public_url, upstream.config.name)
}

/// `POST /a2a/<peer>`: A2A's JSON-RPC binding. Every task stays with the agent that created it.
pub(crate) struct Rpc<'a>(pub &'a Upstream);

pub(crate) struct RpcPlan {
    id: Value,
    call: Call,
}

impl Adapter for Rpc<'_> {
    type Plan = RpcPlan;

    fn classify(
        &self,
        state: &State,
        request: &mut AgentRequest,
    ) -> Result<Classification<RpcPlan>, Response<Body>> {
        request.require(Method::POST, "A2A's JSON-RPC binding uses POST")?;
        let (id, rpc, mut params) = match jsonrpc::parse(&request.body) {
            Ok(Message::Request { id, method, params }) => (id, method, params),
            Ok(Message::Notification { .. } | Message::Response) => {
                return Err(json_response(
                    StatusCode::BAD_REQUEST,
                    &jsonrpc::error(
                        &Value::Null,
                        &Invalid {
                            code: -32600,
                            message: "A2A requests carry an `id`".into(),
                        },
                    ),
                ));
            }
            Err(invalid) => {
                return Err(json_response(
                    StatusCode::BAD_REQUEST,
                    &jsonrpc::error(&Value::Null, &invalid),
                ));
            }
        };
        let mut said = Said::from_headers(&request.head.headers);
        said.redacted =
            jsonrpc::redact_request(&state.pipeline, &id, &rpc, &mut params, &mut request.body);
        let call = match a2a::classify(&self.0.config.name, &rpc, &params) {
            Ok(call) => call,
            Err(invalid) => {
                return Err(json_response(
                    StatusCode::OK,
                    &jsonrpc::error(&id, &invalid),
                ));
            }
        };
        if let Some(task) = &call.task
            && !state
                .tasks
                .owned_by(task, request.caller.identity.spiffe_id())
        {
            // Another agent's task and no task at all look the same.
            return Err(json_response(
                StatusCode::OK,
                &jsonrpc::error(
                    &id,
                    &Invalid {
                        code: a2a::TASK_NOT_FOUND,
                        message: "Task not found".into(),
                    },
                ),
            ));
        }
        let said = said.with_metadata(a2a::metadata(&params));
        let mut asks = vec![Ask::decide(call.action.clone(), said.clone())];
        // Where the call asks the peer to push updates, the caller's egress to that address is
        // decided too: a push URL is a way out.
        if let Some(url) = &call.push_url {
            let Some(egress) = push_destination(url) else {
                return Err(json_response(
                    StatusCode::OK,
                    &jsonrpc::error(
                        &id,
                        &Invalid {
                            code: -32602,
                            message: "the push notification `url` is not an absolute http(s) URL"
                                .into(),
                        },
                    ),
                ));
            };
            let what = format!("push notifications to {}", egress.resource());
            asks.push(Ask::decide_alone(egress, said).described_as(what));
        }
        Ok(Classification {
            asks,
            plan: RpcPlan { id, call },
        })
    }

    async fn refuse(&self, plan: RpcPlan, refusal: Refusal) -> Response<Body> {
        let answer = jsonrpc::refusal(&plan.id, &refusal.verdict, &refusal.what, a2a::CODES);
        json_response(StatusCode::OK, &answer)
    }

    async fn forward(
        &self,
        state: &Arc<State>,
        request: AgentRequest,
        plan: RpcPlan,
    ) -> Response<Body> {
        let upstream = self.0;
        let AgentRequest { caller, head, body } = request;
        let RpcPlan { id, call } = plan;
        let agent = caller.identity.spiffe_id().clone();
        let response = match call_upstream(
            state,
            upstream,
            Method::POST,
            &upstream.config.url,
            &head.headers,
            |name| FORWARDED.contains(&name),
            body,
        )
        .await
        {
            Ok(r) => r,
            Err(response) => return response,
        };
        let creates_tasks = matches!(
            call.action,
            Action::A2a {
                method: A2aMethod::MessageSend | A2aMethod::MessageStream,
                ..
            }
        );
        // Every answer's result is reviewed (a peer's messages, tasks and card are content an
        // agent reads); streams event by event, binding the tasks they announce as they pass.
        if is_event_stream(&response) {
            let tasks = Arc::clone(&state.tasks);
            return relay_reviewed(
                state,
                &caller,
                Asked {
                    action: call.action.clone(),
                    id: id.clone(),
                },
                response,
                &RESPONSE_HEADERS,
                a2a::CODES,
                move |message| {
                    if creates_tasks {
                        for task in a2a::task_ids(message) {
                            tasks.bind(&task, &agent);
                        }
                    }
                },
            )
            .await;
        }
        // An answer that cannot be read is not passed on unchecked.
        let (head, bytes) = match read_whole(
            response,
            &RESPONSE_HEADERS,
            "the peer's answer is too large",
        )
        .await
        {
            Ok(read) => read,
            Err(response) => return response,
        };
        let Ok(mut message) = crate::json::parse_strict(&bytes) else {
            return problem(
                StatusCode::BAD_GATEWAY,
                "bad_upstream_answer",
                "the peer's answer is not JSON",
            );
        };
        if creates_tasks {
            for task in a2a::task_ids(&message) {
                state.tasks.bind(&task, &agent);
            }
        }
        if call.lists_tasks {
            a2a::filter_tasks(&mut message, &|task| state.tasks.owned_by(task, &agent));
        }
        if let Err(refusal) = review_answer(
            &state.pipeline,
            &caller,
            &call.action,
            &mut message,
            a2a::CODES,
        ) {
            return json_response(StatusCode::OK, &refusal);
        }
        if call.returns_card
            && let Some(card) = message.get_mut("result")
        {
            a2a::rewrite_card(card, &rpc_url(state, upstream));
        }
        Response::from_parts(head, full(Bytes::from(message.to_string())))
    }
}

/// The egress a push notification URL opens: to its host and port.
fn push_destination(url: &str) -> Option<Action> {
    let uri = url.parse::<http::Uri>().ok()?;
    let port = match (uri.scheme_str()?, uri.port_u16()) {
        (_, Some(port)) => port,
        ("https", None) => 443,
        ("http", None) => 80,
        _ => return None,
    };
    let host = Host::new(uri.host()?.trim_matches(['[', ']'])).ok()?;
    Some(Action::EgressConnect {
        host,
        port,
        protocol: Protocol::Tcp,
        ip: None,
    })
}

async fn read_json(body: Incoming) -> Result<Value, Response<Body>> {
    let bytes =
        crate::reviewed::collect(body, MAX_CARD_BYTES, "the peer's card is too large").await?;
    crate::json::parse_strict(&bytes).map_err(|_| {
        problem(
            StatusCode::BAD_GATEWAY,
            "bad_upstream_answer",
            "the peer's answer is not JSON",
        )
    })
}
