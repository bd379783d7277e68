//! Credentials: issue (SVID, grant, both), verify grants cold and cached, delegate online and
//! offline.
//! Goals: cached verification ≤ 2 µs p99, cold ≤ 150 µs p99, issuance ≥ 5,000/s on one core.
//!
//! Criterion reports means; after it, a percentile pass prints p50 / p99 of the same operations
//! measured one call at a time, and the issuance rate on one thread.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use time::OffsetDateTime;
use warden_authority::{
    Attenuation, CertificateAuthority, DelegationRequest, GrantIssuer, GrantKey, GrantRequest,
    GrantRoots, GrantVerifier, Holder, Presenter, Right,
};
use warden_model::{Action, Name, SpiffeId, TrustDomain};

const AGENT: &str = "spiffe://bench.example/tenant/t/agent/planner/i-1";

struct Setup {
    ca: CertificateAuthority,
    issuer: GrantIssuer,
    roots: GrantRoots,
    agent: SpiffeId,
    action: Action,
    /// Grants with 1 and 3 blocks (two offline attenuations).
    one_block: String,
    three_blocks: String,
}

fn rights(list: &[(&str, &str)]) -> Vec<Right> {
    list.iter()
        .map(|(a, t)| Right::new(a, t).expect("valid right"))
        .collect()
}

fn request(agent: &SpiffeId) -> GrantRequest {
    GrantRequest {
        agent: agent.clone(),
        labels: Default::default(),
        task: Name::new("ticket-1").expect("valid"),
        purpose: "benchmark".into(),
        rights: rights(&[
            ("mcp.*", "github/*"),
            ("http", "billing/v1/*"),
            ("egress.connect", "api.github.com:443"),
        ]),
        ttl: None,
        holder: Holder::Spiffe(agent.clone()),
    }
}

fn setup() -> Setup {
    let now = OffsetDateTime::now_utc();
    let ca = CertificateAuthority::new(
        TrustDomain::new("bench.example").expect("valid"),
        Duration::from_secs(30 * 86_400),
        now,
    )
    .expect("authority");
    let issuer = GrantIssuer::new(GrantKey::generate(1), 3);
    let roots = GrantRoots::new([(1, issuer.key().public())]);
    let agent = SpiffeId::new(AGENT).expect("valid");
    let one_block = issuer.mint(request(&agent), now).expect("minted").token;
    let narrow = |token: &str, r: &[(&str, &str)]| {
        warden_authority::attenuate(
            token,
            &roots,
            Attenuation {
                rights: rights(r),
                ..Attenuation::default()
            },
        )
        .expect("attenuated")
    };
    let two = narrow(&one_block, &[("mcp.*", "github/*")]);
    let three_blocks = narrow(&two, &[("mcp.tools/call", "github/*")]);
    let action = serde_json::from_str(
        r#"{"kind":"mcp.tools/call","server":"github","tool":"create_issue","args":{}}"#,
    )
    .expect("valid action");
    Setup {
        ca,
        issuer,
        roots,
        agent,
        action,
        one_block,
        three_blocks,
    }
}

fn grants(c: &mut Criterion) {
    let s = setup();
    let now = OffsetDateTime::now_utc();
    let unix = now.unix_timestamp();
    c.bench_function("issue_svid", |b| {
        b.iter(|| black_box(s.ca.issue_svid(&s.agent, None, now).expect("issued")))
    });
    c.bench_function("mint_grant", |b| {
        b.iter(|| black_box(s.issuer.mint(request(&s.agent), now).expect("minted")))
    });
    c.bench_function("issue_svid_and_grant", |b| {
        b.iter(|| {
            let svid = s.ca.issue_svid(&s.agent, None, now).expect("svid");
            let grant = s.issuer.mint(request(&s.agent), now).expect("grant");
            black_box((svid, grant))
        })
    });
    let verifier = GrantVerifier::new(s.roots.clone(), 3);
    for (name, token) in [("1_block", &s.one_block), ("3_blocks", &s.three_blocks)] {
        c.bench_function(&format!("verify_cold_{name}"), |b| {
            b.iter(|| black_box(verifier.verify_cold(token).expect("verifies")))
        });
        c.bench_function(&format!("authorize_cached_{name}"), |b| {
            b.iter(|| {
                black_box(
                    verifier
                        .authorize(token, Presenter::Svid(&s.agent), &s.action, unix)
                        .expect("allowed"),
                )
            })
        });
    }
    let parent = verifier.verify(&s.one_block, unix).expect("verifies");
    let child = SpiffeId::new(format!("{AGENT}/agent/coder/c-1")).expect("valid");
    c.bench_function("delegate_online", |b| {
        b.iter(|| {
            black_box(
                s.issuer
                    .delegate(
                        &parent,
                        DelegationRequest {
                            agent: child.clone(),
                            rights: rights(&[("mcp.tools/call", "github/x")]),
                            ttl: None,
                            holder: Holder::Spiffe(child.clone()),
                            purpose: None,
                        },
                        now,
                    )
                    .expect("delegated"),
            )
        })
    });
    c.bench_function("attenuate_offline", |b| {
        b.iter(|| {
            black_box(
                warden_authority::attenuate(
                    &s.one_block,
                    &s.roots,
                    Attenuation {
                        rights: rights(&[("mcp.tools/call", "github/x")]),
                        holder: Some(child.clone()),
                        ..Attenuation::default()
                    },
                )
                .expect("attenuated"),
            )
        })
    });
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn timed(n: usize, mut op: impl FnMut()) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        op();
        times.push(t.elapsed());
    }
    times.sort_unstable();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn percentiles() {
    let s = setup();
    let unix = OffsetDateTime::now_utc().unix_timestamp();
    println!("\npercentiles (one run, one call at a time)");
    println!("{:<28} {:>10} {:>10}", "operation", "p50", "p99");
    for (name, token) in [("1 block", &s.one_block), ("3 blocks", &s.three_blocks)] {
        // Cold: a fresh verifier per call would measure construction too; verify_cold skips the
        // cache by design.
        let verifier = GrantVerifier::new(s.roots.clone(), 3);
        let (p50, p99) = timed(3_000, || {
            black_box(verifier.verify_cold(token).expect("verifies"));
        });
        println!(
            "{:<28} {:>10.1?} {:>10.1?}",
            format!("verify cold, {name}"),
            p50,
            p99
        );
        verifier.verify(token, unix).expect("warm");
        let (p50, p99) = timed(200_000, || {
            black_box(
                verifier
                    .authorize(token, Presenter::Svid(&s.agent), &s.action, unix)
                    .expect("allowed"),
            );
        });
        println!(
            "{:<28} {:>10.1?} {:>10.1?}",
            format!("authorize cached, {name}"),
            p50,
            p99
        );
    }
    let now = OffsetDateTime::now_utc();
    let started = Instant::now();
    let mut issued = 0u32;
    while started.elapsed() < Duration::from_secs(2) {
        black_box(s.ca.issue_svid(&s.agent, None, now).expect("svid"));
        black_box(s.issuer.mint(request(&s.agent), now).expect("grant"));
        issued += 1;
    }
    println!(
        "issuance (SVID + grant), one thread: {:.0} per second",
        f64::from(issued) / started.elapsed().as_secs_f64()
    );
}

criterion_group!(benches, grants);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
