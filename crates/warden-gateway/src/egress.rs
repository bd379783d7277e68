//! The forward proxy for egress: `CONNECT host:port` (HTTPS_PROXY) and absolute-form HTTP
//! requests, authenticated with the grant in `Proxy-Authorization` over the same mTLS listener.
//!
//! The destination is resolved once; the decision covers the host, the port and the address; and
//! the connection goes to exactly that address, so a name that changes its answer (DNS
//! rebinding) cannot slip past. Private, loopback, link-local, cloud-metadata and other special
//! addresses are refused unless a policy allows that address itself (an egress `cidrs` rule) —
//! allowing a host name is not enough.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use warden_model::{Action, Host, Protocol};

use crate::identify::Caller;
use crate::pipeline::Said;
use crate::plumbing::{AgentRequest, Body, BoxError, State, describe, forbidden, problem};
use crate::stack::{Adapter, Ask, Classification, Refusal, check};

/// How long name resolution and the connection to the destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses nobody reaches by accident: refused unless a policy allows the address itself.
pub fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local() // includes the cloud metadata address 169.254.169.254
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return is_special(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local, incl. AWS metadata fd00:ec2::254
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed by some)
                || s[0] == 0x2001 && s[1] == 0x0db8 // documentation
                || s[0] == 0x2001 && s[1] == 0 // Teredo: tunnels to an IPv4 peer it hides
                || s[0] == 0x0064 && s[1] == 0xff9b // NAT64 (well-known and local-use)
                || s[0] == 0x0100 && s[1..4] == [0, 0, 0] // discard-only
        }
    }
}

/// The IPv4 address an IPv6 address carries to be reached through: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), SIIT-translated (`::ffff:0:a.b.c.d`) and 6to4
/// (`2002:aabb:ccdd::`) — each reaches that IPv4 host, so each is as special as it is.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(v4(s[6], s[7])); // IPv4-compatible (`::` and `::1` are themselves)
    }
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return Some(v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(v4(s[1], s[2]));
    }
    None
}

/// The destination a request names, decided as a name before it is ever resolved.
pub(crate) struct Destination {
    host: Host,
    port: u16,
    said: Said,
}

/// The addresses a destination's host resolves to, resolved by the gateway (once).
pub(crate) async fn addresses(host: &Host, port: u16) -> Result<Vec<IpAddr>, Response<Body>> {
    let addresses: Vec<IpAddr> = match host {
        Host::Ip(ip) => vec![*ip],
        Host::Dns(_) => {
            let lookup = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::lookup_host((host.to_string(), port)),
            )
            .await;
            match lookup {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                _ => {
                    return Err(problem(
                        StatusCode::BAD_GATEWAY,
                        "unresolvable",
                        &format!("{host} does not resolve"),
                    ));
                }
            }
        }
    };
    if addresses.is_empty() {
        return Err(problem(
            StatusCode::BAD_GATEWAY,
            "unresolvable",
            &format!("{host} has no address"),
        ));
    }
    Ok(addresses)
}

/// Resolves the destination once, decides the address it resolves to, and returns the one
/// address to connect to, or the refusal.
async fn resolve(
    state: &State,
    caller: &Caller,
    destination: Destination,
) -> Result<SocketAddr, Response<Body>> {
    let Destination { host, port, said } = destination;
    let ip = addresses(&host, port).await?[0];
    decide_address(state, caller, host, port, ip, said)
        .await
        .map_err(|refusal| forbidden(&refusal.verdict, &refusal.what, crate::mcp::CODES))?;
    // An address literal was decided as itself: only a `cidrs` rule allows it.
    Ok(SocketAddr::new(ip, port))
}

/// Decides a connection to `host` at `ip` (what it resolved to): the host, and — when the
/// address is special (private, loopback, metadata…) — the address itself too, which only a
/// `cidrs` rule allows.
pub(crate) async fn decide_address(
    state: &State,
    caller: &Caller,
    host: Host,
    port: u16,
    ip: IpAddr,
    said: Said,
) -> Result<(), Refusal> {
    let connect = |host: Host| Action::EgressConnect {
        host,
        port,
        protocol: Protocol::Tcp,
        ip: Some(ip),
    };
    let mut asks = vec![Ask::decide_alone(connect(host.clone()), said.clone())];
    if is_special(ip) && !matches!(host, Host::Ip(_)) {
        // The name is allowed, but it points somewhere special: the address needs its own rule.
        let action = connect(Host::Ip(ip));
        let what = format!("{} (which {host} resolves to)", describe(&action));
        asks.push(Ask::decide_alone(action, said).described_as(what));
    }
    // What only resolution reveals is decided the stack's way.
    check(&state.pipeline, caller, &[], asks).await
}

fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let authority: http::uri::Authority = authority.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some((
        host.to_owned(),
        authority.port_u16().unwrap_or(default_port),
    ))
}

pub(crate) async fn dial(address: SocketAddr) -> Result<tokio::net::TcpStream, Response<Body>> {
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        _ => Err(problem(
            StatusCode::BAD_GATEWAY,
            "unreachable",
            "the destination did not accept the connection",
        )),
    }
}

/// The forward proxy: `CONNECT` tunnels and absolute-form `http://` requests.
pub(crate) struct Egress;

impl Adapter for Egress {
    type Plan = Destination;

    fn classify(
        &self,
        _state: &State,
        request: &mut AgentRequest,
    ) -> Result<Classification<Destination>, Response<Body>> {
        let head = &request.head;
        let bad = |why: &str| problem(StatusCode::BAD_REQUEST, "bad_destination", why);
        let default_port = if head.method == Method::CONNECT {
            443
        } else if head.uri.scheme_str() == Some("http") {
            80
        } else {
            return Err(bad(
                "only http:// is proxied in absolute form; use CONNECT (HTTPS_PROXY) for https",
            ));
        };
        let Some(authority) = head.uri.authority() else {
            return Err(bad(if head.method == Method::CONNECT {
                "CONNECT needs host:port"
            } else {
                "no host in the URL"
            }));
        };
        let (host_text, port) = split_authority(authority.as_str(), default_port)
            .ok_or_else(|| bad("the destination must be host:port"))?;
        let host = Host::new(&host_text).map_err(|e| bad(&e.to_string()))?;
        let said = Said::from_headers(&head.headers);
        let named = Action::EgressConnect {
            host: host.clone(),
            port,
            protocol: Protocol::Tcp,
            ip: None,
        };
        // A grant that does not cover the destination is refused before any lookup, so it
        // cannot be used to make the gateway resolve names (DNS exfiltration).
        let asks = if request.caller.authority.permits(&named) {
            Vec::new()
        } else {
            vec![Ask::decide_alone(named, said.clone())]
        };
        Ok(Classification {
            asks,
            plan: Destination { host, port, said },
        })
    }

    async fn refuse(&self, _: Destination, refusal: Refusal) -> Response<Body> {
        forbidden(&refusal.verdict, &refusal.what, crate::mcp::CODES)
    }

    async fn forward(
        &self,
        state: &Arc<State>,
        request: AgentRequest,
        destination: Destination,
    ) -> Response<Body> {
        let AgentRequest { caller, head, body } = request;
        let address = match resolve(state, &caller, destination).await {
            Ok(address) => address,
            Err(refused) => return refused,
        };
        if head.method == Method::CONNECT {
            tunnel(state, &caller, head, address).await
        } else {
            absolute_form(state, head, body, address).await
        }
    }
}

/// `CONNECT`: the tunnel to the decided address, closed when the agent is held.
async fn tunnel(
    state: &State,
    caller: &Caller,
    head: http::request::Parts,
    address: SocketAddr,
) -> Response<Body> {
    let outbound = match dial(address).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    let stopped = until_stopped(state, caller);
    // The connection's upgrade travels in the request's extensions.
    let request = Request::from_parts(head, ());
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => splice(TokioIo::new(upgraded), outbound, stopped).await,
            Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
        }
    });
    Response::new(crate::plumbing::full(Bytes::new()))
}

/// What ends an agent's connection: its quarantine, or the kill switch.
pub(crate) type Stopped = std::pin::Pin<Box<dyn Future<Output = warden_model::DenyReason> + Send>>;

pub(crate) fn until_stopped(state: &State, caller: &Caller) -> Stopped {
    let stops = state.pipeline.stops();
    Box::pin(stops.until_stopped(
        caller.identity.spiffe_id().clone(),
        caller.identity.parents().to_vec(),
        stops.version(),
    ))
}

const RELAY_BUFFER: usize = 64 << 10;

/// Joins an agent's connection to the destination's, both ways, until either ends or the
/// agent is stopped, which closes both.
pub(crate) async fn splice<A>(mut agent: A, mut outbound: tokio::net::TcpStream, stopped: Stopped)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Buffers of 64 KiB, not tokio's 8 KiB: a bulk transfer then costs an eighth of the system
    // calls, which is most of what relaying costs.
    tokio::select! {
        _ = tokio::io::copy_bidirectional_with_sizes(&mut agent, &mut outbound, RELAY_BUFFER, RELAY_BUFFER) => {}
        reason = stopped => tracing::info!("connection closed: {reason:?}"),
    }
}

/// A plain-HTTP request through the proxy (`GET http://host/path`), to the decided address.
async fn absolute_form(
    state: &State,
    parts: http::request::Parts,
    body: Bytes,
    address: SocketAddr,
) -> Response<Body> {
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = Request::builder().method(parts.method).uri(path);
    for (name, value) in &parts.headers {
        // The client's own Host header never goes on: the one sent is the decided destination,
        // so an upstream routing on the first of two Host headers cannot be pointed elsewhere.
        let keep = !matches!(
            name.as_str(),
            "host"
                | "proxy-authorization"
                | "proxy-connection"
                | "connection"
                | "keep-alive"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "content-length"
                | "dpop"
        ) && !name.as_str().starts_with("warden-");
        if keep {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(outgoing) = outgoing
        .header(http::header::HOST, authority)
        .body(Full::new(body))
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "cannot rebuild the request",
        );
    };
    let stream = match dial(address).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        sender.send_request(outgoing).await
    };
    match tokio::time::timeout(state.config.limits.upstream_timeout(), exchange).await {
        Ok(Ok(response)) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed())
        }
        _ => problem(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            "the destination did not answer",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_recognised() {
        for ip in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            // The same private and metadata addresses in other IPv6 forms.
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "::169.254.169.254",
            "::10.0.0.1",
            "::ffff:0:127.0.0.1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "100::1",
        ] {
            assert!(is_special(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.215.14",
            "140.82.112.3",
            "2606:4700::6810:84e5",
            "2002:5db8:d70e::1",
            "::8.8.8.8",
        ] {
            assert!(!is_special(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn authorities_split_with_default_ports() {
        assert_eq!(
            split_authority("api.github.com:443", 80),
            Some(("api.github.com".into(), 443))
        );
        assert_eq!(
            split_authority("example.com", 80),
            Some(("example.com".into(), 80))
        );
        assert_eq!(
            split_authority("[::1]:8080", 80),
            Some(("::1".into(), 8080))
        );
    }
}
