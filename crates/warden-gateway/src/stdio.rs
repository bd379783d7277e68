//! A local stdio MCP server behind the same pipeline: `warden mcp-stdio` sits between an MCP
//! client and the server process it starts, reading newline-delimited JSON-RPC from both sides.
//! Requests are classified and decided as at the gateway; refused ones never reach the server;
//! listings coming back are filtered.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{Mutex, mpsc};
use warden_authority::Presenter;
use warden_http::HttpClient;
use warden_model::{AgentIdentity, Name};

use crate::identify::Caller;
use crate::jsonrpc;
use crate::mcp::{self, Awaited, Awaiting};
use crate::mcp_proxy::{Screened, screen};
use crate::metrics::Metrics;
use crate::pipeline::{LogRecorder, PassThrough, Pipeline, Said};
use crate::reviewed::relay_awaited;

/// Longest JSON-RPC line accepted from either side.
const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

pub struct StdioConfig {
    /// The control plane, for grant keys and revocations.
    pub control_url: String,
    /// The policy bundle.
    pub policies: PathBuf,
    /// The server's name in policies (`server:` of `mcp` rules).
    pub server: Name,
    /// A credentials directory from `warden agent credential --out`: `grant`, `svid.pem`.
    pub credentials: PathBuf,
    /// The server command and its arguments.
    pub command: Vec<String>,
    /// Content inspection: of requests, and of results coming back (reviewed, redacted).
    pub inspect: crate::InspectSettings,
}

/// Requests whose answers are awaited to be checked, at most.
const MAX_AWAITED: usize = 1024;

/// Reads one line of at most `MAX_LINE_BYTES`; `None` at end of input.
async fn read_line(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> anyhow::Result<Option<String>> {
    let mut line = Vec::new();
    let read = reader
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE_BYTES {
        bail!("a JSON-RPC message longer than {MAX_LINE_BYTES} bytes");
    }
    Ok(Some(String::from_utf8_lossy(&line).trim_end().to_owned()))
}

/// Runs the server behind the pipeline until the client closes its input; returns the server's
/// exit code.
pub async fn run(config: StdioConfig) -> anyhow::Result<i32> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    warden_http::secure_url(&config.control_url)
        .map_err(|e| anyhow::anyhow!("--control-url {e}"))?;
    let client = HttpClient::new(Duration::from_secs(10))?;
    let trust = crate::sync::Trust::fetch(&client, &config.control_url)
        .await
        .with_context(|| format!("cannot reach the control plane at {}", config.control_url))?;
    tokio::spawn(crate::sync::follow(
        client,
        config.control_url.clone(),
        Arc::clone(&trust.grants),
        trust.bundle.clone(),
        Duration::from_secs(60),
        None,
    ));
    let read = |file: &str| {
        std::fs::read_to_string(config.credentials.join(file))
            .with_context(|| format!("cannot read {}", config.credentials.join(file).display()))
    };
    let token = read("grant")?.trim().to_owned();
    let svid_pem = read("svid.pem")?;
    let (_, block) = x509_parser::pem::parse_x509_pem(svid_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("svid.pem is not a PEM certificate: {e}"))?;
    let now = || time::OffsetDateTime::now_utc();
    let svid = {
        let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| anyhow::anyhow!("svid.pem: {e}"))?;
        let trust_domain = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(uri) => {
                        warden_model::SpiffeId::new(*uri).ok()
                    }
                    _ => None,
                })
            })
            .context("svid.pem holds no SPIFFE ID")?;
        warden_authority::verify_svid(
            &trust.roots_der,
            trust_domain.trust_domain(),
            &block.contents,
            now(),
        )?
    };
    let grant = trust.grants.verify(&token, now().unix_timestamp())?;
    grant.check_presenter(Presenter::Svid(&svid.spiffe_id))?;
    let header = grant.header();
    let caller = Caller {
        identity: AgentIdentity::new(
            svid.spiffe_id.clone(),
            header.labels.clone(),
            Some(header.task.clone()),
        )?,
        authority: crate::identify::Authority::Grant(Arc::clone(&grant)),
        source: None,
        process: None,
        answer_after: crate::gate::AnswerGate::default(),
    };
    let policy = crate::load_policies(&config.policies)?;
    let _watch = policy
        .watch(|outcome| {
            if let Err(e) = outcome {
                tracing::error!("policy bundle reload failed; keeping the last good one:\n{e}");
            }
        })
        .map_err(|e| {
            tracing::error!(
                "cannot watch {} for policy edits ({e}); the bundle loaded now stays until restart",
                config.policies.display()
            )
        })
        .ok();
    let inspector: Arc<dyn crate::pipeline::Inspector> = match config.inspect.scanner()? {
        Some(scanner) => Arc::new(crate::inspect::ContentInspector::new(
            scanner,
            config.inspect.redact.clone(),
            config.inspect.redact_requests.clone(),
        )),
        None => Arc::new(PassThrough),
    };
    let pipeline = Arc::new(Pipeline::new(
        policy,
        inspector,
        Arc::new(LogRecorder),
        Arc::new(Metrics::default()),
        format!("stdio:{}", config.server),
    ));

    let (program, args) = config
        .command
        .split_first()
        .context("no server command given")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let mut server_in = child.stdin.take().context("server stdin")?;
    let server_out = child.stdout.take().context("server stdout")?;

    // One writer for our stdout, fed by both directions.
    let (out, mut outgoing) = mpsc::channel::<String>(256);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = outgoing.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    let awaiting = Arc::new(Mutex::new(Awaiting::new(MAX_AWAITED)));

    // Server → client: answers matched to the requests awaiting them (listings filtered, results
    // reviewed), tools checked against their pins and for instructions, the rest passed.
    let from_server = {
        let (out, awaiting, pipeline, caller, server) = (
            out.clone(),
            Arc::clone(&awaiting),
            Arc::clone(&pipeline),
            caller.clone(),
            config.server.clone(),
        );
        tokio::spawn(async move {
            let mut reader = BufReader::new(server_out);
            while let Ok(Some(line)) = read_line(&mut reader).await {
                let mut hidden = HashSet::new();
                if line.contains("\"tools\"")
                    && let Ok(message) = crate::json::parse_strict(line.as_bytes())
                    && let Some(id) = message.get("id")
                    && awaiting.lock().await.awaits_tool_listing(id)
                {
                    hidden = pipeline.withhold_tools(&server, &[message]).await;
                }
                let forwarded = {
                    let mut awaiting = awaiting.lock().await;
                    relay_awaited(&pipeline, &caller, &server, &mut awaiting, &hidden, &line)
                };
                if out.send(forwarded).await.is_err() {
                    break;
                }
            }
        })
    };

    // Client → server: every message screened as at the gateway; forwarded or refused.
    let mut reader = BufReader::new(tokio::io::stdin());
    loop {
        let line = match read_line(&mut reader).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("client input refused: {e}");
                break;
            }
        };
        if line.is_empty() {
            continue;
        }
        let mut body = bytes::Bytes::from(line);
        let forward = if let Err(e) = trust.grants.verify(&token, now().unix_timestamp()) {
            // The grant may have expired or been revoked since the start.
            let invalid = jsonrpc::Invalid {
                code: mcp::DENIED,
                message: format!("the credential is refused: {e}"),
            };
            Err(jsonrpc::error(
                &jsonrpc::request_id(&body).unwrap_or(Value::Null),
                &invalid,
            ))
        } else {
            let awaited = match screen(
                &pipeline,
                &caller,
                &config.server,
                &mut body,
                &Said::default(),
            )
            .await
            {
                Screened::Refused { answer, .. } => Err(answer),
                Screened::Forward(Some((listing, id))) => Ok(Some((id, Awaited::Listing(listing)))),
                Screened::Inspect(action, id) => Ok(Some((id, Awaited::Result(action)))),
                Screened::Forward(None) => {
                    Ok(jsonrpc::request_id(&body).map(|id| (id, Awaited::Plain)))
                }
            };
            match awaited {
                Ok(Some((id, awaited))) => awaiting
                    .lock()
                    .await
                    .expect(&id, awaited)
                    .map_err(|invalid| jsonrpc::error(&id, &invalid)),
                Ok(None) => Ok(()),
                Err(answer) => Err(answer),
            }
        };
        match forward {
            Ok(()) => {
                if server_in.write_all(&body).await.is_err()
                    || server_in.write_all(b"\n").await.is_err()
                    || server_in.flush().await.is_err()
                {
                    break;
                }
            }
            Err(refusal) => {
                if out.send(refusal.to_string()).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(server_in);
    let status = child.wait().await?;
    let _ = from_server.await;
    drop(out);
    let _ = writer.await;
    Ok(status.code().unwrap_or(1))
}
