//! An agent's request, top to bottom, in [`serve`]: identify the caller (once) → read the body
//! within the limits (once) → the protocol adapter classifies it into actions → the pipeline
//! inspects, decides and records each → the adapter forwards it and relays (reviewing) the
//! answer. The listener and router (`server`) sit above; the shared plumbing (state, bodies, the
//! upstream client) below.
//!
//! Adapters implement [`Adapter`]: they read a request as what it asks for, say a refusal in
//! their protocol, and carry an allowed request to its upstream. They never identify, read bodies,
//! decide or record; what only forwarding reveals (the address a name resolves to) they put to
//! [`check`], as the stack does.

// The `Err` of `classify` is the early response that ends the request; boxing it would only add
// an allocation to the refusal path.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use warden_model::{Action, DenyReason, SpiffeId};

use crate::identify::Caller;
use crate::metrics::stage_span;
use crate::pipeline::{Pipeline, Said, Verdict};
use crate::plumbing::{AgentBody, AgentRequest, Body, State, admit, describe};

/// A protocol adapter: one kind of route's reading of requests and relaying of answers.
pub(crate) trait Adapter {
    /// What forwarding needs from classification (the request's id, what to review…).
    type Plan: Send;

    /// Reads an admitted request as the actions it asks for, decided in order before anything
    /// is forwarded; or answers it at once (malformed, another agent's session, wrong method).
    /// It may rewrite the body (redaction): what is decided is what goes out.
    fn classify(
        &self,
        state: &State,
        request: &mut AgentRequest,
    ) -> Result<Classification<Self::Plan>, Response<Body>>;

    /// The answer, in the adapter's protocol, when one of its actions is refused.
    fn refuse(
        &self,
        plan: Self::Plan,
        refusal: Refusal,
    ) -> impl Future<Output = Response<Body>> + Send;

    /// Forwards an allowed request and relays the answer, reviewing what comes back.
    fn forward(
        &self,
        state: &Arc<State>,
        request: AgentRequest,
        plan: Self::Plan,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// What an adapter read a request as.
pub(crate) struct Classification<P> {
    /// What is decided, in order; the first refused ends the request.
    pub asks: Vec<Ask>,
    pub plan: P,
}

/// One action a request asks for, and how the stack settles it.
pub(crate) struct Ask {
    action: Action,
    settle: Settle,
    /// What a refusal calls it, when not its own description.
    what: Option<String>,
}

enum Settle {
    /// Inspected (with the request's body when `body`), decided and recorded.
    Decide { said: Said, body: bool },
    /// Session plumbing: passes unless the caller is stopped (quarantine, the kill switch).
    Plumbing,
    /// Refused as read (`reason` says why), and recorded.
    Refuse(DenyReason),
}

impl Ask {
    /// Inspects the request's body as the action's content and decides.
    pub fn decide(action: Action, said: Said) -> Self {
        Self::settled(action, Settle::Decide { said, body: true })
    }

    /// Decides an action the request's body is not the content of (an address to connect to).
    pub fn decide_alone(action: Action, said: Said) -> Self {
        Self::settled(action, Settle::Decide { said, body: false })
    }

    pub fn plumbing(action: Action) -> Self {
        Self::settled(action, Settle::Plumbing)
    }

    pub fn refuse(action: Action, reason: DenyReason) -> Self {
        Self::settled(action, Settle::Refuse(reason))
    }

    /// Names the action in a refusal as `what`.
    pub fn described_as(mut self, what: String) -> Self {
        self.what = Some(what);
        self
    }

    fn settled(action: Action, settle: Settle) -> Self {
        Self {
            action,
            settle,
            what: None,
        }
    }
}

/// An action the stack refused: what it is called, and the verdict.
pub(crate) struct Refusal {
    pub what: String,
    pub verdict: Verdict,
}

/// The stack. Every agent request the router sends to an adapter goes through here, in this
/// order, and nowhere else.
pub(crate) async fn serve<A: Adapter, B: AgentBody>(
    state: &Arc<State>,
    peer: Option<&SpiffeId>,
    adapter: A,
    request: Request<B>,
) -> Response<Body> {
    // Identify the caller, then read the body within the limits: once each, before any adapter.
    let mut request = match admit(state, peer, request).await {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    // The adapter reads the request as the actions it asks for.
    let started = Instant::now();
    let classified = stage_span("classify").in_scope(|| adapter.classify(state, &mut request));
    state.metrics.stage("classify", started.elapsed());
    let Classification { asks, plan } = match classified {
        Ok(classified) => classified,
        Err(answered) => return answered,
    };
    // Inspect, decide and record each; an allowed action's record is written before it goes on.
    if let Err(refusal) = check(&state.pipeline, &request.caller, &request.body, asks).await {
        return adapter.refuse(plan, refusal).await;
    }
    // Forward, and relay the answer as the adapter reviews it.
    adapter.forward(state, request, plan).await
}

/// Settles each ask in order (inspect, decide, record); the first refused is the refusal.
pub(crate) async fn check(
    pipeline: &Pipeline,
    caller: &Caller,
    body: &[u8],
    asks: Vec<Ask>,
) -> Result<(), Refusal> {
    for Ask {
        action,
        settle,
        what,
    } in asks
    {
        let reason = match settle {
            Settle::Decide {
                said,
                body: with_body,
            } => {
                let what = what.unwrap_or_else(|| describe(&action));
                let content = if with_body { body } else { &[] };
                let verdict = pipeline.decide(caller, action, content, said).await;
                if verdict.allowed() {
                    continue;
                }
                return Err(Refusal { what, verdict });
            }
            Settle::Plumbing => match pipeline.stopped(caller) {
                None => continue,
                Some(reason) => reason,
            },
            Settle::Refuse(reason) => reason,
        };
        let what = what.unwrap_or_else(|| describe(&action));
        let verdict = pipeline.refuse(caller, action, reason);
        return Err(Refusal { what, verdict });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::Full;

    use super::*;
    use crate::testing::gateway;

    /// An adapter that counts the requests it is given and forwards nothing.
    #[derive(Default)]
    struct Probe(AtomicUsize);

    impl Adapter for &Probe {
        type Plan = ();

        fn classify(
            &self,
            _: &State,
            _: &mut AgentRequest,
        ) -> Result<Classification<()>, Response<Body>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Classification {
                asks: Vec::new(),
                plan: (),
            })
        }

        async fn refuse(&self, (): (), _: Refusal) -> Response<Body> {
            Response::new(crate::plumbing::full("refused"))
        }

        async fn forward(&self, _: &Arc<State>, _: AgentRequest, (): ()) -> Response<Body> {
            Response::new(crate::plumbing::full("forwarded"))
        }
    }

    /// Unidentified, oversized and compressed requests are answered by the stack: the adapter
    /// never sees them; an identified one within the limits reaches it once.
    #[test]
    fn adapters_see_requests_only_after_identify_and_body_limits() {
        let gateway = gateway(64);
        let probe = Probe::default();
        let grant = gateway.grant();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let send = |authorization: Option<&str>, encoding: Option<&str>, body: &str| {
            let mut request = Request::builder().method("POST").uri("/mcp/tools");
            if let Some(authorization) = authorization {
                request = request.header("authorization", authorization);
            }
            if let Some(encoding) = encoding {
                request = request.header("content-encoding", encoding);
            }
            let request = request
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap();
            let peer = Some(&gateway.agent);
            runtime
                .block_on(serve(&gateway.state, peer, &probe, request))
                .status()
        };
        let bearer = format!("Bearer {grant}");
        assert_eq!(send(None, None, "{}"), StatusCode::UNAUTHORIZED);
        assert_eq!(
            send(Some("Bearer not-a-grant"), None, "{}"),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            send(Some(&bearer), None, &"x".repeat(65)),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            send(Some(&bearer), Some("gzip"), "{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(probe.0.load(Ordering::SeqCst), 0);
        assert_eq!(send(Some(&bearer), None, "{}"), StatusCode::OK);
        assert_eq!(probe.0.load(Ordering::SeqCst), 1);
    }
}
