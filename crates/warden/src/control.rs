//! The commands that talk to a running control plane: agents, credentials, attestation,
//! delegation, revocation and the authority.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use http::Method;
use serde_json::{Value, json};
use warden_authority::{Attenuation, GrantRoots, ProofSigner, Right};
use warden_control::HttpClient;

use crate::Output;

/// Largest answer read from the control plane.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Where the control plane is and who is asking.
#[derive(Args, Clone)]
pub struct Connection {
    /// URL of the control plane.
    #[arg(
        long,
        env = "WARDEN_CONTROL_URL",
        default_value = "http://127.0.0.1:8181",
        global = true
    )]
    pub(crate) control_url: String,
    /// Admin token (`wdn_…`); printed once when the control plane first starts.
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// How to print results.
    #[arg(short, long, value_enum, default_value_t, global = true)]
    output: Output,
}

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Register an agent: its tenant, name, labels and the most its grants may allow.
    Register {
        /// `tenant/name`.
        agent: String,
        /// A right as `action=target`, e.g. `mcp.tools/call=github/*`; repeat for more.
        #[arg(long = "right", required = true)]
        rights: Vec<String>,
        /// A label as `key=value`; repeat for more.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List registered agents with their instances and sub-agents.
    List,
    /// Show one agent with its lineage and grants.
    Show { agent: String },
    /// Revoke an agent: every instance, sub-agent, SVID and grant; no new credentials.
    Revoke {
        agent: String,
        #[arg(long)]
        reason: String,
    },
    /// Issue an SVID and a task grant for an instance, and write them out.
    Credential {
        agent: String,
        #[command(flatten)]
        request: CredentialArgs,
        #[command(flatten)]
        sink: CredentialSink,
    },
    /// Create a one-time join token for a VM (`warden attest --join-token`).
    JoinToken {
        agent: String,
        /// Lifetime in seconds (at most a day).
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Derive a narrower grant for a sub-agent: online (token exchange, proving possession) or
    /// offline (an attenuation block, no round trip).
    Delegate(DelegateArgs),
}

#[derive(Args)]
pub struct CredentialArgs {
    /// The task the grant is for.
    #[arg(long)]
    task: String,
    /// The agent's stated purpose, recorded with every call.
    #[arg(long, default_value = "")]
    purpose: String,
    /// Narrow the grant to these rights (`action=target`); default: all registered rights.
    #[arg(long = "right")]
    rights: Vec<String>,
    /// Lifetime in seconds (default 900, at most 3600).
    #[arg(long)]
    ttl: Option<u64>,
    /// Instance name; generated when absent.
    #[arg(long)]
    instance: Option<String>,
    /// Bind the grant to a fresh proof-of-possession key (for callers without mTLS) instead of
    /// an SVID; the key is written with the grant.
    #[arg(long)]
    pop: bool,
}

#[derive(Args)]
pub struct CredentialSink {
    /// Write `grant`, `svid.pem`, `svid-key.pem`, `bundle.pem` (and `pop-key.pem`) here.
    #[arg(long, conflicts_with = "env")]
    out: Option<PathBuf>,
    /// Print `export` lines for a process's environment instead.
    #[arg(long)]
    env: bool,
}

#[derive(Args)]
pub struct DelegateArgs {
    /// File holding the parent's grant.
    #[arg(long)]
    grant: PathBuf,
    /// The sub-agent's name; its SPIFFE ID goes under the parent's.
    #[arg(long)]
    sub_agent: String,
    /// Instance of the sub-agent; generated when absent.
    #[arg(long)]
    sub_instance: Option<String>,
    /// Rights for the sub-agent (`action=target`), within the parent's.
    #[arg(long = "right", required = true)]
    rights: Vec<String>,
    /// Lifetime in seconds (never beyond the parent's).
    #[arg(long)]
    ttl: Option<u64>,
    #[arg(long)]
    purpose: Option<String>,
    /// Online: the key the parent's grant is bound to (its PoP key, or its SVID key).
    #[arg(long, required_unless_present = "offline")]
    key: Option<PathBuf>,
    /// Online, SVID-bound parent: its SVID certificate (PEM).
    #[arg(long)]
    svid: Option<PathBuf>,
    /// Append an attenuation block locally instead of asking the control plane.
    #[arg(long)]
    offline: bool,
    /// Where to write the sub-agent's credentials.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct AttestArgs {
    /// A one-time join token.
    #[arg(long, required_unless_present = "jwt", conflicts_with = "jwt")]
    join_token: Option<String>,
    /// A file holding a platform identity token (Kubernetes ServiceAccount, cloud OIDC).
    #[arg(long)]
    jwt: Option<PathBuf>,
    #[command(flatten)]
    request: CredentialArgs,
    #[command(flatten)]
    sink: CredentialSink,
}

#[derive(Subcommand)]
pub enum AuthorityCommand {
    /// Rotate the CA and grant keys; old roots stay trusted while what they signed lives.
    Rotate,
    /// Print the trust bundle.
    Bundle {
        #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
        format: BundleFormat,
    },
}

#[derive(Clone, Copy, ValueEnum, Default)]
pub enum BundleFormat {
    /// X.509 roots, PEM.
    #[default]
    Pem,
    /// SPIFFE bundle (JWK Set).
    Spiffe,
    /// Public keys grants are signed with.
    GrantRoots,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RevocationKind {
    Grant,
    Task,
    Agent,
    RevocationId,
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Writes a file only its owner can read.
pub fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

pub(crate) struct Api {
    connection: Connection,
    client: HttpClient,
}

impl Api {
    pub(crate) fn new(connection: Connection) -> anyhow::Result<Self> {
        Ok(Self {
            client: HttpClient::new(Duration::from_secs(30))?,
            connection,
        })
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let auth = self
            .connection
            .token
            .as_ref()
            .map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth));
        }
        self.send(
            method,
            path,
            &headers,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Value> {
        let url = format!(
            "{}{path}",
            self.connection.control_url.trim_end_matches('/')
        );
        // Admin tokens and grants go out, private keys come back: never over a path anyone
        // between could read.
        warden_http::secure_url(&url).map_err(|e| {
            anyhow::anyhow!("refusing to talk to the control plane: WARDEN_CONTROL_URL {e}")
        })?;
        let response = self
            .client
            .send(method, &url, headers, body, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| {
                anyhow::anyhow!("{e} (is the control plane running? `warden serve --role control`)")
            })?;
        let value: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.status.is_success() {
            return Ok(value);
        }
        let message = value["error"]["message"]
            .as_str()
            .or_else(|| value["error_description"].as_str())
            .map_or_else(
                || String::from_utf8_lossy(&response.body).into_owned(),
                str::to_owned,
            );
        if response.status == http::StatusCode::UNAUTHORIZED && self.connection.token.is_none() {
            bail!("{message}\nhint: set WARDEN_TOKEN (or --token) to an admin token");
        }
        bail!("{} ({})", message, response.status)
    }

    pub(crate) fn print(&self, value: &Value, text: impl FnOnce(&Value) -> String) {
        match self.connection.output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            ),
            Output::Text => println!("{}", text(value)),
        }
    }
}

pub(crate) fn split_agent(agent: &str) -> anyhow::Result<(&str, &str)> {
    agent
        .split_once('/')
        .filter(|(t, n)| !t.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| {
            anyhow::anyhow!("name the agent as tenant/name, e.g. shop/planner (not `{agent}`)")
        })
}

fn parse_rights(items: &[String]) -> anyhow::Result<Vec<Right>> {
    items
        .iter()
        .map(|item| {
            let (action, target) = item.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("right `{item}` is not action=target, e.g. mcp.tools/call=github/*")
            })?;
            Ok(Right::new(action, target)?)
        })
        .collect()
}

fn credential_body(args: &CredentialArgs, pop: Option<&ProofSigner>) -> anyhow::Result<Value> {
    let mut body = json!({"task": args.task, "purpose": args.purpose});
    if !args.rights.is_empty() {
        body["rights"] = serde_json::to_value(parse_rights(&args.rights)?)?;
    }
    if let Some(ttl) = args.ttl {
        body["ttlSeconds"] = json!(ttl);
    }
    if let Some(instance) = &args.instance {
        body["instance"] = json!(instance);
    }
    if let Some(signer) = pop {
        body["keyThumbprint"] = json!(signer.thumbprint());
    }
    Ok(body)
}

/// Writes issued credentials to a directory (keys and grant mode 0600) or prints `export` lines.
fn deliver(
    api: &Api,
    creds: &Value,
    pop: Option<&ProofSigner>,
    sink: &CredentialSink,
) -> anyhow::Result<()> {
    let spiffe_id = creds["spiffeId"]
        .as_str()
        .or_else(|| creds["spiffe_id"].as_str())
        .unwrap_or_default();
    let grant = creds["grant"]
        .as_str()
        .or_else(|| creds["access_token"].as_str())
        .unwrap_or_default();
    let svid = &creds["svid"];
    if sink.env {
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        println!("export WARDEN_SPIFFE_ID={}", quote(spiffe_id));
        println!("export WARDEN_GRANT={}", quote(grant));
        if let Some(cert) = svid["certificatePem"].as_str() {
            println!("export WARDEN_SVID_PEM={}", quote(cert));
            println!(
                "export WARDEN_SVID_KEY_PEM={}",
                quote(svid["privateKeyPem"].as_str().unwrap_or_default())
            );
        }
        if let Some(signer) = pop {
            println!(
                "export WARDEN_POP_KEY_PEM={}",
                quote(&signer.private_key_pem())
            );
        }
        return Ok(());
    }
    if let Some(dir) = &sink.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_secret(&dir.join("grant"), grant)?;
        if let Some(cert) = svid["certificatePem"].as_str() {
            std::fs::write(dir.join("svid.pem"), cert)?;
            write_secret(
                &dir.join("svid-key.pem"),
                svid["privateKeyPem"].as_str().unwrap_or_default(),
            )?;
        }
        if let Some(bundle) = creds["bundlePem"].as_str() {
            std::fs::write(dir.join("bundle.pem"), bundle)?;
        }
        if let Some(signer) = pop {
            write_secret(&dir.join("pop-key.pem"), &signer.private_key_pem())?;
        }
    }
    let mut summary = creds.clone();
    // Secrets go to files or the environment, never into the summary.
    for key in ["grant", "access_token", "svid", "bundlePem"] {
        if let Some(map) = summary.as_object_mut() {
            map.remove(key);
        }
    }
    if let Some(dir) = &sink.out {
        summary["writtenTo"] = json!(dir);
    }
    api.print(&summary, |_| {
        let place = sink.out.as_ref().map_or_else(
            || " (use --out DIR or --env to keep them)".to_owned(),
            |d| format!(" → {}", d.display()),
        );
        format!("credentials for {spiffe_id}{place}")
    });
    Ok(())
}

pub fn agent(command: AgentCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    let api = Api::new(connection)?;
    runtime()?.block_on(async move {
        match command {
            AgentCommand::Register { agent, rights, labels } => {
                let (tenant, name) = split_agent(&agent)?;
                let labels = labels
                    .iter()
                    .map(|l| {
                        l.split_once('=')
                            .map(|(k, v)| (k.to_owned(), json!(v)))
                            .ok_or_else(|| anyhow::anyhow!("label `{l}` is not key=value"))
                    })
                    .collect::<anyhow::Result<serde_json::Map<_, _>>>()?;
                let body = json!({"tenant": tenant, "name": name, "labels": labels,
                                  "rights": parse_rights(&rights)?});
                let record = api.call(Method::POST, "/v1/agents", Some(body)).await?;
                api.print(&record, |_| format!("registered agent {tenant}/{name}"));
            }
            AgentCommand::List => {
                let agents = api.call(Method::GET, "/v1/agents", None).await?;
                api.print(&agents, |agents| {
                    let mut text = String::new();
                    for agent in agents.as_array().into_iter().flatten() {
                        text += &describe_agent(agent);
                    }
                    if text.is_empty() {
                        "no agents registered (`warden agent register tenant/name --right …`)".into()
                    } else {
                        text.trim_end().to_owned()
                    }
                });
            }
            AgentCommand::Show { agent } => {
                let (tenant, name) = split_agent(&agent)?;
                let view = api.call(Method::GET, &format!("/v1/agents/{tenant}/{name}"), None).await?;
                api.print(&view, |v| describe_agent(v).trim_end().to_owned());
            }
            AgentCommand::Revoke { agent, reason } => {
                let (tenant, name) = split_agent(&agent)?;
                let result = api
                    .call(
                        Method::POST,
                        &format!("/v1/agents/{tenant}/{name}/revoke"),
                        Some(json!({"reason": reason})),
                    )
                    .await?;
                api.print(&result, |r| {
                    format!("revoked agent {tenant}/{name} and its sub-agents (revocation set version {})", r["version"])
                });
            }
            AgentCommand::Credential { agent, request, sink } => {
                let (tenant, name) = split_agent(&agent)?;
                let pop = request.pop.then(ProofSigner::generate).transpose()?;
                let body = credential_body(&request, pop.as_ref())?;
                let creds = api
                    .call(Method::POST, &format!("/v1/agents/{tenant}/{name}/credentials"), Some(body))
                    .await?;
                deliver(&api, &creds, pop.as_ref(), &sink)?;
            }
            AgentCommand::JoinToken { agent, ttl } => {
                let (tenant, name) = split_agent(&agent)?;
                let token = api
                    .call(
                        Method::POST,
                        &format!("/v1/agents/{tenant}/{name}/join-tokens"),
                        Some(json!({"ttlSeconds": ttl})),
                    )
                    .await?;
                api.print(&token, |t| {
                    format!(
                        "join token for {tenant}/{name} (single use, expires at unix {}):\n  {}",
                        t["expires"],
                        t["token"].as_str().unwrap_or_default()
                    )
                });
            }
            AgentCommand::Delegate(args) => delegate(&api, args).await?,
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn describe_agent(agent: &Value) -> String {
    fn instances(nodes: &Value, depth: usize, text: &mut String) {
        for node in nodes.as_array().into_iter().flatten() {
            let grants = node["grants"].as_array().map_or(0, Vec::len);
            *text += &format!(
                "{}└ {}  via {}, {grants} grant(s)\n",
                "  ".repeat(depth),
                node["spiffeId"].as_str().unwrap_or_default(),
                node["via"].as_str().unwrap_or_default()
            );
            instances(&node["children"], depth + 1, text);
        }
    }
    let rights: Vec<String> = agent["rights"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{}={}",
                r["action"].as_str().unwrap_or_default(),
                r["target"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let mut text = format!(
        "{}/{}  rights: {}{}\n",
        agent["tenant"].as_str().unwrap_or_default(),
        agent["name"].as_str().unwrap_or_default(),
        rights.join(" "),
        agent["revoked"]["reason"]
            .as_str()
            .map_or_else(String::new, |r| format!("  REVOKED: {r}"))
    );
    instances(&agent["instances"], 1, &mut text);
    text
}

async fn delegate(api: &Api, args: DelegateArgs) -> anyhow::Result<()> {
    let grant = std::fs::read_to_string(&args.grant)
        .with_context(|| format!("cannot read the grant {}", args.grant.display()))?;
    let grant = grant.trim();
    let rights = parse_rights(&args.rights)?;
    let sink = CredentialSink {
        out: Some(args.out.clone()),
        env: false,
    };
    if args.offline {
        let bundle = api.call(Method::GET, "/v1/bundle", None).await?;
        let roots = GrantRoots::from_json(&bundle["grantRoots"])?;
        let parent =
            warden_authority::GrantVerifier::new(roots.clone(), usize::MAX).verify_cold(grant)?;
        let instance = args
            .sub_instance
            .clone()
            .unwrap_or_else(|| "offline".to_owned());
        let child = warden_model::SpiffeId::new(format!(
            "{}/agent/{}/{instance}",
            parent.agent(),
            args.sub_agent
        ))?;
        let expires = args
            .ttl
            .map(|ttl| time::OffsetDateTime::now_utc() + Duration::from_secs(ttl));
        let token = warden_authority::attenuate(
            grant,
            &roots,
            Attenuation {
                rights,
                expires,
                holder: Some(child.clone()),
            },
        )?;
        let creds = json!({"spiffeId": child, "grant": token, "delegation": "offline"});
        return deliver(api, &creds, None, &sink);
    }
    let key_path = args
        .key
        .as_ref()
        .context("--key is needed for online delegation")?;
    let signer = ProofSigner::from_pem(
        &std::fs::read_to_string(key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?,
    )?;
    let svid = match &args.svid {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate: {e}", path.display()))?;
            use base64::Engine as _;
            Some(base64::engine::general_purpose::STANDARD.encode(block.contents))
        }
        None => None,
    };
    let scope: Vec<String> = rights
        .iter()
        .map(|r| format!("{}={}", r.action, r.target))
        .collect();
    let mut form = vec![
        (
            "grant_type",
            warden_control::TOKEN_EXCHANGE_GRANT_TYPE.to_owned(),
        ),
        ("subject_token", grant.to_owned()),
        (
            "subject_token_type",
            warden_control::GRANT_TOKEN_TYPE.to_owned(),
        ),
        ("scope", scope.join(" ")),
        ("sub_agent", args.sub_agent.clone()),
    ];
    for (key, value) in [
        ("sub_instance", args.sub_instance.clone()),
        ("purpose", args.purpose.clone()),
        ("expires_in", args.ttl.map(|t| t.to_string())),
    ] {
        if let Some(value) = value {
            form.push((key, value));
        }
    }
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&form)
        .finish();
    let url = format!(
        "{}/v1/token",
        api.connection.control_url.trim_end_matches('/')
    );
    let proof = signer.proof(
        "POST",
        &url,
        grant,
        time::OffsetDateTime::now_utc().unix_timestamp(),
    )?;
    let mut headers = vec![
        ("content-type", "application/x-www-form-urlencoded"),
        ("dpop", proof.as_str()),
    ];
    if let Some(svid) = &svid {
        headers.push(("warden-svid", svid.as_str()));
    }
    let mut issued = api
        .send(Method::POST, "/v1/token", &headers, Some(body.into_bytes()))
        .await?;
    issued["spiffeId"] = issued["spiffe_id"].clone();
    deliver(api, &issued, None, &sink)
}

pub fn attest(args: AttestArgs, connection: Connection) -> anyhow::Result<ExitCode> {
    let api = Api::new(connection)?;
    runtime()?.block_on(async move {
        let evidence = match (&args.join_token, &args.jwt) {
            (Some(token), _) => json!({"type": "join-token", "token": token}),
            (None, Some(path)) => {
                let token = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the identity token {}", path.display())
                })?;
                json!({"type": "jwt", "token": token.trim()})
            }
            (None, None) => bail!("give --join-token or --jwt"),
        };
        let pop = args.request.pop.then(ProofSigner::generate).transpose()?;
        let mut body = credential_body(&args.request, pop.as_ref())?;
        body["evidence"] = evidence;
        let creds = api.call(Method::POST, "/v1/attest", Some(body)).await?;
        deliver(&api, &creds, pop.as_ref(), &args.sink)?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn authority(command: AuthorityCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    let api = Api::new(connection)?;
    runtime()?.block_on(async move {
        match command {
            AuthorityCommand::Rotate => {
                let bundle = api.call(Method::POST, "/v1/authority/rotate", None).await?;
                api.print(&bundle, |b| {
                    format!(
                        "rotated; trust bundle sequence {} now holds {} root(s)",
                        b["sequence"],
                        b["spiffe"]["keys"].as_array().map_or(0, Vec::len)
                    )
                });
            }
            AuthorityCommand::Bundle { format } => {
                let bundle = api.call(Method::GET, "/v1/bundle", None).await?;
                match (format, api.connection.output) {
                    (_, Output::Json) => api.print(&bundle, |_| String::new()),
                    (BundleFormat::Pem, Output::Text) => {
                        print!("{}", bundle["x509Pem"].as_str().unwrap_or_default());
                    }
                    (BundleFormat::Spiffe, Output::Text) => {
                        println!("{}", serde_json::to_string_pretty(&bundle["spiffe"])?);
                    }
                    (BundleFormat::GrantRoots, Output::Text) => {
                        println!("{}", serde_json::to_string_pretty(&bundle["grantRoots"])?);
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn revoke(
    kind: RevocationKind,
    value: String,
    connection: Connection,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(connection)?;
    let key = match kind {
        RevocationKind::Grant => "grant",
        RevocationKind::Task => "task",
        RevocationKind::Agent => "agent",
        RevocationKind::RevocationId => "revocation-id",
    };
    runtime()?.block_on(async move {
        let result = api
            .call(Method::POST, "/v1/revocations", Some(json!({ key: value })))
            .await?;
        api.print(&result, |r| {
            format!(
                "revoked {key} {value} (revocation set version {})",
                r["version"]
            )
        });
        Ok(ExitCode::SUCCESS)
    })
}
