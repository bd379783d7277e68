//! Warden's gateway: the data plane every agent call goes through. It identifies the caller
//! (mTLS SVID and task grant), classifies the request into an action (MCP, A2A, HTTP, egress),
//! inspects it, decides (policy AND grant), records the decision, forwards to the upstream with
//! the upstream's own credential, and publishes the decision as an event.
//!
//! Every agent request goes through one stack (`stack::serve`): identify, read the body, the
//! protocol adapter (`mcp_proxy`, `a2a_proxy`, `http_proxy`, `egress`) classifies, the
//! `pipeline` inspects, decides and records, the adapter forwards and relays the answer.

mod a2a;
mod a2a_proxy;
mod audit;
mod body;
mod config;
mod credential;
mod desk;
mod detect;
mod dns;
mod egress;
mod gate;
mod http_proxy;
mod identify;
mod inspect;
mod json;
mod jsonrpc;
mod legacy;
mod mcp;
mod mcp_proxy;
mod metrics;
mod owners;
mod pins;
mod pipeline;
mod plumbing;
mod reviewed;
mod sandbox;
mod server;
mod sse;
mod stack;
mod stdio;
mod stops;
mod sync;
#[cfg(test)]
mod testing;
mod transparent;
mod undo;
mod usage;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, oneshot};
use warden_http::HttpClient;
use warden_policy::{Engine, LoadLimits};

pub use a2a::{
    DENIED as A2A_DENIED, NEEDS_APPROVAL as A2A_NEEDS_APPROVAL,
    TASK_NOT_FOUND as A2A_TASK_NOT_FOUND,
};
pub use config::{
    AuditSettings, Durability, ExportSink, FileExport, GatewayConfig, HttpExport,
    InjectedCredential, InspectSettings, Limits, MetricsSettings, NatsExport, OAuthClient,
    SandboxSettings, SyslogExport, UpstreamConfig, UpstreamKind,
};
pub use identify::{Caller, Identifier, Unidentified};
pub use mcp::{DENIED, NEEDS_APPROVAL};
pub use metrics::Metrics;
pub use pipeline::{
    DecisionEvent, Inspector, LogRecorder, PassThrough, Pipeline, Recorded, Recorder, Verdict,
};
pub use stdio::{StdioConfig, run as run_stdio};

/// The gateway's own TLS identity: an SVID from the authority, or a certificate from files.
pub struct TlsIdentity {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

/// The certificate the listener presents, replaceable while it runs (renewal).
#[derive(Debug)]
struct RotatingCertificate(arc_swap::ArcSwap<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for RotatingCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn certified_key(identity: &TlsIdentity) -> anyhow::Result<rustls::sign::CertifiedKey> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(identity.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the gateway certificate is not PEM")?;
    let key = PrivateKeyDer::from_pem_slice(identity.private_key_pem.as_bytes())
        .context("the gateway key is not PEM")?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .context("the gateway certificate and key do not match")
}

/// A running gateway.
pub struct RunningGateway {
    pub address: SocketAddr,
    pub public_url: String,
    certificate: Arc<RotatingCertificate>,
    state: Arc<plumbing::State>,
    audit: Option<Arc<audit::AuditRecorder>>,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
    _sync: tokio::task::JoinHandle<()>,
    /// Following quarantines and events; they hold the state, so they stop with the gateway.
    follow_stops: tokio::task::JoinHandle<()>,
    follow_events: Option<tokio::task::JoinHandle<()>>,
    /// The detectors, reading the decision stream.
    detectors: Option<tokio::task::JoinHandle<()>>,
    /// Records policies whose mode a reload changed.
    record_modes: tokio::task::JoinHandle<()>,
    metrics_served: Option<tokio::task::JoinHandle<()>>,
    /// `warden run`'s socket and the transparent listener, when confinement is on.
    sandbox: Option<sandbox::Running>,
    _watch: Option<warden_policy::WatchGuard>,
}

impl RunningGateway {
    /// Every decision as it is made.
    pub fn decisions(&self) -> broadcast::Receiver<DecisionEvent> {
        self.state.pipeline.subscribe()
    }

    /// Presents a new certificate from the next handshake on (renewal before expiry).
    pub fn set_identity(&self, identity: &TlsIdentity) -> anyhow::Result<()> {
        self.certificate.0.store(Arc::new(certified_key(identity)?));
        Ok(())
    }

    /// The audit log decisions are recorded in, when enabled.
    pub fn audit_log(&self) -> Option<&warden_audit::AuditLog> {
        self.audit.as_ref().map(|a| a.log())
    }

    /// Stops accepting, drains in-flight requests (up to 30 seconds), closes the audit log with
    /// a last checkpoint, and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.served).await;
        self.follow_stops.abort();
        self.record_modes.abort();
        for task in [&self.follow_events, &self.detectors].into_iter().flatten() {
            task.abort();
        }
        if let Some(metrics) = &self.metrics_served {
            metrics.abort();
        }
        drop(self.sandbox.take());
        if let Some(audit) = &self.audit {
            let log = audit.log().clone();
            let _ = tokio::task::spawn_blocking(move || log.close()).await;
        }
    }
}

/// Starts a gateway on `listener`: fetches the trust bundle, grant keys and revocations from
/// the control plane (and keeps them current), loads and watches the policy bundle.
pub async fn start(
    config: GatewayConfig,
    tls: TlsIdentity,
    listener: TcpListener,
) -> anyhow::Result<RunningGateway> {
    // One crypto provider for the process; a second call finds it installed.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let address = listener.local_addr()?;
    let public_url = config.public_url(address);
    // Trust roots and grant keys come from the control plane: never over a path anyone between
    // could rewrite.
    warden_http::secure_url(&config.control_url)
        .map_err(|e| anyhow::anyhow!("gateway.controlUrl {e}"))?;
    let client = HttpClient::new(config.limits.upstream_timeout())?;
    // Compiling the inspection rules takes a while; it overlaps the fetches and policy load.
    let scanner = {
        let settings = config.inspect.clone();
        tokio::task::spawn_blocking(move || settings.scanner())
    };
    let trust = sync::Trust::fetch(&client, &config.control_url)
        .await
        .with_context(|| {
            format!(
                "cannot reach the control plane at {} for the trust bundle",
                config.control_url
            )
        })?;
    // Quarantines and the kill switch are in force before the first request.
    let stops = Arc::new(stops::Stops::default());
    stops.apply(
        stops::fetch(&client, &config.control_url, 0, 0)
            .await
            .context("cannot read quarantines from the control plane")?,
    );
    let desk = match &config.control_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the control token {}", path.display()))?;
            let event_key = trust.bundle["eventKey"]
                .as_str()
                .context("the control plane's bundle has no eventKey")?;
            Some(Arc::new(desk::Desk::new(
                client.clone(),
                &config.control_url,
                &token,
                std::time::Duration::from_secs(config.approval_hold_secs),
                warden_audit::NoteVerifier::parse(event_key)
                    .context("the control plane's eventKey is unusable")?,
            )))
        }
        None => {
            tracing::warn!(
                "no gateway.controlTokenFile: calls that need approval or an event are refused"
            );
            None
        }
    };
    let policy = load_policies(&config.policies)?;
    let metrics = Arc::new(Metrics::default());
    let reloads = Arc::clone(&metrics);
    // A policy flipped between enforced and staged is recorded: nobody turns enforcement off
    // silently. The reload happens off the pipeline, so the changes queue for it.
    let (mode_changes, mut changed_modes) = tokio::sync::mpsc::unbounded_channel();
    let known_modes = std::sync::Mutex::new(policy.current().modes().clone());
    let engine = Arc::clone(&policy);
    let watch = match policy.watch(move |outcome| {
        reloads.policy_reload(outcome.is_ok());
        match outcome {
            Ok(outcome) => {
                tracing::info!("policy bundle reload: {outcome:?}");
                let bundle = engine.current();
                let mut known = known_modes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for change in pipeline::mode_changes(&known, bundle.modes(), bundle.hash()) {
                    let _ = mode_changes.send(change);
                }
                known.clone_from(bundle.modes());
            }
            Err(e) => {
                tracing::error!("policy bundle reload failed; keeping the last good one:\n{e}")
            }
        }
    }) {
        Ok(watch) => Some(watch),
        Err(e) => {
            tracing::error!(
                "cannot watch {} for policy edits ({e}); the bundle loaded now stays until restart",
                config.policies.display()
            );
            None
        }
    };
    metrics.policy_watched(watch.is_some());
    let upstreams = config
        .upstreams
        .iter()
        .map(resolve_upstream)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let certificate = Arc::new(RotatingCertificate(arc_swap::ArcSwap::from_pointee(
        certified_key(&tls)?,
    )));
    let tls_config = Arc::new(arc_swap::ArcSwap::from_pointee(server_tls(
        Arc::clone(&certificate),
        &trust.roots_der,
    )?));
    let audit = if config.audit.enabled {
        let origin = format!(
            "{}/audit",
            public_url
                .split_once("://")
                .map_or(public_url.as_str(), |(_, rest)| rest)
        );
        Some(Arc::new(audit::AuditRecorder::open(
            &config.audit,
            &origin,
        )?))
    } else {
        None
    };
    let recorder: Arc<dyn Recorder> = match &audit {
        Some(audit) => Arc::clone(audit) as Arc<dyn Recorder>,
        None => Arc::new(LogRecorder),
    };
    let inspector: Arc<dyn pipeline::Inspector> = match scanner.await?? {
        Some(scanner) => Arc::new(inspect::ContentInspector::new(
            scanner,
            config.inspect.redact.clone(),
            config.inspect.redact_requests.clone(),
        )),
        None => Arc::new(PassThrough),
    };
    let pipeline = Pipeline::new(
        policy,
        inspector,
        recorder,
        Arc::clone(&metrics),
        public_url.clone(),
    )
    .with_oversight(Arc::clone(&stops), desk.clone());
    let metrics_token = match &config.metrics.token_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("gateway.metrics.tokenFile {}", file.display()))?
                .trim()
                .to_owned(),
        )
        .filter(|token| !token.is_empty()),
        None => None,
    };
    let metrics_served = match config.metrics.listen {
        Some(address) => Some(
            server::serve_metrics(Arc::clone(&metrics), address)
                .await
                .with_context(|| format!("gateway.metrics.listen {address}"))?,
        ),
        None => None,
    };
    let state = Arc::new(plumbing::State {
        metrics_token,
        identifier: Identifier::new(Arc::clone(&trust.grants), public_url.clone()),
        pipeline,
        upstreams,
        sessions: owners::Owners::new(config.limits.max_sessions),
        legacy_sessions: legacy::LegacySessions::default(),
        tasks: Arc::new(owners::Owners::new(config.limits.max_tasks)),
        public_url: public_url.clone(),
        client: client.clone(),
        metrics,
        permits: Semaphore::new(config.limits.max_concurrent_requests),
        config,
    });
    // A CA rotation brings new roots: client certificates signed by them verify from then on.
    let on_roots: sync::OnRoots = {
        let (tls_config, certificate) = (Arc::clone(&tls_config), Arc::clone(&certificate));
        Box::new(
            move |roots: &[Vec<u8>]| match server_tls(Arc::clone(&certificate), roots) {
                Ok(config) => tls_config.store(Arc::new(config)),
                Err(e) => {
                    tracing::error!("new trust bundle roots unusable; keeping the old: {e:#}")
                }
            },
        )
    };
    let sync = tokio::spawn(sync::follow(
        client,
        state.config.control_url.clone(),
        Arc::clone(&trust.grants),
        trust.bundle.clone(),
        std::time::Duration::from_secs(state.config.trust_refresh_secs.max(1)),
        Some(on_roots),
    ));
    // Held agents lose their MCP sessions and A2A tasks here too.
    let follow_stops = {
        let state = Arc::clone(&state);
        tokio::spawn(stops::follow(
            state.client.clone(),
            state.config.control_url.clone(),
            Arc::clone(&stops),
            move |oversight| {
                let held = |agent: &warden_model::SpiffeId| {
                    oversight.frozen.is_some() || oversight.hold_on(agent.as_str(), []).is_some()
                };
                state.sessions.forget(held);
                state.tasks.forget(held);
            },
        ))
    };
    let detectors = state.config.detect.enabled.then(|| {
        if state.config.detect.quarantine && desk.is_none() {
            tracing::warn!(
                "no gateway.controlTokenFile: detections are recorded but cannot quarantine"
            );
        }
        tokio::spawn(detect::watch(
            Arc::clone(&state),
            state.config.detect.clone(),
            desk.clone(),
        ))
    });
    let follow_events = desk.map(|desk| tokio::spawn(desk.follow_events()));
    let record_modes = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            while let Some(change) = changed_modes.recv().await {
                state.pipeline.record_mode_change(&change);
            }
        })
    };
    let sandbox = match &state.config.sandbox {
        Some(settings) => Some(sandbox::start(&state, settings).await?),
        None => None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server::serve(
        Arc::clone(&state),
        listener,
        tls_config,
        async {
            let _ = stopped.await;
        },
    ));
    Ok(RunningGateway {
        address,
        public_url,
        certificate,
        state,
        audit,
        stop: Some(stop),
        served,
        _sync: sync,
        follow_stops,
        follow_events,
        detectors,
        record_modes,
        metrics_served,
        sandbox,
        _watch: watch,
    })
}

/// Loads the policy bundle, saying where it failed.
pub(crate) fn load_policies(dir: &std::path::Path) -> anyhow::Result<Arc<Engine>> {
    Engine::load(dir, LoadLimits::default())
        .map(Arc::new)
        .map_err(|e| anyhow::anyhow!("the policy bundle {} does not load:\n{e}", dir.display()))
}

fn resolve_upstream(config: &UpstreamConfig) -> anyhow::Result<plumbing::Upstream> {
    let check = |field: &str, url: &str| -> anyhow::Result<()> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("upstream {}: invalid {field} {url}", config.name))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            bail!(
                "upstream {}: {field} must be an absolute http or https URL",
                config.name
            );
        }
        Ok(())
    };
    check("url", &config.url)?;
    if let Some(card_url) = &config.card_url {
        if config.kind != UpstreamKind::A2a {
            bail!("upstream {}: cardUrl is for kind a2a only", config.name);
        }
        check("cardUrl", card_url)?;
    }
    let credential = config
        .credential
        .as_ref()
        .map(|c| credential::UpstreamCredential::from_config(c, config.name.as_str()))
        .transpose()?;
    Ok(plumbing::Upstream {
        config: config.clone(),
        credential,
    })
}

/// TLS for agents: the gateway's certificate; client certificates optional, and verified
/// against the trust bundle when presented.
fn server_tls(
    certificate: Arc<RotatingCertificate>,
    roots_der: &[Vec<u8>],
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in roots_der {
        roots
            .add(CertificateDer::from(der.clone()))
            .context("a trust bundle root is not a usable certificate")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()
    .context("cannot build the client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
