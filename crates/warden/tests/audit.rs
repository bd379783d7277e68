#![allow(clippy::unwrap_used)] // Tests fail loudly by design.
//! The audit log through the whole fabric: every request an upstream received has a durable
//! record even when the gateway is killed with SIGKILL under load, again and again; the log
//! verifies with the CLI and nothing but the public key; proofs check offline; tampering fails
//! verification.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;

mod common;
use common::{Reaped, client, free_port, python3, read};

const POLICY: &str = "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: api, namespace: ops}\nspec:\n  selector: {matchLabels: {app: probe}}\n  http:\n    - {service: api, methods: [GET], paths: [/r/*]}\n";

struct Site {
    dir: tempfile::TempDir,
    control_port: u16,
    gateway_port: u16,
}

impl Site {
    fn new(api_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (control_port, gateway_port) = (free_port(), free_port());
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/api.yaml"), POLICY).unwrap();
        std::fs::write(
            dir.path().join("warden.yaml"),
            format!(
                "control:\n  listen: 127.0.0.1:{control_port}\n  dataDir: {data}\ngateway:\n  listen: 127.0.0.1:{gateway_port}\n  policies: {policies}\n  upstreams:\n    - {{name: api, kind: http, url: 'http://127.0.0.1:{api_port}'}}\n  audit:\n    export:\n      - {{name: siem, kind: file, path: '{ocsf}'}}\n",
                data = dir.path().join("data").display(),
                ocsf = dir.path().join("ocsf.jsonl").display(),
                policies = dir.path().join("policies").display(),
            ),
        )
        .unwrap();
        Self {
            dir,
            control_port,
            gateway_port,
        }
    }

    fn start(&self) -> Reaped {
        let process = Reaped(
            Command::new(env!("CARGO_BIN_EXE_warden"))
                .args(["serve", "--role", "all", "--config"])
                .arg(self.dir.path().join("warden.yaml"))
                .arg("--bootstrap-token-file")
                .arg(self.dir.path().join("token"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.gateway_port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the fabric did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    fn warden(&self, args: &[&str]) -> std::process::Output {
        let token = std::fs::read_to_string(self.dir.path().join("token")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(args)
            .env(
                "WARDEN_CONTROL_URL",
                format!("http://127.0.0.1:{}", self.control_port),
            )
            .env("WARDEN_TOKEN", token.trim())
            .env("WARDEN_AUDIT_LOG", self.dir.path().join("data/audit"))
            .env("WARDEN_AUDIT_KEY", self.dir.path().join("data/audit.pub"))
            .output()
            .unwrap()
    }

    fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("data/audit")
    }
}

/// The paths of every allowed record in the log.
fn recorded_paths(dir: &Path) -> BTreeSet<String> {
    let reader = warden_audit::LogReader::open(dir).unwrap();
    reader
        .records(0)
        .unwrap()
        .map(|r| serde_json::from_slice::<Value>(&r.unwrap().1).unwrap())
        .filter(|r| r["outcome"] == "allow")
        .filter_map(|r| r["target"]["path"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_the_upstream_received_has_a_durable_record_across_kill_9() {
    // The upstream notes every path it receives.
    let received: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let api = {
        let received = Arc::clone(&received);
        axum::Router::new().fallback(move |uri: http::Uri| {
            let received = Arc::clone(&received);
            async move {
                received.lock().unwrap().insert(uri.path().to_owned());
                "ok"
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, api).await.unwrap() });

    let site = Site::new(api_port);
    let mut fabric = site.start();
    let out = site.warden(&[
        "agent",
        "register",
        "ops/probe",
        "--label",
        "app=probe",
        "--right",
        "http=api/*",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds = site.dir.path().join("probe");
    let out = site.warden(&[
        "agent",
        "credential",
        "ops/probe",
        "--task",
        "t",
        "--ttl",
        "3600",
        "--out",
        creds.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grant = format!("Bearer {}", read(&creds, "grant"));

    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for round in 0..20u64 {
        // Load from several clients, then SIGKILL in the middle of it.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (stop, next, grant) = (Arc::clone(&stop), Arc::clone(&next), grant.clone());
            let agent = client(&creds, true);
            let url = format!("https://127.0.0.1:{}/http/api/r/", site.gateway_port);
            workers.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = agent
                        .send(
                            Method::GET,
                            &format!("{url}{n}"),
                            &[("authorization", &grant)],
                            None,
                            1024,
                        )
                        .await;
                }
            }));
        }
        // The kill comes a while into the load, once the restarted gateway serves it.
        let served_before = received.lock().unwrap().len();
        let serving = Instant::now();
        while received.lock().unwrap().len() == served_before {
            assert!(
                serving.elapsed() < Duration::from_secs(20),
                "the gateway never served"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(150 + (round * 37) % 250)).await;
        let _ = fabric.0.kill(); // SIGKILL
        let _ = fabric.0.wait();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            let _ = w.await;
        }
        fabric = site.start();
    }
    // One more request after the last restart: the log continues.
    let r = client(&creds, true)
        .send(
            Method::GET,
            &format!("https://127.0.0.1:{}/http/api/r/final", site.gateway_port),
            &[("authorization", &grant)],
            None,
            1024,
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    drop(fabric);

    let received = received.lock().unwrap().clone();
    assert!(
        received.len() > 100,
        "the load reached the upstream: {}",
        received.len()
    );
    let recorded = recorded_paths(&site.audit_dir());
    let missing: Vec<_> = received.difference(&recorded).collect();
    assert!(
        missing.is_empty(),
        "forwarded without a durable record: {missing:?}"
    );

    let out = site.warden(&["audit", "verify", "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["checkpoints"].as_u64().unwrap() >= 20, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_check_offline_and_tampering_fails_verification() {
    let api = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, api).await.unwrap() });
    let site = Site::new(api_port);
    let fabric = site.start();
    site.warden(&[
        "agent",
        "register",
        "ops/probe",
        "--label",
        "app=probe",
        "--right",
        "http=api/*",
    ]);
    let creds = site.dir.path().join("probe");
    site.warden(&[
        "agent",
        "credential",
        "ops/probe",
        "--task",
        "t",
        "--out",
        creds.to_str().unwrap(),
    ]);
    let grant = format!("Bearer {}", read(&creds, "grant"));
    let agent = client(&creds, true);
    for path in ["r/1", "r/2", "denied", "r/3"] {
        agent
            .send(
                Method::GET,
                &format!("https://127.0.0.1:{}/http/api/{path}", site.gateway_port),
                &[
                    ("authorization", &grant),
                    ("warden-intent", "checking the audit trail"),
                ],
                None,
                1024,
            )
            .await
            .unwrap();
    }
    drop(fabric); // SIGKILL; recovery writes the missing checkpoint at the next start.
    let fabric = site.start();
    let ocsf = site.dir.path().join("ocsf.jsonl");
    common::eventually("the export catches up after the restart", || {
        std::fs::read_to_string(&ocsf).is_ok_and(|text| text.lines().count() >= 4)
    });
    drop(fabric);

    // The SIEM file got every record as an OCSF HTTP Activity event, denied ones as failures.
    let events: Vec<Value> = std::fs::read_to_string(site.dir.path().join("ocsf.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events.iter().all(|e| e["class_uid"] == 4002));
    assert_eq!(events[2]["status"], "Failure");
    assert_eq!(events[2]["http_request"]["url"]["path"], "/denied");
    assert!(events[0]["src_endpoint"]["ip"] == "127.0.0.1");
    ocsf_valid(&site.dir.path().join("ocsf.jsonl"));
    // The SIEM copy checks with the CLI and the public key alone; a doctored event does not.
    let ocsf = site.dir.path().join("ocsf.jsonl");
    let out = site.warden(&["audit", "check", ocsf.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("4 events verified"),
        "{text}"
    );
    let doctored = std::fs::read_to_string(&ocsf)
        .unwrap()
        .replacen("/r/1", "/r/8", 1);
    std::fs::write(&ocsf, doctored).unwrap();
    let out = site.warden(&["audit", "check", ocsf.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Search and tail find the records with their intent; the denied one is there too.
    let out = site.warden(&["audit", "search", "--outcome", "deny", "-o", "json"]);
    let denied: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(denied["target"]["path"], "/denied", "{denied}");
    assert_eq!(denied["intent"], "checking the audit trail");
    let out = site.warden(&["audit", "tail", "-n", "2", "--no-follow"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");

    // An inclusion proof, checked with nothing but the public key.
    let out = site.warden(&["audit", "prove", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proof_file = site.dir.path().join("proof.json");
    std::fs::write(&proof_file, &out.stdout).unwrap();
    let out = site.warden(&["audit", "check", proof_file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: record 1"));
    // A doctored record in the proof fails.
    let mut proof: Value = serde_json::from_slice(&std::fs::read(&proof_file).unwrap()).unwrap();
    let record = proof["record"].as_str().unwrap().replace("/r/2", "/r/9");
    proof["record"] = Value::String(record);
    std::fs::write(&proof_file, proof.to_string()).unwrap();
    let out = site.warden(&["audit", "check", proof_file.to_str().unwrap()]);
    assert!(!out.status.success());

    // A consistency proof between two checkpoints.
    let reader = warden_audit::LogReader::open(&site.audit_dir()).unwrap();
    let key = warden_audit::NoteVerifier::parse(
        &std::fs::read_to_string(site.dir.path().join("data/audit.pub")).unwrap(),
    )
    .unwrap();
    let sizes: Vec<u64> = reader
        .checkpoints(&key)
        .unwrap()
        .iter()
        .map(|(c, _)| c.size)
        .collect();
    if let [.., old, new] = sizes[..]
        && old < new
    {
        let out = site.warden(&["audit", "consistency", &old.to_string(), &new.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&proof_file, &out.stdout).unwrap();
        let out = site.warden(&["audit", "check", proof_file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Flip one byte of a record: verification fails and names the record.
    let segment = warden_audit::store::segments(&site.audit_dir())
        .unwrap()
        .remove(0)
        .1;
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.windows(4).position(|w| w == b"/r/2").unwrap();
    bytes[at + 3] = b'7';
    std::fs::write(&segment, bytes).unwrap();
    let out = site.warden(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("PROBLEM record 1:"), "{text}");
}

/// Validates OCSF events against the published OCSF models (`ocsf-pydantic`).
fn ocsf_valid(events: &Path) {
    let checker = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/ocsf_check.py");
    let out = python3().arg(checker).arg(events).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn events_of_every_class_are_valid_ocsf() {
    let provenance = warden_audit::ocsf::Provenance {
        record: "{}",
        index: 3,
        leaf_hash: "ab",
        checkpoint: "log\n4\nroot\n\n\u{2014} log sig\n",
        path: &[],
    };
    let records = [
        serde_json::json!({"time": 1795322681, "decisionId": "d1", "outcome": "allow", "action": "mcp.tools/call",
            "resource": "tool demo/echo", "agent": "spiffe://warden.local/tenant/demo/agent/a/i-1", "tenant": "demo",
            "source": "127.0.0.1:50123", "task": "t", "target": {"server": "demo", "tool": "echo"},
            "findings": [{"kind": "prompt-injection", "score": 0.9}], "gateway": "https://127.0.0.1:8443"}),
        serde_json::json!({"time": 1795322681, "decisionId": "d2", "outcome": "deny", "action": "http",
            "resource": "http api GET /r/1", "agent": "spiffe://warden.local/tenant/demo/agent/a/i-1", "tenant": "demo",
            "source": "[::1]:50124", "target": {"service": "api", "method": "DELETE", "path": "/r/1"}, "findings": []}),
        serde_json::json!({"time": 1795322681, "decisionId": "d3", "outcome": "allow", "action": "http",
            "resource": "http api GET /r/1", "agent": "spiffe://warden.local/tenant/demo/agent/a/i-1", "tenant": "demo",
            "source": "127.0.0.1:50125", "target": {"service": "api", "method": "GET", "path": "/r/1"}, "findings": []}),
        serde_json::json!({"time": 1795322681, "decisionId": "d4", "outcome": "deny", "action": "egress.connect",
            "resource": "egress example.com:443", "agent": "spiffe://warden.local/tenant/demo/agent/a/i-1",
            "tenant": "demo", "source": "127.0.0.1:50126",
            "target": {"host": "example.com", "port": 443, "ip": "93.184.215.14"}, "findings": [{"kind": "secret"}]}),
        serde_json::json!({"time": 1795322681, "decisionId": "d5", "outcome": "allow", "action": "a2a.message/send",
            "resource": "a2a peer", "agent": "spiffe://warden.local/tenant/demo/agent/a/i-1", "tenant": "demo",
            "target": {"peer": "planner"}, "findings": []}),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut lines = String::new();
    let mut classes = BTreeSet::new();
    for record in &records {
        for event in warden_audit::ocsf::events(record, &provenance) {
            classes.insert(event["class_uid"].as_u64().unwrap());
            lines.push_str(&event.to_string());
            lines.push('\n');
        }
    }
    assert_eq!(classes, BTreeSet::from([2004, 4001, 4002, 6003]));
    std::fs::write(&path, lines).unwrap();
    ocsf_valid(&path);
}
