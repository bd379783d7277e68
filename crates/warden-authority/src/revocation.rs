//! Revocation: a versioned set of revoked grants, tasks, agents and Biscuit revocation ids that
//! gateways fetch, subscribe to, and consult on every verification.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use warden_model::{SpiffeId, TaskId};

use crate::grant::GrantError;

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Revocation {
    /// A grant by id, with every grant delegated from it.
    Grant(String),
    /// Every grant for a task.
    Task(TaskId),
    /// An agent — an instance (`…/agent/<name>/<instance>`) or every instance of a name
    /// (`…/agent/<name>`) — with all its sub-agents: their grants and their SVIDs.
    Agent(SpiffeId),
    /// A Biscuit block's revocation id (hex): the token holding that block and all tokens
    /// attenuated from it.
    RevocationId(String),
}

impl Revocation {
    /// Checks the value's form, so a typo is an error rather than a revocation that matches nothing.
    pub fn validate(&self) -> Result<(), GrantError> {
        let hex = |s: &str, what: &str, len: std::ops::RangeInclusive<usize>| {
            if len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(())
            } else {
                Err(GrantError::Invalid(format!(
                    "{what} must be hex ({} to {} digits), not `{s}`",
                    len.start(),
                    len.end()
                )))
            }
        };
        match self {
            Self::Grant(id) => hex(id, "a grant id", 32..=32),
            Self::RevocationId(id) => hex(id, "a revocation id", 2..=256),
            Self::Task(_) => Ok(()),
            Self::Agent(id) => {
                let segments: Vec<&str> = id.segments().collect();
                let shaped = segments.len() >= 4
                    && segments[0] == "tenant"
                    && segments[2] == "agent"
                    && matches!((segments.len() - 2) % 3, 0 | 2);
                if shaped {
                    Ok(())
                } else {
                    Err(GrantError::Invalid(format!(
                        "{id} names no agent; use spiffe://<td>/tenant/<t>/agent/<name>[/<instance>]"
                    )))
                }
            }
        }
    }
}

impl fmt::Display for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Grant(id) => write!(f, "grant {id}"),
            Self::Task(task) => write!(f, "task {task}"),
            Self::Agent(id) => write!(f, "agent {id}"),
            Self::RevocationId(id) => write!(f, "revocation id {id}"),
        }
    }
}

/// The revocations in force at one version. Versions only grow; a consumer holding version N
/// asks for changes since N.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    version: u64,
    grants: HashSet<String>,
    tasks: HashSet<String>,
    agents: HashSet<String>,
    revocation_ids: HashSet<String>,
}

impl RevocationSet {
    pub fn new(version: u64, entries: impl IntoIterator<Item = Revocation>) -> Self {
        let mut set = Self {
            version,
            ..Self::default()
        };
        for entry in entries {
            set.insert(entry);
        }
        set
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.grants.len() + self.tasks.len() + self.agents.len() + self.revocation_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an entry at a new version.
    pub fn apply(&mut self, version: u64, entry: Revocation) {
        self.version = self.version.max(version);
        self.insert(entry);
    }

    fn insert(&mut self, entry: Revocation) {
        match entry {
            Revocation::Grant(id) => self.grants.insert(id),
            Revocation::Task(task) => self.tasks.insert(task.to_string()),
            Revocation::Agent(id) => self.agents.insert(id.to_string()),
            Revocation::RevocationId(id) => self.revocation_ids.insert(id.to_ascii_lowercase()),
        };
    }

    /// Whether the agent, or any agent it descends from, is revoked.
    pub fn agent_revoked(&self, id: &str) -> Option<&str> {
        if self.agents.is_empty() {
            return None;
        }
        warden_model::scopes(id)
            .filter_map(|scope| self.agents.get(scope))
            .map(String::as_str)
            .next()
    }

    pub(crate) fn grant_revoked(&self, id: &str) -> bool {
        self.grants.contains(id)
    }

    pub(crate) fn task_revoked(&self, task: &str) -> bool {
        self.tasks.contains(task)
    }

    pub(crate) fn revocation_id_revoked(&self, id: &str) -> bool {
        self.revocation_ids.contains(id)
    }
}
