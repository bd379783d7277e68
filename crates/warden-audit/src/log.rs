//! The running log: one writer thread appends records in batches (group commit: one fsync for
//! everything that arrived meanwhile), answers each caller once its record is on disk, and
//! signs a checkpoint at most every interval while records arrive, and at shutdown.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::merkle;
use crate::note::{Checkpoint, NoteSigner, NoteVerifier};
use crate::store::{self, MAX_RECORD_BYTES, Store, Tree};

/// Most records written with one fsync.
const MAX_BATCH: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit record of {0} bytes is larger than the 1 MiB limit")]
    TooLarge(usize),
    #[error("the audit log is closed")]
    Closed,
    #[error("the audit log failed earlier and accepts nothing more: {0}")]
    Failed(String),
    #[error(
        "audit log {dir} does not match its last signed checkpoint: {why}; run `warden audit verify`"
    )]
    Inconsistent { dir: PathBuf, why: String },
    #[error("the log has {size} records; {what}")]
    OutOfRange { size: u64, what: String },
    #[error(
        "the audit log is behind: {0} bytes of records wait to be written; refusing more until it catches up"
    )]
    Behind(usize),
}

/// Record bytes queued for the writer at most: past this, appends are refused (allowed calls
/// then fail closed) rather than memory growing without bound.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

pub struct LogConfig {
    pub dir: PathBuf,
    /// The checkpoints' origin line: the log's name, e.g. `warden.local/audit/gateway-1`.
    pub origin: String,
    pub checkpoint_interval: Duration,
}

enum Request {
    /// A record, and who waits for it to be written and to be durable.
    Append(
        Vec<u8>,
        oneshot::Sender<Result<u64, AuditError>>,
        oneshot::Sender<Result<u64, AuditError>>,
    ),
    Checkpoint(oneshot::Sender<Result<String, AuditError>>),
}

struct Shared {
    dir: PathBuf,
    origin: String,
    tree: Arc<Tree>,
    /// Records on disk (and in the tree).
    size: AtomicU64,
    latest: RwLock<Option<String>>,
    verifier: NoteVerifier,
}

/// A handle to an open log; clones share it. The writer stops (with a last checkpoint) when
/// [`AuditLog::close`] is called or every handle is gone.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
    /// Bytes of records queued and not yet written.
    queued: Arc<AtomicUsize>,
    sender: Arc<Mutex<Option<mpsc::Sender<Request>>>>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Resolves to the record's index once it is durable.
pub type Appended = oneshot::Receiver<Result<u64, AuditError>>;

/// A record on its way to disk: `written` resolves once it is in the log file (a crash of the
/// process can no longer lose it), `durable` once it is synced (nor can a power loss).
pub struct Appending {
    pub written: Appended,
    pub durable: Appended,
}

impl AuditLog {
    /// Opens the log in `config.dir` (creating it), recovering from a crash: a torn last record
    /// is cut off, and the files after the last checkpoint are rebuilt from the records.
    pub fn open(config: LogConfig, signer: NoteSigner) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            dir: config.dir.clone(),
            source,
        };
        let verifier = NoteVerifier::parse(&signer.verifier_key())
            .map_err(|e| AuditError::Failed(format!("the checkpoint key is unusable: {e}")))?;
        std::fs::create_dir_all(&config.dir).map_err(io)?;
        let last = last_checkpoint(&config.dir, &verifier).map_err(io)?;
        let trusted = last.as_ref().map_or(0, |(c, _)| c.size);
        let store = Store::open(&config.dir, trusted).map_err(io)?;
        let tree = Arc::clone(&store.tree);
        if let Some((checkpoint, _)) = &last {
            let inconsistent = |why: String| AuditError::Inconsistent {
                dir: config.dir.clone(),
                why,
            };
            if store.size() < checkpoint.size {
                return Err(inconsistent(format!(
                    "it holds {} records, the checkpoint {}",
                    store.size(),
                    checkpoint.size
                )));
            }
            let root = merkle::subtree_hash(tree.as_ref(), 0, checkpoint.size).map_err(io)?;
            if root != checkpoint.root {
                return Err(inconsistent(format!(
                    "the root over its first {} records differs",
                    checkpoint.size
                )));
            }
        }
        let shared = Arc::new(Shared {
            dir: config.dir.clone(),
            origin: config.origin.clone(),
            tree,
            size: AtomicU64::new(store.size()),
            latest: RwLock::new(last.map(|(_, note)| note)),
            verifier,
        });
        let mut store = store;
        if store.size() > trusted {
            // Records written after the last checkpoint before a crash: sign them now.
            let note = sign_checkpoint(&mut store, &signer, &shared).map_err(io)?;
            *shared.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(note);
        }
        let (sender, receiver) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (shared, queued) = (Arc::clone(&shared), Arc::clone(&queued));
            let interval = config.checkpoint_interval;
            std::thread::Builder::new()
                .name("warden-audit".into())
                .spawn(move || write_loop(store, signer, shared, receiver, interval, &queued))
                .map_err(io)?
        };
        Ok(Self {
            shared,
            queued,
            sender: Arc::new(Mutex::new(Some(sender))),
            writer: Arc::new(Mutex::new(Some(writer))),
        })
    }

    /// Queues a record; the answer comes once it is durable (group commit).
    pub fn append(&self, record: Vec<u8>) -> Appended {
        self.append_staged(record).durable
    }

    /// Queues a record, answering twice: once it is written, once it is durable.
    pub fn append_staged(&self, record: Vec<u8>) -> Appending {
        let (written_tx, written) = oneshot::channel();
        let (durable_tx, durable) = oneshot::channel();
        let refuse = |written_tx: oneshot::Sender<_>,
                      durable_tx: oneshot::Sender<_>,
                      e: &dyn Fn() -> AuditError| {
            let _ = written_tx.send(Err(e()));
            let _ = durable_tx.send(Err(e()));
        };
        if record.len() > MAX_RECORD_BYTES {
            let len = record.len();
            refuse(written_tx, durable_tx, &|| AuditError::TooLarge(len));
            return Appending { written, durable };
        }
        let len = record.len();
        let queued = self.queued.fetch_add(len, Ordering::AcqRel);
        if queued + len > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            refuse(written_tx, durable_tx, &|| AuditError::Behind(queued));
            return Appending { written, durable };
        }
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        match sender.as_ref() {
            Some(sender) => {
                if let Err(mpsc::SendError(Request::Append(_, written_tx, durable_tx))) =
                    sender.send(Request::Append(record, written_tx, durable_tx))
                {
                    self.queued.fetch_sub(len, Ordering::AcqRel);
                    refuse(written_tx, durable_tx, &|| AuditError::Closed);
                }
            }
            None => refuse(written_tx, durable_tx, &|| AuditError::Closed),
        }
        Appending { written, durable }
    }

    /// Signs a checkpoint now (if records arrived since the last) and returns the latest.
    pub fn checkpoint(&self) -> Result<String, AuditError> {
        let (tx, rx) = oneshot::channel();
        {
            let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
            sender
                .as_ref()
                .ok_or(AuditError::Closed)?
                .send(Request::Checkpoint(tx))
                .map_err(|_| AuditError::Closed)?;
        }
        rx.blocking_recv().map_err(|_| AuditError::Closed)?
    }

    /// The latest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Option<String> {
        self.shared
            .latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records durable so far.
    pub fn size(&self) -> u64 {
        self.shared.size.load(Ordering::Acquire)
    }

    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The checkpoint key's public form.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.shared.verifier
    }

    /// Stops the writer after what is queued, with a last checkpoint.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

/// The last checkpoint in `dir` that verifies with `verifier`, and its note.
fn last_checkpoint(
    dir: &Path,
    verifier: &NoteVerifier,
) -> std::io::Result<Option<(Checkpoint, String)>> {
    let notes = store::read_checkpoints(dir)?;
    Ok(notes.into_iter().rev().find_map(|note| {
        let text = verifier.open(&note).ok()?;
        Some((Checkpoint::parse(text).ok()?, note))
    }))
}

fn write_loop(
    mut store: Store,
    signer: NoteSigner,
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<Request>,
    interval: Duration,
    queued: &AtomicUsize,
) {
    let mut failed: Option<String> = None;
    let mut signed_size = shared
        .latest
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_deref()
        .and_then(|note| Checkpoint::parse(shared.verifier.open(note).ok()?).ok())
        .map_or(0, |c| c.size);
    let mut last_signed = Instant::now();
    let mut open = true;
    while open {
        let wait = interval.saturating_sub(last_signed.elapsed());
        let first = match receiver.recv_timeout(wait.max(Duration::from_millis(1))) {
            Ok(request) => Some(request),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                open = false;
                None
            }
        };
        let mut records = Vec::new();
        let mut waiters = Vec::new();
        let mut checkpoint_waiters = Vec::new();
        let mut next = first;
        while let Some(request) = next.take() {
            match request {
                Request::Append(record, written, durable) => {
                    records.push(record);
                    waiters.push((written, durable));
                }
                Request::Checkpoint(tx) => checkpoint_waiters.push(tx),
            }
            if waiters.len() < MAX_BATCH {
                next = receiver.try_recv().ok();
            }
        }
        if !records.is_empty() {
            queued.fetch_sub(records.iter().map(Vec::len).sum(), Ordering::AcqRel);
            let written = match &failed {
                Some(why) => Err(why.clone()),
                None => store.write(&records).map_err(|e| e.to_string()),
            };
            // Those waiting for the write hear first (a gateway forwards then); those waiting
            // for durability after the sync (an agent gets its answer then).
            let mut durable = Vec::with_capacity(waiters.len());
            for (i, (written_tx, durable_tx)) in waiters.into_iter().enumerate() {
                let answer = written
                    .as_ref()
                    .map(|first| first + i as u64)
                    .map_err(|why| AuditError::Failed(why.clone()));
                let _ = written_tx.send(answer);
                durable.push(durable_tx);
            }
            let synced = match written {
                Ok(first) => store.sync().map(|()| first).map_err(|e| e.to_string()),
                Err(why) => Err(why),
            };
            match synced {
                Ok(first) => {
                    shared.size.store(store.size(), Ordering::Release);
                    for (i, tx) in durable.into_iter().enumerate() {
                        let _ = tx.send(Ok(first + i as u64));
                    }
                }
                Err(why) => {
                    // Fail closed: nothing is acknowledged after a failed write or sync.
                    tracing_failure(&shared.dir, &why);
                    failed = Some(why.clone());
                    for tx in durable {
                        let _ = tx.send(Err(AuditError::Failed(why.clone())));
                    }
                }
            }
        }
        let due = last_signed.elapsed() >= interval || !checkpoint_waiters.is_empty() || !open;
        if due && failed.is_none() && store.size() > signed_size {
            match sign_checkpoint(&mut store, &signer, &shared) {
                Ok(note) => {
                    signed_size = store.size();
                    *shared.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(note);
                }
                Err(e) => {
                    tracing_failure(&shared.dir, &e.to_string());
                    failed = Some(e.to_string());
                }
            }
        }
        if due {
            last_signed = Instant::now();
        }
        for tx in checkpoint_waiters {
            let latest = shared
                .latest
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let _ = tx.send(match (&failed, latest) {
                (Some(why), _) => Err(AuditError::Failed(why.clone())),
                (None, Some(note)) => Ok(note),
                (None, None) => Err(AuditError::OutOfRange {
                    size: 0,
                    what: "nothing to checkpoint yet".into(),
                }),
            });
        }
    }
}

fn sign_checkpoint(
    store: &mut Store,
    signer: &NoteSigner,
    shared: &Shared,
) -> std::io::Result<String> {
    let size = store.size();
    let root = merkle::subtree_hash(shared.tree.as_ref(), 0, size)?;
    let checkpoint = Checkpoint {
        origin: shared.origin.clone(),
        size,
        root,
    };
    let note = signer.sign(&checkpoint.body());
    store.checkpoint(&note)?;
    Ok(note)
}

fn tracing_failure(dir: &Path, why: &str) {
    tracing::error!(
        "the audit log in {} failed and refuses further records: {why}",
        dir.display()
    );
}
