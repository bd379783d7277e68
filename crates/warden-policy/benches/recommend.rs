//! `warden policy recommend`'s core: audit records (JSON bytes, as the log holds them) parsed and
//! learned from, per record, over a realistic mix — 200 agents, tool calls with a few arguments
//! (ids, enumerations, numbers, free text), HTTP routes with ids in their paths, egress — and
//! the policies written from them. The goal is 1,000,000 records in 30 s: 30 µs a record.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use serde_json::json;
use warden_policy::Recommender;

const RECORDS: usize = 100_000;

fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let pick = |options: [&'static str; 2]| options[i % 2];
            let agent = format!(
                "spiffe://acme.example/tenant/acme/agent/bot-{}/i-{}",
                i % 200,
                i % 7
            );
            let record = match i % 4 {
                0 | 1 => json!({
                    "time": 1_760_000_000 + i, "decisionId": format!("{i:032x}"), "outcome": "allow",
                    "agent": agent, "tenant": "acme", "action": "mcp.tools/call",
                    "resource": format!("tool github/tool-{}", i % 12),
                    "target": {"server": "github", "tool": format!("tool-{}", i % 12)},
                    "arguments": {"repo": format!("acme/repo-{}", i % 40), "state": pick(["open", "closed"]),
                                  "number": i % 500, "body": format!("a comment about issue {i}")},
                    "findings": [], "deciding": ["acme/bot spec.mcp[0]"], "bundle": "sha256:00",
                }),
                2 => json!({
                    "time": 1_760_000_000 + i, "decisionId": format!("{i:032x}"), "outcome": "allow",
                    "agent": agent, "tenant": "acme", "action": "http",
                    "resource": "service billing",
                    "target": {"service": "billing", "method": pick(["GET", "POST"]),
                               "path": format!("/v1/invoices/{}", i % 10_000)},
                    "findings": [], "deciding": [], "bundle": "sha256:00",
                }),
                _ => json!({
                    "time": 1_760_000_000 + i, "decisionId": format!("{i:032x}"),
                    "outcome": pick(["allow", "deny"]),
                    "agent": agent, "tenant": "acme", "action": "egress.connect",
                    "resource": "api.example.com:443",
                    "target": {"host": format!("api{}.example.com", i % 30), "port": 443,
                               "protocol": "tcp", "ip": "93.184.215.14"},
                    "findings": [], "deciding": [], "bundle": "sha256:00",
                }),
            };
            serde_json::to_vec(&record).expect("a record")
        })
        .collect()
}

fn learn(records: &[Vec<u8>]) -> Recommender {
    let mut recommender = Recommender::new();
    for record in records {
        let value: serde_json::Value = serde_json::from_slice(record).expect("JSON");
        black_box(recommender.observe(&value));
    }
    recommender
}

fn recommend(c: &mut Criterion) {
    let records = records(RECORDS);
    let mut group = c.benchmark_group("recommend");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("parse_and_learn_100k", |b| {
        b.iter(|| black_box(learn(&records)))
    });
    group.finish();
    // One pass as `recommend` makes it: learn, then write every agent's policy.
    let started = Instant::now();
    let recommendation = learn(&records).finish();
    let took = started.elapsed();
    println!(
        "recommend: {RECORDS} records → {} files for {} agents in {:.0} ms ({:.1} µs a record; 1,000,000 records ≈ {:.1} s)",
        recommendation.files.len(),
        recommendation.agents.len(),
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e6 / RECORDS as f64,
        took.as_secs_f64() * 1_000_000.0 / RECORDS as f64,
    );
}

criterion_group!(benches, recommend);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
