//! The audit log's speed on this machine: durable appends with group commit, offline
//! verification, and inclusion proofs in a tree of ten million records.
//! Run: `cargo bench -p warden-audit --bench log` (writes about 2 GB under the temp directory;
//! `-- verify` skips the ten-million-record tree).

use std::time::{Duration, Instant};

use warden_audit::merkle::verify_inclusion;
use warden_audit::{AuditLog, Checkpoint, LogConfig, LogReader, NoteVerifier};

/// A decision record of typical size (about 400 bytes).
fn record(i: u64) -> Vec<u8> {
    format!(
        r#"{{"time":1795322681,"decisionId":"{i:032x}","outcome":"allow","deciding":["policy.yaml:7 demo/planner spec.mcp[0]"],"bundle":"sha256:90e3514fb49577f596ef355c0c550ddaf8875d516ffa834d3f4a0c5071492625","agent":"spiffe://warden.local/tenant/demo/agent/assistant/i-88e0a81e00","tenant":"demo","task":"t","grant":"78c212519b456dd2b07c0620dbc45c1d","action":"mcp.tools/call","resource":"tool demo/echo","target":{{"server":"demo","tool":"echo"}},"findings":[],"gateway":"https://127.0.0.1:8443","decideMicros":21}}"#
    )
    .into_bytes()
}

fn open(dir: &std::path::Path) -> (AuditLog, NoteVerifier) {
    let (signer, _) = warden_audit::generate_private_key("bench/audit").expect("key");
    let verifier = NoteVerifier::parse(&signer.verifier_key()).expect("verifier");
    let log = AuditLog::open(
        LogConfig {
            dir: dir.to_owned(),
            origin: "bench/audit".into(),
            checkpoint_interval: Duration::from_secs(1),
        },
        signer,
    )
    .expect("open");
    (log, verifier)
}

/// Appends `n` records with `in_flight` outstanding at a time (as concurrent gateway requests
/// would); returns records per second, each acknowledged only once durable.
fn append(log: &AuditLog, n: u64, in_flight: usize, make: fn(u64) -> Vec<u8>) -> f64 {
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(in_flight);
    for i in 0..n {
        if pending.len() == in_flight {
            let done: warden_audit::Appended = pending.pop_front().expect("pending");
            done.blocking_recv().expect("answer").expect("durable");
        }
        pending.push_back(log.append(make(i)));
    }
    for done in pending {
        done.blocking_recv().expect("answer").expect("durable");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let base = tempfile::tempdir().expect("temp dir");

    // Durable appends, group commit.
    let dir = base.path().join("decisions");
    let (log, verifier) = open(&dir);
    let n = 1_000_000;
    println!("durable append, {n} records of ~400 bytes (fsync per batch):");
    for in_flight in [1, 64, 1024, 16_384] {
        let subset = if in_flight == 1 { 2_000 } else { n / 4 };
        let rate = append(&log, subset, in_flight, record);
        println!("  {in_flight:>6} in flight: {rate:>10.0} records/s");
    }
    log.checkpoint().expect("checkpoint");
    log.close();

    // Offline verification.
    let started = Instant::now();
    let report = warden_audit::verify::verify(&dir, &verifier).expect("verify");
    let took = started.elapsed();
    assert!(report.ok(), "{:?}", report.problems);
    println!(
        "verify: {} records in {took:.2?} = {:.0} records/s",
        report.records,
        report.records as f64 / took.as_secs_f64()
    );

    // `-- verify` stops here (appends and verification only).
    if std::env::args().any(|arg| arg == "verify") {
        return;
    }

    // Inclusion proofs at ten million records.
    let dir = base.path().join("ten-million");
    let (log, verifier) = open(&dir);
    let big = 10_000_000;
    let started = Instant::now();
    let rate = append(&log, big, 65_536, |i| i.to_le_bytes().to_vec());
    println!(
        "built a tree of {big} records in {:.1?} ({rate:.0} records/s)",
        started.elapsed()
    );
    let note = log.checkpoint().expect("checkpoint");
    log.close();
    let checkpoint = Checkpoint::parse(verifier.open(&note).expect("signed")).expect("checkpoint");
    let reader = LogReader::open(&dir).expect("reader");
    let mut times = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let index = x % checkpoint.size;
        let started = Instant::now();
        let (leaf, path) = reader
            .inclusion_proof(index, checkpoint.size)
            .expect("proof");
        times.push(started.elapsed());
        assert!(verify_inclusion(
            index,
            checkpoint.size,
            &leaf,
            &path,
            &checkpoint.root
        ));
    }
    times.sort_unstable();
    let at = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    println!(
        "inclusion proof at {} records: p50 {:.1?}, p99 {:.1?} (random records, page cache warm)",
        checkpoint.size,
        at(0.5),
        at(0.99)
    );
}
