//! The transparent listener: the connections the kernel hands the gateway from agents confined
//! by `warden run` (`sandbox`), each with the destination it was going to and the agent instance
//! and process that opened it. Nothing on the connection identifies the agent; the kernel did.
//!
//! What the connection opens with decides how it is read:
//! - a TLS ClientHello: decided as egress on its SNI at the address the agent dialled, and
//!   relayed untouched (not terminated). The SNI must resolve to that address, so an allowed
//!   name cannot front for a disallowed address;
//! - plain HTTP: each request goes through the gateway's stack — as the configured upstream when
//!   it was addressed to one (MCP, A2A, HTTP APIs, with their full semantics), else as egress
//!   on its `Host`;
//! - anything else (or nothing within `firstBytesMillis`): decided on the address alone.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http::{Request, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use warden_model::{Action, DenyReason, Host, Protocol};

use crate::config::UpstreamKind;
use crate::egress::{addresses, decide_address, dial, splice, until_stopped};
use crate::identify::{Caller, KernelCaller};
use crate::pipeline::Said;
use crate::plumbing::{Body, State, problem};
use crate::sandbox::Sandbox;
use crate::stack::{Ask, check};

/// The most of a connection's opening the gateway reads to classify it.
const MAX_OPENING: usize = 16 * 1024;

/// Serves the transparent listener(s) until the task is aborted.
pub(crate) async fn serve(state: Arc<State>, sandbox: Arc<Sandbox>, listener: TcpListener) {
    // Relayed connections hold no request permit, so they are bounded here: a confined agent
    // opening connections without end cannot exhaust the gateway.
    let open = Arc::new(tokio::sync::Semaphore::new(
        state.config.limits.max_concurrent_requests,
    ));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(held) = Arc::clone(&open).try_acquire_owned() else {
            tracing::warn!(%peer, "too many confined connections open: closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (state, sandbox) = (Arc::clone(&state), Arc::clone(&sandbox));
        tokio::spawn(async move {
            let _held = held;
            connection(state, sandbox, stream, peer).await;
        });
    }
}

async fn connection(state: Arc<State>, sandbox: Arc<Sandbox>, stream: TcpStream, peer: SocketAddr) {
    // The kernel filed where the connection was going under its agent end.
    let Some(origin) = sandbox.origin(peer) else {
        tracing::warn!(%peer, "a connection to the transparent listener that no confined agent made: closed");
        return;
    };
    // The peer is a loopback address of the agent's own making; the kernel's account of the
    // process is what the record carries instead.
    let Some(caller) = sandbox.caller(&state, origin.cgroup, Some(origin.pid)) else {
        return;
    };
    let destination = origin.destination;
    let mut stream = stream;
    let wait = Duration::from_millis(sandbox.first_bytes_millis());
    let (opening, first) = read_opening(&mut stream, wait).await;
    match opening {
        Opening::Http => {
            let upstreams = sandbox.upstreams_at(destination);
            http(
                state,
                caller,
                Prefixed::new(first, stream),
                destination,
                upstreams,
            )
            .await
        }
        Opening::Tls(name) => {
            let name = match name {
                Ok(name) => name,
                Err(why) => {
                    refuse(&state, &caller, destination, why).await;
                    return;
                }
            };
            let told = |name: &str, ip| sandbox.resolved(origin.cgroup, name, ip);
            if tls_allowed(&state, &caller, destination, name, told).await {
                relay(&state, &caller, stream, first, destination).await;
            }
        }
        Opening::Other => {
            let ip = destination.ip();
            let decided = decide_address(
                &state,
                &caller,
                Host::Ip(ip),
                destination.port(),
                ip,
                Said::default(),
            )
            .await;
            if decided.is_ok() {
                relay(&state, &caller, stream, first, destination).await;
            }
        }
    }
}

/// Records a connection refused as read (a malformed or ambiguous opening).
async fn refuse(state: &State, caller: &Caller, destination: SocketAddr, why: String) {
    let ip = destination.ip();
    let action = connect(Host::Ip(ip), destination.port(), ip);
    let ask = Ask::refuse(action, DenyReason::NotForwarded).described_as(why);
    let _ = check(&state.pipeline, caller, &[], vec![ask]).await;
}

fn connect(host: Host, port: u16, ip: IpAddr) -> Action {
    Action::EgressConnect {
        host,
        port,
        protocol: Protocol::Tcp,
        ip: Some(ip),
    }
}

/// A TLS connection to `destination` naming `name`: allowed when policy allows the name at that
/// address and the name is at that address — as the agent's DNS responder told it (`told`), or
/// as the gateway resolves it now.
async fn tls_allowed(
    state: &State,
    caller: &Caller,
    destination: SocketAddr,
    name: Option<Host>,
    told: impl Fn(&str, IpAddr) -> bool,
) -> bool {
    let (ip, port) = (destination.ip(), destination.port());
    let Some(host) = name else {
        // No SNI: only the address can be decided.
        return decide_address(state, caller, Host::Ip(ip), port, ip, Said::default())
            .await
            .is_ok();
    };
    let resolves_there = told(&host.to_string(), ip)
        || addresses(&host, port)
            .await
            .is_ok_and(|found| found.iter().any(|a| a.to_canonical() == ip));
    if !resolves_there {
        let why = format!(
            "a TLS connection to {ip} naming {host}, which does not resolve to {ip} (an allowed name may not front for another address)"
        );
        let ask = Ask::refuse(connect(host, port, ip), DenyReason::NotForwarded).described_as(why);
        return check(&state.pipeline, caller, &[], vec![ask]).await.is_ok();
    }
    decide_address(state, caller, host, port, ip, Said::default())
        .await
        .is_ok()
}

/// Connects to the decided destination, sends what the agent already sent, and joins the two.
async fn relay(
    state: &State,
    caller: &Caller,
    agent: TcpStream,
    first: Bytes,
    destination: SocketAddr,
) {
    let Ok(mut outbound) = dial(destination).await else {
        tracing::debug!(%destination, "the destination did not accept the connection");
        return;
    };
    if outbound.write_all(&first).await.is_err() {
        return;
    }
    splice(agent, outbound, until_stopped(state, caller)).await;
}

/// Plain HTTP: every request on the connection goes through the stack as the agent's.
async fn http(
    state: Arc<State>,
    caller: Caller,
    agent: Prefixed<TcpStream>,
    destination: SocketAddr,
    upstreams: Vec<usize>,
) {
    let upstreams = Arc::new(upstreams);
    let stopped = until_stopped(&state, &caller);
    let limits = state.config.limits.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (state, caller) = (Arc::clone(&state), caller.clone());
        let upstreams = Arc::clone(&upstreams);
        async move {
            let mut request = request;
            request.extensions_mut().insert(KernelCaller(caller));
            let response = match addressed(
                &state,
                request.uri(),
                request.headers(),
                destination,
                &upstreams,
            ) {
                Ok(uri) => {
                    *request.uri_mut() = uri;
                    crate::server::handle(&state, None, request).await
                }
                Err(response) => response,
            };
            Ok::<_, Infallible>(response)
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout())
        .max_buf_size(limits.max_header_bytes.max(8192));
    let connection = http
        .serve_connection(TokioIo::new(agent), service)
        .with_upgrades();
    tokio::select! {
        result = connection => if let Err(e) = result {
            tracing::debug!("transparent HTTP connection ended: {e}");
        },
        reason = stopped => tracing::info!("connection closed: {reason:?}"),
    }
}

/// Where the stack should take a request the agent sent to `destination`: the gateway's route
/// for the upstream it addressed, or (for anywhere else) the absolute-form URL the forward proxy
/// decides on.
#[allow(clippy::result_large_err)] // the `Err` is the answer
fn addressed(
    state: &State,
    uri: &Uri,
    headers: &http::HeaderMap,
    destination: SocketAddr,
    upstreams: &[usize],
) -> Result<Uri, http::Response<Body>> {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    if !upstreams.is_empty() {
        let configs = upstreams
            .iter()
            .map(|index| &state.upstreams[*index].config);
        for config in configs.clone() {
            if let Some(route) =
                upstream_route(config, uri.path(), uri.query()).and_then(|route| route.parse().ok())
            {
                return Ok(route);
            }
        }
        let served: Vec<&str> = configs.map(|c| c.url.as_str()).collect();
        return Err(problem(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!(
                "{destination} serves Warden's upstreams; through Warden only {} are reached there",
                served.join(", ")
            ),
        ));
    }
    // `CONNECT host:port` says where to go itself; the forward proxy decides it.
    if uri.authority().is_some() && uri.scheme().is_none() {
        return Ok(uri.clone());
    }
    let named = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| {
            a.host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        });
    let host = match named {
        Some(host) => host,
        None => destination.ip().to_string(),
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    format!("http://{host}:{}{path_and_query}", destination.port())
        .parse()
        .map_err(|_| {
            problem(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request's Host and path do not make a URL",
            )
        })
}

/// The gateway's route for a request to an upstream's own URL, if the path is one it serves.
fn upstream_route(
    upstream: &crate::config::UpstreamConfig,
    path: &str,
    query: Option<&str>,
) -> Option<String> {
    let base: Uri = upstream.url.parse().ok()?;
    let base_path = base.path().trim_end_matches('/');
    let rest = path.strip_prefix(base_path)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let name = upstream.name.as_str();
    let route = match upstream.kind {
        UpstreamKind::Mcp if rest.is_empty() || rest == "/" => format!("/mcp/{name}"),
        UpstreamKind::A2a if rest.is_empty() || rest == "/" => format!("/a2a/{name}"),
        UpstreamKind::A2a
            if crate::a2a_proxy::CARD_PATHS.contains(&rest.trim_start_matches('/')) =>
        {
            format!("/a2a/{name}{rest}")
        }
        UpstreamKind::Http => format!("/http/{name}{rest}"),
        _ => return None,
    };
    Some(match query {
        Some(query) => format!("{route}?{query}"),
        None => route,
    })
}

/// How a connection opens.
#[derive(Debug, PartialEq, Eq)]
enum Opening {
    /// A TLS ClientHello, with the name it asks for (`None`: no SNI), or why it is refused.
    Tls(Result<Option<Host>, String>),
    Http,
    Other,
}

/// Reads the start of a connection, until it can be classified, `wait` passes or the agent
/// stops sending.
async fn read_opening(stream: &mut TcpStream, wait: Duration) -> (Opening, Bytes) {
    let mut buffer = BytesMut::with_capacity(2048);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(opening) = classify(&buffer) {
            return (opening, buffer.freeze());
        }
        if buffer.len() >= MAX_OPENING {
            break;
        }
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buffer)).await;
        match read {
            Ok(Ok(n)) if n > 0 => continue,
            _ => break,
        }
    }
    let opening = match classify_final(&buffer) {
        Some(opening) => opening,
        None => Opening::Other,
    };
    (opening, buffer.freeze())
}

/// The opening, if these bytes settle it; `None` while more may change the answer.
fn classify(bytes: &[u8]) -> Option<Opening> {
    let first = *bytes.first()?;
    if first == 0x16 {
        return match client_hello_name(bytes) {
            Hello::Incomplete => None,
            Hello::Name(name) => Some(Opening::Tls(name)),
        };
    }
    let token: Vec<u8> = bytes
        .iter()
        .take_while(|b| b.is_ascii_uppercase())
        .copied()
        .collect();
    match bytes.get(token.len()) {
        Some(b' ') if !token.is_empty() => Some(if is_method(&token) {
            Opening::Http
        } else {
            Opening::Other
        }),
        None if token.len() < 8 => None,
        _ => Some(Opening::Other),
    }
}

/// What the bytes are once no more will come.
fn classify_final(bytes: &[u8]) -> Option<Opening> {
    if bytes.first() == Some(&0x16) {
        return Some(Opening::Tls(Err(
            "a TLS connection whose ClientHello did not arrive whole".into(),
        )));
    }
    None
}

fn is_method(token: &[u8]) -> bool {
    matches!(
        token,
        b"GET"
            | b"HEAD"
            | b"POST"
            | b"PUT"
            | b"DELETE"
            | b"OPTIONS"
            | b"PATCH"
            | b"CONNECT"
            | b"TRACE"
    )
}

enum Hello {
    Incomplete,
    Name(Result<Option<Host>, String>),
}

/// The server name a TLS ClientHello asks for (RFC 8446 §4.1.2, RFC 6066 §3). The handshake
/// message may span records; it is reassembled within [`MAX_OPENING`]. Anything malformed or
/// ambiguous (two names, a name that is not a DNS name) is a refusal, never a guess.
fn client_hello_name(bytes: &[u8]) -> Hello {
    let malformed = |why: &str| Hello::Name(Err(format!("a malformed TLS ClientHello: {why}")));
    // Reassemble the handshake from its records.
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = bytes.get(at..at + 5) else {
            return Hello::Incomplete;
        };
        if header[0] != 0x16 {
            return malformed("a record that is not a handshake before the ClientHello ends");
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if length == 0 || length > 16 * 1024 {
            return malformed("a record length out of range");
        }
        let Some(fragment) = bytes.get(at + 5..at + 5 + length) else {
            return Hello::Incomplete;
        };
        handshake.extend_from_slice(fragment);
        at += 5 + length;
        if handshake.len() >= 4 {
            let needed = 4
                + (usize::from(handshake[1]) << 16
                    | usize::from(handshake[2]) << 8
                    | usize::from(handshake[3]));
            if handshake[0] != 0x01 {
                return malformed("the first handshake message is not a ClientHello");
            }
            if needed > MAX_OPENING {
                return malformed("a ClientHello larger than the gateway reads");
            }
            if handshake.len() >= needed {
                handshake.truncate(needed);
                break;
            }
        }
    }
    match server_name(&handshake[4..]) {
        Ok(name) => Hello::Name(Ok(name)),
        Err(why) => malformed(why),
    }
}

/// The SNI in a ClientHello body.
fn server_name(mut body: &[u8]) -> Result<Option<Host>, &'static str> {
    fn take<'a>(body: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
        if body.len() < n {
            return Err("it ends early");
        }
        let (head, rest) = body.split_at(n);
        *body = rest;
        Ok(head)
    }
    fn length(body: &mut &[u8], width: usize) -> Result<usize, &'static str> {
        Ok(take(body, width)?
            .iter()
            .fold(0usize, |n, b| (n << 8) | usize::from(*b)))
    }
    take(&mut body, 2 + 32)?; // version, random
    let n = length(&mut body, 1)?;
    take(&mut body, n)?; // session id
    let n = length(&mut body, 2)?;
    take(&mut body, n)?; // cipher suites
    let n = length(&mut body, 1)?;
    take(&mut body, n)?; // compression methods
    if body.is_empty() {
        return Ok(None); // no extensions
    }
    let n = length(&mut body, 2)?;
    let mut extensions = take(&mut body, n)?;
    let mut found = None;
    while !extensions.is_empty() {
        let kind = length(&mut extensions, 2)?;
        let n = length(&mut extensions, 2)?;
        let mut data = take(&mut extensions, n)?;
        if kind != 0 {
            continue;
        }
        if found.is_some() {
            return Err("two server_name extensions");
        }
        let n = length(&mut data, 2)?;
        let mut list = take(&mut data, n)?;
        let mut name = None;
        while !list.is_empty() {
            let kind = take(&mut list, 1)?[0];
            let n = length(&mut list, 2)?;
            let value = take(&mut list, n)?;
            if kind != 0 {
                continue;
            }
            if name.is_some() {
                return Err("two host names");
            }
            let text = std::str::from_utf8(value).map_err(|_| "a host name that is not text")?;
            let host = Host::new(text).map_err(|_| "a host name that is not a DNS name")?;
            if !matches!(host, Host::Dns(_)) {
                return Err("an address where a host name belongs");
            }
            name = Some(host);
        }
        found = Some(name.ok_or("a server_name extension without a host name")?);
    }
    Ok(found)
}

/// A connection with the bytes already read from it put back in front.
struct Prefixed<S> {
    first: Bytes,
    stream: S,
}

impl<S> Prefixed<S> {
    fn new(first: Bytes, stream: S) -> Self {
        Self { first, stream }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a client would send it, naming `names` (none: no SNI extension).
    fn hello(names: &[&str]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut extensions = Vec::new();
        // An extension before SNI, as real clients send.
        extensions.extend([0x00, 0x2b, 0, 3, 2, 0x03, 0x04]);
        for name in names {
            let mut list = vec![0u8];
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(name.as_bytes());
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend(list);
            extensions.extend([0, 0]);
            extensions.extend((data.len() as u16).to_be_bytes());
            extensions.extend(data);
        }
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let mut handshake = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
        handshake.extend(body);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    fn named(name: &str) -> Opening {
        Opening::Tls(Ok(Some(Host::new(name).expect("host"))))
    }

    #[test]
    fn the_sni_of_a_client_hello_is_read() {
        assert_eq!(
            classify(&hello(&["api.github.com"])),
            Some(named("api.github.com"))
        );
        assert_eq!(classify(&hello(&[])), Some(Opening::Tls(Ok(None))));
    }

    #[test]
    fn a_client_hello_split_over_records_and_reads_is_reassembled() {
        let whole = hello(&["example.org"]);
        // Every prefix is "not yet", never a wrong answer.
        for end in 1..whole.len() {
            assert_eq!(classify(&whole[..end]), None, "prefix of {end} bytes");
        }
        // The same handshake in two records.
        let handshake = &whole[5..];
        let (a, b) = handshake.split_at(20);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend([0x16, 0x03, 0x01]);
            split.extend((part.len() as u16).to_be_bytes());
            split.extend(part);
        }
        assert_eq!(classify(&split), Some(named("example.org")));
    }

    #[test]
    fn ambiguous_or_malformed_hellos_are_refused() {
        let refused = |bytes: &[u8]| matches!(classify(bytes), Some(Opening::Tls(Err(_))));
        assert!(refused(&hello(&["a.example", "b.example"])));
        assert!(refused(&hello(&["10.0.0.1"])));
        assert!(refused(&hello(&["bad name"])));
        let mut wrong_type = hello(&["x.example"]);
        wrong_type[5] = 0x02;
        assert!(refused(&wrong_type));
        let mut overlong = hello(&["x.example"]);
        overlong[3] = 0xff;
        assert!(refused(&overlong));
        // Truncated inside the extensions: the declared lengths run past the end.
        let mut truncated = hello(&["x.example"]);
        let n = truncated.len();
        truncated[n - 12] = 0xff;
        assert!(refused(&truncated) || classify(&truncated).is_none());
        assert!(matches!(
            classify_final(&hello(&["x.example"])[..30]),
            Some(Opening::Tls(Err(_)))
        ));
    }

    #[test]
    fn http_and_other_openings_are_told_apart() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Opening::Http));
        assert_eq!(classify(b"POST"), None);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Opening::Other));
        assert_eq!(classify(b"FOO /x"), Some(Opening::Other));
        assert_eq!(classify(b"\x00\x01binary"), Some(Opening::Other));
        assert_eq!(classify(b""), None);
        assert_eq!(classify_final(b""), None);
    }

    #[test]
    fn requests_to_an_upstream_address_take_its_route() {
        let upstream = |kind, url: &str| crate::config::UpstreamConfig {
            name: warden_model::Name::new("demo").expect("name"),
            kind,
            url: url.into(),
            card_url: None,
            credential: None,
            inspect_responses: false,
        };
        let mcp = upstream(UpstreamKind::Mcp, "http://127.0.0.1:9000/mcp");
        assert_eq!(
            upstream_route(&mcp, "/mcp", None).as_deref(),
            Some("/mcp/demo")
        );
        assert_eq!(upstream_route(&mcp, "/mcpx", None), None);
        assert_eq!(upstream_route(&mcp, "/other", None), None);
        let api = upstream(UpstreamKind::Http, "http://127.0.0.1:9000/api");
        assert_eq!(
            upstream_route(&api, "/api/v1/items", Some("q=1")).as_deref(),
            Some("/http/demo/v1/items?q=1")
        );
    }
}
