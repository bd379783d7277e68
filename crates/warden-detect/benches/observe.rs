//! Detector throughput: decisions observed per second on one thread, for a realistic mix (most
//! calls no egress; egress spread over many agents and destinations) and for a flood of
//! distinct hosts that keeps the memory bound busy; every call also checked against its agent's
//! baseline (new reach), learning for the first half, then learned. Goal: ≥ 200,000 decisions/s per core.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use warden_detect::{Detectors, Observation, Settings};

struct Event {
    agent: String,
    baseline: String,
    reach: String,
    id: String,
    host: String,
    port: u16,
    egress: bool,
}

fn events(count: usize, distinct_hosts: bool) -> Vec<Event> {
    (0..count)
        .map(|i| Event {
            agent: format!("spiffe://td/tenant/t/agent/a{}/i-1", i % 500),
            baseline: format!("spiffe://td/tenant/t/agent/a{}", i % 500),
            reach: if distinct_hosts {
                format!("egress.connect h{i}.example:443")
            } else {
                format!("mcp.tools/call tool s/t{}", i % 30)
            },
            id: format!("{i:032x}"),
            host: if distinct_hosts {
                format!("h{i}.example")
            } else {
                format!("api{}.example", i % 40)
            },
            port: [443, 80, 8443][i % 3],
            egress: distinct_hosts || i % 4 == 0,
        })
        .collect()
}

fn observation(event: &Event, time: i64) -> Observation<'_> {
    Observation {
        time,
        agent: &event.agent,
        decision_id: &event.id,
        allowed: true,
        destination: event.egress.then_some((event.host.as_str(), event.port)),
        review: false,
        tainted: false,
        sensitive: event.egress,
        grant: &event.agent,
        source: Some("10.0.0.1"),
        baseline: &event.baseline,
        reach: Some(&event.reach),
    }
}

fn run(detectors: &mut Detectors, events: &[Event]) -> usize {
    let mut found = 0;
    for (i, event) in events.iter().enumerate() {
        let time = i64::try_from(i / 1_000).unwrap_or(i64::MAX);
        found += detectors.observe(&observation(event, time)).len();
    }
    found
}

fn observe(c: &mut Criterion) {
    let mut group = c.benchmark_group("observe");
    for (label, distinct) in [("mix", false), ("distinct-host flood", true)] {
        let events = events(100_000, distinct);
        group.bench_function(label, |b| {
            b.iter(|| {
                let mut detectors = Detectors::new(Settings {
                    max_entries: 100_000,
                    learning_secs: 50,
                    ..Settings::default()
                });
                black_box(run(&mut detectors, &events))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, observe);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    for (label, distinct) in [("mix", false), ("distinct-host flood", true)] {
        let events = events(1_000_000, distinct);
        let mut detectors = Detectors::new(Settings::default());
        let started = Instant::now();
        let found = run(&mut detectors, &events);
        let rate = events.len() as f64 / started.elapsed().as_secs_f64();
        println!(
            "{label}: {rate:.0} decisions/s on one thread ({found} detections, {} attempts held)",
            detectors.entries()
        );
    }
}
