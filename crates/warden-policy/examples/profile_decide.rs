//! Runs decisions in a loop for a profiler: `cargo run --release --example profile_decide -- 1000`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use warden_policy::synth::synthetic;
use warden_policy::{Bundle, LoadLimits};

fn main() {
    let iterations: u32 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let size = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let s = synthetic(size, 4096, 11);
    let loading = std::time::Instant::now();
    let bundle =
        Bundle::from_sources(s.sources, LoadLimits::default()).expect("synthetic bundle loads");
    println!(
        "{} policies loaded in {:?}",
        bundle.len(),
        loading.elapsed()
    );
    let evaluated: usize = s
        .requests
        .iter()
        .map(|r| bundle.explain(r, warden_policy::Slicing::On).evaluated)
        .sum();
    println!(
        "{:.2} policies evaluated per request",
        evaluated as f64 / s.requests.len() as f64
    );
    let started = std::time::Instant::now();
    let mut allowed = 0;
    for request in s.requests.iter().cycle().take(iterations as usize) {
        allowed += usize::from(bundle.decide(request).is_allowed());
    }
    println!(
        "{allowed} allowed, {:?} per decision",
        started.elapsed() / iterations
    );
}
