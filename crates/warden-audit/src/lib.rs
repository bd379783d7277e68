//! Warden's tamper-evident audit log: records appended durably to segment files, hashed into an
//! RFC 6962 Merkle tree, with signed checkpoints (C2SP signed notes) that anyone holding the
//! public key can check offline, with inclusion and consistency proofs.

pub mod export;
mod log;
pub mod merkle;
pub mod nats;
pub mod note;
pub mod ocsf;
mod reader;
pub mod store;
pub mod verify;

pub use log::{Appended, Appending, AuditError, AuditLog, LogConfig, MAX_QUEUED_BYTES};
pub use note::{Checkpoint, NoteSigner, NoteVerifier, generate_private_key, load_or_create_signer};
pub use reader::LogReader;
