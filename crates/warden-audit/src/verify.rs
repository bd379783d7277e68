//! Offline verification of a log directory with nothing but the public key: every record is
//! rehashed, the tree is recomputed, and every checkpoint's signature and root are checked
//! against it. Problems say where they are.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

use crate::merkle::{Hash, leaf_hash, node_hash};
use crate::note::{Checkpoint, NoteVerifier};
use crate::store::{self, FrameInto};

/// Problems beyond this many are counted, not listed.
const MAX_PROBLEMS: usize = 100;
/// Records hashed together, split across the cores.
const BATCH: usize = 16_384;

/// Records read together: their bytes in one buffer, and each one's stored hash and place.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    records: Vec<(Hash, std::ops::Range<usize>)>,
}

/// The frames of a segment in batches, read on a thread of their own; the last batch says
/// whether the segment ends inside a frame.
fn read_batches(path: std::path::PathBuf) -> std::sync::mpsc::Receiver<io::Result<(Batch, bool)>> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(2);
    std::thread::spawn(move || {
        let mut reader = match File::open(&path) {
            Ok(file) => BufReader::with_capacity(1 << 20, file),
            Err(e) => {
                let _ = sender.send(Err(e));
                return;
            }
        };
        loop {
            let mut batch = Batch {
                bytes: Vec::with_capacity(BATCH * 512),
                records: Vec::with_capacity(BATCH),
            };
            let mut end = None;
            while batch.records.len() < BATCH {
                let start = batch.bytes.len();
                match store::read_frame_into(&mut reader, &mut batch.bytes) {
                    Ok(FrameInto::Record(stored)) => {
                        batch.records.push((stored, start..batch.bytes.len()));
                    }
                    Ok(FrameInto::End) => {
                        end = Some(false);
                        break;
                    }
                    Ok(FrameInto::Incomplete) => {
                        end = Some(true);
                        break;
                    }
                    Err(e) => {
                        let _ = sender.send(Err(e));
                        return;
                    }
                }
            }
            let done = end.is_some();
            if sender.send(Ok((batch, end.unwrap_or(false)))).is_err() || done {
                return;
            }
        }
    });
    receiver
}

/// Each record's stored hash with its recomputed leaf hash, hashed in parallel.
fn hash_all(batch: &Batch) -> Vec<(Hash, Hash)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = batch.records.len().div_ceil(cores).max(1024);
    std::thread::scope(|scope| {
        let parts: Vec<_> = batch
            .records
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(stored, at)| (*stored, leaf_hash(&batch.bytes[at.clone()])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().unwrap_or_default())
            .collect()
    })
}

#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub checkpoints: usize,
    /// The newest checkpoint that verified.
    pub latest: Option<Checkpoint>,
    /// Everything wrong, in log order; empty when the log verifies.
    pub problems: Vec<String>,
    /// An incomplete record after the last checkpoint: a crash cut its write short, it was
    /// never acknowledged, and the log cuts it off when it opens.
    pub torn_tail: bool,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
    fn problem(&mut self, what: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what);
        }
    }
}

/// The roots of complete subtrees along the right edge: O(log n) memory for any size.
#[derive(Default)]
struct Frontier(Vec<(u32, Hash)>);

impl Frontier {
    fn push(&mut self, leaf: Hash) {
        let mut entry = (0u32, leaf);
        while let Some(&(level, left)) = self.0.last() {
            if level != entry.0 {
                break;
            }
            self.0.pop();
            entry = (level + 1, node_hash(&left, &entry.1));
        }
        self.0.push(entry);
    }

    fn root(&self) -> Hash {
        let mut nodes = self.0.iter().rev();
        match nodes.next() {
            None => crate::merkle::empty_root(),
            Some(&(_, last)) => nodes.fold(last, |right, (_, left)| node_hash(left, &right)),
        }
    }
}

pub fn verify(dir: &Path, verifier: &NoteVerifier) -> io::Result<Report> {
    if !dir.join("segments").is_dir() {
        return Err(io::Error::other(format!(
            "{} is not an audit log directory (no segments/)",
            dir.display()
        )));
    }
    let mut report = Report::default();
    // Checkpoints: each must be signed by the key, share one origin, and never shrink.
    let mut expected: Vec<(usize, Checkpoint)> = Vec::new();
    let mut origin: Option<String> = None;
    for (n, note) in store::read_checkpoints(dir)?.into_iter().enumerate() {
        let text = match verifier.open(&note) {
            Ok(text) => text,
            Err(e) => {
                report.problem(format!(
                    "checkpoint #{n}: {e} (replaced, altered or signed with another key)"
                ));
                continue;
            }
        };
        let checkpoint = match Checkpoint::parse(text) {
            Ok(c) => c,
            Err(e) => {
                report.problem(format!("checkpoint #{n}: {e}"));
                continue;
            }
        };
        match &origin {
            None => origin = Some(checkpoint.origin.clone()),
            Some(o) if *o != checkpoint.origin => report.problem(format!(
                "checkpoint #{n}: origin `{}` is not this log's `{o}`",
                checkpoint.origin
            )),
            Some(_) => {}
        }
        if let Some((_, previous)) = expected.last()
            && checkpoint.size < previous.size
        {
            report.problem(format!(
                "checkpoint #{n}: the log shrank from {} to {} records",
                previous.size, checkpoint.size
            ));
        }
        expected.push((n, checkpoint));
    }
    report.checkpoints = expected.len();
    // The leaf hashes as the writer recorded them, read alongside the records.
    let mut tree_leaves = File::open(dir.join("tree").join("00"))
        .ok()
        .map(|f| BufReader::with_capacity(1 << 20, f));
    let mut pending = expected.iter().peekable();
    let mut frontier = Frontier::default();
    let mut count = 0u64;
    let mut last_good = 0u64;
    let mut check_roots = |count: u64, frontier: &Frontier, report: &mut Report| {
        while let Some((n, checkpoint)) = pending.peek() {
            if checkpoint.size != count {
                break;
            }
            if frontier.root() == checkpoint.root {
                report.latest = Some(checkpoint.clone());
                last_good = count;
            } else {
                report.problem(format!(
                    "checkpoint #{n}: its root over {} records does not match the records; \
                     a record in {last_good}..{} was altered, removed, added or reordered",
                    checkpoint.size, checkpoint.size
                ));
            }
            pending.next();
        }
    };
    check_roots(0, &frontier, &mut report);
    let segments = store::segments(dir)?;
    for (number, (first, path)) in segments.iter().enumerate() {
        if *first != count {
            report.problem(format!(
                "segment {} should start at record {count}",
                path.display()
            ));
        }
        // Reading runs ahead on its own thread while batches are hashed and walked here.
        for message in read_batches(path.clone()) {
            let (batch, incomplete) = message?;
            for (stored, hash) in hash_all(&batch) {
                if hash != stored {
                    // Keep the writer's leaves in step with the records.
                    if let Some(leaves) = &mut tree_leaves {
                        let _ = io::Read::read_exact(leaves, &mut [0u8; 32]);
                    }
                    report.problem(format!(
                        "record {count}: its content does not match the hash written with it (altered)"
                    ));
                } else if let Some(leaves) = &mut tree_leaves {
                    let mut recorded = [0u8; 32];
                    if io::Read::read_exact(leaves, &mut recorded).is_ok() && recorded != hash {
                        report.problem(format!(
                            "record {count}: it differs from the leaf the tree recorded when it was written (altered, removed or reordered)"
                        ));
                    }
                }
                frontier.push(hash);
                count += 1;
                check_roots(count, &frontier, &mut report);
            }
            if incomplete {
                let last_segment = number + 1 == segments.len();
                let signed = expected.last().map_or(0, |(_, c)| c.size);
                if last_segment && count >= signed {
                    report.torn_tail = true;
                } else {
                    report.problem(format!(
                        "record {count} in {} is incomplete or damaged, and the rest of the segment cannot be read",
                        path.display()
                    ));
                }
            }
        }
    }
    report.records = count;
    for (n, checkpoint) in pending {
        report.problem(format!(
            "checkpoint #{n} covers {} records but the log holds {count} (records were removed or the log was truncated)",
            checkpoint.size
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::MemoryTree;

    #[test]
    fn the_frontier_root_is_the_tree_root_at_every_size() {
        let mut frontier = Frontier::default();
        let mut tree = MemoryTree::default();
        assert_eq!(frontier.root(), tree.root());
        for i in 0u32..300 {
            let leaf = leaf_hash(&i.to_le_bytes());
            frontier.push(leaf);
            tree.push(leaf);
            assert_eq!(frontier.root(), tree.root(), "size {}", i + 1);
        }
    }
}
