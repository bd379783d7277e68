//! Durable control-plane state in one redb file. Every write commits with fsync before the API
//! acknowledges it, so nothing acknowledged is lost to a restart or a crash.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use warden_authority::Revocation;

/// Named singletons: the CA, grant keys.
pub(crate) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// SHA-256 (hex) of an admin token → the admin.
pub(crate) const ADMINS: TableDefinition<&str, &str> = TableDefinition::new("admins");
/// `tenant/name` → registered agent.
pub(crate) const AGENTS: TableDefinition<&str, &str> = TableDefinition::new("agents");
/// SPIFFE ID → an agent instance credentials were issued to.
pub(crate) const INSTANCES: TableDefinition<&str, &str> = TableDefinition::new("instances");
/// Grant id → what it was issued for.
pub(crate) const GRANTS: TableDefinition<&str, &str> = TableDefinition::new("grants");
/// SHA-256 (hex) of a join token → its record.
pub(crate) const JOIN_TOKENS: TableDefinition<&str, &str> = TableDefinition::new("join_tokens");
/// Version → the revocation added at that version.
const REVOCATIONS: TableDefinition<u64, &str> = TableDefinition::new("revocations");
/// Approval id → the approval request and its sign-offs.
pub(crate) const APPROVALS: TableDefinition<&str, &str> = TableDefinition::new("approvals");
/// `server/tool` → the tool's pinned definition, and a changed one awaiting approval.
pub(crate) const TOOL_PINS: TableDefinition<&str, &str> = TableDefinition::new("tool_pins");
/// Sequence → a published, signed event.
pub(crate) const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");
/// SHA-256 (hex) of a proof-of-possession id → when it may be forgotten (unix seconds).
const PROOFS: TableDefinition<&str, i64> = TableDefinition::new("proofs");
/// Proof records written between sweeps of expired ones.
const PROOF_SWEEP_EVERY: u64 = 1024;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("the state store at {path} could not be opened: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("state store error: {0}")]
    Storage(String),
    #[error("stored record `{key}` is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

macro_rules! storage_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Storage(e.to_string())
            }
        }
    )*};
}
storage_error!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

fn decode<T: DeserializeOwned>(key: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Storage(e.to_string()))
}

/// The embedded store.
pub struct Store {
    db: Database,
    proofs_written: std::sync::atomic::AtomicU64,
}

/// What a conditional write found.
pub enum Written {
    Done,
    /// The key already existed; nothing was written.
    Exists,
}

impl Store {
    /// Opens (creating if needed) `dir/control.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Storage(format!(
                "cannot create the data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join("control.redb");
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let store = Self {
            db,
            proofs_written: std::sync::atomic::AtomicU64::new(0),
        };
        // Create every table up front so reads never meet a missing one.
        let tx = store.db.begin_write()?;
        for table in [
            META,
            ADMINS,
            AGENTS,
            INSTANCES,
            GRANTS,
            JOIN_TOKENS,
            APPROVALS,
            TOOL_PINS,
        ] {
            tx.open_table(table)?;
        }
        tx.open_table(REVOCATIONS)?;
        tx.open_table(EVENTS)?;
        tx.open_table(PROOFS)?;
        tx.commit()?;
        Ok(store)
    }

    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &str>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(table)?;
        table.get(key)?.map(|v| decode(key, v.value())).transpose()
    }

    pub(crate) fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &str>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let json = encode(value)?;
        let tx = self.db.begin_write()?;
        tx.open_table(table)?.insert(key, json.as_str())?;
        tx.commit()?;
        Ok(())
    }

    /// Writes only if `key` is absent, atomically.
    pub(crate) fn put_new<T: Serialize>(
        &self,
        table: TableDefinition<&str, &str>,
        key: &str,
        value: &T,
    ) -> Result<Written, StoreError> {
        let json = encode(value)?;
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(table)?;
            if t.get(key)?.is_some() {
                return Ok(Written::Exists);
            }
            t.insert(key, json.as_str())?;
        }
        tx.commit()?;
        Ok(Written::Done)
    }

    /// Reads, changes and writes one record in a single transaction. `change` returns the new
    /// value (or an error, which aborts without writing).
    pub(crate) fn update<T, E>(
        &self,
        table: TableDefinition<&str, &str>,
        key: &str,
        change: impl FnOnce(Option<T>) -> Result<T, E>,
    ) -> Result<Result<T, E>, StoreError>
    where
        T: Serialize + DeserializeOwned,
    {
        let tx = self.db.begin_write()?;
        let updated = {
            let mut t = tx.open_table(table)?;
            let current = t.get(key)?.map(|v| decode(key, v.value())).transpose()?;
            match change(current) {
                Err(e) => return Ok(Err(e)),
                Ok(updated) => {
                    t.insert(key, encode(&updated)?.as_str())?;
                    updated
                }
            }
        };
        tx.commit()?;
        Ok(Ok(updated))
    }

    /// Every record of a table, in key order.
    pub(crate) fn values<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &str>,
    ) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(table)?;
        table
            .iter()?
            .map(|entry| {
                let (k, v) = entry?;
                decode(k.value(), v.value())
            })
            .collect()
    }

    pub(crate) fn is_empty(&self, table: TableDefinition<&str, &str>) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(table)?.is_empty()?)
    }

    /// Appends a revocation at the next version and returns that version.
    pub fn append_revocation(&self, revocation: &Revocation) -> Result<u64, StoreError> {
        self.append_numbered(REVOCATIONS, revocation)
    }

    /// Every revocation with its version, oldest first.
    pub fn revocations(&self) -> Result<Vec<(u64, Revocation)>, StoreError> {
        self.numbered_since(REVOCATIONS, 0, usize::MAX)
    }

    /// Appends `value` to a numbered log at the next number, and returns that number.
    pub(crate) fn append_numbered<T: Serialize>(
        &self,
        table: TableDefinition<u64, &str>,
        value: &T,
    ) -> Result<u64, StoreError> {
        let json = encode(value)?;
        let tx = self.db.begin_write()?;
        let number = {
            let mut t = tx.open_table(table)?;
            let next = t.last()?.map_or(1, |(k, _)| k.value() + 1);
            t.insert(next, json.as_str())?;
            next
        };
        tx.commit()?;
        Ok(number)
    }

    /// Up to `limit` entries of a numbered log after `since`, oldest first.
    pub(crate) fn numbered_since<T: DeserializeOwned>(
        &self,
        table: TableDefinition<u64, &str>,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, T)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(table)?;
        table
            .range(since.saturating_add(1)..)?
            .take(limit)
            .map(|entry| {
                let (k, v) = entry?;
                Ok((k.value(), decode(&k.value().to_string(), v.value())?))
            })
            .collect()
    }

    /// The highest number in a numbered log (0 when empty).
    pub(crate) fn last_number(&self, table: TableDefinition<u64, &str>) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(table)?.last()?.map_or(0, |(k, _)| k.value()))
    }
}

impl Store {
    /// Records a proof id until `expires`; `false` if it is already recorded and live (a replay).
    /// Expired ids are swept now and then, so the table holds about one replay window.
    pub fn remember_proof(&self, id: &str, expires: i64, now: i64) -> Result<bool, StoreError> {
        let written = self
            .proofs_written
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tx = self.db.begin_write()?;
        let fresh = {
            let mut t = tx.open_table(PROOFS)?;
            if written.is_multiple_of(PROOF_SWEEP_EVERY) {
                t.retain(|_, until| until >= now)?;
            }
            let live = t.get(id)?.is_some_and(|until| until.value() >= now);
            if !live {
                t.insert(id, expires)?;
            }
            !live
        };
        tx.commit()?;
        Ok(fresh)
    }
}
