//! Shared plumbing below the adapters: the gateway's state, the response shapes every adapter
//! answers with, bounded request bodies, identification of a request, and the one way requests
//! reach upstreams and answers come back. Nothing here routes, classifies or decides.

// The `Err` of the helpers below is the early response that ends the request; boxing it would
// only add an allocation to the refusal path.
#![allow(clippy::result_large_err)]

pub(crate) use crate::body::{Body, BoxError, full};

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::Instrument as _;
use warden_http::HttpClient;
use warden_model::{Action, SpiffeId};

use crate::config::{GatewayConfig, UpstreamConfig};
use crate::identify::{Caller, CallerSlot, ClientAddress, Identifier, KernelCaller};
use crate::metrics::{Metrics, stage_span};
use crate::owners::Owners;
use crate::pipeline::Pipeline;

/// Headers never forwarded to an HTTP upstream.
pub(crate) const HOP_AND_CREDENTIALS: [&str; 12] = [
    "authorization",
    "proxy-authorization",
    "dpop",
    "cookie",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];
pub struct Upstream {
    pub config: UpstreamConfig,
    /// The upstream's own credential, if it needs one.
    pub credential: Option<crate::credential::UpstreamCredential>,
}

impl Upstream {
    /// The credential header to send now (fetching a token if it is due).
    async fn credential(
        &self,
        client: &HttpClient,
    ) -> Result<Option<(http::HeaderName, HeaderValue)>, Response<Body>> {
        match &self.credential {
            None => Ok(None),
            Some(credential) => credential.header(client).await.map(Some).map_err(|e| {
                tracing::warn!(upstream = %self.config.name, "upstream credential unavailable: {e:#}");
                problem(
                    StatusCode::BAD_GATEWAY,
                    "upstream_credential",
                    "the gateway could not obtain the upstream's credential",
                )
            }),
        }
    }
}

pub struct State {
    pub config: GatewayConfig,
    /// The token `/metrics` on the agent listener requires; `None`: not served there.
    pub metrics_token: Option<String>,
    pub identifier: Identifier,
    pub pipeline: Pipeline,
    pub upstreams: Vec<Upstream>,
    /// The URL agents reach the gateway at.
    pub public_url: String,
    pub sessions: Owners,
    pub legacy_sessions: crate::legacy::LegacySessions,
    pub tasks: Arc<Owners>,
    pub client: HttpClient,
    pub metrics: Arc<Metrics>,
    pub permits: Semaphore,
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn problem(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

/// A refusal as a plain HTTP answer: `403`, with the JSON-RPC shaped error (`data.outcome` tells
/// denied from needs-approval and carries what an approval request needs).
pub(crate) fn forbidden(
    verdict: &crate::pipeline::Verdict,
    what: &str,
    codes: crate::jsonrpc::Codes,
) -> Response<Body> {
    let refusal = crate::jsonrpc::refusal(&Value::Null, verdict, what, codes);
    json_response(StatusCode::FORBIDDEN, &json!({"error": refusal["error"]}))
}

/// Whether a request is for the forward proxy rather than a named upstream.
pub fn is_proxy_request<B>(request: &Request<B>) -> bool {
    request.method() == Method::CONNECT || request.uri().scheme().is_some()
}

/// A request body as the listener receives it (hyper's; any body in unit tests).
pub(crate) trait AgentBody: hyper::body::Body<Error: Into<BoxError>> {}

impl<B: hyper::body::Body<Error: Into<BoxError>>> AgentBody for B {}

/// Reads an agent's request body within the size limit, refusing one in a content coding other
/// than `identity`: what is compressed cannot be inspected or decided on as the upstream will
/// read it.
pub(crate) async fn read_request_body<B: AgentBody>(
    state: &State,
    headers: &HeaderMap,
    body: B,
) -> Result<Bytes, Response<Body>> {
    identity_encoded(headers)?;
    read_body(state, body).await
}

fn identity_encoded(headers: &HeaderMap) -> Result<(), Response<Body>> {
    let encoded = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"));
    if encoded {
        return Err(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "encoded_body",
            "request bodies must not be compressed (Content-Encoding): Warden inspects and decides on what the upstream will read; send it uncompressed",
        ));
    }
    Ok(())
}

/// Reads the request body within the size limit.
pub(crate) async fn read_body<B: AgentBody>(
    state: &State,
    body: B,
) -> Result<Bytes, Response<Body>> {
    let limit = state.config.limits.max_body_bytes;
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| {
            let mut response = problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("request bodies are limited to {limit} bytes"),
            );
            // The rest of the body is never read, so the connection cannot carry another request.
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            response
        })
}

pub(crate) fn identify<B>(
    state: &State,
    peer: Option<&SpiffeId>,
    request: &Request<B>,
) -> Result<Caller, Response<Body>> {
    let proxied = is_proxy_request(request);
    let _span = stage_span("identify").entered();
    let started = Instant::now();
    let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let credential = if proxied {
        http::header::PROXY_AUTHORIZATION
    } else {
        http::header::AUTHORIZATION
    };
    let result = match request.extensions().get::<KernelCaller>() {
        Some(KernelCaller(caller)) => Ok(caller.clone()),
        None => state.identifier.identify(
            peer,
            request.method().as_str(),
            path_and_query,
            request.headers(),
            &credential,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        ),
    };
    state.metrics.stage("identify", started.elapsed());
    let source = request.extensions().get::<ClientAddress>().map(|a| a.0);
    if let (Ok(caller), Some(slot)) = (&result, request.extensions().get::<CallerSlot>()) {
        let _ = slot.0.set(crate::identify::Admitted {
            id: caller.identity.spiffe_id().clone(),
            parents: caller.identity.parents().to_vec(),
            version: state.pipeline.stops().version(),
            answer_after: caller.answer_after.clone(),
        });
    }
    result
        .map(|caller| Caller { source, ..caller })
        .map_err(|e| {
            state.pipeline.record_unidentified(source, || {
                let (agent, grant) = state
                    .identifier
                    .claimed(peer, request.headers(), &credential);
                crate::pipeline::RefusedIdentity {
                    agent,
                    grant,
                    why: e.to_string(),
                    method: request.method().to_string(),
                    path: request.uri().path().chars().take(512).collect(),
                }
            });
            let (status, challenge) = if proxied {
                (
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    http::header::PROXY_AUTHENTICATE,
                )
            } else {
                (StatusCode::UNAUTHORIZED, http::header::WWW_AUTHENTICATE)
            };
            let mut response = problem(status, "unauthenticated", &e.to_string());
            response.headers_mut().insert(
                challenge,
                HeaderValue::from_static("Bearer realm=\"warden\", DPoP realm=\"warden\""),
            );
            response
        })
}

/// A request as an adapter receives it: its caller identified, its body read — once, within the
/// limits, uncompressed — before any adapter code runs.
pub(crate) struct AgentRequest {
    pub caller: Caller,
    pub head: http::request::Parts,
    pub body: Bytes,
}

impl AgentRequest {
    /// Refuses a request made with another method than `method`, saying `how` to call.
    pub fn require(&self, method: Method, how: &str) -> Result<(), Response<Body>> {
        if self.head.method == method {
            Ok(())
        } else {
            Err(problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                how,
            ))
        }
    }
}

/// The stack's first stages for an agent's request: identify the caller (once), then read its
/// body within the limits (once). A `CONNECT`'s body is the tunnel, so it is not read; what an
/// egress request carries is not inspected, so it may come compressed.
pub(crate) async fn admit<B: AgentBody>(
    state: &State,
    peer: Option<&SpiffeId>,
    request: Request<B>,
) -> Result<AgentRequest, Response<Body>> {
    let caller = identify(state, peer, &request)?;
    let proxied = is_proxy_request(&request);
    let (head, body) = request.into_parts();
    let body = if head.method == Method::CONNECT {
        Bytes::new()
    } else if proxied {
        read_body(state, body).await?
    } else {
        read_request_body(state, &head.headers, body).await?
    };
    Ok(AgentRequest { caller, head, body })
}

/// Sends a request to the upstream with only the `keep` headers of the client's, plus the
/// upstream's own credential; returns as soon as the response head arrives.
pub(crate) async fn call_upstream(
    state: &State,
    upstream: &Upstream,
    method: Method,
    url: &str,
    headers: &HeaderMap,
    keep: impl Fn(&str) -> bool,
    body: Bytes,
) -> Result<Response<Incoming>, Response<Body>> {
    let request = upstream_request(state, upstream, method, url, headers, keep, body).await?;
    forward(state, request).await
}

/// Builds a request to the upstream with only the allowed headers, plus its own credential.
async fn upstream_request(
    state: &State,
    upstream: &Upstream,
    method: Method,
    url: &str,
    headers: &HeaderMap,
    keep: impl Fn(&str) -> bool,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, Response<Body>> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        if keep(name.as_str()) {
            builder = builder.header(name, value);
        }
    }
    if let Some((name, value)) = upstream.credential(&state.client).await? {
        builder = builder.header(name, value);
    }
    builder.body(Full::new(body)).map_err(|e| {
        problem(
            StatusCode::BAD_GATEWAY,
            "bad_upstream_request",
            &format!("cannot build the upstream request: {e}"),
        )
    })
}

async fn forward(
    state: &State,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, Response<Body>> {
    let started = Instant::now();
    let result = state
        .client
        .stream(request)
        .instrument(stage_span("forward"))
        .await
        .map_err(|e| {
            tracing::warn!("upstream unavailable: {e}");
            problem(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the upstream did not answer",
            )
        });
    state.metrics.stage("forward", started.elapsed());
    result
}

/// The upstream's response with only the headers a client needs.
pub(crate) fn relay(upstream: Response<Incoming>, keep: &[&'static str]) -> Response<Body> {
    let (parts, body) = upstream.into_parts();
    Response::from_parts(
        relayed_head(&parts, keep),
        body.map_err(|e| Box::new(e) as BoxError).boxed(),
    )
}

/// The head a relayed answer goes out with: the upstream's status and only the `keep` headers.
pub(crate) fn relayed_head(
    upstream: &http::response::Parts,
    keep: &[&'static str],
) -> http::response::Parts {
    let mut head = Response::new(()).into_parts().0;
    head.status = upstream.status;
    for name in keep {
        if let Some(value) = upstream.headers.get(*name) {
            head.headers
                .insert(http::HeaderName::from_static(name), value.clone());
        }
    }
    head
}

pub(crate) fn describe(action: &Action) -> String {
    format!("{} on {}", action.kind(), action.resource())
}
