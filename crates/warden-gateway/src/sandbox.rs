//! The gateway's side of `warden run`: the local socket it is asked on, the confinement programs
//! it attaches to each agent's cgroup, and the agent instances it holds grants for. A confined
//! agent holds no credential: the gateway knows it by the cgroup its connections come from and
//! acts with the grant `warden run` gave the gateway, never the agent.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use warden_model::{Action, DenyReason, Host, Protocol};
use warden_sandbox::session::{MAX_LINE, Reply, Request};
use warden_sandbox::{Cgroup, Confinement, Origin, Redirect, Refused};

use crate::config::SandboxSettings;
use crate::identify::{Caller, Process};
use crate::plumbing::State;

/// One confined agent instance: the grant the gateway acts with for it, and its DNS.
struct Instance {
    grant: String,
    agent: String,
    answered: Arc<crate::dns::Answered>,
    responders: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        for responder in &self.responders {
            responder.abort();
        }
    }
}

pub(crate) struct Sandbox {
    confinement: Mutex<Confinement>,
    instances: RwLock<HashMap<u64, Instance>>,
    /// The configured upstreams by the addresses they are reached at, so a confined agent
    /// dialling one directly is served as that upstream.
    upstreams: Vec<(Vec<SocketAddr>, usize)>,
    first_bytes_millis: u64,
    listener: SocketAddr,
    /// Whether the transparent listener is on ::1 too (then so is each DNS responder).
    ipv6: bool,
}

/// The sandbox's tasks and socket, ended with the gateway.
pub(crate) struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    socket: PathBuf,
    /// Tells the thread recording the kernel's refusals to stop.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Loads the programs, opens the transparent listener and the local socket, and serves them.
pub(crate) async fn start(
    state: &Arc<State>,
    settings: &SandboxSettings,
) -> anyhow::Result<Running> {
    let (listener4, listener6) = transparent_listeners(settings.port).await?;
    let address = listener4.local_addr()?;
    let SocketAddr::V4(address4) = address else {
        bail!("the transparent listener is not on IPv4 loopback");
    };
    let redirect = Redirect {
        listener4: SocketAddrV4::new(*address4.ip(), address4.port()),
        listener6: listener6.as_ref().map(|_| Ipv6Addr::LOCALHOST),
    };
    let mut confinement = Confinement::load(&redirect).context("gateway.sandbox")?;
    let refusals = confinement.take_refusals();
    let socket = bind_socket(&settings.socket)?;
    let sandbox = Arc::new(Sandbox {
        confinement: Mutex::new(confinement),
        instances: RwLock::default(),
        upstreams: upstream_addresses(state).await,
        first_bytes_millis: settings.first_bytes_millis,
        listener: address,
        ipv6: listener6.is_some(),
    });
    let mut tasks = vec![
        tokio::spawn(crate::transparent::serve(
            Arc::clone(state),
            Arc::clone(&sandbox),
            listener4,
        )),
        tokio::spawn(serve_socket(
            Arc::clone(state),
            Arc::clone(&sandbox),
            socket,
        )),
    ];
    if let Some(listener6) = listener6 {
        tasks.push(tokio::spawn(crate::transparent::serve(
            Arc::clone(state),
            Arc::clone(&sandbox),
            listener6,
        )));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(refusals) = refusals {
        let (state, sandbox, stop) = (Arc::clone(state), Arc::clone(&sandbox), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("warden-refusals".into())
            .spawn(move || watch_refusals(&state, &sandbox, refusals, &stop))
            .context("cannot start the thread that records the kernel's refusals")?;
    }
    tracing::info!(
        "warden run: confined agents' connections come to {address}; asked on {}",
        settings.socket.display()
    );
    Ok(Running {
        tasks,
        socket: settings.socket.clone(),
        stop,
    })
}

/// The listener on 127.0.0.1 and, on the same port, ::1 (when the host has IPv6 loopback).
async fn transparent_listeners(port: u16) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    // A free port on IPv4 may be taken on IPv6; try a few.
    for _ in 0..16 {
        let listener4 = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("gateway.sandbox.port {port}: cannot listen on 127.0.0.1"))?;
        let chosen = listener4.local_addr()?.port();
        match TcpListener::bind((Ipv6Addr::LOCALHOST, chosen)).await {
            Ok(listener6) => return Ok((listener4, Some(listener6))),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && port == 0 => continue,
            // No IPv6 loopback: IPv6 connects of confined agents fail, as nothing listens.
            Err(_) => return Ok((listener4, None)),
        }
    }
    bail!("cannot find a port free on both 127.0.0.1 and ::1 for the transparent listener")
}

fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| {
            format!("gateway.sandbox.socket: cannot create {}", parent.display())
        })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another gateway serves `warden run` at {}; stop it or set gateway.sandbox.socket elsewhere",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| {
        format!(
            "gateway.sandbox.socket: cannot listen on {}",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

async fn upstream_addresses(state: &State) -> Vec<(Vec<SocketAddr>, usize)> {
    let mut found = Vec::new();
    for (index, upstream) in state.upstreams.iter().enumerate() {
        let Ok(uri) = upstream.config.url.parse::<http::Uri>() else {
            continue;
        };
        // Only plain HTTP can be read on the way; an https upstream dialled directly is
        // decided as egress on its SNI.
        if uri.scheme_str() != Some("http") {
            continue;
        }
        let Some(host) = uri.host() else { continue };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        match tokio::net::lookup_host((host, port)).await {
            Ok(addresses) => found.push((
                addresses
                    .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
                    .collect(),
                index,
            )),
            Err(e) => tracing::warn!(
                upstream = %upstream.config.name,
                "cannot resolve the upstream for confined agents that dial it directly: {e}"
            ),
        }
    }
    found
}

impl Sandbox {
    /// Where a redirected connection was going, by its agent end.
    pub(crate) fn origin(&self, peer: SocketAddr) -> Option<Origin> {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        self.confinement
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .origin(peer)
    }

    /// The caller a confined process is (`pid`, when the kernel said which), with its
    /// instance's grant (verified now: an expired or revoked grant lets nothing through).
    pub(crate) fn caller(&self, state: &State, cgroup: u64, pid: Option<u32>) -> Option<Caller> {
        let instances = self
            .instances
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(instance) = instances.get(&cgroup) else {
            tracing::warn!(
                cgroup,
                pid,
                "a connection from a cgroup no agent instance holds: closed"
            );
            return None;
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let process = pid.map(|pid| process(pid, cgroup));
        match state.identifier.kernel(&instance.grant, process, now) {
            Ok(caller) => Some(caller),
            Err(e) => {
                tracing::warn!(agent = %instance.agent, "a confined agent's grant is refused ({e}): its connection is closed");
                None
            }
        }
    }

    /// Whether the instance in `cgroup` was told (by its DNS responder) that `name` is at `ip`.
    pub(crate) fn resolved(&self, cgroup: u64, name: &str, ip: std::net::IpAddr) -> bool {
        self.instances
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&cgroup)
            .is_some_and(|instance| instance.answered.resolved(name, ip))
    }

    pub(crate) fn first_bytes_millis(&self) -> u64 {
        self.first_bytes_millis
    }

    /// The configured upstreams reached at `destination` (several may share a server).
    pub(crate) fn upstreams_at(&self, destination: SocketAddr) -> Vec<usize> {
        self.upstreams
            .iter()
            .filter(|(addresses, _)| addresses.contains(&destination))
            .map(|(_, index)| *index)
            .collect()
    }
}

/// What the kernel says about a process: its executable and a hash of its command line.
fn process(pid: u32, cgroup: u64) -> Process {
    let executable = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &command);
    Process {
        pid,
        executable,
        command_sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        cgroup,
    }
}

/// Serves `warden run`: only root or the gateway's own user may ask.
async fn serve_socket(state: Arc<State>, sandbox: Arc<Sandbox>, listener: UnixListener) {
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let allowed = stream
            .peer_cred()
            .is_ok_and(|cred| cred.uid() == 0 || Some(cred.uid()) == own_uid);
        if !allowed {
            tracing::warn!(
                "refused a `warden run` connection from a user who is neither root nor the gateway's"
            );
            continue;
        }
        let (state, sandbox) = (Arc::clone(&state), Arc::clone(&sandbox));
        tokio::spawn(async move { session(&state, &sandbox, stream).await });
    }
}

/// One `warden run`: confine, renew, tell it what its agent was refused, and — when it goes —
/// forget the instance and kill what is left in its cgroup (a confined agent without its
/// supervisor is not left running).
async fn session(state: &Arc<State>, sandbox: &Arc<Sandbox>, stream: UnixStream) {
    let (read, write) = stream.into_split();
    let mut lines = BufReader::new(read);
    // Answers and refusal notices share the socket; one writer keeps their lines whole.
    let (replies, queued) = tokio::sync::mpsc::channel::<Reply>(64);
    let writer = tokio::spawn(write_replies(write, queued));
    let mut confined: Option<(Cgroup, String)> = None;
    let mut notices: Option<tokio::task::JoinHandle<()>> = None;
    let (finish, finishing) = tokio::sync::mpsc::channel::<()>(1);
    let mut finishing = Some(finishing);
    loop {
        let line = match read_line(&mut lines).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(why) => {
                let _ = replies.send(Reply::Refused { error: why }).await;
                break;
            }
        };
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply::Refused {
                error: format!("not a request this gateway knows: {e}"),
            },
            Ok(Request::Confine { cgroup, grant }) => match &confined {
                Some(_) => Reply::Refused {
                    error: "this session already confines an instance".into(),
                },
                None => match confine(state, sandbox, &cgroup, grant).await {
                    Ok((reply, cgroup, agent)) => {
                        // Subscribed before the agent starts (after this reply), so nothing it
                        // is refused goes unsaid.
                        let decisions = state.pipeline.subscribe();
                        let _ = replies.send(reply).await;
                        notices = finishing.take().map(|finishing| {
                            tokio::spawn(tell_refusals(
                                decisions,
                                agent.clone(),
                                replies.clone(),
                                finishing,
                            ))
                        });
                        confined = Some((cgroup, agent));
                        continue;
                    }
                    Err(error) => Reply::Refused { error },
                },
            },
            Ok(Request::Renew { grant }) => match &confined {
                None => Reply::Refused {
                    error: "nothing is confined in this session yet".into(),
                },
                Some((cgroup, agent)) => renew(state, sandbox, cgroup.id(), agent, grant),
            },
            // The notice task answers, once it has sent what came before.
            Ok(Request::Finish) if notices.is_some() => {
                let _ = finish.try_send(());
                continue;
            }
            Ok(Request::Finish) => Reply::Finished,
        };
        if replies.send(reply).await.is_err() {
            break;
        }
    }
    if let Some(notices) = notices {
        notices.abort();
    }
    drop(replies);
    let _ = writer.await;
    if let Some((cgroup, agent)) = confined {
        sandbox
            .instances
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&cgroup.id());
        sandbox
            .confinement
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .forget(cgroup.id());
        if cgroup.path().exists() {
            tracing::warn!(%agent, "`warden run` went away: stopping what it left in {}", cgroup.path().display());
            let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
        }
    }
}

async fn write_replies(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut queued: tokio::sync::mpsc::Receiver<Reply>,
) {
    while let Some(reply) = queued.recv().await {
        let Ok(mut line) = serde_json::to_vec(&reply) else {
            continue;
        };
        line.push(b'\n');
        if write.write_all(&line).await.is_err() {
            return;
        }
    }
}

/// Sends `warden run` each refusal of its instance, as recorded (without the arguments when
/// they would not fit a line); on `finishing`, what is already published, then
/// [`Reply::Finished`].
async fn tell_refusals(
    mut decisions: tokio::sync::broadcast::Receiver<crate::DecisionEvent>,
    agent: String,
    replies: tokio::sync::mpsc::Sender<Reply>,
    mut finishing: tokio::sync::mpsc::Receiver<()>,
) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    loop {
        let event = tokio::select! {
            event = decisions.recv() => match event {
                Ok(event) => event,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            Some(()) = finishing.recv() => {
                loop {
                    match decisions.try_recv() {
                        Ok(event) => {
                            if let Some(notice) = refusal_notice(&event, &agent) {
                                let _ = replies.send(notice).await;
                            }
                        }
                        Err(TryRecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                }
                let _ = replies.send(Reply::Finished).await;
                continue;
            }
        };
        if let Some(notice) = refusal_notice(&event, &agent)
            && replies.send(notice).await.is_err()
        {
            return;
        }
    }
}

fn refusal_notice(event: &crate::DecisionEvent, agent: &str) -> Option<Reply> {
    if event.agent != agent || event.outcome != "deny" {
        return None;
    }
    let mut decision = serde_json::to_value(event).ok()?;
    if serde_json::to_vec(&decision).map_or(true, |line| line.len() >= MAX_LINE)
        && let Some(fields) = decision.as_object_mut()
    {
        fields.remove("arguments");
        fields.remove("findings");
        fields.remove("redacted");
    }
    Some(Reply::Denied { decision })
}

async fn confine(
    state: &Arc<State>,
    sandbox: &Arc<Sandbox>,
    cgroup: &Path,
    grant: String,
) -> Result<(Reply, Cgroup, String), String> {
    let cgroup = Cgroup::open(cgroup).map_err(|e| e.to_string())?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let caller = state
        .identifier
        .kernel(&grant, None, now)
        .map_err(|e| format!("the instance's grant is refused: {e}"))?;
    let agent = caller.identity.spiffe_id().to_string();
    let (sockets, dns_port) = dns_sockets(sandbox.ipv6)
        .await
        .map_err(|e| format!("cannot open the instance's DNS responder: {e}"))?;
    let answered = Arc::new(crate::dns::Answered::default());
    let responders = sockets
        .into_iter()
        .map(|socket| {
            tokio::spawn(crate::dns::serve(
                Arc::clone(state),
                Arc::clone(sandbox),
                cgroup.id(),
                socket,
                Arc::clone(&answered),
            ))
        })
        .collect();
    // The instance is known before its first connection can arrive.
    sandbox
        .instances
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            cgroup.id(),
            Instance {
                grant,
                agent: agent.clone(),
                answered,
                responders,
            },
        );
    let attached = sandbox
        .confinement
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .attach(&cgroup, Some(dns_port));
    if let Err(e) = attached {
        sandbox
            .instances
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&cgroup.id());
        return Err(e.to_string());
    }
    tracing::info!(%agent, cgroup = %cgroup.path().display(), "confined");
    Ok((
        Reply::Confined {
            agent: agent.clone(),
            listener: sandbox.listener.to_string(),
        },
        cgroup,
        agent,
    ))
}

fn renew(state: &State, sandbox: &Sandbox, cgroup: u64, agent: &str, grant: String) -> Reply {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match state.identifier.kernel(&grant, None, now) {
        Ok(caller) if caller.identity.spiffe_id().as_str() == agent => {
            if let Some(instance) = sandbox
                .instances
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(&cgroup)
            {
                instance.grant = grant;
            }
            Reply::Renewed
        }
        Ok(caller) => Reply::Refused {
            error: format!(
                "the new grant is for {}, not {agent}",
                caller.identity.spiffe_id()
            ),
        },
        Err(e) => Reply::Refused {
            error: format!("the new grant is refused: {e}"),
        },
    }
}

/// The UDP sockets of an instance's DNS responder: on 127.0.0.1 and, with `ipv6`, on ::1 at the
/// same port (the programs send both families' lookups to one port).
async fn dns_sockets(ipv6: bool) -> std::io::Result<(Vec<tokio::net::UdpSocket>, u16)> {
    for _ in 0..16 {
        let v4 = tokio::net::UdpSocket::bind(("127.0.0.1", 0)).await?;
        let port = v4.local_addr()?.port();
        if !ipv6 {
            return Ok((vec![v4], port));
        }
        match tokio::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, port)).await {
            Ok(v6) => return Ok((vec![v4, v6], port)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no UDP port free on both 127.0.0.1 and ::1",
    ))
}

async fn read_line(
    lines: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    loop {
        let available = lines.fill_buf().await.map_err(|e| e.to_string())?;
        if available.is_empty() {
            return Ok(None);
        }
        let (taken, done) = match available.iter().position(|b| *b == b'\n') {
            Some(end) => (end + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..taken]);
        lines.consume(taken);
        if line.len() > MAX_LINE {
            return Err(format!("requests are limited to {MAX_LINE} bytes"));
        }
        if done {
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| "a request that is not UTF-8".into());
        }
    }
}

/// Records what the kernel refused confined agents, with the process that tried.
fn watch_refusals(
    state: &State,
    sandbox: &Sandbox,
    mut refusals: warden_sandbox::Refusals,
    stop: &std::sync::atomic::AtomicBool,
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if !refusals.wait(std::time::Duration::from_millis(500)) {
            continue;
        }
        while let Some(refusal) = refusals.next() {
            let Some(caller) = sandbox.caller(state, refusal.cgroup, Some(refusal.pid)) else {
                continue;
            };
            match refusal.refused {
                Refused::Udp { destination } => {
                    let ip = destination.ip();
                    let action = Action::EgressConnect {
                        host: Host::Ip(ip),
                        port: destination.port(),
                        protocol: Protocol::Udp,
                        ip: Some(ip),
                    };
                    state
                        .pipeline
                        .refuse(&caller, action, DenyReason::NotForwarded);
                }
                Refused::Socket {
                    family,
                    kind,
                    protocol,
                } => state
                    .pipeline
                    .record_refused_socket(&caller, family, kind, protocol),
            }
        }
    }
}
