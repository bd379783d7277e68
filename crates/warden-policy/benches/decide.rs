//! Decision latency at 10 to 100,000 policies, sliced against unsliced, and bundle compile time.
//!
//! Criterion reports means with confidence intervals; after it, a percentile pass prints p50 /
//! p99 per size, sliced and unsliced side by side from the same run, since tails are what a
//! gateway's callers feel.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group};
use warden_policy::synth::synthetic;
use warden_policy::{Bundle, LoadLimits, Slicing};

const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for size in SIZES {
        let s = synthetic(size, 512, 7);
        let bundle =
            Bundle::from_sources(s.sources, LoadLimits::default()).expect("synthetic bundle loads");
        for (label, slicing) in [("sliced", Slicing::On), ("unsliced", Slicing::Off)] {
            if slicing == Slicing::Off && size > 10_000 {
                group.sample_size(10);
            }
            let mut i = 0;
            group.bench_with_input(BenchmarkId::new(label, size), &size, |b, _| {
                b.iter(|| {
                    i = (i + 1) % s.requests.len();
                    black_box(bundle.decide_with(&s.requests[i], slicing))
                })
            });
        }
        group.sample_size(100);
    }
    group.finish();
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let s = synthetic(10_000, 0, 7);
    group.bench_function("10000", |b| {
        b.iter(|| Bundle::from_sources(s.sources.clone(), LoadLimits::default()).expect("loads"))
    });
    group.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Per-decision latencies, p50 and p99, sliced and unsliced, plus load time per size.
fn percentiles() {
    println!("\npercentiles (one run, same requests)");
    println!(
        "{:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8}",
        "policies", "load", "sliced p50", "p99", "unsliced p50", "p99", "p50 ratio", "allowed"
    );
    let mut p50_at_1000 = Duration::ZERO;
    for size in SIZES {
        let s = synthetic(size, 4096, 11);
        let started = Instant::now();
        let bundle =
            Bundle::from_sources(s.sources, LoadLimits::default()).expect("synthetic bundle loads");
        let load = started.elapsed();
        let measure = |slicing, n: usize| {
            let mut times: Vec<Duration> = Vec::with_capacity(n);
            let mut allowed = 0;
            for request in s.requests.iter().cycle().take(n) {
                let t = Instant::now();
                let d = bundle.decide_with(request, slicing);
                times.push(t.elapsed());
                allowed += usize::from(d.is_allowed());
            }
            times.sort_unstable();
            (times, allowed)
        };
        // Warm caches as a server would be, and build the unsliced set (made on first use).
        measure(Slicing::On, 4096);
        measure(Slicing::Off, 2);
        let (sliced, allowed) = measure(Slicing::On, 50_000);
        let unsliced_n = if size >= 100_000 {
            40
        } else if size >= 10_000 {
            400
        } else {
            20_000
        };
        let (unsliced, _) = measure(Slicing::Off, unsliced_n);
        let (s50, s99, u50, u99) = (
            percentile(&sliced, 0.5),
            percentile(&sliced, 0.99),
            percentile(&unsliced, 0.5),
            percentile(&unsliced, 0.99),
        );
        if size == 1_000 {
            p50_at_1000 = s50;
        }
        println!(
            "{:>8} {:>8.0?} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1?} {:>8.1}x {:>7.0}%",
            bundle.len(),
            load,
            s50,
            s99,
            u50,
            u99,
            u50.as_secs_f64() / s50.as_secs_f64(),
            100.0 * allowed as f64 / sliced.len() as f64
        );
        if size == 100_000 {
            println!(
                "p50 at 100k policies / p50 at 1k policies (sliced): {:.2}",
                s50.as_secs_f64() / p50_at_1000.as_secs_f64()
            );
        }
    }
}

criterion_group!(benches, decide, compile);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
