//! Side by side in one run, for MCP `tools/call` and for a plain HTTP GET: straight to the demo
//! upstream; through nginx as a TLS reverse proxy that verifies the same client certificate (the
//! "same TLS work, no security" baseline, when nginx is installed); and through Warden's gateway
//! (`serve --role gateway`: mTLS SVID + grant, a 10,000-policy bundle) with the full pipeline
//! (default durable audit, inspection on), with the audit strict, with the audit off, with
//! inspection off, and with both off (the core). Open loop at a fixed rate for latency, closed
//! loop for throughput and the proxy's CPU per request; then exec-to-ready and idle RSS of a
//! gateway with 1 and with 10,000 policies. Run: `cargo bench -p warden --bench gateway`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_control::HttpClient;

const RATE: u64 = 2_000;
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
    /// The proxy's process, whose CPU time (with its children's) is charged to its requests.
    proxy: Option<u32>,
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

/// Closed loop: throughput, and the requests answered.
async fn closed_loop(target: Arc<Target>) -> (f64, u64) {
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
    (total as f64 / started.elapsed().as_secs_f64(), total)
}

/// CPU time a process and its children (nginx's workers) have used so far.
fn cpu_time(pid: u32) -> Duration {
    let ticks = |pid: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // Fields after the command name (which may hold spaces): utime is the 12th, stime
                // the 13th of them.
                let rest = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0)
    };
    let parent = pid.to_string();
    let children: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|name| {
            std::fs::read_to_string(format!("/proc/{name}/stat"))
                .ok()
                .and_then(|stat| {
                    Some(stat.rsplit_once(')')?.1.split_whitespace().nth(1)? == parent)
                })
                .unwrap_or(false)
        })
        .map(|name| ticks(&name))
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis((ticks(&parent) + children) * 10)
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
fn server_certificate(dir: &Path) -> Certs {
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
    Certs { ca, cert, key }
}

/// nginx as a TLS reverse proxy to the demo upstream that verifies the client's certificate
/// against `client_roots` (keep-alive both ways, no logging), or `None` when nginx is not
/// installed.
fn nginx(
    dir: &Path,
    upstream_port: u16,
    cert: &str,
    key: &str,
    client_roots: &Path,
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
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_client_certificate {roots};\n    ssl_verify_client on;\n\
                 location / {{ proxy_pass http://demo; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host 127.0.0.1:{upstream_port}; }}\n  }}\n}}\n",
            dir = dir.display(),
            roots = client_roots.display(),
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

/// A running `warden serve --role gateway` following `up`'s control plane, its upstreams the
/// demo's, its server certificate the bench CA's.
struct Gateway {
    child: std::process::Child,
    port: u16,
    /// Exec to answering over TLS.
    ready: Duration,
    idle_rss: u64,
}

impl Gateway {
    /// `settings` is YAML added to the gateway's (audit and inspection switches).
    fn start(dir: &Path, up: &Up, policies: &Path, certs: &Certs, settings: &str) -> Self {
        let port = free_port();
        let config = dir.join(format!("gateway-{port}.yaml"));
        std::fs::write(
            &config,
            format!(
                "gateway:\n  listen: 127.0.0.1:{port}\n  policies: {policies}\n  controlUrl: http://127.0.0.1:{control}\n  tlsCertFile: {cert}\n  tlsKeyFile: {key}\n  upstreams:\n    - {{name: demo, kind: mcp, url: 'http://127.0.0.1:{demo}/mcp'}}\n    - {{name: demo-api, kind: http, url: 'http://127.0.0.1:{demo}/api', inspectResponses: true}}\n{settings}",
                policies = policies.display(),
                control = up.control,
                demo = up.demo,
                cert = certs.cert,
                key = certs.key,
                settings = settings.replace("{audit}", &dir.join(format!("audit-{port}")).display().to_string()),
            ),
        )
        .expect("gateway config");
        let client = HttpClient::with_tls(
            Duration::from_secs(1),
            &std::fs::read_to_string(&certs.ca).expect("the bench CA"),
            None,
        )
        .expect("client");
        let health = format!("https://127.0.0.1:{port}/healthz");
        let probe = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let exec = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_warden"))
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
        let idle_rss = rss_kib(child.id());
        Self {
            child,
            port,
            ready,
            idle_rss,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench's own CA and the server certificate it signed (for nginx and the gateways).
struct Certs {
    ca: String,
    cert: String,
    key: String,
}

/// A running `warden up` in `dir` with the 10,000-policy bundle, and the demo agent's
/// credentials from it.
struct Up {
    child: std::process::Child,
    control: u16,
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
            demo,
            creds,
            ready,
            idle_rss,
        }
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.creds.join(file)).expect("credential file")
    }

    /// An mTLS client with the agent's SVID trusting `roots` (PEM), and the grant header.
    fn agent(&self, roots: &str) -> (HttpClient, (&'static str, String)) {
        let client = HttpClient::with_tls(
            Duration::from_secs(10),
            roots,
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
    let up = Up::start(&dir.path().join("up"), &[]);
    let certs = server_certificate(dir.path());
    let bench_ca = std::fs::read_to_string(&certs.ca).expect("the bench CA");
    let policies = dir.path().join("up/warden-data/policies");
    let gateway = |settings: &str| Gateway::start(dir.path(), &up, &policies, &certs, settings);
    let audit = "  audit: {dir: '{audit}'}\n";
    let variants = [
        ("warden", gateway(audit)),
        (
            "warden, audit strict",
            gateway("  audit: {dir: '{audit}', durability: strict}\n"),
        ),
        ("warden, audit off", gateway("  audit: {enabled: false}\n")),
        (
            "warden, inspection off",
            gateway(&format!("{audit}  inspect: {{enabled: false}}\n")),
        ),
        (
            "warden core (audit, inspection off)",
            gateway("  audit: {enabled: false}\n  inspect: {enabled: false}\n"),
        ),
    ];
    let nginx = nginx(
        dir.path(),
        up.demo,
        &certs.cert,
        &certs.key,
        &up.creds.join("bundle.pem"),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let plain = || HttpClient::new(Duration::from_secs(10)).expect("client");
    let mcp_headers = vec![
        ("content-type", "application/json".to_owned()),
        ("accept", "application/json, text/event-stream".to_owned()),
    ];
    let suites = [
        ("MCP tools/call (echo)", "/mcp", "/mcp/demo", true),
        (
            "HTTP GET /status",
            "/api/status",
            "/http/demo-api/status",
            false,
        ),
    ];
    println!(
        "{POLICIES} policies loaded; mTLS SVID + grant through Warden (`serve --role gateway`; audit: written before forwarding and on disk before answering; strict: on disk before forwarding); mTLS through nginx; open loop at {RATE} req/s, closed loop with {WORKERS} clients"
    );
    for (suite, direct_path, warden_path, mcp) in suites {
        let headers = if mcp { mcp_headers.clone() } else { vec![] };
        let (body, expect): (Option<&'static [u8]>, &'static [u8]) = if mcp {
            (Some(MCP_CALL), b"hello")
        } else {
            (None, b"ok")
        };
        let mut targets = vec![Target {
            name: "direct",
            proxy: None,
            client: plain(),
            url: format!("http://127.0.0.1:{}{direct_path}", up.demo),
            headers: headers.clone(),
            body,
            expect,
        }];
        if let Some((nginx, port)) = &nginx {
            targets.push(Target {
                name: "nginx (TLS, verifies the client certificate)",
                proxy: Some(nginx.id()),
                client: up.agent(&bench_ca).0,
                url: format!("https://127.0.0.1:{port}{direct_path}"),
                headers: headers.clone(),
                body,
                expect,
            });
        }
        for (name, gateway) in &variants {
            let (client, grant) = up.agent(&bench_ca);
            let mut headers = headers.clone();
            headers.push(grant);
            targets.push(Target {
                name,
                proxy: Some(gateway.child.id()),
                client,
                url: format!("https://127.0.0.1:{}{warden_path}", gateway.port),
                headers,
                body,
                expect,
            });
        }
        println!("\n{suite}");
        println!(
            "{:<44} {:>9} {:>9} {:>7} {:>13} {:>12}",
            "target", "p50", "p99", "failed", "closed req/s", "CPU/request"
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
                println!("{:<44} does not answer; skipped", target.name);
                continue;
            }
            let (p50, p99, failed) = runtime.block_on(open_loop(Arc::clone(&target)));
            let cpu_before = target.proxy.map(cpu_time);
            let (throughput, answered) = runtime.block_on(closed_loop(Arc::clone(&target)));
            let cpu = cpu_before
                .zip(target.proxy.map(cpu_time))
                .map(|(before, after)| {
                    (after.saturating_sub(before)).as_secs_f64() * 1e6 / answered.max(1) as f64
                });
            println!(
                "{:<44} {:>9.0?} {:>9.0?} {:>7} {:>13.0} {:>12}",
                target.name,
                p50,
                p99,
                failed,
                throughput,
                cpu.map_or("".to_owned(), |us| format!("{us:.0} µs"))
            );
            results.push((target.name, p50, p99, throughput, cpu));
        }
        // Ratios against nginx where it ran, else against the upstream alone.
        let baseline = results
            .iter()
            .find(|r| r.0.starts_with("nginx"))
            .unwrap_or(&results[0]);
        let (base, base_p50, base_p99, base_throughput, base_cpu) = *baseline;
        println!("against {base}:");
        for (name, p50, p99, throughput, cpu) in &results {
            if !name.starts_with("warden") {
                continue;
            }
            println!(
                "  {name}: throughput {:.2}×, added p50 {:+.0} µs, p99 {:+.0} µs{}",
                throughput / base_throughput,
                p50.as_secs_f64() * 1e6 - base_p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6 - base_p99.as_secs_f64() * 1e6,
                cpu.zip(base_cpu)
                    .map_or(String::new(), |(c, b)| format!(", CPU {:.2}×", c / b))
            );
        }
    }
    println!(
        "\nwarden up (control plane + gateway + demo, {POLICIES} policies): exec to ready {:.1?}, idle RSS {} MiB, after load {} MiB",
        up.ready,
        up.idle_rss / 1024,
        rss_kib(up.child.id()) / 1024
    );
    let (_, full) = &variants[0];
    println!(
        "gateway only ({POLICIES} policies): exec to ready {:.1?}, idle RSS {:.1} MiB, after load {:.1} MiB",
        full.ready,
        full.idle_rss as f64 / 1024.0,
        rss_kib(full.child.id()) as f64 / 1024.0
    );
    drop(variants);
    let one_policy = dir.path().join("one-policy");
    std::fs::create_dir_all(&one_policy).expect("policy dir");
    std::fs::write(one_policy.join("bench.yaml"), DEMO_POLICY).expect("write");
    let lone = Gateway::start(dir.path(), &up, &one_policy, &certs, audit);
    println!(
        "gateway only (1 policy): exec to ready {:.1?}, idle RSS {:.1} MiB",
        lone.ready,
        lone.idle_rss as f64 / 1024.0
    );
    drop(lone);
    if let Some((mut nginx, _)) = nginx {
        let _ = nginx.kill();
        let _ = nginx.wait();
    }
}
