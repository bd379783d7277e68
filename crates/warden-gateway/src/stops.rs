//! Quarantine and the kill switch on this gateway. The state comes from the control plane by
//! long poll (so a change lands within about a second); every decision consults it first, and
//! every response to an identified agent is guarded: when the agent is held, or all traffic
//! frozen, its open streams are cut mid-flight, and connections made with its certificate close.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body::{Body as HttpBody, Frame};
use tokio::sync::watch;
use warden_http::HttpClient;
use warden_model::{DenyReason, Oversight, SpiffeId};

use crate::body::{Body, BoxError};

/// How long one long poll waits at the control plane.
const WATCH_SECONDS: u64 = 25;
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The holds and the kill switch as this gateway last heard them.
pub struct Stops {
    state: watch::Sender<Arc<Oversight>>,
}

impl Default for Stops {
    fn default() -> Self {
        Self {
            state: watch::channel(Arc::new(Oversight::default())).0,
        }
    }
}

/// Why an agent with this state may not act, if it may not.
fn stopped_in(state: &Oversight, id: &SpiffeId, parents: &[SpiffeId]) -> Option<DenyReason> {
    if state.frozen.is_some() {
        return Some(DenyReason::Frozen);
    }
    state
        .hold_on(id.as_str(), parents.iter().map(SpiffeId::as_str))
        .map(|_| DenyReason::Quarantined)
}

impl Stops {
    /// Takes a newer state in; an older or equal version changes nothing.
    pub fn apply(&self, state: Oversight) -> bool {
        self.state.send_if_modified(|current| {
            if state.version > current.version {
                *current = Arc::new(state);
                true
            } else {
                false
            }
        })
    }

    pub fn current(&self) -> Arc<Oversight> {
        Arc::clone(&self.state.borrow())
    }

    pub fn stopped(&self, id: &SpiffeId, parents: &[SpiffeId]) -> Option<DenyReason> {
        stopped_in(&self.state.borrow(), id, parents)
    }

    /// The version of the state in force now.
    pub fn version(&self) -> u64 {
        self.state.borrow().version
    }

    /// Resolves once a state newer than `admitted` (the version the agent's request or
    /// connection was let in under) stops the agent. A request refused because the agent was
    /// already stopped is not cut: its refusal reaches the agent.
    pub fn until_stopped(
        &self,
        id: SpiffeId,
        parents: Vec<SpiffeId>,
        admitted: u64,
    ) -> impl Future<Output = DenyReason> + Send + Sync + 'static {
        let mut changes = self.state.subscribe();
        async move {
            loop {
                let stopped = {
                    let state = changes.borrow_and_update();
                    if state.version > admitted {
                        stopped_in(&state, &id, &parents)
                    } else {
                        None
                    }
                };
                if let Some(reason) = stopped {
                    return reason;
                }
                if changes.changed().await.is_err() {
                    // The gateway is going away; nothing will stop this agent from here.
                    return std::future::pending().await;
                }
            }
        }
    }

    /// A response body that is cut when the agent is stopped after `admitted`.
    pub fn guard(&self, body: Body, id: SpiffeId, parents: Vec<SpiffeId>, admitted: u64) -> Body {
        http_body_util::BodyExt::boxed(Guarded {
            inner: body,
            stop: Box::pin(self.until_stopped(id, parents, admitted)),
        })
    }
}

struct Guarded {
    inner: Body,
    stop: Pin<Box<dyn Future<Output = DenyReason> + Send + Sync>>,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(reason) = self.stop.as_mut().poll(cx) {
            // An error ends the response without a proper end: the client sees the stream cut.
            let why = match reason {
                DenyReason::Frozen => "all agent traffic is frozen",
                _ => "the agent was quarantined",
            };
            return Poll::Ready(Some(Err(why.into())));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The state at the control plane now (anyone may read it; reasons are left out for callers
/// without an admin token).
pub async fn fetch(
    client: &HttpClient,
    control_url: &str,
    since: u64,
    wait: u64,
) -> anyhow::Result<Oversight> {
    let url = format!(
        "{}/v1/oversight?since={since}&wait={wait}",
        control_url.trim_end_matches('/')
    );
    let response = client
        .send(
            Method::GET,
            &url,
            &[("accept", "application/json")],
            None,
            MAX_ANSWER_BYTES,
        )
        .await?;
    anyhow::ensure!(
        response.status.is_success(),
        "{url} answered {}",
        response.status
    );
    Ok(serde_json::from_slice(&response.body)?)
}

/// Follows the control plane for as long as the gateway runs; `changed` runs after each new
/// state is in force (to end the sessions of agents now held).
pub async fn follow(
    client: HttpClient,
    control_url: String,
    stops: Arc<Stops>,
    changed: impl Fn(&Oversight) + Send + 'static,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let since = stops.current().version;
        match fetch(&client, &control_url, since, WATCH_SECONDS).await {
            Ok(state) => {
                backoff = Duration::from_millis(250);
                if stops.apply(state) {
                    changed(&stops.current());
                }
            }
            Err(e) => {
                tracing::warn!("quarantine watch failed, retrying in {backoff:?}: {e:#}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
