//! The demo that `warden up` starts: an MCP server (built with the official Rust SDK, `rmcp`)
//! whose tools the demo policy allows in part, a small HTTP API beside it, and that policy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_router};
use serde::Deserialize;

/// The demo agent's tenant and name.
pub const TENANT: &str = "demo";
pub const AGENT: &str = "assistant";
/// The upstream's name at the gateway (`/mcp/demo`).
pub const SERVER: &str = "demo";
/// The HTTP API's name at the gateway (`/http/demo-api/…`).
pub const API: &str = "demo-api";

const POLICY: &str = r#"# The demo agent may echo and add, and delete records only in the scratch table; nothing it
# sends may carry a secret (inspection finds it, the deny rule refuses the call).
apiVersion: warden.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: assistant
  namespace: demo
spec:
  selector:
    matchLabels:
      app: assistant
  mcp:
    - server: demo
      tools: [echo, add]
    - server: demo
      tools: [delete_records]
      when: context.args.table == "scratch"
  http:
    - service: demo-api
      methods: [GET]
      paths: [/status]
  deny:
    - mcp:
        server: demo
        tools: ["*"]
        when: context.findings.secret_count > 0
"#;

const CATALOG: &str = r#"# The demo server's tools, as its tools/list describes them.
apiVersion: warden.dev/v1alpha1
kind: ToolCatalog
metadata:
  name: demo-tools
spec:
  servers:
    - name: demo
      tools:
        - name: echo
          inputSchema: {type: object, properties: {text: {type: string}}}
        - name: add
          inputSchema: {type: object, properties: {a: {type: integer}, b: {type: integer}}}
        - name: delete_records
          inputSchema: {type: object, properties: {table: {type: string}}}
        - name: read_secrets
          inputSchema: {type: object, properties: {}}
"#;

const DETECTION: &str = r#"# How Warden answers its detectors for the demo's agents: a scan or a toxic flow (injected
# content, then a sensitive call) quarantines the agent instance for 10 minutes; everything
# else is recorded as an alert. docs/detection.md lists the detectors.
apiVersion: warden.dev/v1alpha1
kind: DetectionPolicy
metadata:
  name: demo-responses
  namespace: demo
spec:
  selector:
    allAgents: true
  responses:
    - detectors: [scan.hosts, scan.ports, toxic-flow]
      response: quarantine
      for: 10m
    - detectors: ["*"]
      response: alert
"#;

/// Writes the demo policy bundle into `dir` unless it already holds files (the user's edits win).
pub fn write_policies(dir: &Path) -> anyhow::Result<()> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("assistant.yaml"), POLICY)?;
    std::fs::write(dir.join("catalog.yaml"), CATALOG)?;
    std::fs::write(dir.join("detection.yaml"), DETECTION)?;
    Ok(())
}

#[derive(Clone, Default)]
pub struct DemoServer;

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct EchoArgs {
    /// Text to send back.
    pub text: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct AddArgs {
    pub a: i64,
    pub b: i64,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct DeleteArgs {
    /// The table to empty.
    pub table: String,
}

#[derive(Deserialize, schemars::JsonSchema, Default)]
#[schemars(crate = "rmcp::schemars")]
pub struct NoArgs {}

#[tool_router(server_handler)]
impl DemoServer {
    #[tool(description = "Echo the text back")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Add two integers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        a.saturating_add(b).to_string()
    }

    #[tool(description = "Delete every record of a table (the demo deletes nothing)")]
    fn delete_records(&self, Parameters(DeleteArgs { table }): Parameters<DeleteArgs>) -> String {
        format!("deleted all records of {table} (not really: this is the demo)")
    }

    #[tool(description = "Read the secrets store (no policy allows this)")]
    fn read_secrets(&self, Parameters(_): Parameters<NoArgs>) -> String {
        "you should never see this".into()
    }
}

/// Serves the demo MCP server (streamable HTTP at `/mcp`) and the demo API (`/api/status`,
/// `/api/records`) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let address = listener.local_addr()?;
    let service = StreamableHttpService::new(
        || Ok(DemoServer),
        Arc::new(LocalSessionManager::default()),
        // Stateless, answering with plain JSON: easy to read in a terminal.
        StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true),
    );
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .route(
            "/api/status",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/api/records",
            axum::routing::delete(|| async { axum::Json(serde_json::json!({"deleted": "all"})) }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("demo MCP server stopped: {e}");
        }
    });
    Ok(address)
}
