//! Ownership of server-issued ids (MCP sessions, A2A tasks) by the agent that created them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use warden_model::SpiffeId;

/// Which agent opened each MCP session or A2A task; another agent presenting the id is treated as
/// unknown. Bounded in all and per agent: an agent over its share loses its own oldest binding,
/// so one agent opening sessions by the thousand cannot evict everyone else's; when the table is
/// full the oldest binding goes.
pub struct Owners {
    capacity: usize,
    per_agent: usize,
    inner: Mutex<Bindings>,
}

/// The longest id bound; a longer one (from a hostile upstream) is not kept, so it is unknown.
const MAX_ID_BYTES: usize = 1024;

#[derive(Default)]
struct Bindings {
    /// Id → its agent and the sequence number it was bound with.
    owners: HashMap<String, (SpiffeId, u64)>,
    /// Ids per agent, oldest first.
    by_agent: HashMap<SpiffeId, VecDeque<String>>,
    /// Every binding in order (entries of ended bindings are skipped when they come up).
    order: VecDeque<(String, u64)>,
    next: u64,
}

impl Bindings {
    fn remove(&mut self, id: &str) {
        if let Some((agent, _)) = self.owners.remove(id)
            && let Some(ids) = self.by_agent.get_mut(&agent)
        {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_agent.remove(&agent);
            }
        }
    }

    /// Drops entries of ended bindings once they outnumber the live ones.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.owners.len() + 64 {
            let owners = &self.owners;
            self.order
                .retain(|(id, seq)| owners.get(id).is_some_and(|(_, s)| s == seq));
        }
    }
}

impl Owners {
    /// At most `capacity` bindings, and a hundredth of that (at least 16) per agent.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            per_agent: (capacity / 100).max(16).min(capacity),
            inner: Mutex::default(),
        }
    }

    /// Binds `id` to `agent`, unless an agent holds it already: an id is never taken over.
    pub fn bind(&self, id: &str, agent: &SpiffeId) {
        if id.len() > MAX_ID_BYTES {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let bindings = &mut *guard;
        if bindings.owners.contains_key(id) {
            return;
        }
        let held = bindings.by_agent.get(agent).map_or(0, VecDeque::len);
        if held >= self.per_agent
            && let Some(oldest) = bindings
                .by_agent
                .get(agent)
                .and_then(|ids| ids.front())
                .cloned()
        {
            bindings.remove(&oldest);
        }
        while bindings.owners.len() >= self.capacity {
            let Some((oldest, seq)) = bindings.order.pop_front() else {
                break;
            };
            if bindings.owners.get(&oldest).is_some_and(|(_, s)| *s == seq) {
                bindings.remove(&oldest);
            }
        }
        let seq = bindings.next;
        bindings.next += 1;
        bindings.owners.insert(id.to_owned(), (agent.clone(), seq));
        bindings
            .by_agent
            .entry(agent.clone())
            .or_default()
            .push_back(id.to_owned());
        bindings.order.push_back((id.to_owned(), seq));
        bindings.compact();
    }

    /// Whether `agent` holds `id`.
    pub fn owned_by(&self, id: &str, agent: &SpiffeId) -> bool {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .owners
            .get(id)
            .is_some_and(|(owner, _)| owner == agent)
    }

    /// Ends every binding whose agent `gone` says is gone.
    pub fn forget(&self, gone: impl Fn(&SpiffeId) -> bool) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let bindings = &mut *guard;
        bindings.owners.retain(|_, (agent, _)| !gone(agent));
        bindings.by_agent.retain(|agent, _| !gone(agent));
        bindings.compact();
    }

    pub fn end(&self, id: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.remove(id);
        guard.compact();
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

    /// One agent opening sessions by the thousand loses its own oldest ones; everyone else's
    /// stay.
    #[test]
    fn one_agents_flood_of_sessions_leaves_the_others_bound() {
        let sessions = Owners::new(10_000);
        let agents: Vec<SpiffeId> = (0..20)
            .map(|i| SpiffeId::new(format!("spiffe://td/tenant/t/agent/a/{i}")).unwrap())
            .collect();
        for (i, agent) in agents.iter().enumerate() {
            sessions.bind(&format!("mine-{i}"), agent);
        }
        let flooder = SpiffeId::new("spiffe://td/tenant/t/agent/flood/1").unwrap();
        for i in 0..50_000 {
            sessions.bind(&format!("flood-{i}"), &flooder);
        }
        for (i, agent) in agents.iter().enumerate() {
            assert!(sessions.owned_by(&format!("mine-{i}"), agent), "{agent}");
        }
        assert!(sessions.owned_by("flood-49999", &flooder));
        assert!(!sessions.owned_by("flood-0", &flooder));
        let held = sessions.inner.lock().unwrap().owners.len();
        assert_eq!(held, 20 + 100);
        sessions.bind(&"x".repeat(2_000), &flooder);
        assert!(!sessions.owned_by(&"x".repeat(2_000), &flooder));
    }
}
