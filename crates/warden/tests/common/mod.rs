//! What the integration tests share: free ports, child processes reaped on drop, a fabric
//! started from a generated configuration, agent credentials on disk, and the Python with the
//! official protocol SDKs the peer tests run.
// Each test binary uses its own share of these.
#![allow(dead_code, clippy::unwrap_used)]

pub mod hostile;
pub mod mcp;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warden_control::HttpClient;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

/// An mTLS client holding an agent's SVID (or none), trusting the fabric's bundle.
pub fn client(creds: &Path, with_svid: bool) -> HttpClient {
    let (cert, key) = (read(creds, "svid.pem"), read(creds, "svid-key.pem"));
    HttpClient::with_tls(
        Duration::from_secs(10),
        &read(creds, "bundle.pem"),
        with_svid.then_some((cert.as_str(), key.as_str())),
    )
    .unwrap()
}

/// The Python the peer tests run, with the official MCP and A2A SDKs — installed on first use
/// (pinned in tests/peers/requirements.txt),
/// so `cargo test` sets up what it needs by itself.
pub fn python3() -> Command {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let present = Command::new("python3")
            .args([
                "-c",
                "import mcp, httpx2, a2a.server.routes, starlette, uvicorn, ocsf_emitter._models",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            let requirements =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/requirements.txt");
            let installed = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&requirements)
                .status()
                .expect("python3 with pip runs");
            assert!(
                installed.success(),
                "pip install -r {} failed",
                requirements.display()
            );
        }
    });
    Command::new("python3")
}

/// Kills a child process when dropped.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for_port(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `warden serve --role all` from a generated configuration: one policy file, and `gateway` the
/// extra gateway settings (upstreams…), given the control plane's port.
pub struct Fabric {
    process: Reaped,
    env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    pub control_port: u16,
    pub gateway_port: u16,
    pub token: String,
}

impl Fabric {
    pub fn start(policy: &str, gateway: impl Fn(u16) -> String, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (control_port, gateway_port) = (free_port(), free_port());
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/policy.yaml"), policy).unwrap();
        let config = format!(
            "control:\n  listen: 127.0.0.1:{control_port}\n  dataDir: {data}\ngateway:\n  listen: 127.0.0.1:{gateway_port}\n  policies: {policies}\n{extra}",
            data = dir.path().join("data").display(),
            policies = dir.path().join("policies").display(),
            extra = gateway(control_port),
        );
        std::fs::write(dir.path().join("warden.yaml"), config).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let process = Self::spawn(dir.path(), &env);
        wait_for_port(gateway_port);
        let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
        Self {
            process,
            env,
            dir,
            control_port,
            gateway_port,
            token: token.trim().to_owned(),
        }
    }

    fn spawn(dir: &Path, env: &[(String, String)]) -> Reaped {
        Reaped(
            Command::new(env!("CARGO_BIN_EXE_warden"))
                .args(["serve", "--role", "all", "--config"])
                .arg(dir.join("warden.yaml"))
                .arg("--bootstrap-token-file")
                .arg(dir.join("token"))
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// Kills the fabric with SIGKILL and starts it again on the same data.
    pub fn crash_and_restart(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        self.process = Self::spawn(self.dir.path(), &self.env);
        wait_for_port(self.gateway_port);
    }

    /// Registers `agent` (`tenant/name`) with a label and rights, and issues a credential for task
    /// `t` per instance, each written to `<dir>/<instance>`.
    pub fn agent(
        &self,
        agent: &str,
        label: &str,
        rights: &[&str],
        instances: &[&str],
    ) -> Vec<std::path::PathBuf> {
        let mut register = vec!["agent", "register", agent, "--label", label];
        for right in rights {
            register.extend(["--right", right]);
        }
        self.warden(&register);
        instances
            .iter()
            .map(|instance| {
                let out = self.dir.path().join(instance);
                self.warden(&[
                    "agent",
                    "credential",
                    agent,
                    "--task",
                    "t",
                    "--out",
                    out.to_str().unwrap(),
                ]);
                out
            })
            .collect()
    }

    /// Runs a CLI command against this control plane as the bootstrap admin; it must succeed.
    pub fn warden(&self, args: &[&str]) {
        let out = self.cli(&self.token, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a CLI command against this control plane with `token`, whatever its outcome.
    pub fn cli(&self, token: &str, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(args)
            .env(
                "WARDEN_CONTROL_URL",
                format!("http://127.0.0.1:{}", self.control_port),
            )
            .env("WARDEN_TOKEN", token)
            .output()
            .unwrap()
    }

    /// Creates an admin with `role` in `groups`; its token.
    pub fn admin(&self, name: &str, role: &str, groups: &[&str]) -> String {
        let mut args = vec!["admin", "create", name, "--role", role, "-o", "json"];
        for group in groups {
            args.extend(["--group", group]);
        }
        let out = self.cli(&self.token, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        answer["token"].as_str().unwrap().to_owned()
    }
}

/// Polls `done` until it holds, for up to 15 s: what a test waits for, instead of sleeping for a
/// guess.
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// curl through a gateway's forward proxy with an agent's SVID and grant (add the URL and any
/// options).
pub fn curl_through_proxy(gateway: &str, creds: &Path) -> Command {
    let mut command = Command::new("curl");
    command
        .args(["-s", "--max-time", "10", "--proxy", gateway])
        .arg("--proxy-cacert")
        .arg(creds.join("bundle.pem"))
        .arg("--proxy-cert")
        .arg(creds.join("svid.pem"))
        .arg("--proxy-key")
        .arg(creds.join("svid-key.pem"))
        .arg("--proxy-header")
        .arg(format!(
            "Proxy-Authorization: Bearer {}",
            read(creds, "grant")
        ));
    command
}
