//! MCP `tools/call` side by side in one run: straight to the demo MCP server, and through Warden's
//! gateway (mTLS, grant, full pipeline, a 10,000-policy bundle, decisions logged). Open loop at a
//! fixed rate for latency, closed loop for throughput. Run: `cargo bench -p warden --bench gateway`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_control::HttpClient;

const RATE: u64 = 1_000;
const OPEN_LOOP: Duration = Duration::from_secs(5);
const CLOSED_LOOP: Duration = Duration::from_secs(5);
const WORKERS: usize = 16;
const POLICIES: usize = 10_000;

const DEMO_POLICY: &str = "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: bench, namespace: demo}\nspec:\n  selector: {matchLabels: {app: assistant}}\n  mcp:\n    - {server: demo, tools: [echo]}\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Target {
    name: &'static str,
    client: HttpClient,
    url: String,
    headers: Vec<(&'static str, String)>,
}

const BODY: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}"#;

async fn once(target: &Target) -> bool {
    let headers: Vec<(&str, &str)> = target
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    matches!(
        target.client.send(http::Method::POST, &target.url, &headers, Some(BODY.to_vec()), 1 << 20).await,
        Ok(r) if r.status.is_success() && r.body.windows(5).any(|w| w == b"hello")
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len().saturating_sub(1))]
}

/// Open loop: a request every 1/RATE seconds whatever the answers do. Latency is timed from each
/// request's own start: the timer that schedules them ticks in milliseconds, coarser than what
/// is measured, and at this moderate rate nothing queues.
async fn open_loop(target: Arc<Target>) -> (Duration, Duration, usize) {
    let interval = Duration::from_nanos(1_000_000_000 / RATE);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n: u32 = 0;
    while started.elapsed() < OPEN_LOOP {
        let scheduled = started + interval * n;
        tokio::time::sleep_until(scheduled.into()).await;
        let target = Arc::clone(&target);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = once(&target).await;
            (sent.elapsed(), ok)
        }));
        n += 1;
    }
    let mut times = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (took, ok) = t.await.expect("request task");
        times.push(took);
        failed += usize::from(!ok);
    }
    times.sort_unstable();
    (percentile(&times, 0.5), percentile(&times, 0.99), failed)
}

async fn closed_loop(target: Arc<Target>) -> f64 {
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let target = Arc::clone(&target);
            tokio::spawn(async move {
                let mut done = 0u64;
                while started.elapsed() < CLOSED_LOOP {
                    if once(&target).await {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.expect("worker");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn write_policies(dir: &Path) {
    std::fs::create_dir_all(dir).expect("policy dir");
    let synthetic = warden_policy::synth::synthetic(POLICIES, 16, 7);
    for (i, source) in synthetic.sources.iter().enumerate() {
        std::fs::write(dir.join(format!("synthetic-{i}.yaml")), &source.text).expect("write");
    }
    std::fs::write(dir.join("bench.yaml"), DEMO_POLICY).expect("write");
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_policies(&dir.path().join("warden-data/policies"));
    let (c, g, d) = (free_port(), free_port(), free_port());
    let exec = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("up")
        .args(["--control-listen", &format!("127.0.0.1:{c}")])
        .args(["--gateway-listen", &format!("127.0.0.1:{g}")])
        .args(["--demo-listen", &format!("127.0.0.1:{d}")])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("warden up");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    for line in lines.by_ref() {
        if line.expect("line").contains("Stop with Ctrl-C") {
            break;
        }
    }
    let ready = exec.elapsed();
    std::thread::spawn(move || lines.for_each(drop));
    let idle_rss = rss_kib(child.id());
    let creds = dir.path().join("creds");
    let token = std::fs::read_to_string(dir.path().join("warden-data/admin-token")).expect("token");
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "agent",
            "credential",
            "demo/assistant",
            "--task",
            "bench",
            "--ttl",
            "3600",
            "--out",
        ])
        .arg(&creds)
        .env("WARDEN_CONTROL_URL", format!("http://127.0.0.1:{c}"))
        .env("WARDEN_TOKEN", token.trim())
        .output()
        .expect("credential");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(creds.join(f)).expect("credential file");
    let (cert, key) = (read("svid.pem"), read("svid-key.pem"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mcp_headers = vec![
        ("content-type", "application/json".to_owned()),
        ("accept", "application/json, text/event-stream".to_owned()),
    ];
    let mut warden_headers = mcp_headers.clone();
    warden_headers.push(("authorization", format!("Bearer {}", read("grant").trim())));
    let targets = [
        Target {
            name: "direct",
            client: HttpClient::new(Duration::from_secs(10)).expect("client"),
            url: format!("http://127.0.0.1:{d}/mcp"),
            headers: mcp_headers,
        },
        Target {
            name: "warden",
            client: HttpClient::with_tls(
                Duration::from_secs(10),
                &read("bundle.pem"),
                Some((&cert, &key)),
            )
            .expect("mTLS client"),
            url: format!("https://127.0.0.1:{g}/mcp/demo"),
            headers: warden_headers,
        },
    ];
    println!("MCP tools/call (echo), {POLICIES} policies loaded, mTLS + grant through Warden");
    println!(
        "exec to ready (warden up: control plane + gateway + demo): {ready:.1?}; idle RSS {} MiB (whole process)",
        idle_rss / 1024
    );
    println!(
        "{:<8} {:>12} {:>12} {:>8} {:>14}",
        "target", "p50", "p99", "failed", "closed req/s"
    );
    let mut results = Vec::new();
    for target in targets {
        let target = Arc::new(target);
        runtime.block_on(async {
            for _ in 0..200 {
                assert!(once(&target).await, "{} does not answer", target.name);
            }
        });
        let (p50, p99, failed) = runtime.block_on(open_loop(Arc::clone(&target)));
        let throughput = runtime.block_on(closed_loop(Arc::clone(&target)));
        println!(
            "{:<8} {:>12.0?} {:>12.0?} {:>8} {:>14.0}",
            target.name, p50, p99, failed, throughput
        );
        results.push((p50, p99, throughput));
    }
    let (direct, warden) = (results[0], results[1]);
    println!(
        "added by Warden at {RATE} req/s: p50 {:.0?}, p99 {:.0?}; throughput through Warden {:.0}% of direct",
        warden.0.saturating_sub(direct.0),
        warden.1.saturating_sub(direct.1),
        100.0 * warden.2 / direct.2
    );
    println!(
        "RSS after load {} MiB (whole process)",
        rss_kib(child.id()) / 1024
    );
    let _ = child.kill();
    let _ = child.wait();
}
