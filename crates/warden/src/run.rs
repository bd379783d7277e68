//! `warden run`: starts an agent confined so the kernel hands every connection it makes to the
//! local gateway, which decides it as this agent instance's. The agent holds no credential:
//! `warden run` obtains the instance's grant from the control plane and gives it to the gateway,
//! never to the agent, and renews it while the agent runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http::Method;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use warden_sandbox::session::{DEFAULT_SOCKET, Reply, Request};
use warden_sandbox::{Cgroup, User};

use crate::control::{Api, Connection, runtime, split_agent};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The registered agent to run as, `tenant/name` (`warden up` registers demo/assistant).
    #[arg(long, default_value = "demo/assistant")]
    agent: String,
    /// The task the instance's grant is for; a fresh id when absent.
    #[arg(long)]
    task: Option<String>,
    /// Who the agent runs as: a user name, a uid, or uid:gid. Never root: root could leave its
    /// confinement.
    #[arg(long, default_value = "nobody")]
    user: String,
    /// The local gateway's `warden run` socket (gateway.sandbox.socket).
    #[arg(long, env = "WARDEN_SANDBOX_SOCKET", default_value = DEFAULT_SOCKET)]
    gateway_socket: PathBuf,
    /// How long each grant lasts, in seconds; renewed at half-life while the agent runs.
    #[arg(long, default_value_t = 900)]
    grant_ttl: u64,
    /// Where `warden up` keeps its admin token, used when neither --token nor WARDEN_TOKEN is.
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = "warden-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    connection: Connection,
    /// The agent's command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let own_uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .context("cannot tell who is running warden run (/proc/self)")?;
    if own_uid != 0 {
        bail!(
            "warden run needs root: it creates the agent's cgroup and starts the agent as --user; run it with sudo"
        );
    }
    let user = User::lookup(&args.user)?;
    let (tenant, name) = split_agent(&args.agent)?;
    let (tenant, name) = (tenant.to_owned(), name.to_owned());
    let instance = format!("run-{}", random_hex(6)?);
    let task = match &args.task {
        Some(task) => task.clone(),
        None => format!("task-{}", random_hex(8)?),
    };
    let mut connection = args.connection.clone();
    if connection.token.is_none() {
        connection.token = std::fs::read_to_string(args.data_dir.join("admin-token"))
            .ok()
            .map(|token| token.trim().to_owned());
    }
    let api = Api::new(connection)?;
    runtime()?.block_on(async move {
        let issue = || {
            let body = json!({
                "task": task,
                "purpose": format!("warden run {}", args.command[0]),
                "instance": instance,
                "ttlSeconds": args.grant_ttl,
            });
            let path = format!("/v1/agents/{tenant}/{name}/credentials");
            let api = &api;
            async move {
                let issued = api.call(Method::POST, &path, Some(body)).await?;
                // The SVID's key is dropped here: the gateway holds the grant, bound to the
                // instance's SPIFFE ID, and vouches for the holder by the cgroup.
                issued["grant"]
                    .as_str()
                    .map(str::to_owned)
                    .context("the control plane issued no grant")
            }
        };
        let grant = issue().await?;
        let cgroup = tokio::task::spawn_blocking({
            let instance = instance.clone();
            move || Cgroup::create(&instance)
        })
        .await??;
        let outcome = supervise(&args, &user, &cgroup, grant, &issue).await;
        // Whatever happened, nothing of the agent outlives `warden run`.
        let removed = tokio::task::spawn_blocking(move || cgroup.remove()).await;
        if let Ok(Err(e)) = removed {
            eprintln!("warden run: {e}");
        }
        outcome
    })
}

async fn supervise<F, Fut>(
    args: &RunArgs,
    user: &User,
    cgroup: &Cgroup,
    grant: String,
    issue: &F,
) -> anyhow::Result<ExitCode>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let socket = UnixStream::connect(&args.gateway_socket).await.with_context(|| {
        format!(
            "cannot reach the local gateway at {} (is `warden up` running as root, or a gateway with gateway.sandbox set? --gateway-socket / WARDEN_SANDBOX_SOCKET)",
            args.gateway_socket.display()
        )
    })?;
    let (read, mut write) = socket.into_split();
    let mut replies = BufReader::new(read).lines();
    let confine = Request::Confine {
        cgroup: cgroup.path().to_owned(),
        grant,
    };
    send(&mut write, &confine).await?;
    match next_reply(&mut replies).await? {
        Reply::Confined { agent, listener } => {
            eprintln!(
                "warden run: {agent} confined; its connections go to the gateway at {listener}"
            );
        }
        Reply::Refused { error } => bail!("the gateway refused to confine the agent: {error}"),
        Reply::Renewed | Reply::Denied { .. } | Reply::Finished => {
            bail!("the gateway answered out of turn")
        }
    }
    // From here the gateway also says, as it happens, what the agent was refused: those
    // notices are printed, the answers to renewals come back here, and the end of the socket
    // is the end of the gateway.
    let (answers_tx, mut answers) = tokio::sync::mpsc::channel::<Reply>(4);
    let reader = tokio::spawn(async move {
        // A resolver asks twice (A, AAAA) and retries: each refusal is said once.
        let mut said = std::collections::HashSet::new();
        while let Ok(reply) = next_reply(&mut replies).await {
            match reply {
                Reply::Denied { decision } => {
                    if let Some((what, decision)) = refusal(&decision)
                        && said.insert(what.clone())
                    {
                        eprintln!("{what}; decision {decision}");
                    }
                }
                answer => {
                    if answers_tx.send(answer).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut command = std::process::Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    // The agent's environment carries no Warden credential or setting.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WARDEN_") {
            command.env_remove(key);
        }
    }
    let mut child = warden_sandbox::spawn(command, cgroup, user)?;
    let pid = child.id();
    let waited = tokio::task::spawn_blocking(move || child.wait());
    tokio::pin!(waited);
    let renew_every = Duration::from_secs((args.grant_ttl / 2).max(1));
    let mut renewal =
        tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    let outcome = loop {
        tokio::select! {
            status = &mut waited => {
                let status = status??;
                // Gone before the gateway hears the session end, so it finds nothing left to stop.
                tokio::task::block_in_place(|| cgroup.remove())?;
                // What the agent was refused in its last moments is said before warden run ends.
                if send(&mut write, &Request::Finish).await.is_ok() {
                    let finished = async {
                        while let Some(answer) = answers.recv().await {
                            if matches!(answer, Reply::Finished) {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(2), finished).await;
                }
                break Ok(exit_code(status));
            }
            _ = renewal.tick() => {
                let grant = match issue().await {
                    Ok(grant) => grant,
                    Err(e) => {
                        eprintln!("warden run: cannot renew the grant ({e:#}); the agent is stopped when it expires");
                        continue;
                    }
                };
                send(&mut write, &Request::Renew { grant }).await?;
            }
            answer = answers.recv() => match answer {
                Some(Reply::Refused { error }) => {
                    eprintln!("warden run: the gateway refused the renewed grant: {error}");
                }
                Some(_) => {}
                // Without its gateway the agent can reach nothing; it is stopped rather than left.
                None => {
                    cgroup.kill()?;
                    break Err(anyhow::anyhow!("the gateway went away; the agent (pid {pid}) was stopped"));
                }
            }
        }
    };
    reader.abort();
    outcome
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    request: &Request,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .context("the gateway closed the `warden run` socket")
}

async fn next_reply(
    replies: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
) -> anyhow::Result<Reply> {
    let line = replies
        .next_line()
        .await?
        .context("the gateway closed the `warden run` socket")?;
    serde_json::from_str(&line).context("the gateway's answer is not one warden run knows")
}

/// What the agent was refused, for one line: the action, what it asked for, why, and which of
/// its processes asked; beside it the decision id, to find the record.
fn refusal(decision: &serde_json::Value) -> Option<(String, String)> {
    let field = |name: &str| decision.get(name).and_then(serde_json::Value::as_str);
    let by = crate::audit::asker(decision)
        .map(|process| format!(" by {process}"))
        .unwrap_or_default();
    let what = format!(
        "warden run: refused {} {} ({}){by}",
        field("action")?,
        crate::audit::asked(decision),
        field("reason").unwrap_or("denied"),
    );
    Some((what, field("decisionId").unwrap_or("-").to_owned()))
}

/// The agent's exit status as `warden run`'s: its code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buffer).map_err(|_| anyhow::anyhow!("no randomness available"))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}
