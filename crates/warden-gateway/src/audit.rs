//! The record stage backed by the tamper-evident audit log: every decision becomes a record in
//! the Merkle log (and a structured log line); an allowed action waits for its record to be
//! durable unless the configuration trades that away.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use aws_lc_rs::digest;
use serde_json::Value;
use warden_audit::{AuditLog, LogConfig, NoteSigner};

use crate::config::{AuditSettings, Durability};
use crate::pipeline::{DecisionEvent, LogRecorder, Recorded, Recorder};

pub struct AuditRecorder {
    log: AuditLog,
    durability: Durability,
    redact_arguments: bool,
}

impl AuditRecorder {
    /// Opens (or creates) the log and its signing key.
    pub fn open(settings: &AuditSettings, default_origin: &str) -> anyhow::Result<Self> {
        let dir = settings.dir();
        let signer = load_or_create_key(&settings.key_file(), default_origin)?;
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
        Ok(Self {
            log,
            durability: settings.durability,
            redact_arguments: settings.redact_arguments,
        })
    }

    pub fn log(&self) -> &AuditLog {
        &self.log
    }
}

/// Reads the signing key, or makes one (owner-readable only) with its public key beside it.
fn load_or_create_key(path: &Path, name: &str) -> anyhow::Result<NoteSigner> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the audit key {}", path.display()))?;
        return NoteSigner::from_private_key(&text)
            .with_context(|| format!("the audit key {} is unusable", path.display()));
    }
    let (signer, private) = warden_audit::generate_private_key(name)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create the audit key {}", path.display()))?
    };
    file.write_all(private.as_bytes())?;
    file.sync_all()?;
    let public = path.with_extension("pub");
    std::fs::write(&public, format!("{}\n", signer.verifier_key()))
        .with_context(|| format!("cannot write {}", public.display()))?;
    Ok(signer)
}

fn hashed(value: &Value) -> Value {
    let digest = digest::digest(&digest::SHA256, value.to_string().as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Value::String(format!("sha256:{hex}"))
}

impl Recorder for AuditRecorder {
    fn record(&self, event: &DecisionEvent) -> Recorded {
        LogRecorder.record(event);
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
            Err(e) => {
                let why = format!("unrecordable decision: {e}");
                return Recorded::Pending(Box::pin(async move { Err(why) }));
            }
        };
        let appended = self.log.append(bytes);
        match self.durability {
            Durability::Async => Recorded::Kept,
            Durability::Sync => Recorded::Pending(Box::pin(async move {
                match appended.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the audit log stopped".into()),
                }
            })),
        }
    }
}
