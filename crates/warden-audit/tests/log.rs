#![allow(clippy::unwrap_used)] // Tests fail loudly by design.
//! The log as a user and an attacker meet it: durable appends with group commit, proofs that
//! verify against signed checkpoints, reopening after a crash, and every kind of tampering
//! caught and located by offline verification.

use std::path::Path;
use std::time::Duration;

use warden_audit::merkle::{verify_consistency, verify_inclusion};
use warden_audit::store::{FRAME_HEAD, segments};
use warden_audit::verify::verify;
use warden_audit::{
    AuditLog, Checkpoint, LogConfig, NoteSigner, NoteVerifier, generate_private_key,
};

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_owned(),
        origin: "warden.test/audit".into(),
        checkpoint_interval: Duration::from_millis(200),
    }
}

fn record(i: u64) -> Vec<u8> {
    format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat((i % 7) as usize)).into_bytes()
}

/// A log of `n` records, closed, with its key's private and public text.
fn written(dir: &Path, n: u64) -> (String, NoteVerifier) {
    written_with(dir, n, record)
}

fn written_with(dir: &Path, n: u64, record: fn(u64) -> Vec<u8>) -> (String, NoteVerifier) {
    let (signer, private) = generate_private_key("warden.test/audit").unwrap();
    let verifier = NoteVerifier::parse(&signer.verifier_key()).unwrap();
    let log = AuditLog::open(config(dir), signer).unwrap();
    let pending: Vec<_> = (0..n).map(|i| log.append(record(i))).collect();
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(p.blocking_recv().unwrap().unwrap(), i as u64);
    }
    log.checkpoint().unwrap();
    log.close();
    (private, verifier)
}

fn segment(dir: &Path) -> std::path::PathBuf {
    segments(dir).unwrap().remove(0).1
}

/// Byte ranges of each frame in the first segment.
fn frames(dir: &Path) -> Vec<std::ops::Range<usize>> {
    let bytes = std::fs::read(segment(dir)).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let end = at + FRAME_HEAD as usize + len;
        out.push(at..end);
        at = end;
    }
    out
}

#[test]
fn appends_are_durable_proved_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (private, verifier) = written(dir.path(), 1000);
    let report = verify(dir.path(), &verifier).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.records, 1000);

    // Reopen: the size and the checkpoint carry over; proofs verify against the signed root.
    let log = AuditLog::open(
        config(dir.path()),
        NoteSigner::from_private_key(&private).unwrap(),
    )
    .unwrap();
    assert_eq!(log.size(), 1000);
    let note = log.latest_checkpoint().unwrap();
    let old = Checkpoint::parse(verifier.open(&note).unwrap()).unwrap();
    assert_eq!(old.size, 1000);
    let reader = warden_audit::LogReader::open(dir.path()).unwrap();
    for index in [0, 1, 499, 998, 999] {
        let (leaf, path) = reader.inclusion_proof(index, old.size).unwrap();
        assert_eq!(leaf, warden_audit::merkle::leaf_hash(&record(index)));
        assert!(verify_inclusion(index, old.size, &leaf, &path, &old.root));
    }
    for i in 1000..1500 {
        log.append(record(i)).blocking_recv().unwrap().unwrap();
    }
    let new = Checkpoint::parse(verifier.open(&log.checkpoint().unwrap()).unwrap()).unwrap();
    assert_eq!(new.size, 1500);
    let proof = reader.consistency_proof(old.size, new.size).unwrap();
    assert!(verify_consistency(
        old.size, new.size, &old.root, &new.root, &proof
    ));
    assert!(reader.inclusion_proof(1500, 1500).is_err());
    assert_eq!(reader.record(1234).unwrap(), record(1234));
    assert!(
        log.append(vec![b'x'; 2 << 20])
            .blocking_recv()
            .unwrap()
            .is_err()
    );
    log.close();
    assert!(
        log.append(record(0)).blocking_recv().unwrap().is_err(),
        "closed"
    );
    assert!(verify(dir.path(), &verifier).unwrap().ok());
}

#[test]
fn a_torn_last_record_is_cut_off_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (private, verifier) = written(dir.path(), 100);
    // A crash in the middle of writing record 100: half a frame at the end.
    let mut bytes = std::fs::read(segment(dir.path())).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(&[0x20, 0, 0, 0, 1, 2, 3]);
    std::fs::write(segment(dir.path()), &bytes).unwrap();
    let report = verify(dir.path(), &verifier).unwrap();
    assert!(report.ok() && report.torn_tail, "{:?}", report.problems);

    let log = AuditLog::open(
        config(dir.path()),
        NoteSigner::from_private_key(&private).unwrap(),
    )
    .unwrap();
    assert_eq!(
        std::fs::metadata(segment(dir.path())).unwrap().len() as usize,
        whole
    );
    assert_eq!(
        log.append(record(100)).blocking_recv().unwrap().unwrap(),
        100
    );
    log.close();
    let report = verify(dir.path(), &verifier).unwrap();
    assert!(report.ok() && !report.torn_tail, "{:?}", report.problems);
    assert_eq!(report.records, 101);
}

/// Whether the first problem is about record `n` (alone, or the first of a run).
fn names_first(problems: &[String], n: u64) -> bool {
    problems[0].starts_with(&format!("record {n}:"))
        || problems[0].starts_with(&format!("records {n}.."))
}

/// Writes a log of 50 records, applies `tamper` to its directory, and returns the problems
/// verification reports.
fn tampered(tamper: impl FnOnce(&Path)) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (_, verifier) = written(dir.path(), 50);
    assert!(verify(dir.path(), &verifier).unwrap().ok());
    tamper(dir.path());
    let report = verify(dir.path(), &verifier).unwrap();
    assert!(!report.ok(), "tampering went unnoticed");
    report.problems
}

#[test]
fn a_flipped_byte_is_found_in_its_record() {
    let problems = tampered(|dir| {
        let frame = frames(dir)[17].clone();
        let mut bytes = std::fs::read(segment(dir)).unwrap();
        bytes[frame.end - 2] ^= 0x01;
        std::fs::write(segment(dir), bytes).unwrap();
    });
    assert!(names_first(&problems, 17), "{problems:?}");
}

#[test]
fn a_rewritten_record_with_its_hash_recomputed_is_still_found() {
    let problems = tampered(|dir| {
        let frames = frames(dir);
        let mut bytes = std::fs::read(segment(dir)).unwrap();
        let forged = br#"{"n":23,"pad":"yy"}"#;
        let mut frame = Vec::new();
        warden_audit::store::frame(forged, &warden_audit::merkle::leaf_hash(forged), &mut frame);
        bytes.splice(frames[23].clone(), frame);
        std::fs::write(segment(dir), bytes).unwrap();
    });
    assert!(names_first(&problems, 23), "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("does not match the records")),
        "{problems:?}"
    );
}

#[test]
fn a_deleted_record_is_found() {
    let problems = tampered(|dir| {
        let frame = frames(dir)[30].clone();
        let mut bytes = std::fs::read(segment(dir)).unwrap();
        bytes.drain(frame);
        std::fs::write(segment(dir), bytes).unwrap();
    });
    assert!(names_first(&problems, 30), "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("covers 50 records but the log holds 49")),
        "{problems:?}"
    );
}

#[test]
fn two_reordered_records_are_found() {
    let problems = tampered(|dir| {
        let frames = frames(dir);
        let bytes = std::fs::read(segment(dir)).unwrap();
        let mut out = bytes[..frames[10].start].to_vec();
        out.extend_from_slice(&bytes[frames[11].clone()]);
        out.extend_from_slice(&bytes[frames[10].clone()]);
        out.extend_from_slice(&bytes[frames[11].end..]);
        std::fs::write(segment(dir), out).unwrap();
    });
    assert!(names_first(&problems, 10), "{problems:?}");
}

#[test]
fn truncation_is_found() {
    let problems = tampered(|dir| {
        let frame = frames(dir)[40].clone();
        let bytes = std::fs::read(segment(dir)).unwrap();
        std::fs::write(segment(dir), &bytes[..frame.start]).unwrap();
    });
    assert!(
        problems
            .iter()
            .any(|p| p.contains("covers 50 records but the log holds 40")),
        "{problems:?}"
    );
}

/// Records of about 250 bytes: 16,000 of them span several of verification's parallel units.
fn large_record(i: u64) -> Vec<u8> {
    format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(230)).into_bytes()
}

#[test]
fn the_offsets_file_is_only_a_hint_to_verification() {
    let dir = tempfile::tempdir().unwrap();
    let (_, verifier) = written_with(dir.path(), 16_000, large_record);
    // Offsets that lie (every record shifted by one frame) change nothing verification finds.
    let offsets = std::fs::read(dir.path().join("offsets")).unwrap();
    std::fs::write(
        dir.path().join("offsets"),
        [&offsets[8..], &offsets[..8]].concat(),
    )
    .unwrap();
    let report = verify(dir.path(), &verifier).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.records, 16_000);
    // Nor do missing ones.
    std::fs::remove_file(dir.path().join("offsets")).unwrap();
    let report = verify(dir.path(), &verifier).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.records, 16_000);
}

#[test]
fn a_record_deleted_deep_in_a_large_log_is_found_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (_, verifier) = written_with(dir.path(), 16_000, large_record);
    let frame = frames(dir.path())[9_001].clone();
    let mut bytes = std::fs::read(segment(dir.path())).unwrap();
    bytes.drain(frame);
    std::fs::write(segment(dir.path()), bytes).unwrap();
    let report = verify(dir.path(), &verifier).unwrap();
    assert!(names_first(&report.problems, 9001), "{:?}", report.problems);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("covers 16000 records but the log holds 15999")),
        "{:?}",
        report.problems
    );
}

fn rewrite_checkpoints(dir: &Path, notes: &[String]) {
    let mut bytes = Vec::new();
    for note in notes {
        bytes.extend_from_slice(&(note.len() as u32).to_le_bytes());
        bytes.extend_from_slice(note.as_bytes());
    }
    std::fs::write(dir.join("checkpoints"), bytes).unwrap();
}

#[test]
fn a_replaced_checkpoint_is_found() {
    let problems = tampered(|dir| {
        let mut notes = warden_audit::store::read_checkpoints(dir).unwrap();
        let last = notes.last_mut().unwrap();
        *last = last.replacen("\n50\n", "\n49\n", 1);
        rewrite_checkpoints(dir, &notes);
    });
    assert!(
        problems.iter().any(|p| p.contains("no valid signature")),
        "{problems:?}"
    );
}

#[test]
fn a_checkpoint_re_signed_with_another_key_is_found() {
    let problems = tampered(|dir| {
        let (other, _) = generate_private_key("warden.test/audit").unwrap();
        let mut notes = warden_audit::store::read_checkpoints(dir).unwrap();
        let verifier_free_text = notes
            .last()
            .unwrap()
            .split("\n\n")
            .next()
            .unwrap()
            .to_owned()
            + "\n";
        *notes.last_mut().unwrap() = other.sign(&verifier_free_text);
        rewrite_checkpoints(dir, &notes);
    });
    assert!(
        problems
            .iter()
            .any(|p| p.contains("signed with another key")),
        "{problems:?}"
    );
}

#[test]
fn an_opened_log_refuses_to_continue_over_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let (private, _) = written(dir.path(), 20);
    let frame = frames(dir.path())[5].clone();
    let mut bytes = std::fs::read(segment(dir.path())).unwrap();
    bytes.drain(frame);
    std::fs::write(segment(dir.path()), bytes).unwrap();
    std::fs::remove_file(dir.path().join("offsets")).unwrap();
    let opened = AuditLog::open(
        config(dir.path()),
        NoteSigner::from_private_key(&private).unwrap(),
    );
    let error = opened
        .err()
        .expect("a tampered log does not open")
        .to_string();
    assert!(error.contains("warden audit verify"), "{error}");
}

/// A writer far behind refuses more rather than holding unbounded memory: records queued past
/// 64 MiB are refused at once (and said so), and everything accepted is written in order.
#[test]
fn the_queue_is_bounded_by_bytes_and_says_when_it_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, _) = generate_private_key("warden.test/audit").unwrap();
    let log = AuditLog::open(config(dir.path()), signer).unwrap();
    // Made first, so the appends below arrive faster than any disk writes them.
    let records: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(1_000_000)).into_bytes())
        .collect();
    let staged: Vec<_> = records.into_iter().map(|r| log.append_staged(r)).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let answers: Vec<_> = runtime.block_on(async {
        let mut answers = Vec::new();
        for stage in staged {
            answers.push(stage.durable.await.unwrap());
        }
        answers
    });
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Err(warden_audit::AuditError::Behind(_))))
        .count();
    let kept = answers.iter().filter(|a| a.is_ok()).count();
    assert!(refused > 0, "nothing refused: the queue is unbounded");
    assert!(kept >= 60, "only {kept} of the first 64 MiB kept");
    assert_eq!(kept + refused, 100);
    assert_eq!(log.size(), kept as u64);
    // The refusal says what to expect.
    let behind = answers.iter().find_map(|a| a.as_ref().err()).unwrap();
    assert!(behind.to_string().contains("behind"), "{behind}");
}
