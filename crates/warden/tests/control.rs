#![allow(clippy::unwrap_used)] // Tests fail loudly by design.
//! The control plane as a user runs it: `warden serve --role control`, the agent, attest,
//! delegate, revoke and authority commands against it, and kill -9 in the middle of writes.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    url: String,
    /// What the server printed before it was ready.
    banner: String,
}

fn start(data: &Path, port: u16) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--role", "control", "--trust-domain", "acme.test"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .arg("--bootstrap-token-file")
        .arg(data.join("admin-token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner += &line;
        banner.push('\n');
        if line.contains("listening on") {
            break;
        }
    }
    assert!(
        banner.contains("listening on"),
        "the server did not start: {banner}"
    );
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        banner,
    }
}

impl Server {
    fn warden(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(args)
            .env("WARDEN_CONTROL_URL", &self.url)
            .env("WARDEN_TOKEN", token)
            .output()
            .unwrap()
    }

    fn ok(&self, token: &str, args: &[&str]) -> String {
        let out = self.warden(token, args);
        assert!(
            out.status.success(),
            "warden {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, token: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(token, &all)).unwrap()
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

fn token_of(data: &Path) -> String {
    std::fs::read_to_string(data.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn the_cli_drives_the_control_plane_and_state_survives_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start(data.path(), port);
    assert!(server.banner.contains("Bootstrap admin token (shown once"));
    let admin = token_of(data.path());
    let mode = std::fs::metadata(data.path().join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the token file is private");

    server.ok(
        &admin,
        &[
            "agent",
            "register",
            "shop/planner",
            "--right",
            "mcp.*=github/*",
            "--label",
            "team=dev",
        ],
    );
    let out = server.warden(
        &admin,
        &["agent", "register", "shop/planner", "--right", "*=*"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already registered"));

    // Credentials to files; keys private.
    let parent = work.path().join("parent");
    server.ok(
        &admin,
        &[
            "agent",
            "credential",
            "shop/planner",
            "--task",
            "t-1",
            "--instance",
            "i-1",
            "--purpose",
            "triage issues",
            "--out",
            parent.to_str().unwrap(),
        ],
    );
    for file in ["grant", "svid.pem", "svid-key.pem", "bundle.pem"] {
        assert!(parent.join(file).exists(), "{file} written");
    }
    for secret in ["grant", "svid-key.pem"] {
        let mode = std::fs::metadata(parent.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{secret} is private");
    }
    // …or as environment lines.
    let env = server.ok(
        &admin,
        &[
            "agent",
            "credential",
            "shop/planner",
            "--task",
            "t-1",
            "--env",
        ],
    );
    assert!(env.contains("export WARDEN_GRANT='") && env.contains("export WARDEN_SVID_PEM='"));

    // Online delegation with the SVID's key, then offline attenuation.
    let child = work.path().join("child");
    server.ok(
        &admin,
        &[
            "agent",
            "delegate",
            "--grant",
            parent.join("grant").to_str().unwrap(),
            "--sub-agent",
            "coder",
            "--right",
            "mcp.tools/call=github/list_issues",
            "--key",
            parent.join("svid-key.pem").to_str().unwrap(),
            "--svid",
            parent.join("svid.pem").to_str().unwrap(),
            "--out",
            child.to_str().unwrap(),
        ],
    );
    assert!(child.join("svid.pem").exists());
    let offline = work.path().join("offline");
    let delegate_offline = |right: &str| {
        server.warden(
            &admin,
            &[
                "agent",
                "delegate",
                "--offline",
                "--grant",
                parent.join("grant").to_str().unwrap(),
                "--sub-agent",
                "tester",
                "--right",
                right,
                "--out",
                offline.to_str().unwrap(),
            ],
        )
    };
    assert!(delegate_offline("mcp.tools/call=github/x").status.success());
    assert!(offline.join("grant").exists());
    // Asking for more than the parent holds fails with the reason.
    let out = delegate_offline("*=*");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than the parent holds"));

    // Join token → attest, once.
    let join = server.json(
        &admin,
        &["agent", "join-token", "shop/planner", "--ttl", "600"],
    );
    let join = join["token"].as_str().unwrap();
    let vm = work.path().join("vm");
    server.ok(
        "",
        &[
            "attest",
            "--join-token",
            join,
            "--task",
            "boot",
            "--out",
            vm.to_str().unwrap(),
        ],
    );
    let out = server.warden(
        "",
        &["attest", "--join-token", join, "--task", "boot", "--env"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("single-use"));

    let revoked = server.json(&admin, &["revoke", "task", "t-1"]);
    assert_eq!(revoked["version"], 1);
    let bundle_before = server.ok(&admin, &["authority", "bundle"]);
    assert!(bundle_before.contains("BEGIN CERTIFICATE"));
    let agents_before = server.json(&admin, &["agent", "list"]);

    server.kill9();
    let server = start(data.path(), port);
    assert!(
        !server.banner.contains("Bootstrap"),
        "the bootstrap admin is shown once"
    );
    assert_eq!(server.ok(&admin, &["authority", "bundle"]), bundle_before);
    let agents_after = server.json(&admin, &["agent", "list"]);
    assert_eq!(agents_before, agents_after);
    let text = server.ok(&admin, &["agent", "show", "shop/planner"]);
    assert!(
        text.contains("agent/coder/"),
        "lineage shows the sub-agent: {text}"
    );

    // Unauthenticated use gets a hint.
    let out = server.warden("", &["agent", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARDEN_TOKEN"));
    server.kill9();
}

#[test]
fn every_acknowledged_write_survives_kill_9_mid_stream() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(data.path(), port);
    let admin = token_of(data.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = warden_control::HttpClient::new(Duration::from_secs(5)).unwrap();
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = {
            let (client, url, admin, stop, written) = (
                client.clone(),
                server.url.clone(),
                admin.clone(),
                Arc::clone(&stop),
                Arc::clone(&written),
            );
            runtime.spawn(async move {
                let mut acked = Vec::new();
                let auth = format!("Bearer {admin}");
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("a{round}-{i}");
                    let body = serde_json::json!({"tenant": "load", "name": name,
                        "rights": [{"action": "*", "target": "*"}]});
                    let result = client
                        .send(
                            http::Method::POST,
                            &format!("{url}/v1/agents"),
                            &[
                                ("content-type", "application/json"),
                                ("authorization", &auth),
                            ],
                            Some(body.to_string().into_bytes()),
                            1 << 16,
                        )
                        .await;
                    match result {
                        Ok(r) if r.status == http::StatusCode::CREATED => {
                            acked.push(name);
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                        // The server died mid-request: not acknowledged.
                        _ => break,
                    }
                }
                acked
            })
        };
        // Killed mid-stream: once writes are being acknowledged (a loaded machine may take a
        // while to answer the first), a little later each round.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while written.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100 + 70 * round));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        let acked = runtime.block_on(writer).unwrap();
        assert!(
            !acked.is_empty(),
            "round {round}: some writes were acknowledged"
        );
        acknowledged.extend(acked);
        server = start(data.path(), port);
        let agents = server.json(&admin, &["agent", "list"]);
        let present: std::collections::HashSet<&str> = agents
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        for name in &acknowledged {
            assert!(
                present.contains(name.as_str()),
                "round {round}: acknowledged {name} lost"
            );
        }
    }
    server.kill9();
}

#[test]
fn serve_refuses_a_public_address_without_tls() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--role", "control", "--listen", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback only"));
}
