//! The files of a log directory:
//!
//! - `segments/<first record, 20 digits>.log`: records as frames — length (u32 LE), leaf hash
//!   (32 bytes), the record — in files of about 64 MiB;
//! - `offsets`: for each record, its frame's byte offset in its segment (u64 LE);
//! - `tree/<level, 2 digits>`: the hash of every complete subtree, level by level (level 0: the
//!   leaf hashes), so a proof reads O(log² n) hashes whatever the size;
//! - `checkpoints`: signed checkpoints as frames — length (u32 LE), the signed note; the newest
//!   also alone in `latest-checkpoint`.
//!
//! Only the segments and checkpoints are made durable on every write; offsets and tree are
//! synced before each checkpoint, and rebuilt from the segments after it when the log opens.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::merkle::{Hash, Nodes, leaf_hash, node_hash};

pub const FRAME_HEAD: u64 = 4 + 32;
/// The newest signed checkpoint, beside the full `checkpoints` file.
pub const LATEST_CHECKPOINT: &str = "latest-checkpoint";
/// Records are refused above this size.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
const SEGMENT_BYTES: u64 = 64 << 20;

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

/// The segments of a directory, oldest first, with the index of their first record.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let segments = dir.join("segments");
    if !segments.exists() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(&segments)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

/// One frame as written, its hash not yet checked.
pub enum RawFrame {
    Record {
        stored: Hash,
        record: Vec<u8>,
    },
    /// The file ends inside a frame, or its length is impossible.
    Incomplete,
    End,
}

pub fn read_raw_frame(file: &mut impl io::Read) -> io::Result<RawFrame> {
    let mut record = Vec::new();
    Ok(match read_frame_into(file, &mut record)? {
        FrameInto::Record(stored) => RawFrame::Record { stored, record },
        FrameInto::Incomplete => RawFrame::Incomplete,
        FrameInto::End => RawFrame::End,
    })
}

/// Finds the whole frames at the start of `bytes` (read from a segment), adding each one's
/// stored hash and record's place to `records`. Returns how many bytes they take, and whether
/// parsing stopped at an impossible length rather than at the end or inside a frame.
pub fn parse_frames(
    bytes: &[u8],
    records: &mut Vec<(Hash, std::ops::Range<usize>)>,
) -> (usize, bool) {
    let head = FRAME_HEAD as usize;
    let mut at = 0;
    while bytes.len() - at >= head {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        if len > MAX_RECORD_BYTES {
            return (at, true);
        }
        let end = at + head + len;
        if end > bytes.len() {
            break;
        }
        let mut stored = [0u8; 32];
        stored.copy_from_slice(&bytes[at + 4..at + head]);
        records.push((stored, at + head..end));
        at = end;
    }
    (at, false)
}

/// What [`read_frame_into`] found.
pub enum FrameInto {
    /// A frame whose record was appended to the buffer, with its stored hash.
    Record(Hash),
    Incomplete,
    End,
}

/// Reads one frame, appending its record to `buffer` (many records share one allocation).
pub fn read_frame_into(file: &mut impl io::Read, buffer: &mut Vec<u8>) -> io::Result<FrameInto> {
    let mut head = [0u8; FRAME_HEAD as usize];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 if filled == 0 => return Ok(FrameInto::End),
            0 => return Ok(FrameInto::Incomplete),
            n => filled += n,
        }
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > MAX_RECORD_BYTES {
        return Ok(FrameInto::Incomplete);
    }
    let start = buffer.len();
    buffer.resize(start + len, 0);
    if file.read_exact(&mut buffer[start..]).is_err() {
        buffer.truncate(start);
        return Ok(FrameInto::Incomplete);
    }
    let mut stored = [0u8; 32];
    stored.copy_from_slice(&head[4..]);
    Ok(FrameInto::Record(stored))
}

/// One frame read from a segment, checked.
pub enum Frame {
    Record {
        hash: Hash,
        record: Vec<u8>,
    },
    /// The file ends inside a frame, or the frame's hash does not match its record: where a
    /// crash cut a write short, if this is the end of the last segment.
    Torn,
    End,
}

pub fn read_frame(file: &mut impl io::Read) -> io::Result<Frame> {
    Ok(match read_raw_frame(file)? {
        RawFrame::Record { stored, record } if leaf_hash(&record) == stored => Frame::Record {
            hash: stored,
            record,
        },
        RawFrame::Record { .. } | RawFrame::Incomplete => Frame::Torn,
        RawFrame::End => Frame::End,
    })
}

pub fn frame(record: &[u8], hash: &Hash, out: &mut Vec<u8>) {
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(hash);
    out.extend_from_slice(record);
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
}

/// Syncs a directory, so new files in it survive a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The tree's levels: hashes appended as subtrees complete, read by proofs.
pub struct Tree {
    dir: PathBuf,
    levels: RwLock<Vec<File>>,
}

impl Tree {
    fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Self::open_levels(dir, open_append)
    }

    /// The tree of a log another process may be writing, or a read-only copy.
    pub fn open_read_only(dir: &Path) -> io::Result<Self> {
        Self::open_levels(dir, |path| File::open(path))
    }

    fn open_levels(dir: &Path, open: fn(&Path) -> io::Result<File>) -> io::Result<Self> {
        let mut levels = Vec::new();
        for level in 0.. {
            let path = dir.join(format!("{level:02}"));
            if !path.exists() {
                break;
            }
            levels.push(open(&path)?);
        }
        Ok(Self {
            dir: dir.to_owned(),
            levels: RwLock::new(levels),
        })
    }

    /// Cuts every level back to what a tree of `size` leaves holds.
    fn truncate(&self, size: u64) -> io::Result<()> {
        let levels = self.levels.read().unwrap_or_else(|p| p.into_inner());
        for (level, file) in levels.iter().enumerate() {
            let keep = (size >> level) * 32;
            if file.metadata()?.len() > keep {
                file.set_len(keep)?;
            }
        }
        Ok(())
    }

    /// Hashes stored at `level` (at level 0: the leaves).
    pub fn count(&self, level: usize) -> io::Result<u64> {
        let levels = self.levels.read().unwrap_or_else(|p| p.into_inner());
        Ok(levels
            .get(level)
            .map(|f| f.metadata())
            .transpose()?
            .map_or(0, |m| m.len() / 32))
    }

    /// Appends leaf `index` (the tree holds `index` leaves) and every subtree it completes.
    fn push(&self, index: u64, leaf: Hash) -> io::Result<()> {
        let mut hash = leaf;
        let mut level = 0usize;
        let mut position = index;
        loop {
            {
                let mut levels = self.levels.write().unwrap_or_else(|p| p.into_inner());
                if levels.len() == level {
                    let path = self.dir.join(format!("{level:02}"));
                    levels.push(open_append(&path)?);
                }
                levels[level].write_all(&hash)?;
            }
            if position & 1 == 0 {
                return Ok(());
            }
            let left = self.node(level as u32, position - 1)?;
            hash = node_hash(&left, &hash);
            level += 1;
            position >>= 1;
        }
    }

    fn sync(&self) -> io::Result<()> {
        for file in self.levels.read().unwrap_or_else(|p| p.into_inner()).iter() {
            file.sync_data()?;
        }
        sync_dir(&self.dir)
    }
}

impl Nodes for Tree {
    fn node(&self, level: u32, index: u64) -> io::Result<Hash> {
        let level = level as usize;
        let mut hash = [0u8; 32];
        {
            let levels = self.levels.read().unwrap_or_else(|p| p.into_inner());
            if let Some(file) = levels.get(level) {
                file.read_exact_at(&mut hash, index * 32)?;
                return Ok(hash);
            }
        }
        // A level the writer (maybe another process) added since this tree was opened.
        let mut levels = self.levels.write().unwrap_or_else(|p| p.into_inner());
        while levels.len() <= level {
            let path = self.dir.join(format!("{:02}", levels.len()));
            let file = File::open(&path)
                .map_err(|_| io::Error::other(format!("the tree has no level {level}")))?;
            levels.push(file);
        }
        levels[level].read_exact_at(&mut hash, index * 32)?;
        Ok(hash)
    }
}

/// The writable files of a log directory.
pub struct Store {
    dir: PathBuf,
    segment: File,
    segment_first: u64,
    segment_len: u64,
    offsets: File,
    pub tree: Arc<Tree>,
    checkpoints: File,
    size: u64,
}

impl Store {
    /// Opens (or creates) the files, cuts a torn tail off the last segment, and brings offsets
    /// and tree up to the records, trusting them up to `trusted` (the last checkpoint's size).
    pub fn open(dir: &Path, trusted: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir.join("segments"))?;
        let tree = Tree::open(&dir.join("tree"))?;
        let offsets = open_append(&dir.join("offsets"))?;
        let checkpoints = open_append(&dir.join("checkpoints"))?;
        let mut found = segments(dir)?;
        if found.is_empty() {
            File::create(dir.join("segments").join(segment_name(0)))?;
            sync_dir(&dir.join("segments"))?;
            found = segments(dir)?;
        }
        // Records before `trusted` have offsets and tree entries synced; start after them.
        let trusted = trusted
            .min(offsets.metadata()?.len() / 8)
            .min(tree.count(0)?);
        offsets.set_len(trusted * 8)?;
        tree.truncate(trusted)?;
        let (resume_segment, resume_offset) = if trusted == 0 {
            (0, 0)
        } else {
            let mut last = [0u8; 8];
            offsets.read_exact_at(&mut last, (trusted - 1) * 8)?;
            let segment = found
                .iter()
                .rposition(|(first, _)| *first < trusted)
                .unwrap_or(0);
            let mut file = File::open(&found[segment].1)?;
            file.seek(SeekFrom::Start(u64::from_le_bytes(last)))?;
            match read_frame(&mut io::BufReader::new(&mut file))? {
                Frame::Record { record, .. } => (
                    segment,
                    u64::from_le_bytes(last) + FRAME_HEAD + record.len() as u64,
                ),
                _ => {
                    return Err(io::Error::other(format!(
                        "record {} is damaged below the last checkpoint; run `warden audit verify`",
                        trusted - 1
                    )));
                }
            }
        };
        let mut store = Self {
            dir: dir.to_owned(),
            segment: open_append(&found[resume_segment].1)?,
            segment_first: found[resume_segment].0,
            segment_len: 0,
            offsets,
            tree: Arc::new(tree),
            checkpoints,
            size: trusted,
        };
        for (number, (first, path)) in found.iter().enumerate().skip(resume_segment) {
            let last = number + 1 == found.len();
            let mut file = File::open(path)?;
            let mut position = if number == resume_segment {
                resume_offset
            } else {
                0
            };
            file.seek(SeekFrom::Start(position))?;
            if store.size != *first && position == 0 {
                return Err(io::Error::other(format!(
                    "segment {} should start at record {}; run `warden audit verify`",
                    path.display(),
                    store.size
                )));
            }
            let mut reader = io::BufReader::new(file);
            loop {
                match read_frame(&mut reader)? {
                    Frame::Record { hash, record } => {
                        store.offsets.write_all(&position.to_le_bytes())?;
                        store.tree.push(store.size, hash)?;
                        store.size += 1;
                        position += FRAME_HEAD + record.len() as u64;
                    }
                    Frame::End => break,
                    Frame::Torn if last => {
                        // A write cut short by a crash: never acknowledged, so cut it off.
                        OpenOptions::new()
                            .write(true)
                            .open(path)?
                            .set_len(position)?;
                        break;
                    }
                    Frame::Torn => {
                        return Err(io::Error::other(format!(
                            "record {} in {} is damaged; run `warden audit verify`",
                            store.size,
                            path.display()
                        )));
                    }
                }
            }
            if last {
                store.segment = open_append(path)?;
                store.segment_first = *first;
                store.segment_len = position;
            }
        }
        Ok(store)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes records as one batch and makes them durable; returns the index of the first.
    /// Appends records durably: written, then synced.
    pub fn append(&mut self, records: &[Vec<u8>]) -> io::Result<u64> {
        let first = self.write(records)?;
        self.sync()?;
        Ok(first)
    }

    /// Writes records to the segment (the page cache holds them: a process crash loses nothing
    /// written, a power loss may lose what is not yet synced) and indexes them; the index of the
    /// first. A checkpoint covers them only after [`Store::sync`].
    pub fn write(&mut self, records: &[Vec<u8>]) -> io::Result<u64> {
        let first = self.size;
        if self.segment_len >= SEGMENT_BYTES {
            let segments = self.dir.join("segments");
            self.segment = open_append(&segments.join(segment_name(self.size)))?;
            sync_dir(&segments)?;
            self.segment_first = self.size;
            self.segment_len = 0;
        }
        let mut bytes = Vec::with_capacity(records.iter().map(|r| r.len() + 36).sum());
        let mut offsets = Vec::with_capacity(records.len() * 8);
        let mut hashes = Vec::with_capacity(records.len());
        for record in records {
            let hash = leaf_hash(record);
            offsets.extend_from_slice(&(self.segment_len + bytes.len() as u64).to_le_bytes());
            frame(record, &hash, &mut bytes);
            hashes.push(hash);
        }
        self.segment.write_all(&bytes)?;
        self.segment_len += bytes.len() as u64;
        self.offsets.write_all(&offsets)?;
        for hash in hashes {
            self.tree.push(self.size, hash)?;
            self.size += 1;
        }
        Ok(first)
    }

    /// Makes what was written durable (fdatasync of the segment).
    pub fn sync(&mut self) -> io::Result<()> {
        self.segment.sync_data()
    }

    /// Syncs offsets and tree, then appends `note` durably: after a crash, everything up to its
    /// size is trusted without rereading.
    pub fn checkpoint(&mut self, note: &str) -> io::Result<()> {
        self.offsets.sync_data()?;
        self.tree.sync()?;
        let mut bytes = (note.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(note.as_bytes());
        self.checkpoints.write_all(&bytes)?;
        self.checkpoints.sync_data()?;
        // The newest note on its own too, so readers need not go through every one.
        let temporary = self.dir.join("latest-checkpoint.tmp");
        std::fs::write(&temporary, note)?;
        std::fs::rename(temporary, self.dir.join(LATEST_CHECKPOINT))
    }
}

/// Every signed note in a directory's `checkpoints` file, oldest first. A torn last frame
/// (a crash while writing it) is left out.
pub fn read_checkpoints(dir: &Path) -> io::Result<Vec<String>> {
    let path = dir.join("checkpoints");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(path)?;
    let mut notes = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(note) = rest.get(4..4 + len) else {
            break;
        };
        notes.push(String::from_utf8_lossy(note).into_owned());
        rest = &rest[4 + len..];
    }
    Ok(notes)
}

/// Where record `index`'s frame starts in its segment.
pub fn record_offset(dir: &Path, index: u64) -> io::Result<u64> {
    let offsets = File::open(dir.join("offsets"))?;
    let mut offset = [0u8; 8];
    offsets
        .read_exact_at(&mut offset, index * 8)
        .map_err(|_| io::Error::other(format!("the log has no record {index}")))?;
    Ok(u64::from_le_bytes(offset))
}

/// Reads record `index` of a closed or open log directory.
pub fn read_record(dir: &Path, index: u64) -> io::Result<Vec<u8>> {
    let offset = record_offset(dir, index)?;
    let found = segments(dir)?;
    let segment = found
        .iter()
        .rposition(|(first, _)| *first <= index)
        .ok_or_else(|| io::Error::other(format!("no segment holds record {index}")))?;
    let mut file = File::open(&found[segment].1)?;
    file.seek(SeekFrom::Start(offset))?;
    match read_frame(&mut file)? {
        Frame::Record { record, .. } => Ok(record),
        _ => Err(io::Error::other(format!("record {index} is damaged"))),
    }
}
