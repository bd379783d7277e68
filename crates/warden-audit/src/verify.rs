//! Offline verification of a log directory with nothing but the public key: every record is
//! rehashed, the tree is recomputed, and every checkpoint's signature and root are checked
//! against it. Problems say where they are.
//!
//! Segments are cut into units of about a megabyte at the record offsets the writer kept, and
//! the units are read and hashed on every core at once. The offsets are only a hint: each
//! unit must parse into exactly the frames the hint promised and end exactly where the next
//! begins, so by induction from the segment's start the framing is the one a sequential read
//! finds; where a unit disagrees, the rest of its segment is read sequentially instead.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::merkle::{Hash, leaf_hash, node_hash};
use crate::note::{Checkpoint, NoteVerifier};
use crate::store;

/// Problems beyond this many are counted, not listed.
const MAX_PROBLEMS: usize = 100;
/// About how many segment bytes one unit of work reads: small enough to stay in cache while
/// it is parsed and hashed.
const UNIT_BYTES: u64 = 1 << 20;

/// Segment bytes read together, and each record's stored hash and place in them.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    records: Vec<(Hash, std::ops::Range<usize>)>,
}

/// A run of a segment's frames to read and hash: from byte `start`, either exactly `count`
/// frames ending at byte `end` (as the offsets promise), or everything to the segment's end.
struct Unit {
    first: u64,
    start: u64,
    bounded: Option<(usize, u64)>,
}

/// Cuts a segment whose first record is `first` into units at the offsets the writer kept.
/// Offsets that do not start at zero or stop increasing end the plan: what follows is one unit
/// read to the end.
fn plan_units(first: u64, offsets: &[u64]) -> Vec<Unit> {
    let mut units = Vec::new();
    let (mut start_record, mut start_byte) = (0usize, 0u64);
    if offsets.first() == Some(&0) {
        let mut previous = 0;
        for (i, &offset) in offsets.iter().enumerate().skip(1) {
            if offset <= previous {
                break;
            }
            previous = offset;
            if offset - start_byte >= UNIT_BYTES {
                units.push(Unit {
                    first: first + start_record as u64,
                    start: start_byte,
                    bounded: Some((i - start_record, offset)),
                });
                (start_record, start_byte) = (i, offset);
            }
        }
    }
    units.push(Unit {
        first: first + start_record as u64,
        start: start_byte,
        bounded: None,
    });
    units
}

/// What hashing a run of consecutive records found.
struct Piece {
    /// The run's complete aligned subtrees, left to right, as (level, root): pushing them into
    /// the frontier equals pushing every leaf, at a fraction of the walk.
    subtrees: Vec<(u32, Hash)>,
    /// Offsets (within the batch) of records whose content does not match their stored hash.
    altered: Vec<usize>,
    /// Runs of records that differ from the leaves the tree recorded when they were written
    /// (one removed record shifts all that follow, so they come in runs).
    unlike_tree: Vec<std::ops::Range<usize>>,
}

/// Hashes records `range` of a batch whose first record is number `base` of the log: leaf
/// hashes checked against the stored and the tree's leaves, then folded into the largest
/// complete subtrees the run's alignment allows.
fn hash_piece(batch: &Batch, recorded: &[Hash], base: u64, range: std::ops::Range<usize>) -> Piece {
    let mut piece = Piece {
        subtrees: Vec::new(),
        altered: Vec::new(),
        unlike_tree: Vec::new(),
    };
    // A stack of (level, hash) that only ever merges equal, aligned levels.
    let mut stack: Vec<(u32, Hash)> = Vec::with_capacity(64);
    let mut position = base + range.start as u64;
    for offset in range {
        let (stored, at) = &batch.records[offset];
        let leaf = leaf_hash(&batch.bytes[at.clone()]);
        if leaf != *stored {
            if piece.altered.len() < MAX_PROBLEMS {
                piece.altered.push(offset);
            }
        } else if recorded.get(offset).is_some_and(|tree| *tree != leaf) {
            let runs = piece.unlike_tree.len();
            match piece.unlike_tree.last_mut() {
                Some(run) if run.end == offset => run.end += 1,
                _ if runs < MAX_PROBLEMS => piece.unlike_tree.push(offset..offset + 1),
                _ => {}
            }
        }
        // Two neighbours merge only into a subtree aligned to its own size: the global tree
        // has exactly that node, so the frontier can take it whole.
        let mut entry = (0u32, leaf);
        position += 1;
        while let Some(&(level, left)) = stack.last() {
            if level != entry.0 || !position.is_multiple_of(1u64 << (level + 1)) {
                break;
            }
            stack.pop();
            entry = (level + 1, node_hash(&left, &entry.1));
        }
        stack.push(entry);
    }
    piece.subtrees = stack;
    piece
}

/// Hashes a batch whose first record is number `base`, in pieces cut where a checkpoint's size
/// falls (so the frontier can be read there); each piece comes with the batch offset it ends at.
fn hash_batch(
    batch: &Batch,
    recorded: &[Hash],
    base: u64,
    sizes: &BTreeSet<u64>,
) -> Vec<(usize, Piece)> {
    let total = batch.records.len();
    let mut pieces = Vec::new();
    let mut start = 0;
    let cuts = sizes
        .range(base + 1..base + total as u64)
        .map(|size| (size - base) as usize);
    for end in cuts.chain(std::iter::once(total)) {
        pieces.push((end, hash_piece(batch, recorded, base, start..end)));
        start = end;
    }
    pieces
}

/// What one unit held.
struct Hashed {
    /// The frames were exactly those the offsets promised (always true for a unit read to the
    /// end).
    as_planned: bool,
    /// The segment ends inside a frame, or at one whose length is impossible.
    incomplete: bool,
    pieces: Vec<(usize, Piece)>,
}

/// Reads, parses and hashes one unit, comparing each leaf with the one the writer recorded in
/// `tree` (level 0 of the stored tree), where it has one.
fn hash_unit(
    segment: &File,
    tree: Option<&File>,
    unit: &Unit,
    sizes: &BTreeSet<u64>,
    batch: &mut Batch,
) -> io::Result<Hashed> {
    let len = match unit.bounded {
        Some((_, end)) => end - unit.start,
        None => segment.metadata()?.len().saturating_sub(unit.start),
    } as usize;
    // Reused buffers: grown once, never cleared byte by byte.
    if batch.bytes.len() < len {
        batch.bytes.resize(len, 0);
    }
    segment.read_exact_at(&mut batch.bytes[..len], unit.start)?;
    batch.records.clear();
    let (used, damaged) = store::parse_frames(&batch.bytes[..len], &mut batch.records);
    let records = batch.records.len();
    let as_planned = match unit.bounded {
        Some((count, _)) => !damaged && used == len && records == count,
        None => true,
    };
    if !as_planned {
        return Ok(Hashed {
            as_planned,
            incomplete: false,
            pieces: Vec::new(),
        });
    }
    let recorded = match tree {
        Some(tree) => read_leaves(tree, unit.first, records)?,
        None => Vec::new(),
    };
    Ok(Hashed {
        as_planned,
        incomplete: damaged || used < len,
        pieces: hash_batch(batch, &recorded, unit.first, sizes),
    })
}

/// The leaf hashes the writer recorded for `n` records from `first` (fewer where the tree
/// file ends early).
fn read_leaves(tree: &File, first: u64, n: usize) -> io::Result<Vec<Hash>> {
    let available = tree.metadata()?.len().saturating_sub(first * 32) / 32;
    let mut bytes = vec![0u8; n.min(available as usize) * 32];
    tree.read_exact_at(&mut bytes, first * 32)?;
    Ok(bytes
        .chunks_exact(32)
        .map(|leaf| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(leaf);
            hash
        })
        .collect())
}

fn report_run(run: Option<std::ops::Range<u64>>, report: &mut Report) {
    match run {
        Some(run) if run.end - run.start == 1 => report.problem(format!(
            "record {}: it differs from the leaf the tree recorded when it was written (altered, removed or reordered)",
            run.start
        )),
        Some(run) => report.problem(format!(
            "records {}..{} ({} records): they differ from the leaves the tree recorded when they were written (from the first on, records were altered, removed, added or reordered)",
            run.start,
            run.end,
            run.end - run.start
        )),
        None => {}
    }
}

/// The offsets the writer kept for records `first..end` (to the file's end when `end` is
/// `None`); empty when there are none.
fn read_offsets(dir: &Path, first: u64, end: Option<u64>) -> io::Result<Vec<u64>> {
    let file = match File::open(dir.join("offsets")) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let kept = file.metadata()?.len() / 8;
    let end = end.map_or(kept, |end| end.min(kept));
    let mut bytes = vec![0u8; end.saturating_sub(first) as usize * 8];
    file.read_exact_at(&mut bytes, first * 8)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|offset| u64::from_le_bytes(offset.try_into().unwrap_or_default()))
        .collect())
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
    /// Problems found beyond the first hundred, counted only.
    pub omitted: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
    fn problem(&mut self, what: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what);
        } else {
            self.omitted += 1;
        }
    }
}

/// The roots of complete subtrees along the right edge: O(log n) memory for any size.
#[derive(Default)]
struct Frontier(Vec<(u32, Hash)>);

impl Frontier {
    #[cfg(test)]
    fn push(&mut self, leaf: Hash) {
        self.push_subtree(0, leaf);
    }

    /// Adds a complete subtree of `2^level` leaves; the tree's size must be a multiple of it.
    fn push_subtree(&mut self, level: u32, root: Hash) {
        let mut entry = (level, root);
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
    let tree = File::open(dir.join("tree").join("00")).ok();
    let sizes: BTreeSet<u64> = expected.iter().map(|(_, c)| c.size).collect();
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
    // Records unlike the tree's leaves come in runs (a removed record shifts all that follow);
    // each run is one problem.
    let mut unlike_run: Option<std::ops::Range<u64>> = None;
    let segments = store::segments(dir)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (number, (first, path)) in segments.iter().enumerate() {
        if *first != count {
            report.problem(format!(
                "segment {} should start at record {count}",
                path.display()
            ));
        }
        let segment = File::open(path)?;
        let next = segments.get(number + 1).map(|(next, _)| *next);
        let units = plan_units(count, &read_offsets(dir, *first, next)?);
        let mut take = |hashed: Hashed, report: &mut Report, count: &mut u64| {
            let base = *count;
            for (end, piece) in hashed.pieces {
                let mut flagged: Vec<(usize, Option<usize>)> = piece
                    .altered
                    .iter()
                    .map(|&at| (at, None))
                    .chain(
                        piece
                            .unlike_tree
                            .iter()
                            .map(|run| (run.start, Some(run.end))),
                    )
                    .collect();
                flagged.sort_unstable();
                for (start, run_end) in flagged {
                    let start = base + start as u64;
                    match run_end {
                        None => {
                            report_run(unlike_run.take(), report);
                            report.problem(format!(
                                "record {start}: its content does not match the hash written with it (altered)"
                            ));
                        }
                        Some(run_end) => {
                            let run_end = base + run_end as u64;
                            match &mut unlike_run {
                                Some(run) if run.end == start => run.end = run_end,
                                _ => {
                                    report_run(unlike_run.replace(start..run_end), report);
                                }
                            }
                        }
                    }
                }
                for (level, root) in piece.subtrees {
                    frontier.push_subtree(level, root);
                }
                *count = base + end as u64;
                if sizes.contains(count) {
                    report_run(unlike_run.take(), report);
                }
                check_roots(*count, &frontier, report);
            }
        };
        // Units are hashed on every core, and taken here in order as they finish.
        let next_unit = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let ended = std::thread::scope(|scope| -> io::Result<bool> {
            let (done, results) = std::sync::mpsc::channel();
            for _ in 0..cores {
                let done = done.clone();
                let (units, next_unit, stop, segment, tree, sizes) =
                    (&units, &next_unit, &stop, &segment, tree.as_ref(), &sizes);
                scope.spawn(move || {
                    let mut batch = Batch::default();
                    loop {
                        let i = next_unit.fetch_add(1, Ordering::Relaxed);
                        if i >= units.len() || stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let hashed = hash_unit(segment, tree, &units[i], sizes, &mut batch);
                        if done.send((i, hashed)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(done);
            let mut waiting = std::collections::BTreeMap::new();
            let mut wanted = 0;
            for (i, hashed) in results {
                waiting.insert(i, hashed);
                while let Some(hashed) = waiting.remove(&wanted) {
                    let unit = &units[wanted];
                    wanted += 1;
                    let mut hashed = hashed?;
                    if !hashed.as_planned {
                        // The offsets were wrong here: read the rest of the segment in order.
                        stop.store(true, Ordering::Relaxed);
                        let rest = Unit {
                            bounded: None,
                            ..*unit
                        };
                        hashed = hash_unit(
                            &segment,
                            tree.as_ref(),
                            &rest,
                            &sizes,
                            &mut Batch::default(),
                        )?;
                    }
                    let incomplete = hashed.incomplete;
                    take(hashed, &mut report, &mut count);
                    if unit.bounded.is_none() || stop.load(Ordering::Relaxed) {
                        return Ok(incomplete);
                    }
                }
            }
            Ok(false)
        })?;
        if ended {
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
    report_run(unlike_run, &mut report);
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

    #[test]
    fn pieces_hashed_apart_fold_into_the_same_root_wherever_they_start_and_are_cut() {
        let records: Vec<Vec<u8>> = (0u32..5000).map(|i| i.to_le_bytes().to_vec()).collect();
        for base in [0usize, 1, 5, 64, 99] {
            let mut batch = Batch::default();
            for record in &records[base..] {
                let start = batch.bytes.len();
                batch.bytes.extend_from_slice(record);
                batch
                    .records
                    .push((leaf_hash(record), start..batch.bytes.len()));
            }
            let mut frontier = Frontier::default();
            let mut tree = MemoryTree::default();
            for record in &records[..base] {
                frontier.push(leaf_hash(record));
                tree.push(leaf_hash(record));
            }
            let cuts: BTreeSet<u64> = [3, 17, 128, 129, 400, 2600]
                .iter()
                .map(|cut| cut + base as u64)
                .collect();
            let mut roots = std::collections::HashMap::new();
            for (i, record) in records[base..].iter().enumerate() {
                tree.push(leaf_hash(record));
                roots.insert(i + 1, tree.root());
            }
            for (end, piece) in hash_batch(&batch, &[], base as u64, &cuts) {
                assert!(piece.altered.is_empty() && piece.unlike_tree.is_empty());
                for (level, root) in piece.subtrees {
                    frontier.push_subtree(level, root);
                }
                assert_eq!(frontier.root(), roots[&end], "base {base}, cut at {end}");
            }
        }
    }
}
