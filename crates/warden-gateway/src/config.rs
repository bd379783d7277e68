//! Gateway configuration: listener, upstreams, limits. Every setting has a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use warden_model::Name;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct GatewayConfig {
    /// Where agents connect (TLS; client certificates optional, verified when presented).
    pub listen: SocketAddr,
    /// The URL agents use, which proofs of possession name; defaults to `https://<listen>`.
    pub public_url: Option<String>,
    /// The AgentPolicy bundle directory; reloaded on change.
    pub policies: PathBuf,
    /// The control plane, for trust bundle, grant keys, revocations and quarantines.
    pub control_url: String,
    /// A file holding this gateway's control-plane token (role `gateway`; `warden admin create
    /// gw-1 --role gateway`), for filing and spending approvals and following events. Without
    /// one, calls that need approval or an event are refused. `--role all` makes its own.
    pub control_token_file: Option<PathBuf>,
    /// How long a call that needs approval is held while approvers decide before the gateway
    /// answers needs-approval (0: answer at once; the agent retries with the approval id).
    pub approval_hold_secs: u64,
    /// Server certificate and key (PEM) for `--role gateway`; in `--role all` the gateway gets an
    /// SVID from the in-process authority instead.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub upstreams: Vec<UpstreamConfig>,
    pub limits: Limits,
    /// How often the trust bundle (roots, grant keys) is refetched, in seconds; a CA rotation
    /// reaches the gateway within this long.
    pub trust_refresh_secs: u64,
    /// The tamper-evident audit log every decision is recorded in.
    pub audit: AuditSettings,
    /// Content inspection of request bodies (docs/inspection.md).
    pub inspect: InspectSettings,
    /// Who may read `/metrics`.
    pub metrics: MetricsSettings,
    /// Detectors over this gateway's decisions (docs/detection.md).
    pub detect: DetectSettings,
    /// Confinement for agents started with `warden run` (docs/enforcement.md); off unless set.
    /// Needs Linux with cgroup v2 and BPF, and root.
    pub sandbox: Option<SandboxSettings>,
}

/// Where `warden run` asks this gateway to confine an agent, and where confined agents'
/// connections arrive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SandboxSettings {
    /// The local socket `warden run` connects to (only root or the gateway's user may).
    pub socket: PathBuf,
    /// The transparent listener's port on 127.0.0.1 and ::1 (0: any free port).
    pub port: u16,
    /// How long to wait for a connection's first bytes (a TLS ClientHello, an HTTP request)
    /// before deciding it on its address alone, in milliseconds.
    pub first_bytes_millis: u64,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(warden_sandbox::session::DEFAULT_SOCKET),
            port: 0,
            first_bytes_millis: 1000,
        }
    }
}

/// Scans and deny storms, detected from the decisions (refused ones too). A detection is recorded
/// in the audit log with its evidence; on a scan, with `quarantine` (and a control token), the
/// agent is quarantined through the control plane at once, and on a toxic flow too with
/// `quarantineToxicFlows`. Deny storms are recorded only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DetectSettings {
    pub enabled: bool,
    /// Distinct hosts on one port within `windowSecs` that make a host scan.
    pub scan_hosts: usize,
    /// Distinct ports on one host within `windowSecs` that make a port scan.
    pub scan_ports: usize,
    pub window_secs: i64,
    /// Refused calls within `denyWindowSecs` that make a deny storm (0: off).
    pub deny_storm: usize,
    pub deny_window_secs: i64,
    /// Calls after content carrying an injection within which a sensitive call (egress, a send-,
    /// delete- or execute-class tool, an API write, delegation) is a toxic flow (0: off).
    pub toxic_calls: u32,
    pub toxic_window_secs: i64,
    /// How long an agent's baseline is learned before a call to a tool, route or destination
    /// outside it is a `reach.new` detection, in seconds (0: off).
    pub learning_secs: i64,
    /// Where baselines are kept between runs (default: beside the audit log,
    /// `<audit dir>.baselines.json`).
    pub baselines_file: Option<PathBuf>,
    /// Quarantine the agent on a scan (else only record it).
    pub quarantine: bool,
    /// How long a detection's quarantine lasts, in seconds (0: until a person releases it).
    pub quarantine_secs: u64,
    /// Quarantine on a toxic flow too. Off by default: a toxic flow rests on an injection
    /// finding, and those can be wrong (docs/inspection.md gives the rates).
    pub quarantine_toxic_flows: bool,
}

impl Default for DetectSettings {
    fn default() -> Self {
        let defaults = warden_detect::Settings::default();
        Self {
            enabled: true,
            scan_hosts: defaults.scan_hosts,
            scan_ports: defaults.scan_ports,
            window_secs: defaults.window_secs,
            deny_storm: defaults.deny_storm,
            deny_window_secs: defaults.deny_window_secs,
            toxic_calls: defaults.toxic_calls,
            toxic_window_secs: defaults.toxic_window_secs,
            learning_secs: defaults.learning_secs,
            baselines_file: None,
            quarantine: true,
            quarantine_secs: 600,
            quarantine_toxic_flows: false,
        }
    }
}

impl DetectSettings {
    pub fn baselines_file(&self, audit: &AuditSettings) -> PathBuf {
        self.baselines_file.clone().unwrap_or_else(|| {
            let mut file = audit.dir().into_os_string();
            file.push(".baselines.json");
            PathBuf::from(file)
        })
    }

    pub fn detectors(&self) -> warden_detect::Settings {
        warden_detect::Settings {
            window_secs: self.window_secs.max(1),
            scan_hosts: self.scan_hosts.max(2),
            scan_ports: self.scan_ports.max(2),
            deny_storm: self.deny_storm,
            deny_window_secs: self.deny_window_secs.max(1),
            toxic_calls: self.toxic_calls,
            toxic_window_secs: self.toxic_window_secs.max(1),
            learning_secs: self.learning_secs.max(0),
            ..warden_detect::Settings::default()
        }
    }
}

/// Metrics say which agents and upstreams are busy: they are not for anyone who can reach the
/// agent listener. `/metrics` there needs the token in `tokenFile`; `listen` serves them on a
/// listener of their own instead (plain HTTP, no token: bind it to loopback or a scrape
/// network). With neither, `/metrics` answers `404` saying so.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MetricsSettings {
    pub token_file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
}

/// Which scanners look at request bodies; their findings feed `context.findings`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct InspectSettings {
    pub enabled: bool,
    pub injection: bool,
    /// The statistical injection classifier, beside the injection rules.
    pub classifier: bool,
    /// The least classifier probability, in percent, that becomes a finding.
    pub classifier_min_score: u8,
    pub secrets: bool,
    /// Sensitive-data sets: `email`, `payment-card`, `iban`, `us-ssn`, `phone-number`.
    pub sensitive: Vec<String>,
    /// What is redacted from what comes back to agents (tool results, peers' answers,
    /// inspected HTTP responses) instead of left for policy to refuse: `secret`,
    /// `sensitive-data`, `injection`.
    pub redact: Vec<warden_inspect::Kind>,
    /// What is redacted from what agents send — tool and prompt arguments, A2A messages,
    /// HTTP bodies — before it is decided and forwarded: the same kinds.
    pub redact_requests: Vec<warden_inspect::Kind>,
}

impl Default for InspectSettings {
    fn default() -> Self {
        let scanners = warden_inspect::Config::default();
        Self {
            enabled: true,
            injection: scanners.injection,
            classifier: scanners.classifier,
            classifier_min_score: scanners.classifier_min_score,
            secrets: scanners.secrets,
            sensitive: scanners.sensitive,
            redact: Vec::new(),
            redact_requests: Vec::new(),
        }
    }
}

impl InspectSettings {
    /// The scanners to run, or `None` when inspection is off.
    pub fn scanner(&self) -> anyhow::Result<Option<warden_inspect::Scanner>> {
        if !self.enabled {
            return Ok(None);
        }
        warden_inspect::Scanner::try_new(&warden_inspect::Config {
            injection: self.injection,
            classifier: self.classifier,
            classifier_min_score: self.classifier_min_score,
            secrets: self.secrets,
            sensitive: self.sensitive.clone(),
        })
        .map(Some)
        .map_err(|e| anyhow::anyhow!("gateway.inspect: {e}"))
    }
}

/// When an allowed action is forwarded relative to its audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A call is forwarded once its record is in the log file (a crash of the gateway loses no
    /// record of anything forwarded), and its answer reaches the agent once the record is on
    /// disk (fsync, group-committed: nothing an agent has seen can vanish in a power loss).
    #[default]
    Sync,
    /// A call is forwarded only once its record is on disk: one fsync before every upstream call.
    Strict,
    /// At once, the record following within milliseconds: a crash may lose the last records.
    Async,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AuditSettings {
    pub enabled: bool,
    /// The log directory (default `warden-audit`; under the data directory for `warden up` and
    /// `--role all`).
    pub dir: Option<PathBuf>,
    /// The checkpoint signing key (`PRIVATE+KEY+…`), created on first start with its public
    /// verifier key beside it (`<keyFile>.pub`); default `<dir>.key`.
    pub key_file: Option<PathBuf>,
    /// The checkpoints' origin line; default `<public URL host:port>/audit`.
    pub origin: Option<String>,
    pub durability: Durability,
    /// Record tool and prompt argument values as SHA-256 hashes instead of the values.
    pub redact_arguments: bool,
    /// How often a checkpoint is signed while records arrive, in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// Where OCSF events go; each sink reads the log from its own cursor.
    pub export: Vec<ExportSink>,
    /// Also write every record as a log line (`warden::decision`) on stderr. Off by default: the
    /// log holds them, and a synchronous stderr write per decision sits on the request path.
    pub log_decisions: bool,
}

/// An export destination for OCSF events.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ExportSink {
    /// JSON lines in a file, rotated by size.
    File(FileExport),
    /// An HTTP event collector (Splunk HEC shape).
    Http(HttpExport),
    /// Syslog (RFC 5424) over TCP, or TLS with `caFile`.
    Syslog(SyslogExport),
    /// A NATS JetStream stream.
    Nats(NatsExport),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsExport {
    pub name: String,
    /// `host:port` of a NATS server with JetStream.
    pub address: String,
    /// The stream, created for `subject` if missing.
    pub stream: String,
    pub subject: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyslogExport {
    pub name: String,
    /// `host:port` of the syslog server.
    pub address: String,
    /// The CA (PEM) the server's certificate must chain to; when given, the connection is TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileExport {
    /// Names the sink's cursor; keep it stable.
    pub name: String,
    pub path: PathBuf,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_max_bytes() -> u64 {
    100 << 20
}

fn default_keep() -> usize {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpExport {
    pub name: String,
    /// e.g. `https://splunk.example:8088/services/collector/event`.
    pub url: String,
    /// Environment variable holding the collector token (`Authorization: Splunk <token>`).
    #[serde(default)]
    pub token_env: Option<String>,
}

impl ExportSink {
    pub fn name(&self) -> &str {
        match self {
            Self::File(f) => &f.name,
            Self::Http(h) => &h.name,
            Self::Syslog(s) => &s.name,
            Self::Nats(n) => &n.name,
        }
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            key_file: None,
            origin: None,
            durability: Durability::Sync,
            redact_arguments: false,
            checkpoint_interval_ms: 1000,
            export: Vec::new(),
            log_decisions: false,
        }
    }
}

impl AuditSettings {
    pub fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("warden-audit"))
    }

    pub fn key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.dir().with_extension("key"))
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            public_url: None,
            policies: PathBuf::from("policies"),
            control_url: "http://127.0.0.1:8181".into(),
            control_token_file: None,
            approval_hold_secs: 0,
            tls_cert_file: None,
            tls_key_file: None,
            upstreams: Vec::new(),
            limits: Limits::default(),
            trust_refresh_secs: 60,
            audit: AuditSettings::default(),
            inspect: InspectSettings::default(),
            metrics: MetricsSettings::default(),
            detect: DetectSettings::default(),
            sandbox: None,
        }
    }
}

impl GatewayConfig {
    pub fn public_url(&self, bound: SocketAddr) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("https://{bound}"))
            .trim_end_matches('/')
            .to_owned()
    }
}

/// What an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// An MCP server over streamable HTTP; agents use `/mcp/<name>`.
    Mcp,
    /// An MCP server over the older HTTP+SSE transport (protocol 2024-11-05), `url` being its
    /// event stream; agents open `/mcp/<name>/sse` and post to the endpoint it announces.
    #[serde(rename = "mcp-sse")]
    McpSse,
    /// A plain HTTP API; agents use `/http/<name>/<path>`.
    Http,
    /// An A2A agent (JSON-RPC binding); agents use `/a2a/<name>` and read its card at
    /// `/a2a/<name>/.well-known/agent-card.json`.
    A2a,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamConfig {
    pub name: Name,
    pub kind: UpstreamKind,
    /// Base URL; for MCP, the server's endpoint (e.g. `http://127.0.0.1:9000/mcp`); for A2A,
    /// the agent's JSON-RPC endpoint (the gateway calls it there, whatever its card says).
    pub url: String,
    /// A2A only: where the agent's card is; defaults to `/.well-known/agent-card.json` at the
    /// origin of `url`.
    #[serde(default)]
    pub card_url: Option<String>,
    /// The upstream's own credential, injected by the gateway; agents' credentials are never
    /// passed through.
    #[serde(default)]
    pub credential: Option<InjectedCredential>,
    /// HTTP only: read each response whole (up to 16 MiB), inspect it and decide again, as a
    /// tool's result is (redaction applies). Off by default: it holds responses back.
    #[serde(default)]
    pub inspect_responses: bool,
}

impl UpstreamConfig {
    pub fn card_url(&self) -> String {
        self.card_url.clone().unwrap_or_else(|| {
            let uri: http::Uri = self.url.parse().unwrap_or_default();
            match (uri.scheme_str(), uri.authority()) {
                (Some(scheme), Some(authority)) => {
                    format!("{scheme}://{authority}/.well-known/agent-card.json")
                }
                _ => format!("{}/.well-known/agent-card.json", self.url),
            }
        })
    }
}

/// Its `Debug` leaves a literal `value` out.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InjectedCredential {
    /// Header to set; `authorization` when absent.
    #[serde(default = "authorization")]
    pub header: String,
    /// Environment variable holding the value (preferred: keeps secrets out of files).
    #[serde(default)]
    pub value_env: Option<String>,
    /// Or the value itself.
    #[serde(default)]
    pub value: Option<String>,
    /// Or an OAuth 2.0 client-credentials grant the gateway runs itself, sending
    /// `Bearer <access token>` and fetching a new token before the old one expires.
    #[serde(default)]
    pub oauth: Option<OAuthClient>,
}

impl std::fmt::Debug for InjectedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InjectedCredential")
            .field("header", &self.header)
            .field("value_env", &self.value_env)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("oauth", &self.oauth)
            .finish()
    }
}

fn authorization() -> String {
    "authorization".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OAuthClient {
    /// The token endpoint (HTTPS; plain HTTP only on loopback).
    pub token_url: String,
    pub client_id: String,
    /// Environment variable holding the client secret.
    pub client_secret_env: String,
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    /// Per request, to the upstream's first byte.
    pub upstream_timeout_secs: u64,
    /// For a client to finish sending headers (slow clients are cut off).
    pub header_timeout_secs: u64,
    /// Requests in flight at once; more get 503.
    pub max_concurrent_requests: usize,
    /// MCP sessions tracked (session → agent binding).
    pub max_sessions: usize,
    /// A2A tasks tracked (task → agent binding); an agent reaches only tasks it created.
    pub max_tasks: usize,
    /// On SIGINT or SIGTERM, how long requests in flight (open streams among them) may take to
    /// finish before their connections are closed.
    pub drain_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            upstream_timeout_secs: 60,
            header_timeout_secs: 10,
            max_concurrent_requests: 1024,
            max_sessions: 100_000,
            max_tasks: 100_000,
            drain_secs: 10,
        }
    }
}

impl Limits {
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_timeout_secs)
    }
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_an_injected_credential() {
        let credential = InjectedCredential {
            header: "authorization".into(),
            value_env: None,
            value: Some("Bearer SECRET".into()),
            oauth: None,
        };
        let printed = format!("{credential:?}");
        assert!(!printed.contains("SECRET"), "{printed}");
    }
}
