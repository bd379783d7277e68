//! What confinement costs, side by side in one run: an HTTPS server on this host reached three
//! ways by the same client code — directly; under `warden run` (the kernel hands the connection
//! to the gateway's transparent listener, which decides it on SNI and address and relays it
//! untouched); and through the gateway as `HTTPS_PROXY` (mTLS to the gateway with the agent's
//! SVID and grant, `CONNECT`, then TLS to the server). The gateway is `warden up`'s, as a user
//! runs it: default durable audit, the demo agent allowed egress to the server.
//!
//! Measured: connection setup (TCP connect, TLS 1.3 handshake, one small request answered) p50
//! and p99 and what each path adds; bulk TLS download throughput; and the BPF programs' cost as
//! the kernel counts it (`BPF_ENABLE_STATS`), per run and per connection. Rounds alternate the
//! paths so a noisy neighbour hits them alike.
//!
//! Needs root (cgroups, BPF). Run: `sudo cargo bench -p warden --bench confinement`.

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;

const ROUNDS: usize = 4;
const SETUPS_PER_ROUND: usize = 500;
const BULK_BYTES: usize = 256 << 20;
const CHUNK: usize = 64 << 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        client(&args[2..]);
        return;
    }
    if std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok()
        != Some(0)
    {
        eprintln!(
            "confinement bench: needs root (it runs `warden up` with confinement and `warden run`); run it with sudo"
        );
        std::process::exit(1);
    }
    bench();
}

// The client: the agent. The same code for every path; only where it connects differs.

/// `client direct|proxy PORT CA SETUPS [GATEWAY_PORT CREDENTIALS_DIR]`: prints one JSON line,
/// the setup times (ns) and the bulk download's bytes per second.
fn client(args: &[String]) {
    let [mode, port, ca, setups, rest @ ..] = args else {
        panic!("client MODE PORT CA SETUPS [GATEWAY_PORT CREDENTIALS]");
    };
    let port: u16 = port.parse().expect("port");
    let setups: usize = setups.parse().expect("setups");
    let roots = std::fs::read_to_string(ca).expect("the bench CA");
    let server_tls = Arc::new(warden_http::client_tls(&roots, None).expect("client TLS"));
    let proxy = match (mode.as_str(), rest) {
        ("direct", []) => None,
        ("proxy", [gateway, creds]) => Some(Proxy::new(gateway.parse().expect("port"), creds)),
        _ => panic!("unknown client mode {mode}"),
    };
    let fetch = |size: usize| -> usize {
        let tcp = match &proxy {
            None => Tunnel::Direct(TcpStream::connect(("127.0.0.1", port)).expect("connect")),
            Some(proxy) => proxy.connect(port),
        };
        tcp_nodelay(&tcp);
        let name = ServerName::try_from("localhost").expect("name");
        let connection =
            rustls::ClientConnection::new(Arc::clone(&server_tls), name).expect("TLS client");
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        write!(tls, "GET /{size} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
        tls.flush().expect("flush");
        let mut buffer = vec![0u8; CHUNK];
        let mut total = 0;
        loop {
            match tls.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => panic!("reading the answer: {e}"),
            }
        }
        total
    };
    let setup_ns: Vec<u64> = (0..setups)
        .map(|_| {
            let started = Instant::now();
            assert!(fetch(2) > 2, "a short answer");
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
        })
        .collect();
    let started = Instant::now();
    let got = fetch(BULK_BYTES);
    let seconds = started.elapsed().as_secs_f64();
    assert!(got >= BULK_BYTES, "the download stopped at {got} bytes");
    println!(
        "{}",
        serde_json::json!({"setupNs": setup_ns, "bulkBytesPerSecond": got as f64 / seconds})
    );
}

fn tcp_nodelay(tunnel: &Tunnel) {
    if let Tunnel::Direct(tcp) = tunnel {
        let _ = tcp.set_nodelay(true);
    }
}

/// The connection the client's TLS runs over: TCP, or a `CONNECT` tunnel inside TLS to the
/// gateway.
enum Tunnel {
    Direct(TcpStream),
    Proxied(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Tunnel {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Direct(tcp) => tcp.read(buffer),
            Self::Proxied(tls) => tls.read(buffer),
        }
    }
}

impl Write for Tunnel {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Direct(tcp) => tcp.write(buffer),
            Self::Proxied(tls) => tls.write(buffer),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Direct(tcp) => tcp.flush(),
            Self::Proxied(tls) => tls.flush(),
        }
    }
}

/// The gateway as `HTTPS_PROXY`: mTLS with the agent's SVID, the grant in
/// `Proxy-Authorization`.
struct Proxy {
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    grant: String,
}

impl Proxy {
    fn new(port: u16, creds: &str) -> Self {
        let read = |file: &str| {
            std::fs::read_to_string(Path::new(creds).join(file)).expect("a credential file")
        };
        let tls = warden_http::client_tls(
            &read("bundle.pem"),
            Some((&read("svid.pem"), &read("svid-key.pem"))),
        )
        .expect("mTLS client");
        Self {
            port,
            tls: Arc::new(tls),
            grant: read("grant").trim().to_owned(),
        }
    }

    fn connect(&self, server_port: u16) -> Tunnel {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the gateway");
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let connection =
            rustls::ClientConnection::new(Arc::clone(&self.tls), name).expect("TLS client");
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        write!(
            tls,
            "CONNECT 127.0.0.1:{server_port} HTTP/1.1\r\nHost: 127.0.0.1:{server_port}\r\nProxy-Authorization: Bearer {}\r\n\r\n",
            self.grant
        )
        .expect("CONNECT");
        tls.flush().expect("flush");
        // The answer's head, byte by byte: what follows it is the tunnel's.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tls.read_exact(&mut byte).expect("the gateway's answer");
            head.push(byte[0]);
            assert!(head.len() < 16 << 10, "an endless answer head");
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "the gateway refused the tunnel: {}",
            String::from_utf8_lossy(&head)
        );
        Tunnel::Proxied(Box::new(tls))
    }
}

// The bench: the server, the fabric, the three paths, the figures.

fn bench() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The agent runs as nobody: it must reach its own executable and the CA.
    set_mode(dir.path(), 0o755);
    let client_exe = dir.path().join("agent");
    std::fs::copy(
        std::env::current_exe().expect("own executable"),
        &client_exe,
    )
    .expect("copy the client");
    set_mode(&client_exe, 0o755);
    let (ca, server) = certificates();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("CA file");
    set_mode(&ca_file, 0o644);
    let port = serve(server);

    let up = Up::start(&dir.path().join("up"), port);
    let metering = warden_sandbox::Metering::start().expect("BPF run statistics");
    let mut results = [Route::Direct, Route::Transparent, Route::Proxy].map(|path| Results {
        path,
        setup_ns: Vec::new(),
        bulk: Vec::new(),
    });
    let mut bpf_before = Vec::new();
    let mut bpf_after = Vec::new();
    for round in 0..ROUNDS {
        for result in &mut results {
            let mut command = match result.path {
                Route::Direct | Route::Proxy => Command::new(&client_exe),
                Route::Transparent => up.warden_run(&client_exe),
            };
            command
                .arg("client")
                .arg(match result.path {
                    Route::Direct | Route::Transparent => "direct",
                    Route::Proxy => "proxy",
                })
                .arg(port.to_string())
                .arg(&ca_file)
                .arg(SETUPS_PER_ROUND.to_string());
            if let Route::Proxy = result.path {
                command.arg(up.gateway.to_string()).arg(&up.creds);
            }
            if let Route::Transparent = result.path {
                bpf_before.push(metering.read().expect("BPF statistics"));
            }
            let out = command
                .stderr(Stdio::piped())
                .output()
                .expect("the client runs");
            if let Route::Transparent = result.path {
                bpf_after.push(metering.read().expect("BPF statistics"));
            }
            assert!(
                out.status.success(),
                "{:?} round {round}: {}",
                result.path,
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8_lossy(&out.stdout);
            let figures: serde_json::Value =
                serde_json::from_str(line.lines().last().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("{:?}: {e}: {line}", result.path));
            result.setup_ns.extend(
                figures["setupNs"]
                    .as_array()
                    .expect("setup times")
                    .iter()
                    .filter_map(serde_json::Value::as_u64),
            );
            result.bulk.push(
                figures["bulkBytesPerSecond"]
                    .as_f64()
                    .expect("bulk throughput"),
            );
        }
    }
    report(&mut results);
    report_bpf(&bpf_before, &bpf_after);
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Direct,
    Transparent,
    Proxy,
}

struct Results {
    path: Route,
    setup_ns: Vec<u64>,
    bulk: Vec<f64>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len().saturating_sub(1))]
}

fn micros(ns: u64) -> String {
    format!("{:.0} µs", ns as f64 / 1000.0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn report(results: &mut [Results; 3]) {
    for result in results.iter_mut() {
        result.setup_ns.sort_unstable();
    }
    let direct_p50 = percentile(&results[0].setup_ns, 0.5);
    let direct_p99 = percentile(&results[0].setup_ns, 0.99);
    let direct_bulk = median(&mut results[0].bulk);
    println!(
        "connection setup: TCP connect, TLS 1.3 handshake, one small request answered ({} each, {ROUNDS} alternating rounds)",
        results[0].setup_ns.len()
    );
    println!(
        "  {:<36} {:>9} {:>9} {:>11} {:>11}",
        "path", "p50", "p99", "added p50", "added p99"
    );
    for result in results.iter() {
        let (p50, p99) = (
            percentile(&result.setup_ns, 0.5),
            percentile(&result.setup_ns, 0.99),
        );
        println!(
            "  {:<36} {:>9} {:>9} {:>11} {:>11}   ({:.2}× direct p50)",
            label(result.path),
            micros(p50),
            micros(p99),
            micros(p50.saturating_sub(direct_p50)),
            micros(p99.saturating_sub(direct_p99)),
            p50 as f64 / direct_p50 as f64,
        );
    }
    println!(
        "bulk TLS download: {} MiB per round, median of {ROUNDS}",
        BULK_BYTES >> 20
    );
    for result in results.iter_mut() {
        let bulk = median(&mut result.bulk);
        println!(
            "  {:<36} {:>7.0} MiB/s   ({:.2}× direct)",
            label(result.path),
            bulk / f64::from(1 << 20),
            bulk / direct_bulk
        );
    }
}

fn label(path: Route) -> &'static str {
    match path {
        Route::Direct => "direct",
        Route::Transparent => "warden run (transparent, no intercept)",
        Route::Proxy => "HTTPS_PROXY through the gateway",
    }
}

/// The programs' runs and time during the transparent rounds, per run and per connection.
fn report_bpf(
    before: &[Vec<warden_sandbox::ProgramCost>],
    after: &[Vec<warden_sandbox::ProgramCost>],
) {
    let mut spent: Vec<(String, u64, Duration)> = Vec::new();
    for (before, after) in before.iter().zip(after) {
        for cost in after {
            let earlier = before.iter().find(|b| b.name == cost.name);
            let runs = cost.runs - earlier.map_or(0, |b| b.runs);
            let time = cost
                .time
                .saturating_sub(earlier.map_or(Duration::ZERO, |b| b.time));
            match spent.iter_mut().find(|(name, ..)| *name == cost.name) {
                Some(entry) => {
                    entry.1 += runs;
                    entry.2 += time;
                }
                None => spent.push((cost.name.clone(), runs, time)),
            }
        }
    }
    // Each round: its setups and one download, every one a connection.
    let connections = (ROUNDS * (SETUPS_PER_ROUND + 1)) as u64;
    println!(
        "BPF programs during the transparent rounds ({connections} connections; the kernel's run statistics):"
    );
    let mut total = Duration::ZERO;
    for (name, runs, time) in spent.iter().filter(|(_, runs, _)| *runs > 0) {
        total += *time;
        println!(
            "  {name:<24} {runs:>8} runs {:>7.0} ns/run",
            time.as_nanos() as f64 / *runs as f64
        );
    }
    println!(
        "  all programs: {:.0} ns per connection",
        total.as_nanos() as f64 / connections as f64
    );
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A throwaway CA (PEM) and a server configuration for `localhost` it signed.
fn certificates() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server TLS");
    (ca.pem(), Arc::new(config))
}

/// The HTTPS server on 127.0.0.1: `GET /N` is answered with N bytes, then the connection ends.
fn serve(config: Arc<rustls::ServerConfig>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let _ = tcp.set_nodelay(true);
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(connection, tcp);
                let _ = answer(&mut tls);
            });
        }
    });
    port
}

fn answer(
    tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *tls);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let size: usize = request
        .split_whitespace()
        .nth(1)
        .and_then(|path| path.trim_start_matches('/').parse().ok())
        .unwrap_or(0);
    write!(
        tls,
        "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    )?;
    let chunk = vec![b'x'; CHUNK];
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK);
        tls.write_all(&chunk[..n])?;
        left -= n;
    }
    tls.conn.send_close_notify();
    tls.flush()
}

/// `warden up` as root (confinement on) with one policy for the demo agent, egress to the
/// bench's server, and the demo agent's credentials for the proxy path.
struct Up {
    child: std::process::Child,
    dir: PathBuf,
    control: u16,
    gateway: u16,
    socket: PathBuf,
    creds: PathBuf,
}

impl Up {
    fn start(dir: &Path, server_port: u16) -> Self {
        let policies = dir.join("warden-data/policies");
        std::fs::create_dir_all(&policies).expect("policy dir");
        std::fs::write(
            policies.join("bench.yaml"),
            format!(
                "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {{name: bench, namespace: demo}}\nspec:\n  selector: {{matchLabels: {{app: assistant}}}}\n  egress:\n    - {{hosts: [localhost], ports: [{server_port}]}}\n    - {{cidrs: ['127.0.0.1/32'], ports: [{server_port}]}}\n"
            ),
        )
        .expect("bench policy");
        let free = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port")
        };
        let (control, gateway, demo) = (free(), free(), free());
        let socket = dir.join("sandbox.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("up")
            .args(["--control-listen", &format!("127.0.0.1:{control}")])
            .args(["--gateway-listen", &format!("127.0.0.1:{gateway}")])
            .args(["--demo-listen", &format!("127.0.0.1:{demo}")])
            .arg("--sandbox-socket")
            .arg(&socket)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("warden up");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut said = String::new();
        for line in lines.by_ref() {
            let line = line.expect("line");
            said.push_str(&line);
            said.push('\n');
            if line.contains("Stop with Ctrl-C") {
                break;
            }
        }
        assert!(
            said.contains("warden run --"),
            "warden up did not turn confinement on:\n{said}"
        );
        std::thread::spawn(move || lines.for_each(drop));
        let mut up = Self {
            child,
            dir: dir.to_owned(),
            control,
            gateway,
            socket,
            creds: dir.join("creds"),
        };
        let out = up
            .warden(&[
                "agent",
                "credential",
                "demo/assistant",
                "--task",
                "bench",
                "--ttl",
                "3600",
                "--out",
            ])
            .arg(&up.creds)
            .output()
            .expect("credential");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        up.creds = up.creds.canonicalize().expect("credentials");
        up
    }

    fn warden(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
        let token = std::fs::read_to_string(self.dir.join("warden-data/admin-token"))
            .expect("warden up's admin token");
        command
            .args(args)
            .current_dir(&self.dir)
            .env(
                "WARDEN_CONTROL_URL",
                format!("http://127.0.0.1:{}", self.control),
            )
            .env("WARDEN_TOKEN", token.trim());
        command
    }

    /// `warden run` of `program` as the demo agent, as the user nobody.
    fn warden_run(&self, program: &Path) -> Command {
        let mut command = self.warden(&["run", "--gateway-socket"]);
        command.arg(&self.socket).arg("--").arg(program);
        command
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
