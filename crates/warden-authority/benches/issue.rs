//! SVID issuance throughput (goal: at least 5,000 per second on one core).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use time::OffsetDateTime;
use warden_authority::CertificateAuthority;
use warden_model::{SpiffeId, TrustDomain};

fn issue(c: &mut Criterion) {
    let now = OffsetDateTime::now_utc();
    let ca = CertificateAuthority::new(
        TrustDomain::new("bench.example").expect("valid"),
        Duration::from_secs(30 * 86_400),
        now,
    )
    .expect("authority");
    let id = SpiffeId::new("spiffe://bench.example/tenant/t/agent/a/i-1").expect("valid");
    c.bench_function("issue_svid", |b| {
        b.iter(|| black_box(ca.issue_svid(&id, None, now).expect("issued")))
    });
}

criterion_group!(benches, issue);
criterion_main!(benches);
