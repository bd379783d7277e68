//! The clients of MCP's older HTTP+SSE transport the gateway serves: each one's stream, where its
//! messages go upstream, and which of its requests await answers on the stream. Kept in the
//! gateway's state, served by the MCP adapter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use warden_model::SpiffeId;

use crate::identify::Caller;
use crate::mcp;

/// One client of the HTTP+SSE transport: its stream, and where its messages go upstream.
pub struct LegacySession {
    pub(crate) agent: SpiffeId,
    pub(crate) caller: Caller,
    /// Where the upstream said to post messages, once its `endpoint` event has arrived.
    pub(crate) upstream_endpoint: Mutex<Option<String>>,
    /// Events for the client's stream from the gateway itself (refusals).
    pub(crate) inject: mpsc::Sender<Bytes>,
    /// Requests in flight whose answers, arriving on the stream, are checked.
    pub(crate) awaiting: Mutex<mcp::Awaiting>,
}

/// Open HTTP+SSE sessions, by the id the gateway gave the client.
#[derive(Default)]
pub struct LegacySessions(Mutex<HashMap<String, Arc<LegacySession>>>);

impl LegacySessions {
    pub(crate) fn get(&self, id: &str) -> Option<Arc<LegacySession>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
    pub(crate) fn insert(&self, id: String, session: Arc<LegacySession>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, session);
    }
    pub(crate) fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
