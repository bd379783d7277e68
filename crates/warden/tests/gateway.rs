#![allow(clippy::unwrap_used)] // Tests fail loudly by design.
//! `warden up` as a user runs it, and MCP calls through its gateway: mTLS with the agent's SVID
//! and grant, decisions on tool arguments, filtered listings, refusals of bad credentials and bad
//! input, key-bound grants with DPoP proofs, and revocation reaching the gateway.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use warden_control::HttpClient;

mod common;
use common::{Fabric, Reaped, client, free_port, python3, read, wait_for_port};

struct Up {
    child: Child,
    dir: tempfile::TempDir,
    control: String,
    gateway: String,
    demo_port: u16,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `warden up` on free ports; tried again on fresh ones if another test took a port between
/// picking and binding it.
fn up() -> Up {
    for _ in 0..3 {
        if let Some(up) = try_up() {
            return up;
        }
    }
    panic!("warden up did not start on three sets of free ports");
}

fn try_up() -> Option<Up> {
    let dir = tempfile::tempdir().unwrap();
    let (c, g, d) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("up")
        .args(["--control-listen", &format!("127.0.0.1:{c}")])
        .args(["--gateway-listen", &format!("127.0.0.1:{g}")])
        .args(["--demo-listen", &format!("127.0.0.1:{d}")])
        .current_dir(dir.path())
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
        if line.contains("Stop with Ctrl-C") {
            break;
        }
    }
    if !banner.contains("Warden is up") {
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("warden up did not start (a port taken?); retrying:\n{banner}");
        return None;
    }
    std::thread::spawn(move || lines.for_each(drop));
    Some(Up {
        child,
        dir,
        control: format!("http://127.0.0.1:{c}"),
        gateway: format!("https://127.0.0.1:{g}"),
        demo_port: d,
    })
}

impl Up {
    fn warden(&self, args: &[&str]) -> std::process::Output {
        let token =
            std::fs::read_to_string(self.dir.path().join("warden-data/admin-token")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(args)
            .current_dir(self.dir.path())
            .env("WARDEN_CONTROL_URL", &self.control)
            .env("WARDEN_TOKEN", token.trim())
            .output()
            .unwrap()
    }

    /// How many times the gateway has loaded an edited policy bundle (from its metrics).
    fn reloads(&self) -> u64 {
        self.counter("warden_policy_reloads_total{result=\"loaded\"}")
    }

    /// A counter from the gateway's metrics (0 when absent).
    fn counter(&self, series: &str) -> u64 {
        let token =
            std::fs::read_to_string(self.dir.path().join("warden-data/metrics-token")).unwrap();
        let out = Command::new("curl")
            .args(["-sk", "-H"])
            .arg(format!("Authorization: Bearer {}", token.trim()))
            .arg(format!("{}/metrics", self.gateway))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Writes the demo policy file and waits until the gateway has loaded it.
    fn edit_policy(&self, text: &str) {
        let before = self.reloads();
        std::fs::write(
            self.dir.path().join("warden-data/policies/assistant.yaml"),
            text,
        )
        .unwrap();
        common::eventually("the gateway reloads the edited policy", || {
            self.reloads() > before
        });
    }

    /// Credentials for a demo agent instance, written to a directory.
    fn credentials(&self, name: &str, extra: &[&str]) -> PathBuf {
        let out = self.dir.path().join(name);
        let mut args = vec![
            "agent",
            "credential",
            "demo/assistant",
            "--task",
            "t-1",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let result = self.warden(&args);
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        out
    }
}

async fn post(
    client: &HttpClient,
    url: &str,
    authorization: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (StatusCode, Value) {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    headers.extend_from_slice(extra);
    let r = client
        .send(Method::POST, url, &headers, Some(body.to_vec()), 1 << 20)
        .await
        .unwrap();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

fn call(id: u64, tool: &str, args: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": args}})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_calls_through_the_gateway_are_decided_on_tool_and_arguments() {
    let up = up();
    let creds = up.credentials("assistant", &[]);
    let grant = format!("Bearer {}", read(&creds, "grant"));
    let mcp = format!("{}/mcp/demo", up.gateway);
    let agent = client(&creds, true);

    let (status, allowed) = post(
        &agent,
        &mcp,
        Some(&grant),
        &[],
        &call(1, "delete_records", json!({"table": "scratch"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        allowed["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("scratch"),
        "{allowed}"
    );

    let (status, denied) = post(
        &agent,
        &mcp,
        Some(&grant),
        &[],
        &call(2, "delete_records", json!({"table": "customers"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(denied["error"]["code"], warden_gateway::DENIED);
    assert_eq!(denied["id"], 2);
    let message = denied["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("decision") && !message.contains("assistant.yaml"),
        "{message}"
    );

    // The listing shows what the agent could call: not read_secrets.
    let (_, listed) = post(
        &agent,
        &mcp,
        Some(&grant),
        &[],
        br#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
    )
    .await;
    let mut names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["add", "delete_records", "echo"], "{listed}");

    // The decision was counted. Metrics are not for agents: they need the metrics token.
    let metrics_url = format!("{}/metrics", up.gateway);
    let refused = agent
        .send(Method::GET, &metrics_url, &[], None, 1 << 20)
        .await
        .unwrap();
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let with_grant = agent
        .send(
            Method::GET,
            &metrics_url,
            &[("authorization", &grant)],
            None,
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(with_grant.status, StatusCode::UNAUTHORIZED);
    let token = std::fs::read_to_string(up.dir.path().join("warden-data/metrics-token")).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let metrics = agent
        .send(
            Method::GET,
            &metrics_url,
            &[("authorization", &bearer)],
            None,
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("warden_decisions_total{outcome=\"deny\"}"),
        "{text}"
    );
    assert!(
        text.contains("warden_stage_seconds_count{stage=\"decide\"}"),
        "{text}"
    );
}

/// An idle `warden up` stops at once on Ctrl-C: nothing waits on its own long polls.
#[test]
fn an_idle_warden_up_stops_within_a_second_of_ctrl_c() {
    let mut up = up();
    // Let the gateway's long polls to the control plane start.
    std::thread::sleep(Duration::from_millis(500));
    let interrupted = Instant::now();
    // The shell's own `kill`: no procps needed.
    let signalled = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", up.child.id())])
        .status()
        .unwrap();
    assert!(signalled.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if up.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "warden up still runs 10 s after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = interrupted.elapsed();
    eprintln!("warden up stopped {took:?} after SIGINT");
    // The goal is a second; the margin is for a loaded machine.
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_missing_or_misused_credentials_are_refused() {
    let up = up();
    let mine = up.credentials("mine", &[]);
    let theirs = up.credentials("theirs", &[]);
    let mcp = format!("{}/mcp/demo", up.gateway);
    let body = call(1, "echo", json!({"text": "hi"}));
    let my_grant = format!("Bearer {}", read(&mine, "grant"));

    // No grant; a grant without the SVID it is bound to; my grant over another agent's mTLS.
    let (status, _) = post(&client(&mine, true), &mcp, None, &[], &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&client(&mine, false), &mcp, Some(&my_grant), &[], &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, refused) = post(&client(&theirs, true), &mcp, Some(&my_grant), &[], &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    // Garbage in the grant.
    let (status, _) = post(&client(&mine, true), &mcp, Some("Bearer AAAA"), &[], &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Bad input is refused and the gateway keeps serving.
    let agent = client(&mine, true);
    let cases: [&[u8]; 4] = [
        b"{not json",
        br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
        br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#,
    ];
    for case in cases {
        let (status, answer) = post(&agent, &mcp, Some(&my_grant), &[], case).await;
        assert!(
            status == StatusCode::BAD_REQUEST || answer["error"]["code"].as_i64().is_some(),
            "{status} {answer}"
        );
    }
    // An oversized body: 413, or the connection closed while the client still writes.
    let huge = vec![b' '; 5 * 1024 * 1024];
    let headers = [
        ("content-type", "application/json"),
        ("authorization", my_grant.as_str()),
    ];
    match agent
        .send(Method::POST, &mcp, &headers, Some(huge), 1 << 20)
        .await
    {
        Ok(r) => assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE),
        Err(e) => assert!(
            e.to_string().contains("Broken pipe") || e.to_string().contains("reset"),
            "{e}"
        ),
    }
    let (status, ok) = post(&agent, &mcp, Some(&my_grant), &[], &body).await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    assert_eq!(ok["result"]["content"][0]["text"], "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_bound_grant_works_with_proofs_and_revocation_reaches_the_gateway() {
    let up = up();
    let creds = up.credentials("serverless", &["--pop"]);
    let signer = warden_authority::ProofSigner::from_pem(&read(&creds, "pop-key.pem")).unwrap();
    let grant = read(&creds, "grant");
    let mcp = format!("{}/mcp/demo", up.gateway);
    let no_mtls =
        HttpClient::with_tls(Duration::from_secs(10), &read(&creds, "bundle.pem"), None).unwrap();
    let now = || time::OffsetDateTime::now_utc().unix_timestamp();
    let authorization = format!("DPoP {grant}");

    let proof = signer.proof("POST", &mcp, &grant, now()).unwrap();
    let body = call(1, "add", json!({"a": 2, "b": 3}));
    let (status, sum) = post(
        &no_mtls,
        &mcp,
        Some(&authorization),
        &[("dpop", &proof)],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{sum}");
    assert_eq!(sum["result"]["content"][0]["text"], "5");
    // The same proof again, and a bearer use without any proof: refused.
    let (status, _) = post(
        &no_mtls,
        &mcp,
        Some(&authorization),
        &[("dpop", &proof)],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&no_mtls, &mcp, Some(&format!("Bearer {grant}")), &[], &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Revoke the task; the gateway learns within about a second.
    let revoked = up.warden(&["revoke", "task", "t-1"]);
    assert!(revoked.status.success());
    let started = Instant::now();
    loop {
        let proof = signer.proof("POST", &mcp, &grant, now()).unwrap();
        let (status, _) = post(
            &no_mtls,
            &mcp,
            Some(&authorization),
            &[("dpop", &proof)],
            &body,
        )
        .await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "revocation did not reach the gateway"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

/// What a Python SDK client reported: it succeeded, saw the filtered tool list, had the allowed
/// call answered with `allowed` and the denied one refused by Warden.
fn expect_python_run(out: std::process::Output, allowed: &str) -> Value {
    assert!(
        out.status.success(),
        "the MCP Python SDK run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen["tools"],
        json!(["add", "delete_records", "echo"]),
        "{seen}"
    );
    assert!(
        seen["allowed"].as_str().unwrap().contains(allowed),
        "{seen}"
    );
    assert_eq!(seen["denied"]["code"], warden_gateway::DENIED, "{seen}");
    seen
}

#[test]
fn the_official_python_mcp_client_works_through_the_gateway_unchanged() {
    let up = up();
    let creds = up.credentials("python", &[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_client.py");
    let out = python3()
        .arg(&script)
        .arg(format!("{}/mcp/demo", up.gateway))
        .arg(&creds)
        .output()
        .expect("python3 runs");
    let seen = expect_python_run(out, "scratch");
    assert_eq!(seen["echo"], "through warden");
}

const PYTHON_POLICY: &str = "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: py, namespace: demo}\nspec:\n  selector: {matchLabels: {app: assistant}}\n  mcp:\n    - {server: demo, tools: [echo, add]}\n    - {server: demo, tools: [delete_records], when: 'context.args.table == \"scratch\"'}\n---\napiVersion: warden.dev/v1alpha1\nkind: ToolCatalog\nmetadata: {name: py-tools}\nspec:\n  servers:\n    - name: demo\n      tools:\n        - {name: delete_records, inputSchema: {type: object, properties: {table: {type: string}}}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_python_mcp_server_over_sse_with_sessions_bound_to_their_agent() {
    let python_port = free_port();
    let _python = Reaped(
        python3()
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_server.py"))
            .arg(python_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    );
    wait_for_port(python_port);
    let fabric = Fabric::start(
        PYTHON_POLICY,
        |_| {
            format!(
                "  upstreams:\n    - {{name: demo, kind: mcp, url: 'http://127.0.0.1:{python_port}/mcp'}}\n"
            )
        },
        &[],
    );
    let gateway_port = fabric.gateway_port;
    let [a, b] = <[PathBuf; 2]>::try_from(fabric.agent(
        "demo/assistant",
        "app=assistant",
        &["mcp.*=demo/*"],
        &["a", "b"],
    ))
    .unwrap();
    let mcp = format!("https://127.0.0.1:{gateway_port}/mcp/demo");

    // The unchanged Python client against the Python server, through the gateway: the listing
    // arrives as SSE and is filtered all the same.
    let out = python3()
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_client.py"))
        .arg(&mcp)
        .arg(&a)
        .output()
        .unwrap();
    expect_python_run(out, "python deleted all records of scratch");

    // A session belongs to the agent instance that opened it.
    let initialize = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let grant_a = format!("Bearer {}", read(&a, "grant"));
    let grant_b = format!("Bearer {}", read(&b, "grant"));
    let headers = |grant: &str| {
        vec![
            ("content-type", "application/json".to_owned()),
            ("accept", "application/json, text/event-stream".to_owned()),
            ("authorization", grant.to_owned()),
        ]
    };
    let send = |client: HttpClient, headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let url = mcp.clone();
        async move {
            let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client
                .send(Method::POST, &url, &refs, Some(body), 1 << 20)
                .await
                .unwrap()
        }
    };
    let opened = send(client(&a, true), headers(&grant_a), initialize.to_vec()).await;
    assert_eq!(opened.status, StatusCode::OK);
    let session = opened.headers["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let list = br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#.to_vec();
    let mut as_b = headers(&grant_b);
    as_b.push(("mcp-session-id", session.clone()));
    let stolen = send(client(&b, true), as_b, list.clone()).await;
    assert_eq!(
        stolen.status,
        StatusCode::NOT_FOUND,
        "another agent cannot use the session"
    );
    let mut as_a = headers(&grant_a);
    as_a.push(("mcp-session-id", session));
    let own = send(client(&a, true), as_a, list).await;
    assert_eq!(own.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&own.body);
    assert!(
        text.contains("\"echo\"") && !text.contains("read_secrets"),
        "{text}"
    );
}

/// Reads an SSE stream until an event whose data contains `needle`; returns that data.
async fn next_event(body: &mut hyper::body::Incoming, buffer: &mut String, needle: &str) -> String {
    use http_body_util::BodyExt as _;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let data: String = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            if data.contains(needle) {
                return data;
            }
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the stream stays alive")
            .expect("the stream has not ended")
            .unwrap();
        if let Some(chunk) = frame.data_ref() {
            buffer.push_str(&String::from_utf8_lossy(chunk));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_older_http_sse_transport_is_screened_the_same_way() {
    let python_port = free_port();
    let _python = Reaped(
        python3()
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_server.py"))
            .args([&python_port.to_string(), "sse"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    );
    wait_for_port(python_port);
    let fabric = Fabric::start(
        PYTHON_POLICY,
        |_| {
            format!(
                "  upstreams:\n    - {{name: demo, kind: mcp-sse, url: 'http://127.0.0.1:{python_port}/sse'}}\n  inspect: {{redact: [sensitive-data]}}\n"
            )
        },
        &[],
    );
    let [a, b] = <[PathBuf; 2]>::try_from(fabric.agent(
        "demo/assistant",
        "app=assistant",
        &["mcp.*=demo/*"],
        &["a", "b"],
    ))
    .unwrap();
    let sse = format!("https://127.0.0.1:{}/mcp/demo/sse", fabric.gateway_port);

    // The unchanged Python client over the old transport: filtered listing, allowed and denied
    // calls, all answered on its event stream.
    let out = python3()
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_client.py"))
        .args([sse.as_str(), a.to_str().unwrap(), "sse"])
        .output()
        .unwrap();
    expect_python_run(out, "python deleted all records of scratch");

    // The message endpoint the gateway announces belongs to the agent that opened the stream.
    let grant_a = format!("Bearer {}", read(&a, "grant"));
    let grant_b = format!("Bearer {}", read(&b, "grant"));
    let open = http::Request::get(&sse)
        .header("authorization", &grant_a)
        .header("accept", "text/event-stream")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let stream = client(&a, true).stream(open).await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut body = stream.into_body();
    let mut buffer = String::new();
    let endpoint = next_event(&mut body, &mut buffer, "/mcp/demo/messages?session_id=").await;
    assert!(
        endpoint.starts_with(&format!("https://127.0.0.1:{}/", fabric.gateway_port)),
        "{endpoint}"
    );
    let message = |grant: &str, creds: &Path, body: Value| {
        let (grant, creds, url) = (grant.to_owned(), creds.to_owned(), endpoint.clone());
        async move {
            post(
                &client(&creds, true),
                &url,
                Some(&grant),
                &[],
                body.to_string().as_bytes(),
            )
            .await
        }
    };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let (status, _) = message(&grant_b, &b, init.clone()).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another agent cannot post into the session"
    );
    let (status, _) = message(&grant_a, &a, init).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    next_event(&mut body, &mut buffer, "\"id\":1").await;
    let (status, _) = message(
        &grant_a,
        &a,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = message(
        &grant_a,
        &a,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let listing = next_event(&mut body, &mut buffer, "\"id\":2").await;
    assert!(
        listing.contains("\"echo\"") && !listing.contains("read_secrets"),
        "the listing on the stream is filtered: {listing}"
    );
    let (status, _) = message(
        &grant_a,
        &a,
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "read_secrets", "arguments": {}}}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a refusal is answered on the stream"
    );
    let refusal: Value =
        serde_json::from_str(&next_event(&mut body, &mut buffer, "\"id\":3").await).unwrap();
    assert_eq!(
        refusal["error"]["code"],
        warden_gateway::DENIED,
        "{refusal}"
    );
    // Results arriving on the stream are reviewed too: here, personal data redacted.
    let (status, _) = message(
        &grant_a,
        &a,
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"text": "mail ann@example.com"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let result = next_event(&mut body, &mut buffer, "\"id\":4").await;
    assert!(
        result.contains("mail [REDACTED:pii.email]") && !result.contains("ann@"),
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_edits_reload_live_and_rate_limits_hold_per_agent() {
    let up = up();
    let creds = up.credentials("limited", &[]);
    let other = up.credentials("unlimited", &[]);
    let policy = up.dir.path().join("warden-data/policies/assistant.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    up.edit_policy(&(text + "  limits: {requestsPerMinute: 3}\n"));
    let mcp = format!("{}/mcp/demo", up.gateway);
    let body = call(1, "echo", json!({"text": "x"}));
    let grant = format!("Bearer {}", read(&creds, "grant"));
    let agent = client(&creds, true);
    for i in 0..3 {
        let (_, answer) = post(&agent, &mcp, Some(&grant), &[], &body).await;
        assert!(answer["result"].is_object(), "call {i}: {answer}");
    }
    let (_, limited) = post(&agent, &mcp, Some(&grant), &[], &body).await;
    assert_eq!(
        limited["error"]["code"],
        warden_gateway::DENIED,
        "{limited}"
    );
    assert_eq!(limited["error"]["data"]["reason"], "forbidden");
    // Another instance has its own budget.
    let (_, fresh) = post(
        &client(&other, true),
        &mcp,
        Some(&format!("Bearer {}", read(&other, "grant"))),
        &[],
        &body,
    )
    .await;
    assert!(fresh["result"].is_object(), "{fresh}");
}

/// A raw TLS connection to the gateway, for requests no well-behaved client would send.
async fn raw_tls(
    port: u16,
    bundle_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the peer closes or `limit` passes; returns what arrived and whether it closed.
async fn read_until_close(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> (String, bool) {
    use tokio::io::AsyncReadExt as _;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_oversized_headers_and_slow_clients_are_cut_off_while_others_are_served() {
    use tokio::io::AsyncWriteExt as _;
    let up = up();
    let creds = up.credentials("raw", &[]);
    let bundle = read(&creds, "bundle.pem");
    let port: u16 = up.gateway.rsplit(':').next().unwrap().parse().unwrap();

    // Content-Length and Transfer-Encoding together (RFC 9112 §6.3): the message is read as
    // chunked, answered once, and the connection closed, so the request hidden behind it is never
    // read, let alone forwarded.
    let mut smuggler = raw_tls(port, &bundle).await;
    smuggler
        .write_all(
            b"POST /mcp/demo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /mcp/demo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
    let (answer, closed) = read_until_close(&mut smuggler, Duration::from_secs(5)).await;
    assert!(closed, "the connection stays open: {answer}");
    assert!(
        answer.matches("HTTP/1.1 ").count() <= 1,
        "a second request was read: {answer}"
    );
    assert!(!answer.contains("200 OK"), "{answer}");

    // Headers far beyond the limit.
    let mut bloated = raw_tls(port, &bundle).await;
    let header = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let _ = bloated.write_all(header.as_bytes()).await;
    let (answer, closed) = read_until_close(&mut bloated, Duration::from_secs(5)).await;
    assert!(closed && !answer.contains("200 OK"), "{answer}");

    // A slow client sends half a request and stalls; the gateway keeps serving everyone else
    // and cuts the slow one off after the header timeout (10 s by default).
    let mut slow = raw_tls(port, &bundle).await;
    slow.write_all(b"POST /mcp/demo HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let healthy = client(&creds, true);
    for _ in 0..20 {
        let r = healthy
            .send(
                Method::GET,
                &format!("{}/healthz", up.gateway),
                &[],
                None,
                1 << 10,
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut slow, Duration::from_secs(15)).await;
    assert!(closed, "the slow client was not cut off");
    assert!(started.elapsed() < Duration::from_secs(12));
}

/// curl through the gateway's forward proxy with the agent's SVID and grant.
fn curl_via_proxy(up: &Up, creds: &Path, tunnel: bool, url: &str) -> (String, String) {
    let mut command = common::curl_through_proxy(&up.gateway, creds);
    command.args(["-o", "-", "-w", "\n%{http_code}"]);
    if tunnel {
        command.arg("--proxytunnel");
    }
    let out = command.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

/// An agent sweeping ports through the forward proxy is quarantined with no person involved,
/// and the detection is in the audit log with the refused attempts as its evidence.
#[test]
fn an_agent_that_port_scans_through_the_gateway_is_quarantined_automatically() {
    let up = up();
    let registered = up.warden(&[
        "agent",
        "register",
        "demo/scanner",
        "--label",
        "app=assistant",
        "--right",
        "egress.connect=*",
    ]);
    assert!(registered.status.success());
    let creds = up.dir.path().join("scanner");
    let issued = up.warden(&[
        "agent",
        "credential",
        "demo/scanner",
        "--task",
        "sweep",
        "--out",
        creds.to_str().unwrap(),
    ]);
    assert!(issued.status.success());
    // Fifteen ports of one host no policy allows: each refused, together a scan.
    for port in 1..=15 {
        let (code, body) = curl_via_proxy(&up, &creds, false, &format!("http://10.0.0.7:{port}/"));
        assert_eq!(code, "403", "port {port}: {body}");
    }
    common::eventually("the scanner is quarantined", || {
        let held = up.warden(&["quarantine"]);
        String::from_utf8_lossy(&held.stdout).contains("agent/scanner")
    });
    // Its credentials are revoked with the hold: the next attempt is not even identified.
    common::eventually("the scanner's credentials are refused", || {
        curl_via_proxy(&up, &creds, false, "http://10.0.0.7:16/").0 == "407"
    });
    let listed = up.warden(&["audit", "search", "--action", "detect"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("scan.ports: 15 distinct ports on 10.0.0.7"),
        "{listed}"
    );
    let found = up.warden(&["audit", "search", "--agent", "agent/scanner", "-o", "json"]);
    let text = String::from_utf8_lossy(&found.stdout);
    let detection = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|record| record["action"] == "detect")
        .unwrap_or_else(|| panic!("no detection in the audit log:\n{text}"));
    assert_eq!(detection["target"]["detector"], "scan.ports", "{detection}");
    assert_eq!(detection["outcome"], "quarantine");
    // The demo's DetectionPolicy chose the response: ten minutes, then released by itself.
    assert_eq!(
        detection["target"]["policy"], "demo/demo-responses",
        "{detection}"
    );
    // `warden detections` lists it and shows it with the decisions that make it.
    let listed = up.warden(&["detections", "list", "--detector", "scan.ports"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("scan.ports") && listed.contains("(by demo/demo-responses)"),
        "{listed}"
    );
    let id = detection["decisionId"].as_str().unwrap();
    let shown = up.warden(&["detections", "show", id, "-o", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["evidence"].as_array().unwrap().len(), 15, "{shown}");
    assert!(
        shown["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["action"] == "egress.connect" && r["outcome"] == "deny"),
        "{shown}"
    );
    let missing = up.warden(&["detections", "show", "det_nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no detection det_nope"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let held = up.warden(&["quarantine"]);
    let held = String::from_utf8_lossy(&held.stdout);
    assert!(
        held.lines()
            .any(|l| l.contains("agent/scanner") && l.contains(" until ")),
        "{held}"
    );
    assert_eq!(
        detection["target"]["evidence"].as_array().unwrap().len(),
        15
    );
}

#[test]
fn egress_through_the_forward_proxy_is_decided_on_host_port_and_address() {
    let up = up();
    // An agent whose registered rights include egress (the demo assistant's are MCP only).
    let registered = up.warden(&[
        "agent",
        "register",
        "demo/browser",
        "--label",
        "app=assistant",
        "--right",
        "egress.connect=*",
    ]);
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    let creds = up.dir.path().join("browser");
    let issued = up.warden(&[
        "agent",
        "credential",
        "demo/browser",
        "--task",
        "browse",
        "--out",
        creds.to_str().unwrap(),
    ]);
    assert!(issued.status.success());
    let demo_port = up.demo_port;
    let policy = up.dir.path().join("warden-data/policies/assistant.yaml");
    let original = std::fs::read_to_string(&policy).unwrap();
    let target = format!("http://localhost:{demo_port}/mcp");

    // The name is allowed, but it resolves to a loopback address no rule allows: refused, both
    // as plain HTTP through the proxy and as a CONNECT tunnel.
    up.edit_policy(&format!(
        "{original}  egress:\n    - hosts: [localhost]\n      ports: [{demo_port}]\n"
    ));
    for tunnel in [false, true] {
        let (code, body) = curl_via_proxy(&up, &creds, tunnel, &target);
        assert!(
            code == "403" || (tunnel && code == "000"),
            "tunnel={tunnel}: {code} {body}"
        );
    }

    // Allow the address too: the request reaches the demo server (which answers GET /mcp itself).
    up.edit_policy(&format!(
        "{original}  egress:\n    - hosts: [localhost]\n      ports: [{demo_port}]\n    - cidrs: [127.0.0.1/32]\n      ports: [{demo_port}]\n"
    ));
    for tunnel in [false, true] {
        let (code, body) = curl_via_proxy(&up, &creds, tunnel, &target);
        assert!(
            code != "403" && code != "407" && code != "000",
            "tunnel={tunnel}: {code} {body}"
        );
    }

    // Private ranges, the metadata address and hosts no policy names: refused.
    for url in [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://93.184.215.14/",
        "http://[::1]:80/",
    ] {
        let (code, body) = curl_via_proxy(&up, &creds, false, url);
        assert_eq!(code, "403", "{url}: {body}");
    }
    // No credential: 407.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--proxy",
            &up.gateway,
        ])
        .arg("--proxy-cacert")
        .arg(creds.join("bundle.pem"))
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "407");
}

#[test]
fn a_stdio_mcp_server_runs_behind_the_same_pipeline() {
    let up = up();
    let creds = up.credentials("stdio", &[]);
    let peers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
    let out = python3()
        .arg(peers.join("mcp_stdio_client.py"))
        .arg(env!("CARGO_BIN_EXE_warden"))
        .args([
            "mcp-stdio",
            "--server",
            "demo",
            "--control-url",
            &up.control,
        ])
        .arg("--credential")
        .arg(&creds)
        .arg("--policies")
        .arg(up.dir.path().join("warden-data/policies"))
        .args(["--redact", "sensitive-data"])
        .arg("--")
        .arg("python3")
        .arg(peers.join("mcp_server.py"))
        .arg("stdio")
        .output()
        .unwrap();
    let seen = expect_python_run(out, "python deleted all records of scratch");
    // Results are reviewed on the way back, as through the gateway: here, redacted.
    assert_eq!(seen["echoed"], "mail [REDACTED:pii.email]", "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_reaches_the_gateway_and_old_svids_keep_working() {
    let fabric = Fabric::start(
        "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: ctl, namespace: ops}\nspec:\n  selector: {matchLabels: {app: probe}}\n  http:\n    - {service: ctl, methods: [GET], paths: [/v1/health]}\n",
        |control| {
            format!(
                "  trustRefreshSecs: 1\n  upstreams:\n    - {{name: ctl, kind: http, url: 'http://127.0.0.1:{control}'}}\n"
            )
        },
        &[],
    );
    let (dir, gateway_port) = (&fabric.dir, fabric.gateway_port);
    let warden = |args: &[&str]| fabric.warden(args);
    let before = fabric
        .agent("ops/probe", "app=probe", &["http=ctl/*"], &["before"])
        .remove(0);
    let health = format!("https://127.0.0.1:{gateway_port}/http/ctl/v1/health");
    let get = |creds: PathBuf| {
        let url = health.clone();
        async move {
            let grant = format!("Bearer {}", read(&creds, "grant"));
            client(&creds, true)
                .send(
                    Method::GET,
                    &url,
                    &[("authorization", &grant)],
                    None,
                    1 << 16,
                )
                .await
                .map(|r| r.status)
        }
    };
    assert_eq!(get(before.clone()).await.unwrap(), StatusCode::OK);

    warden(&["authority", "rotate"]);
    let after = dir.path().join("after");
    warden(&[
        "agent",
        "credential",
        "ops/probe",
        "--task",
        "t",
        "--out",
        after.to_str().unwrap(),
    ]);
    // Within a refresh or two the gateway trusts the new root; the old one stays trusted.
    let started = Instant::now();
    loop {
        match get(after.clone()).await {
            Ok(StatusCode::OK) => break,
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "new SVIDs still refused: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(get(before).await.unwrap(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_its_own_oauth_token_never_the_agents_credential() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // An OAuth token endpoint and an API that echoes the headers it received.
    let issued = Arc::new(AtomicUsize::new(0));
    let app = {
        let issued = Arc::clone(&issued);
        axum::Router::new()
            .route(
                "/token",
                axum::routing::post(move |headers: http::HeaderMap, body: String| {
                    let issued = Arc::clone(&issued);
                    async move {
                        use base64::Engine as _;
                        let expected = format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode("warden:s3cret")
                        );
                        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str())
                            || !body.contains("grant_type=client_credentials")
                        {
                            return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"})));
                        }
                        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                        (StatusCode::OK, axum::Json(json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": 3600})))
                    }
                }),
            )
            .route(
                "/echo",
                axum::routing::get(|headers: http::HeaderMap| async move {
                    let seen: serde_json::Map<String, Value> = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or_default())))
                        .collect();
                    axum::Json(Value::Object(seen))
                }),
            )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let fabric = Fabric::start(
        "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: api, namespace: ops}\nspec:\n  selector: {matchLabels: {app: probe}}\n  http:\n    - {service: api, methods: [GET], paths: [/echo]}\n",
        |_| {
            format!(
                "  upstreams:\n    - name: api\n      kind: http\n      url: 'http://127.0.0.1:{api_port}'\n      credential:\n        oauth: {{tokenUrl: 'http://127.0.0.1:{api_port}/token', clientId: warden, clientSecretEnv: API_SECRET}}\n"
            )
        },
        &[("API_SECRET", "s3cret")],
    );
    let gateway_port = fabric.gateway_port;
    let creds = fabric
        .agent("ops/probe", "app=probe", &["http=api/*"], &["probe"])
        .remove(0);
    let grant = format!("Bearer {}", read(&creds, "grant"));
    let agent = client(&creds, true);
    let url = format!("https://127.0.0.1:{gateway_port}/http/api/echo");
    for _ in 0..2 {
        let r = agent
            .send(
                Method::GET,
                &url,
                &[("authorization", &grant), ("cookie", "session=agent")],
                None,
                1 << 16,
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let seen: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(seen["authorization"], "Bearer tok-1", "{seen}");
        assert!(
            seen.get("cookie").is_none() && seen.get("dpop").is_none(),
            "{seen}"
        );
    }
    assert_eq!(
        issued.load(Ordering::SeqCst),
        1,
        "the token is cached, not fetched per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_needing_approval_gets_the_documented_distinct_answer() {
    let up = up();
    let creds = up.credentials("approval", &[]);
    let policy = up.dir.path().join("warden-data/policies/assistant.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    up.edit_policy(&(text + "  approval:\n    - match:\n        mcp: {server: demo, tools: [add]}\n      approvers: {group: finance, required: 2}\n      validFor: 10m\n"));
    let grant = format!("Bearer {}", read(&creds, "grant"));
    let (status, answer) = post(
        &client(&creds, true),
        &format!("{}/mcp/demo", up.gateway),
        Some(&grant),
        &[],
        &call(7, "add", json!({"a": 1, "b": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["id"], 7);
    assert_eq!(
        answer["error"]["code"],
        warden_gateway::NEEDS_APPROVAL,
        "{answer}"
    );
    let data = &answer["error"]["data"];
    assert_eq!(data["outcome"], "needs-approval");
    assert!(data["decisionId"].as_str().is_some_and(|id| !id.is_empty()));
    let requirement = &data["requirements"][0];
    assert_eq!(requirement["group"], "finance");
    assert_eq!(requirement["required"], 2);
    assert_eq!(requirement["validForSeconds"], 600);
    assert!(
        requirement["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_opentelemetry_collector_with_a_span_per_stage() {
    use std::sync::{Arc, Mutex};
    // An OTLP/HTTP collector (JSON encoding) that keeps what it receives.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let collector = {
        let received = Arc::clone(&received);
        axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let received = Arc::clone(&received);
                async move {
                    received
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    axum::Json(json!({}))
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });
    let nothing_listens = free_port();
    let fabric = Fabric::start(
        "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: api, namespace: ops}\nspec:\n  selector: {matchLabels: {app: probe}}\n  http:\n    - {service: api, methods: [GET], paths: [/x]}\n",
        |_| {
            format!(
                "  upstreams:\n    - {{name: api, kind: http, url: 'http://127.0.0.1:{nothing_listens}'}}\n"
            )
        },
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "warden-test"),
        ],
    );
    fabric.warden(&[
        "agent",
        "register",
        "ops/probe",
        "--label",
        "app=probe",
        "--right",
        "http=api/*",
    ]);
    let creds = fabric.dir.path().join("probe");
    fabric.warden(&[
        "agent",
        "credential",
        "ops/probe",
        "--task",
        "t",
        "--out",
        creds.to_str().unwrap(),
    ]);
    let grant = format!("Bearer {}", read(&creds, "grant"));
    let r = client(&creds, true)
        .send(
            Method::GET,
            &format!("https://127.0.0.1:{}/http/api/x", fabric.gateway_port),
            &[("authorization", &grant)],
            None,
            1 << 16,
        )
        .await
        .unwrap();
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "allowed, and the upstream is down"
    );

    let started = Instant::now();
    let spans = loop {
        let spans: Vec<Value> = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|batch| {
                batch["resourceSpans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
            .collect();
        if spans.iter().any(|s| s["name"] == "warden.request") {
            break spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no request span exported: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let request = spans
        .iter()
        .find(|s| s["name"] == "warden.request")
        .unwrap();
    for stage in ["identify", "inspect", "decide", "record", "forward"] {
        let span = spans
            .iter()
            .find(|s| s["name"] == stage)
            .unwrap_or_else(|| panic!("no `{stage}` span in {spans:?}"));
        assert_eq!(
            span["traceId"], request["traceId"],
            "{stage} is part of the request's trace"
        );
        assert_eq!(
            span["parentSpanId"], request["spanId"],
            "{stage} is a child of the request"
        );
    }
    let decide = spans
        .iter()
        .find(|s| s["name"] == "decide")
        .unwrap()
        .to_string();
    assert!(
        decide.contains("warden.outcome") && decide.contains("allow"),
        "{decide}"
    );
    let batch = received.lock().unwrap()[0].to_string();
    assert!(
        batch.contains("warden-test"),
        "the service name is set: {batch}"
    );
}
