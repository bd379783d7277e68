#![allow(clippy::unwrap_used)] // Tests fail loudly by design.
//! A2A through the gateway, with the official A2A Python SDK on both sides: the agent card
//! points at the gateway, messages and streams pass, every task stays with the agent instance
//! that created it, methods and push destinations are decided by policy, and the peer sees its
//! own credential, never the agent's.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use http::{Method, StatusCode};
use serde_json::{Value, json};

mod common;
use common::{Fabric, Reaped, client, free_port, python3, read, wait_for_port};

const POLICY: &str = "apiVersion: warden.dev/v1alpha1
kind: AgentPolicy
metadata: {name: planner, namespace: demo}
spec:
  selector: {matchLabels: {app: planner}}
  a2a:
    - {peers: [researcher], methods: [agent/card, message/send, message/stream, tasks/get, tasks/list, tasks/pushNotificationConfig]}
  egress:
    - {hosts: [hooks.example.com], ports: [443]}
";

fn peer(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/peers/{name}"))
}

struct Setup {
    fabric: Fabric,
    _peer: Reaped,
    a: PathBuf,
    b: PathBuf,
    url: String,
}

fn setup() -> Setup {
    setup_with(POLICY, "")
}

/// The peer and the fabric in front of it, with `policy` and extra gateway settings.
fn setup_with(policy: &str, gateway_extra: &str) -> Setup {
    let port = free_port();
    let peer_process = Reaped(
        python3()
            .arg(peer("a2a_server.py"))
            .args([&port.to_string(), "peer-secret"])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    );
    wait_for_port(port);
    let fabric = Fabric::start(
        policy,
        |_| {
            format!(
                "  upstreams:\n    - {{name: researcher, kind: a2a, url: 'http://127.0.0.1:{port}/rpc', credential: {{header: x-api-key, value: peer-secret}}}}\n{gateway_extra}"
            )
        },
        &[],
    );
    let [a, b] = <[PathBuf; 2]>::try_from(fabric.agent(
        "demo/planner",
        "app=planner",
        &["a2a.*=researcher", "egress.connect=*"],
        &["a", "b"],
    ))
    .unwrap();
    let url = format!("https://127.0.0.1:{}/a2a/researcher", fabric.gateway_port);
    Setup {
        fabric,
        _peer: peer_process,
        a,
        b,
        url,
    }
}

async fn rpc(setup: &Setup, creds: &Path, method: &str, params: Value) -> Value {
    let grant = format!("Bearer {}", read(creds, "grant"));
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params});
    let response = client(creds, true)
        .send(
            Method::POST,
            &setup.url,
            &[
                ("content-type", "application/json"),
                ("authorization", &grant),
                ("a2a-version", "1.0"),
            ],
            Some(body.to_string().into_bytes()),
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    serde_json::from_slice(&response.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_a2a_sdk_works_through_the_gateway_and_tasks_stay_with_their_agent() {
    let setup = setup();
    let out = python3()
        .arg(peer("a2a_client.py"))
        .arg(&setup.url)
        .arg(&setup.a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the A2A Python SDK run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

    // The card names the gateway, and only the binding it carries.
    assert_eq!(
        seen["card_interfaces"],
        json!([{"url": setup.url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}]),
        "{seen}"
    );
    assert_eq!(seen["artifact"], "echo: hello", "{seen}");
    assert_eq!(seen["state"], 3, "TASK_STATE_COMPLETED: {seen}");
    let task = seen["task"].as_str().unwrap();
    let streamed = seen["stream_task"].as_str().unwrap();
    assert_eq!(seen["stream_artifact"], "echo: stream me", "{seen}");
    assert!(
        seen["stream_events"]
            .as_array()
            .unwrap()
            .contains(&json!("artifact_update")),
        "the stream's events arrived one by one: {seen}"
    );
    assert!(
        seen["cancel"].as_str().unwrap().contains("Warden denied"),
        "no policy allows tasks/cancel: {seen}"
    );
    assert!(
        seen["listed"].as_array().unwrap().contains(&json!(task)),
        "{seen}"
    );

    // Another instance of the same agent cannot reach those tasks, nor see them listed.
    for method in ["GetTask", "CancelTask", "SubscribeToTask"] {
        let answer = rpc(&setup, &setup.b, method, json!({"id": task})).await;
        assert_eq!(
            answer["error"]["code"],
            warden_gateway::A2A_TASK_NOT_FOUND,
            "{method}: {answer}"
        );
    }
    let continued = rpc(
        &setup,
        &setup.b,
        "SendMessage",
        json!({"message": {"messageId": "m", "role": "ROLE_USER", "taskId": streamed,
                           "parts": [{"text": "hijack"}]}}),
    )
    .await;
    assert_eq!(
        continued["error"]["code"],
        warden_gateway::A2A_TASK_NOT_FOUND,
        "{continued}"
    );
    let listed = rpc(&setup, &setup.b, "ListTasks", json!({})).await;
    assert_eq!(listed["result"]["tasks"], json!([]), "{listed}");
    let own = rpc(&setup, &setup.a, "GetTask", json!({"id": task})).await;
    assert_eq!(own["result"]["id"], task, "{own}");

    // Push notifications are egress: only to destinations policy allows.
    let push = |url: &str| json!({"taskId": task, "id": "hook", "url": url});
    let denied = rpc(
        &setup,
        &setup.a,
        "CreateTaskPushNotificationConfig",
        push("https://attacker.example.net/collect"),
    )
    .await;
    assert_eq!(
        denied["error"]["code"],
        warden_gateway::A2A_DENIED,
        "{denied}"
    );
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap()
            .contains("push notifications to attacker.example.net:443"),
        "{denied}"
    );
    let allowed = rpc(
        &setup,
        &setup.a,
        "CreateTaskPushNotificationConfig",
        push("https://hooks.example.com/a2a"),
    )
    .await;
    assert_eq!(
        allowed["result"]["url"], "https://hooks.example.com/a2a",
        "{allowed}"
    );

    // The 0.3 method names are decided the same way; unknown methods never reach the peer.
    let old_cancel = rpc(&setup, &setup.a, "tasks/cancel", json!({"id": task})).await;
    assert_eq!(old_cancel["error"]["code"], warden_gateway::A2A_DENIED);
    let unknown = rpc(&setup, &setup.a, "tasks/obliterate", json!({})).await;
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    drop(setup.fabric);
}

/// What a peer answers is content the agent's model reads: it is inspected like a tool's
/// result. An injection the peer passes on is refused (answer and stream alike), personal data
/// is redacted where configured, and the review is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_answers_are_inspected_injections_refused_and_personal_data_redacted() {
    let policy = format!(
        "{POLICY}  deny:\n    - a2a: {{peers: [researcher], methods: [message/send, message/stream, tasks/get], when: 'context.findings.injection_score > 70'}}\n"
    );
    let setup = setup_with(&policy, "  inspect: {redact: [sensitive-data]}\n");
    let send = |text: &str| json!({"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": text}]}});
    let artifact =
        |answer: &Value| answer["result"]["task"]["artifacts"][0]["parts"][0]["text"].clone();

    let clean = rpc(&setup, &setup.a, "SendMessage", send("hello")).await;
    assert_eq!(artifact(&clean), "echo: hello", "{clean}");

    // The agent asks something harmless; the peer answers with an injection.
    let injected = rpc(&setup, &setup.a, "SendMessage", send("read reviews")).await;
    assert_eq!(
        injected["error"]["code"],
        warden_gateway::A2A_DENIED,
        "{injected}"
    );
    assert!(
        injected["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the result of"),
        "{injected}"
    );

    let personal = rpc(
        &setup,
        &setup.a,
        "SendMessage",
        send("mail ann@example.com today"),
    )
    .await;
    assert_eq!(
        artifact(&personal),
        "echo: mail [REDACTED:pii.email] today",
        "{personal}"
    );

    // A stream: the event carrying the injection is replaced by the refusal; the rest pass.
    let grant = format!("Bearer {}", read(&setup.a, "grant"));
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "SendStreamingMessage", "params": send("read reviews")});
    let streamed = client(&setup.a, true)
        .send(
            Method::POST,
            &setup.url,
            &[
                ("content-type", "application/json"),
                ("accept", "text/event-stream"),
                ("authorization", &grant),
                ("a2a-version", "1.0"),
            ],
            Some(body.to_string().into_bytes()),
            1 << 20,
        )
        .await
        .unwrap();
    let events = String::from_utf8_lossy(&streamed.body);
    assert!(!events.contains("evil.example"), "{events}");
    assert!(events.contains("the result of"), "{events}");

    let audit = setup.fabric.dir.path().join("data/audit");
    let refused = common::mcp::recorded(&audit, |r| {
        r["phase"] == "result" && r["outcome"] == "deny" && r["action"] == "a2a.message/send"
    });
    assert!(
        refused["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "injection"),
        "{refused}"
    );
    let redacted = common::mcp::recorded(&audit, |r| {
        r["phase"] == "result" && r["redacted"].is_array()
    });
    assert_eq!(redacted["redacted"][0]["rule"], "pii.email", "{redacted}");
    assert_eq!(redacted["outcome"], "allow", "{redacted}");
}
