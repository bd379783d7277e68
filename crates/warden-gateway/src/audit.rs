//! The record stage backed by the tamper-evident audit log: every decision becomes a record in
//! the Merkle log (and a structured log line); an allowed action waits for its record to be
//! durable unless the configuration trades that away.

use anyhow::Context as _;
use serde_json::Value;
use warden_audit::{AuditLog, LogConfig};

use crate::config::{AuditSettings, Durability, ExportSink};
use crate::pipeline::{DecisionEvent, Recorded, Recorder, log_decision};

/// An audit stage already reached.
fn ready(answer: Result<u64, warden_audit::AuditError>) -> warden_audit::Appended {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = tx.send(answer);
    rx
}

pub struct AuditRecorder {
    log: AuditLog,
    durability: Durability,
    redact_arguments: bool,
    log_decisions: bool,
    /// The second a lost record was last logged.
    last_loss_logged: std::sync::atomic::AtomicI64,
    /// Running exports; they stop when the recorder goes.
    _exports: Vec<warden_audit::export::Exporter>,
}

impl AuditRecorder {
    /// Opens (or creates) the log and its signing key.
    pub fn open(settings: &AuditSettings, default_origin: &str) -> anyhow::Result<Self> {
        let dir = settings.dir();
        let signer = warden_audit::load_or_create_signer(&settings.key_file(), default_origin)?;
        let origin = settings
            .origin
            .clone()
            .unwrap_or_else(|| default_origin.to_owned());
        let log = AuditLog::open(
            LogConfig {
                dir: dir.clone(),
                origin,
                checkpoint_interval: std::time::Duration::from_millis(
                    settings.checkpoint_interval_ms.max(10),
                ),
            },
            signer,
        )
        .with_context(|| format!("cannot open the audit log in {}", dir.display()))?;
        let mut exports = Vec::new();
        for sink in &settings.export {
            let name = sink.name();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                anyhow::bail!("audit export `{name}`: names are letters, digits, `-` and `_`");
            }
            let target: Box<dyn warden_audit::export::Sink> = match sink {
                ExportSink::File(file) => Box::new(warden_audit::export::FileSink::new(
                    file.path.clone(),
                    file.max_bytes,
                    file.keep,
                )),
                ExportSink::Http(collector) => {
                    let token = match &collector.token_env {
                        Some(var) => Some(std::env::var(var).with_context(|| {
                            format!("audit export `{name}`: set {var} to the collector token")
                        })?),
                        None => None,
                    };
                    Box::new(
                        warden_audit::export::HttpSink::new(collector.url.clone(), token)
                            .map_err(|e| anyhow::anyhow!("audit export `{name}`: {e}"))?,
                    )
                }
                ExportSink::Nats(nats) => Box::new(
                    warden_audit::nats::NatsSink::new(
                        nats.address.clone(),
                        nats.stream.clone(),
                        nats.subject.clone(),
                    )
                    .map_err(|e| anyhow::anyhow!("audit export `{name}`: {e}"))?,
                ),
                ExportSink::Syslog(syslog) => {
                    let ca = match &syslog.ca_file {
                        Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
                            format!("audit export `{name}`: cannot read {}", path.display())
                        })?),
                        None => None,
                    };
                    Box::new(
                        warden_audit::export::SyslogSink::new(
                            syslog.address.clone(),
                            ca.as_deref(),
                        )
                        .map_err(|e| anyhow::anyhow!("audit export `{name}`: {e}"))?,
                    )
                }
            };
            exports.push(warden_audit::export::start(
                &dir,
                log.verifier().clone(),
                name,
                target,
            ));
        }
        Ok(Self {
            log,
            durability: settings.durability,
            redact_arguments: settings.redact_arguments,
            log_decisions: settings.log_decisions,
            last_loss_logged: std::sync::atomic::AtomicI64::new(0),
            _exports: exports,
        })
    }

    pub fn log(&self) -> &AuditLog {
        &self.log
    }
}

fn hashed(value: &Value) -> Value {
    Value::String(crate::desk::canonical_hash(value))
}

impl Recorder for AuditRecorder {
    fn record(&self, event: &DecisionEvent) -> Recorded {
        // Serialized once, for the log and the log line alike: redacted arguments stay
        // redacted in both.
        let bytes = if self.redact_arguments && event.arguments.is_some() {
            let mut redacted = event.clone();
            if let Some(arguments) = &mut redacted.arguments {
                for value in arguments.values_mut() {
                    *value = hashed(value);
                }
            }
            serde_json::to_vec(&redacted)
        } else {
            serde_json::to_vec(event)
        };
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(e) => return Recorded::failed(format!("unrecordable decision: {e}")),
        };
        if self.log_decisions && tracing::enabled!(target: "warden::decision", tracing::Level::INFO)
        {
            log_decision(&String::from_utf8_lossy(&bytes));
        }
        let warden_audit::Appending {
            mut written,
            durable,
        } = self.log.append_staged(bytes);
        // Refused at once (the writer is behind, or failed): an allowed call fails closed, and
        // the loss of a refusal's record is said, once a second at most.
        match written.try_recv() {
            Ok(Err(e)) => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                if self
                    .last_loss_logged
                    .swap(now, std::sync::atomic::Ordering::Relaxed)
                    != now
                {
                    tracing::error!("a decision was not recorded: {e}");
                }
                return Recorded::failed(e.to_string());
            }
            Ok(Ok(_)) => written = ready(Ok(0)),
            Err(_) => {}
        }
        let kept = |stage: warden_audit::Appended| -> crate::gate::Keeping {
            Box::pin(async move {
                match stage.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the audit log stopped".into()),
                }
            })
        };
        match self.durability {
            Durability::Async => Recorded::Kept,
            Durability::Sync => Recorded::Staged {
                before_forward: kept(written),
                before_answer: Some(kept(durable)),
            },
            Durability::Strict => Recorded::Staged {
                before_forward: kept(durable),
                before_answer: None,
            },
        }
    }
}
