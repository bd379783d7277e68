//! Reading a log directory — one a gateway is writing, or a copy — for proofs, records and
//! checkpoints. Nothing here writes.

use std::path::{Path, PathBuf};

use crate::log::AuditError;
use crate::merkle::{self, Hash, Nodes as _};
use crate::note::{Checkpoint, NoteVerifier};
use crate::store::{self, Tree};

pub struct LogReader {
    dir: PathBuf,
    tree: Tree,
}

impl LogReader {
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        if !dir.join("segments").is_dir() {
            return Err(AuditError::Io {
                dir: dir.to_owned(),
                source: std::io::Error::other("not an audit log directory (no segments/)"),
            });
        }
        let tree = Tree::open_read_only(&dir.join("tree")).map_err(|e| io(dir, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            tree,
        })
    }

    /// Records in the tree.
    pub fn size(&self) -> Result<u64, AuditError> {
        self.tree.count(0).map_err(|e| io(&self.dir, e))
    }

    pub fn record(&self, index: u64) -> Result<Vec<u8>, AuditError> {
        store::read_record(&self.dir, index).map_err(|e| io(&self.dir, e))
    }

    /// The records from `from` on, in order, read sequentially; stops at the first incomplete
    /// frame (the tail a writer is still writing).
    pub fn records(
        &self,
        from: u64,
    ) -> Result<impl Iterator<Item = Result<(u64, Vec<u8>), AuditError>> + '_, AuditError> {
        let segments = store::segments(&self.dir).map_err(|e| io(&self.dir, e))?;
        let start = segments
            .iter()
            .rposition(|(first, _)| *first <= from)
            .unwrap_or(0);
        let offset = if from == 0 {
            0
        } else {
            store::record_offset(&self.dir, from).map_err(|e| io(&self.dir, e))?
        };
        let mut segments = segments.into_iter().skip(start).peekable();
        let mut current: Option<std::io::BufReader<std::fs::File>> = None;
        let mut index = from;
        let mut first_segment = true;
        Ok(std::iter::from_fn(move || {
            loop {
                if current.is_none() {
                    let (_, path) = segments.next()?;
                    let opened = std::fs::File::open(&path).and_then(|mut file| {
                        use std::io::Seek as _;
                        if first_segment {
                            file.seek(std::io::SeekFrom::Start(offset))?;
                        }
                        Ok(std::io::BufReader::with_capacity(1 << 20, file))
                    });
                    first_segment = false;
                    match opened {
                        Ok(reader) => current = Some(reader),
                        Err(e) => return Some(Err(io(&self.dir, e))),
                    }
                }
                let reader = current.as_mut()?;
                match store::read_frame(reader) {
                    Ok(store::Frame::Record { record, .. }) => {
                        index += 1;
                        return Some(Ok((index - 1, record)));
                    }
                    Ok(store::Frame::End) => current = None,
                    Ok(store::Frame::Torn) => return None,
                    Err(e) => return Some(Err(io(&self.dir, e))),
                }
            }
        }))
    }

    /// Every checkpoint that verifies with `verifier`, oldest first, with its note.
    pub fn checkpoints(
        &self,
        verifier: &NoteVerifier,
    ) -> Result<Vec<(Checkpoint, String)>, AuditError> {
        let notes = store::read_checkpoints(&self.dir).map_err(|e| io(&self.dir, e))?;
        Ok(notes
            .into_iter()
            .filter_map(|note| {
                let checkpoint = Checkpoint::parse(verifier.open(&note).ok()?).ok()?;
                Some((checkpoint, note))
            })
            .collect())
    }

    /// The newest checkpoint that verifies with `verifier`, and its note: the one in
    /// `latest-checkpoint` when it verifies, else the newest in `checkpoints` that does.
    pub fn latest_checkpoint(
        &self,
        verifier: &NoteVerifier,
    ) -> Result<Option<(Checkpoint, String)>, AuditError> {
        let latest = std::fs::read_to_string(self.dir.join(store::LATEST_CHECKPOINT))
            .ok()
            .and_then(|note| {
                let checkpoint = Checkpoint::parse(verifier.open(&note).ok()?).ok()?;
                Some((checkpoint, note))
            });
        match latest {
            Some(latest) => Ok(Some(latest)),
            None => Ok(self.checkpoints(verifier)?.pop()),
        }
    }

    fn check_size(&self, size: u64) -> Result<(), AuditError> {
        let have = self.size()?;
        if size == 0 || size > have {
            return Err(AuditError::OutOfRange {
                size: have,
                what: format!("no tree of size {size}"),
            });
        }
        Ok(())
    }

    /// The root over the first `size` records.
    pub fn root(&self, size: u64) -> Result<Hash, AuditError> {
        self.check_size(size)?;
        merkle::subtree_hash(&self.tree, 0, size).map_err(|e| io(&self.dir, e))
    }

    /// Record `index`'s leaf hash and audit path in the tree of `size` records.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<(Hash, Vec<Hash>), AuditError> {
        self.check_size(size)?;
        if index >= size {
            return Err(AuditError::OutOfRange {
                size,
                what: format!("record {index} is not in the tree of size {size}"),
            });
        }
        let leaf = self.tree.node(0, index).map_err(|e| io(&self.dir, e))?;
        let path =
            merkle::inclusion_proof(&self.tree, index, size).map_err(|e| io(&self.dir, e))?;
        Ok((leaf, path))
    }

    /// The proof that the tree of `old` records is a prefix of the tree of `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, AuditError> {
        self.check_size(new)?;
        if old > new {
            return Err(AuditError::OutOfRange {
                size: new,
                what: format!("{old} is larger than {new}"),
            });
        }
        merkle::consistency_proof(&self.tree, old, new).map_err(|e| io(&self.dir, e))
    }
}

fn io(dir: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io {
        dir: dir.to_owned(),
        source,
    }
}
