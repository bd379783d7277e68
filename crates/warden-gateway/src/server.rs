//! The listener: TLS (client certificates optional, verified against the trust bundle when
//! presented), HTTP/1.1 with header size and time limits, routing to the adapters, concurrency
//! limit, graceful shutdown, and `/metrics`.

// The `Err` of the helpers below is the early response that ends the request; boxing it would
// only add an allocation to the refusal path.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument as _;
use warden_model::SpiffeId;

use crate::config::UpstreamKind;
use crate::identify::{CallerSlot, ClientAddress};
use crate::metrics::Metrics;

use crate::a2a_proxy::{Card, Rpc};
use crate::http_proxy::Http;
use crate::mcp_proxy::{SseMessage, SseStream, Streamable};
use crate::plumbing::{Body, State, Upstream, full, json_response, problem};
use crate::stack;

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

pub(crate) async fn handle(
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
        if crate::plumbing::is_proxy_request(&request) {
            let response = stack::serve(state, peer, crate::egress::Egress, request).await;
            ("egress", response)
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

/// Where a request for a named upstream goes: which adapter serves it.
enum Route<'a> {
    McpStreamable(&'a Upstream),
    McpSseStream(&'a Upstream),
    McpSseMessage(&'a Upstream),
    A2aRpc(&'a Upstream),
    A2aCard(&'a Upstream),
    /// An HTTP API, and the path below the upstream's name.
    Http(&'a Upstream, String),
}

impl Route<'_> {
    fn adapter(&self) -> &'static str {
        match self {
            Self::McpStreamable(_) | Self::McpSseStream(_) | Self::McpSseMessage(_) => "mcp",
            Self::A2aRpc(_) | Self::A2aCard(_) => "a2a",
            Self::Http(..) => "http",
        }
    }
}

/// The route a path names, or the `404` that says which routes there are.
fn resolve<'a>(state: &'a State, path: &str) -> Result<Route<'a>, (&'static str, Response<Body>)> {
    let mut segments = path.trim_start_matches('/').splitn(3, '/');
    let (kind, name, rest) = (segments.next(), segments.next(), segments.next());
    let upstream = name.and_then(|n| state.upstreams.iter().find(|u| u.config.name.as_str() == n));
    let not_found = |adapter, message| {
        Err((
            adapter,
            problem(StatusCode::NOT_FOUND, "not_found", message),
        ))
    };
    match (kind, upstream) {
        (Some("mcp"), Some(u)) if u.config.kind == UpstreamKind::Mcp && rest.is_none() => {
            Ok(Route::McpStreamable(u))
        }
        (Some("mcp"), Some(u)) if u.config.kind == UpstreamKind::McpSse => match rest {
            Some("sse") => Ok(Route::McpSseStream(u)),
            Some("messages") => Ok(Route::McpSseMessage(u)),
            _ => not_found(
                "mcp",
                "this MCP server uses the HTTP+SSE transport: open /mcp/<server>/sse",
            ),
        },
        (Some("a2a"), Some(u)) if u.config.kind == UpstreamKind::A2a => match rest {
            None => Ok(Route::A2aRpc(u)),
            Some(card) if crate::a2a_proxy::CARD_PATHS.contains(&card) => Ok(Route::A2aCard(u)),
            Some(_) => not_found(
                "a2a",
                "A2A peers answer at /a2a/<peer> and /a2a/<peer>/.well-known/agent-card.json",
            ),
        },
        (Some("http"), Some(u)) if u.config.kind == UpstreamKind::Http => {
            Ok(Route::Http(u, format!("/{}", rest.unwrap_or_default())))
        }
        _ => not_found(
            "none",
            "no such route; use /mcp/<upstream>, /a2a/<upstream> or /http/<upstream>/<path>",
        ),
    }
}

/// Where a request goes: the gateway's own endpoints, else the stack with the adapter of the
/// route its path names.
async fn route(
    state: &Arc<State>,
    peer: Option<&SpiffeId>,
    path: &str,
    request: Request<Incoming>,
) -> (&'static str, Response<Body>) {
    match path {
        "/healthz" => {
            return (
                "health",
                json_response(StatusCode::OK, &json!({"status": "ok"})),
            );
        }
        // An admin's request, not an agent's: it authenticates and reads its body itself.
        "/actions/undo" => return ("undo", crate::undo::handle(state, request).await),
        "/metrics" => return ("metrics", metrics_for(state, request.headers())),
        _ => {}
    }
    let route = match resolve(state, path) {
        Ok(route) => route,
        Err(not_found) => return not_found,
    };
    let adapter = route.adapter();
    let response = match route {
        Route::McpStreamable(u) => stack::serve(state, peer, Streamable(u), request).await,
        Route::McpSseStream(u) => stack::serve(state, peer, SseStream(u), request).await,
        Route::McpSseMessage(u) => stack::serve(state, peer, SseMessage(u), request).await,
        Route::A2aRpc(u) => stack::serve(state, peer, Rpc(u), request).await,
        Route::A2aCard(u) => stack::serve(state, peer, Card(u), request).await,
        Route::Http(upstream, rest) => {
            stack::serve(state, peer, Http { upstream, rest }, request).await
        }
    };
    (adapter, response)
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
