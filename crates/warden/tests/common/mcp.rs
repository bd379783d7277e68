#![allow(dead_code, clippy::unwrap_used)]
//! MCP calls through the gateway with the official Python SDK, and reading the audit records
//! they leave.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Fabric, Reaped, free_port, python3, wait_for_port};

pub fn peers() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// The Python SDK MCP server on `port`, with `env` deciding how some tools describe themselves.
pub fn python_server(port: u16, env: &[(&str, &str)]) -> Reaped {
    let server = Reaped(
        python3()
            .arg(peers().join("mcp_server.py"))
            .arg(port.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    server
}

/// The fabric in front of the MCP server on `port` (upstream `demo`), with `policy` and extra
/// gateway settings.
pub fn fabric_for(port: u16, policy: &str, gateway_extra: &str) -> Fabric {
    let extra = gateway_extra.to_owned();
    Fabric::start(
        policy,
        move |_| {
            format!(
                "  upstreams:\n    - {{name: demo, kind: mcp, url: 'http://127.0.0.1:{port}/mcp'}}\n{extra}"
            )
        },
        &[],
    )
}

/// A Python SDK MCP server, and the fabric in front of it.
pub fn site(policy: &str, gateway_extra: &str) -> (Reaped, Fabric) {
    let port = free_port();
    let server = python_server(port, &[]);
    (server, fabric_for(port, policy, gateway_extra))
}

pub fn url(fabric: &Fabric) -> String {
    format!("https://127.0.0.1:{}/mcp/demo", fabric.gateway_port)
}

/// Runs `calls` in one MCP session as the agent whose credentials are in `creds`.
pub fn calls(fabric: &Fabric, creds: &Path, calls: Value) -> Vec<Value> {
    let out = python3()
        .arg(peers().join("mcp_calls.py"))
        .arg(url(fabric))
        .arg(creds)
        .arg(calls.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

pub fn call(tool: &str, args: Value) -> Value {
    json!({"tool": tool, "args": args})
}

pub fn ok(outcome: &Value) -> &str {
    outcome["ok"]
        .as_str()
        .unwrap_or_else(|| panic!("expected success: {outcome}"))
}

pub fn refused(outcome: &Value) -> (&Value, String) {
    let error = &outcome["error"];
    assert!(error.is_object(), "expected a refusal: {outcome}");
    (
        &error["data"],
        error["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Every record of a log directory, parsed (none while the gateway has written none).
pub fn records(dir: &Path) -> Vec<Value> {
    if !dir.join("segments").exists() {
        return Vec::new();
    }
    let reader = warden_audit::LogReader::open(dir).unwrap();
    reader
        .records(0)
        .unwrap()
        .map(|r| serde_json::from_slice(&r.unwrap().1).unwrap())
        .collect()
}

/// Waits (up to 5 s) until the audit log in `dir` holds a record that `found` accepts.
pub fn recorded(dir: &Path, found: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(record) = records(dir).into_iter().find(|r| found(r)) {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "no such record in {}: {:?}",
            dir.display(),
            records(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
