//! Ownership of server-issued ids (MCP sessions, A2A tasks) by the agent that created them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use warden_model::SpiffeId;

/// Which agent opened each MCP session or A2A task; another agent presenting the id is treated as
/// unknown. Bounded: the oldest binding goes first.
pub struct Owners {
    capacity: usize,
    inner: Mutex<(HashMap<String, SpiffeId>, VecDeque<String>)>,
}

impl Owners {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// Binds `id` to `agent`, unless an agent holds it already: an id is never taken over.
    pub fn bind(&self, id: &str, agent: &SpiffeId) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (owners, order) = &mut *guard;
        if owners.contains_key(id) {
            return;
        }
        while owners.len() >= self.capacity {
            match order.pop_front() {
                Some(oldest) => {
                    owners.remove(&oldest);
                }
                None => break,
            }
        }
        owners.insert(id.to_owned(), agent.clone());
        order.push_back(id.to_owned());
    }

    /// Whether `agent` holds `id`.
    pub fn owned_by(&self, id: &str, agent: &SpiffeId) -> bool {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.get(id) == Some(agent)
    }

    /// Ends every binding whose agent `gone` says is gone.
    pub fn forget(&self, gone: impl Fn(&SpiffeId) -> bool) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (owners, order) = &mut *guard;
        owners.retain(|_, agent| !gone(agent));
        order.retain(|id| owners.contains_key(id));
    }

    pub fn end(&self, id: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.remove(id);
        guard.1.retain(|s| s != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bound_to_their_agent_and_bounded() {
        let a = SpiffeId::new("spiffe://td/tenant/t/agent/a/1").unwrap();
        let b = SpiffeId::new("spiffe://td/tenant/t/agent/b/1").unwrap();
        let sessions = Owners::new(2);
        sessions.bind("s1", &a);
        assert!(sessions.owned_by("s1", &a) && !sessions.owned_by("s1", &b));
        sessions.bind("s2", &b);
        sessions.bind("s3", &b);
        assert!(
            !sessions.owned_by("s1", &a),
            "the oldest session was evicted"
        );
        sessions.bind("s2", &a);
        assert!(
            sessions.owned_by("s2", &b),
            "a bound id is never taken over"
        );
        sessions.end("s3");
        assert!(!sessions.owned_by("s3", &b));
    }
}
