//! Side by side in one run, for MCP `tools/call` and for a plain HTTP GET: straight to the demo
//! upstream, through Warden's gateway (mTLS, grant, full pipeline, a 10,000-policy bundle,
//! decisions logged), and through nginx as a plain TLS reverse proxy (when nginx is installed).
//! Open loop at a fixed rate for latency, closed loop for throughput; then exec-to-ready and idle
//! RSS of a gateway-only process. Run: `cargo bench -p warden --bench gateway`.

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

const DEMO_POLICY: &str = "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: bench, namespace: demo}\nspec:\n  selector: {matchLabels: {app: assistant}}\n  mcp:\n    - {server: demo, tools: [echo]}\n  http:\n    - {service: demo-api, methods: [GET], paths: [/status]}\n";

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
    /// POSTed when set (MCP); a GET otherwise.
    body: Option<&'static [u8]>,
    /// What a good answer contains.
    expect: &'static [u8],
}

const MCP_CALL: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}"#;

async fn once(target: &Target) -> bool {
    let headers: Vec<(&str, &str)> = target
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let method = if target.body.is_some() {
        http::Method::POST
    } else {
        http::Method::GET
    };
    let expect = target.expect;
    matches!(
        target.client.send(method, &target.url, &headers, target.body.map(<[u8]>::to_vec), 1 << 20).await,
        Ok(r) if r.status.is_success() && r.body.windows(expect.len()).any(|w| w == expect)
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

/// A server certificate for 127.0.0.1 issued by a throwaway CA, made with openssl: the CA
/// (PEM), the certificate chain (PEM) and its key (PEM) as file paths.
fn server_certificate(dir: &Path) -> (String, String, String) {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs")
            .success();
        assert!(ok, "openssl {args:?} failed");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions file");
    let (ca, ca_key, csr) = (path("ca.pem"), path("ca-key.pem"), path("server.csr"));
    let (cert, key, ext) = (
        path("server.pem"),
        path("server-key.pem"),
        path("server.ext"),
    );
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=bench-ca",
                "-keyout",
                &ca_key,
                "-out",
                &ca,
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-subj", "/CN=127.0.0.1", "-keyout", &key, "-out", &csr],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (ca, cert, key)
}

/// nginx as a plain TLS reverse proxy to the demo upstream (keep-alive both ways, no logging),
/// or `None` when nginx is not installed.
fn nginx(
    dir: &Path,
    upstream_port: u16,
    cert: &str,
    key: &str,
) -> Option<(std::process::Child, u16)> {
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
               upstream demo {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 location / {{ proxy_pass http://demo; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host 127.0.0.1:{upstream_port}; }}\n  }}\n}}\n",
            dir = dir.display()
        ),
    )
    .expect("nginx.conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_for_port(port);
    Some((child, port))
}

fn wait_for_port(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Starts `warden serve --role gateway` against the running control plane with `policies`, and
/// returns its time from exec to accepting connections and its RSS once idle.
fn gateway_only(
    dir: &Path,
    control: u16,
    policies: &Path,
    (ca, cert, key): (&str, &str, &str),
) -> (Duration, u64) {
    let port = free_port();
    let config = dir.join(format!("gateway-{port}.yaml"));
    std::fs::write(
        &config,
        format!(
            "gateway:\n  listen: 127.0.0.1:{port}\n  policies: {}\n  controlUrl: http://127.0.0.1:{control}\n  tlsCertFile: {cert}\n  tlsKeyFile: {key}\n  audit:\n    dir: {}\n",
            policies.display(),
            dir.join(format!("audit-{port}")).display()
        ),
    )
    .expect("gateway config");
    let client = HttpClient::with_tls(
        Duration::from_secs(1),
        &std::fs::read_to_string(ca).expect("the bench CA"),
        None,
    )
    .expect("client");
    let health = format!("https://127.0.0.1:{port}/healthz");
    let probe = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let exec = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--role", "gateway", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("warden serve --role gateway");
    // Ready means answering over TLS (the port is bound before the policies load).
    while !probe.block_on(async {
        client
            .send(http::Method::GET, &health, &[], None, 1024)
            .await
            .is_ok_and(|r| r.status.is_success())
    }) {
        assert!(
            exec.elapsed() < Duration::from_secs(60),
            "the gateway never became ready"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    let ready = exec.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let rss = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    (ready, rss)
}

/// A running `warden up` in `dir` with the 10,000-policy bundle, and the demo agent's
/// credentials from it.
struct Up {
    child: std::process::Child,
    control: u16,
    gateway: u16,
    demo: u16,
    creds: std::path::PathBuf,
    ready: Duration,
    idle_rss: u64,
}

impl Up {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        write_policies(&dir.join("warden-data/policies"));
        let (control, gateway, demo) = (free_port(), free_port(), free_port());
        let exec = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("up")
            .args(["--control-listen", &format!("127.0.0.1:{control}")])
            .args(["--gateway-listen", &format!("127.0.0.1:{gateway}")])
            .args(["--demo-listen", &format!("127.0.0.1:{demo}")])
            .args(extra)
            .current_dir(dir)
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
        let creds = dir.join("creds");
        let token = std::fs::read_to_string(dir.join("warden-data/admin-token")).expect("token");
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
            .env("WARDEN_CONTROL_URL", format!("http://127.0.0.1:{control}"))
            .env("WARDEN_TOKEN", token.trim())
            .output()
            .expect("credential");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            child,
            control,
            gateway,
            demo,
            creds,
            ready,
            idle_rss,
        }
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.creds.join(file)).expect("credential file")
    }

    /// An mTLS client with the agent's SVID, and the grant header.
    fn agent(&self) -> (HttpClient, (&'static str, String)) {
        let client = HttpClient::with_tls(
            Duration::from_secs(10),
            &self.read("bundle.pem"),
            Some((&self.read("svid.pem"), &self.read("svid-key.pem"))),
        )
        .expect("mTLS client");
        (
            client,
            (
                "authorization",
                format!("Bearer {}", self.read("grant").trim()),
            ),
        )
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let up = Up::start(&dir.path().join("audited"), &[]);
    let strict = Up::start(&dir.path().join("strict"), &["--audit", "strict"]);
    let unaudited = Up::start(&dir.path().join("unaudited"), &["--audit", "off"]);
    let uninspected = Up::start(
        &dir.path().join("uninspected"),
        &["--audit", "off", "--inspect", "off"],
    );
    let (d, c) = (up.demo, up.control);
    let (server_ca, server_cert, server_key) = server_certificate(dir.path());
    let nginx = nginx(dir.path(), d, &server_cert, &server_key);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let plain = || HttpClient::new(Duration::from_secs(10)).expect("client");
    let tls_to_nginx = || {
        let root = std::fs::read_to_string(&server_ca).expect("the bench CA");
        HttpClient::with_tls(Duration::from_secs(10), &root, None).expect("TLS client")
    };
    let mcp_headers = vec![
        ("content-type", "application/json".to_owned()),
        ("accept", "application/json, text/event-stream".to_owned()),
    ];
    let through = |up: &Up, name: &'static str, path: &str, mcp: bool| {
        let (client, grant) = up.agent();
        let mut headers = if mcp { mcp_headers.clone() } else { vec![] };
        headers.push(grant);
        Target {
            name,
            client,
            url: format!("https://127.0.0.1:{}{path}", up.gateway),
            headers,
            body: mcp.then_some(MCP_CALL),
            expect: if mcp { b"hello" } else { b"ok" },
        }
    };
    let mut suites = vec![
        (
            "MCP tools/call (echo)",
            vec![
                Target {
                    name: "direct",
                    client: plain(),
                    url: format!("http://127.0.0.1:{d}/mcp"),
                    headers: mcp_headers.clone(),
                    body: Some(MCP_CALL),
                    expect: b"hello",
                },
                through(&up, "warden", "/mcp/demo", true),
                through(&strict, "warden, audit strict", "/mcp/demo", true),
                through(&unaudited, "warden, audit off", "/mcp/demo", true),
                through(
                    &uninspected,
                    "warden, audit and inspection off",
                    "/mcp/demo",
                    true,
                ),
            ],
        ),
        (
            "HTTP GET /status",
            vec![
                Target {
                    name: "direct",
                    client: plain(),
                    url: format!("http://127.0.0.1:{d}/api/status"),
                    headers: vec![],
                    body: None,
                    expect: b"ok",
                },
                through(&up, "warden", "/http/demo-api/status", false),
                through(
                    &strict,
                    "warden, audit strict",
                    "/http/demo-api/status",
                    false,
                ),
                through(
                    &unaudited,
                    "warden, audit off",
                    "/http/demo-api/status",
                    false,
                ),
            ],
        ),
    ];
    if let Some((_, port)) = &nginx {
        suites[0].1.push(Target {
            name: "nginx",
            client: tls_to_nginx(),
            url: format!("https://127.0.0.1:{port}/mcp"),
            headers: mcp_headers.clone(),
            body: Some(MCP_CALL),
            expect: b"hello",
        });
        suites[1].1.push(Target {
            name: "nginx",
            client: tls_to_nginx(),
            url: format!("https://127.0.0.1:{port}/api/status"),
            headers: vec![],
            body: None,
            expect: b"ok",
        });
    } else {
        println!("(nginx is not installed: `apt-get install nginx` adds its column)");
    }
    println!(
        "{POLICIES} policies loaded; mTLS + grant through Warden (audit: written before forwarding and on disk before answering; strict: on disk before forwarding; off); TLS through nginx; open loop at {RATE} req/s"
    );
    for (suite, targets) in suites {
        println!("\n{suite}");
        println!(
            "{:<34} {:>12} {:>12} {:>8} {:>14}",
            "target", "p50", "p99", "failed", "closed req/s"
        );
        let mut results = Vec::new();
        for target in targets {
            let target = Arc::new(target);
            let answers = runtime.block_on(async {
                for _ in 0..200 {
                    if !once(&target).await {
                        return false;
                    }
                }
                true
            });
            if !answers {
                println!("{:<34} does not answer; skipped", target.name);
                continue;
            }
            let (p50, p99, failed) = runtime.block_on(open_loop(Arc::clone(&target)));
            let throughput = runtime.block_on(closed_loop(Arc::clone(&target)));
            println!(
                "{:<34} {:>12.0?} {:>12.0?} {:>8} {:>14.0}",
                target.name, p50, p99, failed, throughput
            );
            results.push((target.name, p50, p99, throughput));
        }
        let direct = results[0];
        for (name, p50, p99, throughput) in &results[1..] {
            println!(
                "added by {name}: p50 {:.0?}, p99 {:.0?}; throughput {:.0}% of direct",
                p50.saturating_sub(direct.1),
                p99.saturating_sub(direct.2),
                100.0 * throughput / direct.3
            );
        }
    }
    println!(
        "\nwarden up (control plane + gateway + demo, {POLICIES} policies): exec to ready {:.1?}, idle RSS {} MiB, after load {} MiB",
        up.ready,
        up.idle_rss / 1024,
        rss_kib(up.child.id()) / 1024
    );
    let demo_policies = dir.path().join("demo-policies");
    let policies = dir.path().join("audited/warden-data/policies");
    std::fs::create_dir_all(&demo_policies).expect("policy dir");
    std::fs::write(demo_policies.join("bench.yaml"), DEMO_POLICY).expect("write");
    for (label, policies) in [("1 policy", demo_policies), ("10,000 policies", policies)] {
        let (ready, rss) = gateway_only(
            dir.path(),
            c,
            &policies,
            (&server_ca, &server_cert, &server_key),
        );
        println!(
            "gateway only (serve --role gateway, {label}): exec to ready {ready:.1?}, idle RSS {:.1} MiB",
            rss as f64 / 1024.0
        );
    }
    if let Some((mut nginx, _)) = nginx {
        let _ = nginx.kill();
        let _ = nginx.wait();
    }
}
