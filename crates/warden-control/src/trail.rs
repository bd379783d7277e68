//! The control plane's own tamper-evident audit log: every quarantine, release, freeze, approval
//! step and published event, each durable before the API acknowledges it. The same format as
//! the gateways' decision logs, so `warden audit verify --log <data>/control-audit` checks it.

use std::time::Duration;

use serde_json::Value;
use warden_audit::{AuditLog, LogConfig, NoteSigner};

use crate::control::ControlError;

pub struct AuditTrail {
    log: AuditLog,
    /// The same key, for signing events as C2SP notes that gateways check.
    signer: NoteSigner,
}

impl AuditTrail {
    /// Opens `<data>/control-audit`, signing checkpoints with `<data>/control-audit.key`
    /// (created on first start, its public key beside it as `control-audit.pub`).
    pub fn open(data_dir: &std::path::Path, trust_domain: &str) -> anyhow::Result<Self> {
        let origin = format!("{trust_domain}/control");
        let key = data_dir.join("control-audit.key");
        let signer = warden_audit::load_or_create_signer(&key, &origin)?;
        let log = AuditLog::open(
            LogConfig {
                dir: data_dir.join("control-audit"),
                origin: origin.clone(),
                checkpoint_interval: Duration::from_secs(1),
            },
            warden_audit::load_or_create_signer(&key, &origin)?,
        )?;
        Ok(Self { log, signer })
    }

    /// Appends `record` (with the time added) and waits until it is durable. Call off the async
    /// workers: it blocks on the fsync.
    pub fn record(&self, mut record: Value) -> Result<u64, ControlError> {
        if let Value::Object(fields) = &mut record {
            fields.insert(
                "time".into(),
                time::OffsetDateTime::now_utc().unix_timestamp().into(),
            );
        }
        let bytes =
            serde_json::to_vec(&record).map_err(|e| ControlError::Internal(e.to_string()))?;
        self.log
            .append(bytes)
            .blocking_recv()
            .map_err(|_| ControlError::Internal("the control audit log stopped".into()))?
            .map_err(|e| ControlError::Internal(format!("the control audit log failed: {e}")))
    }

    /// The public key that verifies the trail's checkpoints and signed events.
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    /// `text` as a signed note.
    pub fn sign(&self, text: &str) -> String {
        self.signer.sign(text)
    }

    pub fn close(&self) {
        self.log.close();
    }
}
