//! The listener: TLS (client certificates optional, verified against the trust bundle when
//! presented), HTTP/1.1 with header size and time limits, routing to the adapters, concurrency
//! limit, graceful shutdown.

// The `Err` of the helpers below is the early response that ends the request; boxing it would
// only add an allocation to the refusal path.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument as _;
use warden_http::HttpClient;
use warden_model::{Action, HttpMethod, HttpPath, SpiffeId};

use crate::config::{GatewayConfig, UpstreamConfig, UpstreamKind};
use crate::identify::{Caller, CallerSlot, ClientAddress, Identifier};
use crate::jsonrpc;
use crate::mcp;
use crate::metrics::{Metrics, stage_span};
use crate::owners::Owners;
use crate::pipeline::Pipeline;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Headers never forwarded to an HTTP upstream.
const HOP_AND_CREDENTIALS: [&str; 12] = [
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
    pub legacy_sessions: crate::mcp_proxy::LegacySessions,
    pub tasks: Arc<Owners>,
    pub client: HttpClient,
    pub metrics: Arc<Metrics>,
    pub permits: Semaphore,
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
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

/// Serves until `shutdown` resolves, then stops accepting and drains in-flight requests (for up
/// to `limits.drainSecs`).
pub async fn serve(
    state: Arc<State>,
    listener: TcpListener,
    tls: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // Every connection holds a sender; when all are gone, every connection has finished.
    let (alive, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((tcp, remote)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                // The configuration current now: roots may have changed since the last connection.
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
                let state = Arc::clone(&state);
                let alive = alive.clone();
                let mut stopping = stopping.clone();
                tokio::spawn(async move {
                    let _alive = alive;
                    let limits = state.config.limits.clone();
                    let handshake =
                        tokio::time::timeout(limits.header_timeout(), acceptor.accept(tcp));
                    let Ok(Ok(stream)) = handshake.await else {
                        tracing::debug!(%remote, "TLS handshake failed or timed out");
                        return;
                    };
                    let peer = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|leaf| spiffe_id_of(leaf.as_ref()));
                    // A connection made with a held agent's certificate is closed when it is held.
                    let held: std::pin::Pin<Box<dyn std::future::Future<Output = warden_model::DenyReason> + Send>> =
                        match &peer {
                            Some(id) => {
                                let stops = state.pipeline.stops();
                                Box::pin(stops.until_stopped(id.clone(), Vec::new(), stops.version()))
                            }
                            None => Box::pin(std::future::pending()),
                        };
                    let peer = Arc::new(peer);
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        let peer = Arc::clone(&peer);
                        let mut request = request;
                        request.extensions_mut().insert(ClientAddress(remote));
                        async move { Ok::<_, Infallible>(handle(&state, (*peer).as_ref(), request).await) }
                    });
                    let mut http = hyper::server::conn::http1::Builder::new();
                    // hyper's smallest read buffer is 8 KiB.
                    http.timer(TokioTimer::new())
                        .header_read_timeout(limits.header_timeout())
                        .max_buf_size(limits.max_header_bytes.max(8192));
                    let connection = http
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::pin!(connection);
                    let result = tokio::select! {
                        result = connection.as_mut() => result,
                        () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                        reason = held => {
                            tracing::info!(%remote, "closing the connection: {reason:?}");
                            Ok(())
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%remote, "connection ended: {e}");
                    }
                });
            }
        }
    }
    let _ = stop.send(true);
    drop(alive);
    let drain = Duration::from_secs(state.config.limits.drain_secs);
    let _ = tokio::time::timeout(drain, drained.recv()).await;
}

/// The SPIFFE ID in a verified client certificate's single URI SAN.
fn spiffe_id_of(der: &[u8]) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let uri = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    SpiffeId::new(uri).ok()
}

async fn handle(
    state: &Arc<State>,
    peer: Option<&SpiffeId>,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let caller = CallerSlot::default();
    request.extensions_mut().insert(caller.clone());
    let Ok(_permit) = state.permits.try_acquire() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight; retry shortly",
        );
    };
    state.metrics.enter();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        otel.name = "warden.request",
        http.request.method = %request.method(),
        url.path = %path,
        warden.adapter = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let (adapter, response) = async {
        if crate::egress::is_proxy_request(&request) {
            ("egress", crate::egress::handle(state, peer, request).await)
        } else {
            route(state, peer, &path, request).await
        }
    }
    .instrument(span.clone())
    .await;
    // The answer waits for the records of what it answers to be on disk.
    let response = match caller.0.get() {
        Some(admitted) => match admitted.answer_after.opened().await {
            Ok(()) => response,
            Err(why) => {
                tracing::error!("withholding an answer: its record is not on disk: {why}");
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "the call was forwarded, but its record could not be made durable, so its answer is withheld",
                )
            }
        },
        None => response,
    };
    span.record("warden.adapter", adapter);
    span.record("http.response.status_code", response.status().as_u16());
    state.metrics.leave();
    state.metrics.request(adapter, response.status().as_u16());
    // What an identified agent receives is cut off when it is held.
    match caller.0.get() {
        Some(admitted) => {
            let stops = state.pipeline.stops();
            let admitted = admitted.clone();
            response.map(|body| stops.guard(body, admitted.id, admitted.parents, admitted.version))
        }
        None => response,
    }
}

async fn route(
    state: &Arc<State>,
    peer: Option<&SpiffeId>,
    path: &str,
    request: Request<Incoming>,
) -> (&'static str, Response<Body>) {
    if path == "/healthz" {
        return (
            "health",
            json_response(StatusCode::OK, &json!({"status": "ok"})),
        );
    }
    if path == "/actions/undo" {
        return ("undo", crate::undo::handle(state, request).await);
    }
    if path == "/metrics" {
        return ("metrics", metrics_for(state, request.headers()));
    }
    let mut segments = path.trim_start_matches('/').splitn(3, '/');
    let (kind, name, rest) = (segments.next(), segments.next(), segments.next());
    let upstream = name.and_then(|n| state.upstreams.iter().find(|u| u.config.name.as_str() == n));
    match (kind, upstream) {
        (Some("mcp"), Some(u)) if u.config.kind == UpstreamKind::Mcp && rest.is_none() => (
            "mcp",
            crate::mcp_proxy::streamable(state, peer, u, request).await,
        ),
        (Some("mcp"), Some(u)) if u.config.kind == UpstreamKind::McpSse => match rest {
            Some("sse") => (
                "mcp",
                crate::mcp_proxy::legacy_stream(state, peer, u, request).await,
            ),
            Some("messages") => (
                "mcp",
                crate::mcp_proxy::legacy_message(state, peer, u, request).await,
            ),
            _ => (
                "mcp",
                problem(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "this MCP server uses the HTTP+SSE transport: open /mcp/<server>/sse",
                ),
            ),
        },
        (Some("a2a"), Some(u)) if u.config.kind == UpstreamKind::A2a => match rest {
            None => ("a2a", crate::a2a_proxy::rpc(state, peer, u, request).await),
            Some(card) if crate::a2a_proxy::CARD_PATHS.contains(&card) => {
                ("a2a", crate::a2a_proxy::card(state, peer, u, request).await)
            }
            Some(_) => (
                "a2a",
                problem(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "A2A peers answer at /a2a/<peer> and /a2a/<peer>/.well-known/agent-card.json",
                ),
            ),
        },
        (Some("http"), Some(u)) if u.config.kind == UpstreamKind::Http => {
            let rest = format!("/{}", rest.unwrap_or_default());
            ("http", http_request(state, peer, u, &rest, request).await)
        }
        _ => (
            "none",
            problem(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; use /mcp/<upstream>, /a2a/<upstream> or /http/<upstream>/<path>",
            ),
        ),
    }
}

/// `/metrics` on the agent listener: only with the metrics token.
fn metrics_for(state: &State, headers: &HeaderMap) -> Response<Body> {
    let Some(token) = &state.metrics_token else {
        return problem(
            StatusCode::NOT_FOUND,
            "metrics_elsewhere",
            "metrics are not served to agents: set gateway.metrics.tokenFile (then send `Authorization: Bearer <token>`) or gateway.metrics.listen",
        );
    };
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let matches = presented.len() == token.len()
        && aws_lc_rs::constant_time::verify_slices_are_equal(
            presented.as_bytes(),
            token.as_bytes(),
        )
        .is_ok();
    if !matches {
        let mut refused = problem(
            StatusCode::UNAUTHORIZED,
            "metrics_token",
            "metrics need `Authorization: Bearer <the token in gateway.metrics.tokenFile>`",
        );
        refused.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"warden-metrics\""),
        );
        return refused;
    }
    metrics_response(&state.metrics)
}

fn metrics_response(metrics: &Metrics) -> Response<Body> {
    let mut response = Response::new(full(metrics.render()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Serves `/metrics` alone, without a token, on a listener of its own (plain HTTP).
pub(crate) async fn serve_metrics(
    metrics: Arc<Metrics>,
    address: std::net::SocketAddr,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(address).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let response = if request.uri().path() == "/metrics" {
                        metrics_response(&metrics)
                    } else {
                        problem(
                            StatusCode::NOT_FOUND,
                            "not_found",
                            "only /metrics is served here",
                        )
                    };
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }))
}

/// Reads an agent's request body within the size limit, refusing one in a content coding other
/// than `identity`: what is compressed cannot be inspected or decided on as the upstream will
/// read it.
pub(crate) async fn read_request_body(
    state: &State,
    request: Request<Incoming>,
) -> Result<Bytes, Response<Body>> {
    identity_encoded(request.headers())?;
    read_body(state, request.into_body()).await
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
pub(crate) async fn read_body(state: &State, body: Incoming) -> Result<Bytes, Response<Body>> {
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

pub(crate) fn identify(
    state: &State,
    peer: Option<&SpiffeId>,
    request: &Request<Incoming>,
) -> Result<Caller, Response<Body>> {
    let proxied = crate::egress::is_proxy_request(request);
    let _span = stage_span("identify").entered();
    let started = Instant::now();
    let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let credential = if proxied {
        http::header::PROXY_AUTHORIZATION
    } else {
        http::header::AUTHORIZATION
    };
    let result = state.identifier.identify(
        peer,
        request.method().as_str(),
        path_and_query,
        request.headers(),
        &credential,
        time::OffsetDateTime::now_utc().unix_timestamp(),
    );
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

/// Identifies the caller of a request that must use `method`; `how` tells a caller that used
/// another what to do.
pub(crate) fn identify_method(
    state: &State,
    peer: Option<&SpiffeId>,
    request: &Request<Incoming>,
    method: Method,
    how: &str,
) -> Result<Caller, Response<Body>> {
    let caller = identify(state, peer, request)?;
    if request.method() != method {
        return Err(problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            how,
        ));
    }
    Ok(caller)
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

async fn http_request(
    state: &State,
    peer: Option<&SpiffeId>,
    upstream: &Upstream,
    rest: &str,
    request: Request<Incoming>,
) -> Response<Body> {
    let caller = match identify(state, peer, &request) {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let action = match (
        HttpMethod::new(request.method().as_str()),
        HttpPath::new(rest),
    ) {
        (Ok(method), Ok(path)) => Action::Http {
            service: upstream.config.name.clone(),
            method,
            path,
        },
        (Err(e), _) | (_, Err(e)) => {
            return problem(StatusCode::BAD_REQUEST, "bad_request", &e.to_string());
        }
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut said = crate::pipeline::Said::from_headers(request.headers());
    let method = request.method().clone();
    let headers = request.headers().clone();
    let mut body = match read_request_body(state, request).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    if !body.is_empty()
        && is_json(&headers)
        && let Err(e) = crate::json::parse_strict(&body)
    {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_json",
            &format!(
                "the JSON body is refused ({e}): Warden forwards only JSON that it and the upstream read the same way"
            ),
        );
    }
    if state.pipeline.redacts_requests() && !body.is_empty() {
        said.redacted = redact_body(&state.pipeline, &headers, &mut body);
    }
    let path = match &action {
        Action::Http { path, .. } => path.encoded(),
        _ => unreachable!("built above as Action::Http"),
    };
    let url = format!("{}{path}{query}", upstream.config.url.trim_end_matches('/'));
    // What leaves besides the body: the URL (a query string carries data too) and the headers
    // that are forwarded. Their findings are located at `/url` and `/headers/<name>`.
    let forwarded: serde_json::Map<String, Value> = headers
        .iter()
        .filter(|(name, _)| forwards_header(name.as_str()))
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), Value::String(value))
        })
        .collect();
    said.findings.extend(state.pipeline.inspect_content(
        &action,
        &json!({"url": format!("{path}{query}"), "headers": forwarded}),
    ));
    let what = describe(&action);
    // Kept for the review of the response, when it is inspected.
    let reviewed = upstream.config.inspect_responses.then(|| action.clone());
    let verdict = state.pipeline.decide(&caller, action, &body, said).await;
    if !verdict.allowed() {
        // Denied and needs-approval are both 403; the body's `data.outcome` tells them apart and
        // carries what an approval request needs.
        let refusal = jsonrpc::refusal(&Value::Null, &verdict, &what, mcp::CODES);
        return json_response(StatusCode::FORBIDDEN, &json!({"error": refusal["error"]}));
    }
    let inspect = reviewed.is_some();
    let response = match call_upstream(
        state,
        upstream,
        method,
        &url,
        &headers,
        // An inspected response must come back readable: no compression asked for.
        |name| forwards_header(name) && !(inspect && name == "accept-encoding"),
        body,
    )
    .await
    {
        Ok(response) => response,
        Err(response) => return response,
    };
    let (parts, body) = response.into_parts();
    let mut head = Response::new(());
    *head.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if !HOP_AND_CREDENTIALS.contains(&name.as_str()) && name != "set-cookie" {
            head.headers_mut().append(name, value.clone());
        }
    }
    let Some(reviewed) = reviewed else {
        return head.map(|()| body.map_err(|e| Box::new(e) as BoxError).boxed());
    };
    match reviewed_http(state, &caller, &reviewed, &parts.headers, body).await {
        Ok(bytes) => {
            // Redaction may have changed the length; the body's own is sent.
            head.headers_mut().remove(http::header::CONTENT_LENGTH);
            head.map(|()| full(bytes))
        }
        Err(refusal) => refusal,
    }
}

/// Headers some frameworks read as the request's real method or URL: forwarded, they would turn
/// a call decided as `GET /status` into a `DELETE` or a request for another path upstream.
const METHOD_AND_URL_OVERRIDES: [&str; 9] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-forwarded-path",
    "x-forwarded-prefix",
];

/// Whether a client's header goes on to an HTTP upstream: credentials, hop-by-hop headers,
/// method and URL overrides and Warden's own do not.
fn forwards_header(name: &str) -> bool {
    !(HOP_AND_CREDENTIALS.contains(&name)
        || METHOD_AND_URL_OVERRIDES.contains(&name)
        || name.starts_with("warden-"))
}

/// Redacts an HTTP request body where configured (see `as_content`) and returns what was
/// redacted.
fn redact_body(
    pipeline: &crate::pipeline::Pipeline,
    headers: &HeaderMap,
    body: &mut Bytes,
) -> Vec<warden_model::Finding> {
    let Some((mut value, json)) = as_content(headers, body) else {
        return Vec::new();
    };
    let redacted = pipeline.redact_request(&mut value);
    if !redacted.is_empty() {
        *body = content_bytes(value, json);
    }
    redacted
}

/// An HTTP response read whole and reviewed as a tool's result is: its bytes as they go on
/// (redacted where configured), or the refusal that replaces it. Text and JSON are inspected;
/// other media types (images, archives) pass as they are.
async fn reviewed_http(
    state: &State,
    caller: &Caller,
    action: &Action,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, Response<Body>> {
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    if encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        // Fail closed: what cannot be read cannot be inspected.
        return Err(problem(
            StatusCode::BAD_GATEWAY,
            "uninspectable_response",
            "the upstream compressed a response that is to be inspected; it must answer uncompressed",
        ));
    }
    let bytes = crate::reviewed::collect(
        body,
        crate::reviewed::MAX_REVIEWED_BYTES,
        "the upstream's response is too large to inspect",
    )
    .await?;
    let Some((mut value, json)) = as_content(headers, &bytes) else {
        return Ok(bytes);
    };
    let review = state.pipeline.review(caller, action, &mut value);
    if let Some(verdict) = review.verdict.as_ref().filter(|_| review.refused()) {
        let what = format!("the response of {}", describe(action));
        let refusal = jsonrpc::refusal(&Value::Null, verdict, &what, mcp::CODES);
        return Err(json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": refusal["error"]}),
        ));
    }
    Ok(if review.redacted {
        content_bytes(value, json)
    } else {
        bytes
    })
}

/// An HTTP body as content to inspect or redact, by its media type: JSON as its value (as text
/// when it does not parse), text (and XML, JavaScript, forms) as a string; other media types
/// (images, archives) are not content. Whether it is JSON comes with it.
fn as_content(headers: &HeaderMap, body: &[u8]) -> Option<(Value, bool)> {
    let media = media_type(headers);
    let json = media.contains("json");
    let textual = json
        || media.starts_with("text/")
        || media.contains("xml")
        || media.contains("javascript")
        || media.starts_with("application/x-www-form-urlencoded");
    if !textual {
        return None;
    }
    let text = || Value::String(String::from_utf8_lossy(body).into_owned());
    let value = if json {
        crate::json::parse_strict(body).unwrap_or_else(|_| text())
    } else {
        text()
    };
    Some((value, json))
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_ascii_lowercase()
}

/// Whether a body says it is JSON (`application/json`, `…+json`).
fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).contains("json")
}

/// The body `as_content` read, written back after redaction.
fn content_bytes(value: Value, json: bool) -> Bytes {
    match value {
        Value::String(text) if !json => Bytes::from(text),
        value => Bytes::from(value.to_string()),
    }
}
