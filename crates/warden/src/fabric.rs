//! Running the fabric: `warden serve --role control|gateway|all` for deployments, and
//! `warden up`, the whole fabric on localhost with a demo.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use warden_control::{Control, ControlConfig, RegisterAgent};
use warden_gateway::{GatewayConfig, RunningGateway, TlsIdentity, UpstreamConfig, UpstreamKind};
use warden_model::Name;

use crate::control::{runtime, write_secret};
use crate::demo;

/// How often an in-process gateway renews its certificate (valid for an hour).
const RENEW_EVERY: Duration = Duration::from_secs(20 * 60);

/// The configuration file: a `control` and a `gateway` section, each optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FabricConfig {
    pub control: ControlConfig,
    pub gateway: GatewayConfig,
}

impl FabricConfig {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read configuration {}", path.display()))?;
        ensure!(
            meta.len() <= 1024 * 1024,
            "configuration {} is larger than 1 MiB",
            path.display()
        );
        let text = std::fs::read_to_string(path)?;
        serde_yaml::from_str(&text)
            .with_context(|| format!("configuration {} is invalid", path.display()))
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Configuration file (YAML, `control:` and `gateway:` sections); see docs/configuration.md.
    #[arg(long, env = "WARDEN_CONFIG")]
    config: Option<PathBuf>,
    /// Which part of the fabric to run.
    #[arg(long, value_enum, default_value_t = ServeRole::Control)]
    role: ServeRole,
    /// Address of the control plane's REST API.
    #[arg(long, env = "WARDEN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address agents connect to (gateway).
    #[arg(long, env = "WARDEN_GATEWAY_LISTEN")]
    gateway_listen: Option<SocketAddr>,
    /// Directory of the embedded store.
    #[arg(long, env = "WARDEN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// SPIFFE trust domain.
    #[arg(long, env = "WARDEN_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Policy bundle directory (gateway).
    #[arg(long, env = "WARDEN_POLICIES")]
    policies: Option<PathBuf>,
    /// The control plane a separate gateway follows.
    #[arg(long, env = "WARDEN_CONTROL_URL")]
    control_url: Option<String>,
    /// Also write the bootstrap admin token (first start only) to this file, mode 0600.
    #[arg(long)]
    bootstrap_token_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ServeRole {
    /// The control plane: authority, agents, credentials, revocation.
    Control,
    /// The data plane: the proxy agents call through.
    Gateway,
    /// Both in one process.
    All,
}

#[derive(Args)]
pub struct UpArgs {
    /// Where state, the demo policies and the admin token live.
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = "warden-data")]
    data_dir: PathBuf,
    /// Control plane address.
    #[arg(long, default_value = "127.0.0.1:8181")]
    control_listen: SocketAddr,
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    gateway_listen: SocketAddr,
    /// Demo MCP server address.
    #[arg(long, default_value = "127.0.0.1:8765")]
    demo_listen: SocketAddr,
    /// The audit log: `sync` forwards an allowed call once its record is in the log file and
    /// answers once it is on disk, `strict` forwards only once it is on disk, `async` waits for
    /// neither, `off` keeps no log (decisions are then logged to stderr).
    #[arg(long, env = "WARDEN_AUDIT", value_enum, default_value_t = AuditMode::Sync)]
    audit: AuditMode,
    /// Content inspection (injection, secrets, sensitive data) of requests and results.
    #[arg(long, env = "WARDEN_INSPECT", value_enum, default_value_t = Switch::On)]
    inspect: Switch,
    /// Where `warden run` asks the gateway to confine agents (when started as root).
    #[arg(long, env = "WARDEN_SANDBOX_SOCKET", default_value = warden_sandbox::session::DEFAULT_SOCKET)]
    sandbox_socket: PathBuf,
}

/// `warden run` confinement for `warden up`: on when it can be (root, cgroup v2, the socket
/// free), else why not.
fn up_sandbox(socket: &Path) -> Result<warden_gateway::SandboxSettings, String> {
    use std::os::unix::fs::MetadataExt as _;
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        return Err("start `warden up` as root to confine agents with `warden run`".into());
    }
    warden_sandbox::Cgroup::hierarchy().map_err(|e| e.to_string())?;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(format!(
            "another gateway already serves `warden run` at {} (--sandbox-socket)",
            socket.display()
        ));
    }
    Ok(warden_gateway::SandboxSettings {
        socket: socket.to_owned(),
        ..warden_gateway::SandboxSettings::default()
    })
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditMode {
    Sync,
    Strict,
    Async,
    Off,
}

fn apply_overrides(config: &mut FabricConfig, args: &ServeArgs) -> anyhow::Result<()> {
    if let Some(listen) = args.listen {
        config.control.listen = listen;
    }
    if let Some(listen) = args.gateway_listen {
        config.gateway.listen = listen;
    }
    if let Some(dir) = &args.data_dir {
        config.control.data_dir = dir.clone();
    }
    if let Some(td) = &args.trust_domain {
        config.control.trust_domain = warden_model::TrustDomain::new(td.clone())?;
    }
    if let Some(policies) = &args.policies {
        config.gateway.policies = policies.clone();
    }
    if let Some(url) = &args.control_url {
        config.gateway.control_url = url.clone();
    }
    Ok(())
}

/// Stops on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A control plane serving on its own task.
struct RunningControl {
    control: Arc<Control>,
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningControl {
    async fn stop(self) -> anyhow::Result<()> {
        self.control.stopping();
        let _ = self.stop.send(());
        self.served.await??;
        let control = self.control;
        tokio::task::spawn_blocking(move || control.close()).await?;
        Ok(())
    }
}

async fn start_control(
    config: ControlConfig,
    bootstrap_token_file: Option<&Path>,
) -> anyhow::Result<RunningControl> {
    ensure!(
        config.listen.ip().is_loopback(),
        "the control plane serves plain HTTP, so it listens on loopback only ({} is not); \
         put it behind a TLS-terminating proxy on the same host for remote access",
        config.listen
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    let control = Arc::new(Control::open(config)?);
    if let Some(token) = control.bootstrap()? {
        println!("Bootstrap admin token (shown once; store it now):\n  {token}");
        println!("Use it as:  export WARDEN_TOKEN={token}");
        if let Some(path) = bootstrap_token_file {
            write_secret(path, &format!("{token}\n"))?;
        }
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(warden_control::serve(
        Arc::clone(&control),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    Ok(RunningControl {
        control,
        url,
        stop,
        served,
    })
}

/// The in-process gateway's control-plane token (role `gateway`), kept in the data directory
/// (owner-readable only) and made on first start, or again if it no longer authenticates.
fn in_process_gateway_token(control: &Control) -> anyhow::Result<std::path::PathBuf> {
    let path = control.config().data_dir.join("gateway.token");
    if let Ok(token) = std::fs::read_to_string(&path)
        && control
            .authenticate(token.trim(), warden_control::Role::Gateway)
            .is_ok()
    {
        return Ok(path);
    }
    let token = control.create_admin("gateway", warden_control::Role::Gateway, Vec::new())?;
    crate::control::write_secret(&path, &format!("{token}\n"))?;
    Ok(path)
}

/// The token `/metrics` needs on `warden up`'s gateway, kept in the data directory.
fn metrics_token_file(data_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let path = data_dir.join("metrics-token");
    if std::fs::read_to_string(&path).is_ok_and(|t| !t.trim().is_empty()) {
        return Ok(path);
    }
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    crate::control::write_secret(&path, &format!("{token}\n"))?;
    Ok(path)
}

/// The gateway's certificate from the in-process authority, for the names clients dial.
fn gateway_identity(control: &Control, listen: SocketAddr) -> anyhow::Result<TlsIdentity> {
    let mut addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    if !listen.ip().is_unspecified() && !addresses.contains(&listen.ip()) {
        addresses.push(listen.ip());
    }
    let svid = control.issue_server_identity(
        &Name::new("gateway").map_err(|e| anyhow::anyhow!("{e}"))?,
        &["localhost".to_owned()],
        &addresses,
    )?;
    Ok(TlsIdentity {
        certificate_pem: svid.certificate_pem,
        private_key_pem: svid.private_key_pem,
    })
}

/// Renews an in-process gateway's certificate until the returned task is stopped.
fn renew_certificate(
    control: Arc<Control>,
    gateway: Arc<RunningGateway>,
    listen: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match gateway_identity(&control, listen).and_then(|id| gateway.set_identity(&id)) {
                Ok(()) => tracing::info!("gateway certificate renewed"),
                Err(e) => tracing::error!("gateway certificate renewal failed: {e:#}"),
            }
        }
    })
}

/// Stops certificate renewal, releasing its hold on the gateway so the gateway can drain.
async fn stop_renewal(renewal: Option<tokio::task::JoinHandle<()>>) {
    if let Some(renewal) = renewal {
        renewal.abort();
        let _ = renewal.await;
    }
}

async fn start_gateway(
    config: GatewayConfig,
    identity: TlsIdentity,
) -> anyhow::Result<RunningGateway> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    warden_gateway::start(config, identity, listener).await
}

fn file_identity(config: &GatewayConfig) -> anyhow::Result<TlsIdentity> {
    let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
        bail!(
            "a separate gateway needs gateway.tlsCertFile and gateway.tlsKeyFile (or run --role all)"
        );
    };
    Ok(TlsIdentity {
        certificate_pem: std::fs::read_to_string(cert)
            .with_context(|| format!("cannot read {}", cert.display()))?,
        private_key_pem: std::fs::read_to_string(key)
            .with_context(|| format!("cannot read {}", key.display()))?,
    })
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => FabricConfig::load(path)?,
        None => FabricConfig::default(),
    };
    apply_overrides(&mut config, &args)?;
    let audit_dir = config.control.data_dir.join("audit");
    runtime()?.block_on(async move {
        let control = match args.role {
            ServeRole::Control | ServeRole::All => {
                Some(start_control(config.control, args.bootstrap_token_file.as_deref()).await?)
            }
            ServeRole::Gateway => None,
        };
        if let Some(control) = &control {
            println!(
                "warden control plane listening on {}  (API: {0}/v1, OpenAPI: {0}/v1/openapi.json)",
                control.url
            );
        }
        let mut renewal = None;
        let gateway = match (&control, args.role) {
            (_, ServeRole::Control) => None,
            (Some(control), _) => {
                let mut gateway_config = config.gateway;
                gateway_config.control_url = control.url.clone();
                if gateway_config.control_token_file.is_none() {
                    gateway_config.control_token_file =
                        Some(in_process_gateway_token(&control.control)?);
                }
                gateway_config.audit.dir.get_or_insert(audit_dir);
                let listen = gateway_config.listen;
                let identity = gateway_identity(&control.control, listen)?;
                let gateway = Arc::new(start_gateway(gateway_config, identity).await?);
                renewal = Some(renew_certificate(
                    Arc::clone(&control.control),
                    Arc::clone(&gateway),
                    listen,
                ));
                Some(gateway)
            }
            (None, _) => {
                let identity = file_identity(&config.gateway)?;
                Some(Arc::new(start_gateway(config.gateway, identity).await?))
            }
        };
        if let Some(gateway) = &gateway {
            println!("warden gateway listening on {}", gateway.public_url);
        }
        std::io::stdout().flush()?;
        shutdown_signal().await;
        println!("stopping: draining in-flight requests");
        stop_renewal(renewal).await;
        if let Some(gateway) = gateway.and_then(|g| Arc::try_unwrap(g).ok()) {
            gateway.shutdown().await;
        }
        if let Some(control) = control {
            control.stop().await?;
        }
        println!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
        let data_dir = args.data_dir.canonicalize()?;
        let policies = data_dir.join("policies");
        demo::write_policies(&policies)?;
        let token_file = data_dir.join("admin-token");
        let control = start_control(
            ControlConfig {
                listen: args.control_listen,
                data_dir: data_dir.join("control"),
                ..ControlConfig::default()
            },
            Some(&token_file),
        )
        .await?;
        register_demo_agent(&control.control)?;
        let sandbox = up_sandbox(&args.sandbox_socket);
        let (demo_stop, demo_stopped) = tokio::sync::oneshot::channel::<()>();
        let demo_listener = tokio::net::TcpListener::bind(args.demo_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for the demo MCP server",
                    args.demo_listen
                )
            })?;
        let demo_address = demo::serve(demo_listener, async {
            let _ = demo_stopped.await;
        })
        .await?;
        let gateway_config = GatewayConfig {
            listen: args.gateway_listen,
            policies: policies.clone(),
            control_url: control.url.clone(),
            control_token_file: Some(in_process_gateway_token(&control.control)?),
            upstreams: vec![
                UpstreamConfig {
                    name: Name::new(demo::SERVER).map_err(|e| anyhow::anyhow!("{e}"))?,
                    kind: UpstreamKind::Mcp,
                    url: format!("http://{demo_address}/mcp"),
                    card_url: None,
                    credential: None,
                    inspect_responses: false,
                },
                UpstreamConfig {
                    name: Name::new(demo::API).map_err(|e| anyhow::anyhow!("{e}"))?,
                    kind: UpstreamKind::Http,
                    url: format!("http://{demo_address}/api"),
                    card_url: None,
                    credential: None,
                    // The demo shows a proxied API's answers inspected like tools' results.
                    inspect_responses: true,
                },
            ],
            inspect: warden_gateway::InspectSettings {
                enabled: args.inspect == Switch::On,
                ..warden_gateway::InspectSettings::default()
            },
            metrics: warden_gateway::MetricsSettings {
                token_file: Some(metrics_token_file(&data_dir)?),
                listen: None,
            },
            sandbox: sandbox.clone().ok(),
            audit: warden_gateway::AuditSettings {
                enabled: args.audit != AuditMode::Off,
                dir: Some(data_dir.join("audit")),
                durability: match args.audit {
                    AuditMode::Async => warden_gateway::Durability::Async,
                    AuditMode::Strict => warden_gateway::Durability::Strict,
                    AuditMode::Sync | AuditMode::Off => warden_gateway::Durability::Sync,
                },
                ..warden_gateway::AuditSettings::default()
            },
            ..GatewayConfig::default()
        };
        let identity = gateway_identity(&control.control, args.gateway_listen)?;
        let gateway = Arc::new(start_gateway(gateway_config, identity).await?);
        let renewal = renew_certificate(
            Arc::clone(&control.control),
            Arc::clone(&gateway),
            args.gateway_listen,
        );
        print_welcome(&control.url, &gateway.public_url, &data_dir, &policies);
        print_confinement(&sandbox, &data_dir, &demo_address);
        // The last line: scripts wait for it.
        println!("\nStop with Ctrl-C.");
        std::io::stdout().flush()?;
        shutdown_signal().await;
        println!("stopping: draining in-flight requests");
        stop_renewal(Some(renewal)).await;
        if let Ok(gateway) = Arc::try_unwrap(gateway) {
            gateway.shutdown().await;
        }
        let _ = demo_stop.send(());
        control.stop().await?;
        println!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn register_demo_agent(control: &Control) -> anyhow::Result<()> {
    let request: RegisterAgent = serde_json::from_value(serde_json::json!({
        "tenant": demo::TENANT,
        "name": demo::AGENT,
        "labels": {"app": "assistant"},
        "rights": [
            {"action": "mcp.*", "target": format!("{}/*", demo::SERVER)},
            {"action": "http", "target": format!("{}/*", demo::API)},
            // A ceiling, not a permission: the demo policy allows no egress until a user adds
            // an `egress` rule (docs/enforcement.md's walk-through does).
            {"action": "egress.connect", "target": "*"},
        ],
    }))?;
    match control.register_agent(request, "warden up") {
        Ok(_) | Err(warden_control::ControlError::Conflict(_)) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot register the demo agent: {e}")),
    }
}

fn print_welcome(control_url: &str, gateway_url: &str, data_dir: &Path, policies: &Path) {
    let data = data_dir.display();
    println!(
        r#"
Warden is up.
  control plane   {control_url}   (OpenAPI: {control_url}/v1/openapi.json)
  gateway         {gateway_url}   (metrics: {gateway_url}/metrics with the token in {data}/metrics-token)
  demo MCP server behind the gateway at {gateway_url}/mcp/{server}
  demo HTTP API   behind the gateway at {gateway_url}/http/{api}/
  policies        {policies}   (edit them; the gateway reloads on save)
  admin token     in {data}/admin-token

Try it (in another terminal, from this directory; `warden` is the binary you started, e.g.
`alias warden=$PWD/target/release/warden` in a checkout):

  export WARDEN_CONTROL_URL={control_url} WARDEN_TOKEN=$(cat {data}/admin-token)
  warden agent credential {tenant}/{agent} --task try-warden --purpose "try the demo" --out {data}/assistant

  mcp() {{ curl -s --cacert {data}/assistant/bundle.pem --cert {data}/assistant/svid.pem \
      --key {data}/assistant/svid-key.pem -H "Authorization: Bearer $(cat {data}/assistant/grant)" \
      -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
      {gateway_url}/mcp/{server} -d "$1"; echo; }}

  # allowed: the policy lets the assistant delete records in the scratch table
  mcp '{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"delete_records","arguments":{{"table":"scratch"}}}}}}'
  # denied: not the customers table (a JSON-RPC error with the decision id)
  mcp '{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"delete_records","arguments":{{"table":"customers"}}}}}}'
  # denied: inspection finds a secret leaving in the arguments
  mcp '{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"key AKIAQ3EGRJH6WXKQ7VZN"}}}}}}'
  # the tool list shows only what the assistant may call (read_secrets is hidden)
  mcp '{{"jsonrpc":"2.0","id":4,"method":"tools/list"}}'

  # plain HTTP APIs too: GET /status is allowed, DELETE /records is not (403)
  api() {{ curl -s --cacert {data}/assistant/bundle.pem --cert {data}/assistant/svid.pem \
      --key {data}/assistant/svid-key.pem -H "Authorization: Bearer $(cat {data}/assistant/grant)" \
      -X "$1" {gateway_url}/http/{api}$2; echo; }}
  api GET /status
  api DELETE /records"#,
        server = demo::SERVER,
        api = demo::API,
        tenant = demo::TENANT,
        agent = demo::AGENT,
        policies = policies.display(),
    );
}

fn print_confinement(
    sandbox: &Result<warden_gateway::SandboxSettings, String>,
    data_dir: &Path,
    demo: &SocketAddr,
) {
    match sandbox {
        Ok(settings) => println!(
            r#"
Confine an agent so it cannot go around Warden (as root, from this directory):

  # the demo API reached by its own address is still decided as the demo API: allowed
  warden run -- curl -s http://{demo}/api/status
  # anywhere else policy does not allow: refused, recorded with the process, and said
  warden run -- curl -sS https://example.com/
  (`warden run` finds the gateway at {socket} and the admin token in {data}/admin-token.)"#,
            socket = settings.socket.display(),
            data = data_dir.display(),
        ),
        Err(why) => println!("\n`warden run` is off: {why}."),
    }
}

#[derive(Args)]
pub struct McpStdioArgs {
    /// Credentials directory from `warden agent credential --out` (grant, svid.pem).
    #[arg(long)]
    credential: PathBuf,
    /// The server's name in policies.
    #[arg(long)]
    server: String,
    /// The policy bundle directory.
    #[arg(long, env = "WARDEN_POLICIES")]
    policies: PathBuf,
    /// The control plane (grant keys and revocations).
    #[arg(
        long,
        env = "WARDEN_CONTROL_URL",
        default_value = "http://127.0.0.1:8181"
    )]
    control_url: String,
    /// Content inspection of requests and of results (docs/inspection.md).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    inspect: Switch,
    /// What to redact from results instead of leaving it for policy, comma-separated:
    /// secret, sensitive-data, injection.
    #[arg(long, value_delimiter = ',', value_parser = redactable)]
    redact: Vec<warden_inspect::Kind>,
    /// What to redact from what the agent sends (tool and prompt arguments) before it is
    /// decided and reaches the server, comma-separated: secret, sensitive-data, injection.
    #[arg(long, value_delimiter = ',', value_parser = redactable)]
    redact_requests: Vec<warden_inspect::Kind>,
    /// The stdio MCP server to run, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn redactable(kind: &str) -> Result<warden_inspect::Kind, String> {
    serde_json::from_value(serde_json::Value::String(kind.to_owned()))
        .map_err(|_| format!("`{kind}`: use secret, sensitive-data or injection"))
}

pub fn mcp_stdio(args: McpStdioArgs) -> anyhow::Result<ExitCode> {
    let server = Name::new(args.server).map_err(|e| anyhow::anyhow!("--server: {e}"))?;
    let code = runtime()?.block_on(warden_gateway::run_stdio(warden_gateway::StdioConfig {
        control_url: args.control_url,
        policies: args.policies,
        server,
        credentials: args.credential,
        command: args.command,
        inspect: warden_gateway::InspectSettings {
            enabled: args.inspect == Switch::On,
            redact: args.redact,
            redact_requests: args.redact_requests,
            ..warden_gateway::InspectSettings::default()
        },
    }))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
