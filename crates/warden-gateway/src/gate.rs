//! What an agent's answer waits for: a stage of keeping a record, and the gate each request's
//! answer passes only once its records are on disk.

use std::sync::Arc;

/// A stage of keeping a record: resolves once it is reached, or with why it cannot be.
pub type Keeping = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// What an agent's answer waits for: the records of the calls it made to be on disk, so nothing
/// an agent has seen can vanish in a power loss. Each request has one (in its `Caller`).
#[derive(Clone, Default)]
pub struct AnswerGate(Arc<std::sync::Mutex<Vec<Keeping>>>);

impl std::fmt::Debug for AnswerGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerGate")
    }
}

impl AnswerGate {
    pub(crate) fn hold(&self, until: Keeping) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(until);
    }

    /// Resolves once every record the answer waits for is on disk, or with why one is not.
    pub async fn opened(&self) -> Result<(), String> {
        let waiting = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for keeping in waiting {
            keeping.await?;
        }
        Ok(())
    }
}
