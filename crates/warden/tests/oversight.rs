#![allow(clippy::unwrap_used)] // Tests fail loudly by design.
//! People overseeing agents, through the real gateway with the official MCP Python SDK client:
//! human co-signature bound to the exact call, event-gated actions, quarantine cutting a
//! streaming call, and the kill switch — each step checked in the audit records.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::mcp::{call, calls, ok, peers, recorded, refused, site, url};
use common::{Fabric, Reaped, python3};

const POLICY: &str = r#"apiVersion: warden.dev/v1alpha1
kind: AgentPolicy
metadata: {name: ops, namespace: demo}
spec:
  selector: {matchLabels: {app: ops}}
  mcp:
    - {server: demo, tools: ["*"]}
  approval:
    - match: {mcp: {server: demo, tools: [delete_namespace]}}
      approvers: {group: sre, required: 1}
      validFor: 10m
    - match: {mcp: {server: demo, tools: [add]}}
      approvers: {group: sre, required: 1}
      validFor: 2s
    - match: {mcp: {server: demo, tools: [read_secrets]}}
      approvers: {group: sre, required: 2}
      validFor: 10m
  events:
    - match: {mcp: {server: demo, tools: [scale]}}
      after:
        type: traffic-spike
        within: 10m
        attributes:
          deployment: {arg: deployment}
    - match: {mcp: {server: demo, tools: [delete_records]}}
      after: {type: maintenance, within: 5s}
    - match: {mcp: {server: demo, tools: [rotate_keys]}}
      after:
        type: access-granted
        within: 1h
        attributes: {agent: {agent: name}}
---
apiVersion: warden.dev/v1alpha1
kind: ToolCatalog
metadata: {name: ops-tools}
spec:
  servers:
    - name: demo
      tools:
        - {name: delete_namespace, inputSchema: {type: object, properties: {namespace: {type: string}}}}
        - {name: scale, inputSchema: {type: object, properties: {deployment: {type: string}, replicas: {type: integer}}}}
        - name: create_branch
          inputSchema: {type: object, properties: {name: {type: string}}}
          undo: {tool: delete_branch, arguments: {name: {arg: name}}}
        - {name: delete_branch, inputSchema: {type: object, properties: {name: {type: string}}}}
"#;

fn with_approval(tool: &str, args: Value, approval: &str) -> Value {
    json!({"tool": tool, "args": args, "meta": {"warden/approval": approval}})
}

/// Registers the agent the policy is for, `demo/ops`, and writes one instance's credentials.
fn ops(fabric: &Fabric) -> PathBuf {
    fabric
        .agent("demo/ops", "app=ops", &["mcp.*=demo/*"], &["i-1"])
        .remove(0)
}

/// Asserts that the audit log at `log` (under the fabric's directory) verifies with `key`.
fn verifies(fabric: &Fabric, log: &str, key: &str) {
    let path = |p: &str| fabric.dir.path().join(p).to_str().unwrap().to_owned();
    let out = fabric.cli(
        &fabric.token,
        &["audit", "verify", "--log", &path(log), "--key", &path(key)],
    );
    assert!(
        out.status.success(),
        "{log}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn approve(fabric: &Fabric, token: &str, id: &str) -> std::process::Output {
    fabric.cli(token, &["approvals", "approve", id])
}

#[test]
fn approvals_are_bound_to_the_exact_call_single_use_expiring_and_need_the_right_people() {
    let (_server, fabric) = site(POLICY, "");
    let [agent, other] = <[PathBuf; 2]>::try_from(fabric.agent(
        "demo/ops",
        "app=ops",
        &["mcp.*=demo/*"],
        &["i-1", "i-2"],
    ))
    .unwrap();
    let alice = fabric.admin("alice", "approver", &["sre"]);
    let bob = fabric.admin("bob", "approver", &["sre"]);
    let carol = fabric.admin("carol", "approver", &["finance"]);
    let viewer = fabric.admin("vic", "viewer", &[]);

    // The call needs approval: a request bound to it is filed, and its id comes back.
    let out = calls(
        &fabric,
        &agent,
        json!([{"tool": "delete_namespace", "args": {"namespace": "dev"},
                "meta": {"warden/intent": "clean up the dev namespace after the demo"}}]),
    );
    let (data, message) = refused(&out[0]);
    assert_eq!(data["outcome"], "needs-approval", "{message}");
    let id = data["approvals"][0].as_str().unwrap().to_owned();
    assert!(message.contains(&id), "{message}");
    // Approvers see the exact call and the agent's justification.
    let shown = fabric.cli(&alice, &["approvals", "show", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("\"namespace\":\"dev\"") && shown.contains("clean up the dev namespace"),
        "{shown}"
    );

    // Not an approver, not in the group: refused, and nothing is approved.
    let out = approve(&fabric, &viewer, &id);
    assert!(!out.status.success());
    let out = approve(&fabric, &carol, &id);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in approver group sre"));
    let before = calls(
        &fabric,
        &agent,
        json!([with_approval(
            "delete_namespace",
            json!({"namespace": "dev"}),
            &id
        )]),
    );
    assert!(
        refused(&before[0]).1.contains("still pending"),
        "{before:?}"
    );

    assert!(approve(&fabric, &alice, &id).status.success());
    // The same id on other arguments, or from another agent instance: refused, and not spent.
    let out = calls(
        &fabric,
        &agent,
        json!([with_approval(
            "delete_namespace",
            json!({"namespace": "prod"}),
            &id
        )]),
    );
    let (data, message) = refused(&out[0]);
    assert_eq!(data["outcome"], "needs-approval");
    assert!(message.contains("other arguments"), "{message}");
    let out = calls(
        &fabric,
        &other,
        json!([with_approval(
            "delete_namespace",
            json!({"namespace": "dev"}),
            &id
        )]),
    );
    assert!(refused(&out[0]).1.contains("another agent"), "{out:?}");
    // The exact call runs once; a replay is refused.
    let out = calls(
        &fabric,
        &agent,
        json!([
            with_approval("delete_namespace", json!({"namespace": "dev"}), &id),
            with_approval("delete_namespace", json!({"namespace": "dev"}), &id),
        ]),
    );
    assert_eq!(ok(&out[0]), "deleted namespace dev");
    assert!(refused(&out[1]).1.contains("used already"), "{out:?}");

    // Quorum: two approvers needed, one is not enough.
    let out = calls(&fabric, &agent, json!([call("read_secrets", json!({}))]));
    let two = refused(&out[0]).0["approvals"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(approve(&fabric, &alice, &two).status.success());
    let again = approve(&fabric, &alice, &two);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already approved"));
    let out = calls(
        &fabric,
        &agent,
        json!([with_approval("read_secrets", json!({}), &two)]),
    );
    assert!(refused(&out[0]).1.contains("1 of 2"), "{out:?}");
    assert!(approve(&fabric, &bob, &two).status.success());
    let out = calls(
        &fabric,
        &agent,
        json!([with_approval("read_secrets", json!({}), &two)]),
    );
    assert_eq!(ok(&out[0]), "you should never see this");

    // Expiry: approved, then unused for longer than the policy's 2 s validity.
    let out = calls(
        &fabric,
        &agent,
        json!([call("add", json!({"a": 1, "b": 2}))]),
    );
    let short = refused(&out[0]).0["approvals"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(approve(&fabric, &alice, &short).status.success());
    std::thread::sleep(Duration::from_millis(2500));
    let out = calls(
        &fabric,
        &agent,
        json!([with_approval("add", json!({"a": 1, "b": 2}), &short)]),
    );
    assert!(refused(&out[0]).1.contains("expired"), "{out:?}");

    // Whoever registered an agent does not approve its actions, even in the group.
    let erin = fabric.admin("erin", "admin", &["sre"]);
    let out = fabric.cli(
        &erin,
        &[
            "agent",
            "register",
            "demo/ops2",
            "--label",
            "app=ops",
            "--right",
            "mcp.*=demo/*",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ops2 = fabric.dir.path().join("ops2");
    fabric.warden(&[
        "agent",
        "credential",
        "demo/ops2",
        "--task",
        "t",
        "--out",
        ops2.to_str().unwrap(),
    ]);
    let out = calls(
        &fabric,
        &ops2,
        json!([call("delete_namespace", json!({"namespace": "qa"}))]),
    );
    let theirs = refused(&out[0]).0["approvals"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let out = approve(&fabric, &erin, &theirs);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("registered demo/ops2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every step is in the records: the gateway's decisions and the control plane's trail.
    let audit = fabric.dir.path().join("data/audit");
    let filed = recorded(&audit, |r| r["approvalRequests"][0] == id.as_str());
    assert_eq!(filed["outcome"], "needs-approval");
    assert_eq!(filed["intent"], "clean up the dev namespace after the demo");
    let used = recorded(&audit, |r| r["approvals"][0] == id.as_str());
    assert_eq!(used["outcome"], "allow");
    recorded(&audit, |r| {
        r["approvalProblems"][0]
            .as_str()
            .is_some_and(|p| p.contains("used already"))
    });
    let trail = fabric.dir.path().join("data/control-audit");
    for step in ["approval.requested", "approval.approved", "approval.used"] {
        recorded(&trail, |r| {
            r["action"] == step && r["approval"] == id.as_str()
        });
    }
    verifies(&fabric, "data/control-audit", "data/control-audit.pub");
}

#[test]
fn a_held_call_runs_once_an_approver_says_yes() {
    let (_server, fabric) = site(POLICY, "  approvalHoldSecs: 20\n");
    let agent = ops(&fabric);
    let alice = fabric.admin("alice", "approver", &["sre"]);
    let approver = {
        let control = format!("http://127.0.0.1:{}", fabric.control_port);
        let warden = env!("CARGO_BIN_EXE_warden");
        std::thread::spawn(move || {
            // Approve the first pending request as soon as it appears.
            for _ in 0..100 {
                let out = std::process::Command::new(warden)
                    .args(["approvals", "list", "-o", "json"])
                    .env("WARDEN_CONTROL_URL", &control)
                    .env("WARDEN_TOKEN", &alice)
                    .output()
                    .unwrap();
                let pending: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                if let Some(id) = pending[0]["id"].as_str() {
                    let out = std::process::Command::new(warden)
                        .args(["approvals", "approve", id])
                        .env("WARDEN_CONTROL_URL", &control)
                        .env("WARDEN_TOKEN", &alice)
                        .output()
                        .unwrap();
                    assert!(out.status.success());
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            panic!("no approval request appeared");
        })
    };
    let out = calls(
        &fabric,
        &agent,
        json!([call("delete_namespace", json!({"namespace": "dev"}))]),
    );
    approver.join().unwrap();
    assert_eq!(ok(&out[0]), "deleted namespace dev");
}

#[test]
fn event_gates_open_only_for_publishers_events_and_only_for_a_while() {
    let (_server, fabric) = site(POLICY, "");
    let agent = ops(&fabric);
    let publisher = fabric.admin("monitoring", "publisher", &[]);
    let viewer = fabric.admin("vic", "viewer", &[]);
    let scale = |deployment: &str| call("scale", json!({"deployment": deployment, "replicas": 5}));

    let out = calls(&fabric, &agent, json!([scale("web")]));
    assert_eq!(refused(&out[0]).0["outcome"], "deny");
    // The agent cannot publish its own unlock event with its grant, nor can a viewer.
    let grant = std::fs::read_to_string(agent.join("grant")).unwrap();
    let out = fabric.cli(
        grant.trim(),
        &[
            "events",
            "publish",
            "traffic-spike",
            "--attr",
            "deployment=web",
        ],
    );
    assert!(!out.status.success());
    // Nor can it grant itself anything else with it: approve, mint admins, widen its rights,
    // issue itself credentials, lift a quarantine or the kill switch.
    for attempt in [
        vec!["approvals", "approve", "apr_0123456789abcdef01234567"],
        vec!["admin", "create", "me", "--role", "admin"],
        vec![
            "agent",
            "register",
            "demo/ops-plus",
            "--label",
            "app=ops",
            "--right",
            "mcp.*=*",
        ],
        vec!["agent", "credential", "demo/ops", "--task", "t", "--env"],
        vec!["release", "demo/ops", "--reason", "let me out"],
        vec!["unfreeze", "--reason", "let me out"],
    ] {
        let out = fabric.cli(grant.trim(), &attempt);
        assert!(
            !out.status.success(),
            "an agent's grant could run {attempt:?}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("401 Unauthorized"),
            "{attempt:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = fabric.cli(
        &viewer,
        &[
            "events",
            "publish",
            "traffic-spike",
            "--attr",
            "deployment=web",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Publisher"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = calls(&fabric, &agent, json!([scale("web")]));
    assert_eq!(refused(&out[0]).0["outcome"], "deny");

    // A publisher's event opens the gate for the deployment it names, within a second.
    let out = fabric.cli(
        &publisher,
        &[
            "events",
            "publish",
            "traffic-spike",
            "--attr",
            "deployment=web",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::eventually("the event opens the gate", || {
        calls(&fabric, &agent, json!([scale("web")]))[0]["ok"] == "scaled web to 5"
    });
    let out = calls(&fabric, &agent, json!([scale("web"), scale("api")]));
    assert_eq!(ok(&out[0]), "scaled web to 5");
    assert_eq!(refused(&out[1]).0["outcome"], "deny");

    // A window of 5 s opens, then closes by itself. (Each attempt starts a Python client, which
    // takes a while on a loaded machine: the checks wait for the outcome rather than a time.)
    let out = fabric.cli(&publisher, &["events", "publish", "maintenance"]);
    assert!(out.status.success());
    let delete = || {
        calls(
            &fabric,
            &agent,
            json!([call("delete_records", json!({"table": "scratch"}))]),
        )
        .remove(0)
    };
    common::eventually("the maintenance window opens", || {
        delete()["ok"] == "python deleted all records of scratch"
    });
    common::eventually("the maintenance window closes by itself", || {
        delete()["error"]["data"]["outcome"] == "deny"
    });

    // A just-in-time right: a person grants this agent, by name, one more tool for an hour.
    let rotate = call("rotate_keys", json!({"service": "billing"}));
    let out = calls(&fabric, &agent, json!([rotate]));
    assert_eq!(refused(&out[0]).0["outcome"], "deny");
    let out = fabric.cli(
        &publisher,
        &[
            "events",
            "publish",
            "access-granted",
            "--attr",
            "agent=someone-else",
        ],
    );
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(1000));
    let out = calls(&fabric, &agent, json!([rotate]));
    assert_eq!(
        refused(&out[0]).0["outcome"],
        "deny",
        "another agent's grant opened the gate"
    );
    let out = fabric.cli(
        &publisher,
        &["events", "publish", "access-granted", "--attr", "agent=ops"],
    );
    assert!(out.status.success());
    common::eventually("the agent's own grant opens the gate", || {
        calls(&fabric, &agent, json!([rotate.clone()]))[0]["ok"] == "rotated the keys of billing"
    });

    let trail = fabric.dir.path().join("data/control-audit");
    let event = recorded(&trail, |r| r["action"] == "event.published");
    assert_eq!(event["event"]["publisher"], "monitoring");
}

#[test]
fn quarantine_cuts_a_streaming_call_at_once_and_release_needs_new_credentials() {
    let (_server, fabric) = site(POLICY, "");
    let agent = ops(&fabric);
    // A long call streaming progress over SSE.
    let mut running = Reaped(
        python3()
            .arg(peers().join("mcp_calls.py"))
            .arg(url(&fabric))
            .arg(&agent)
            .arg(json!([call("countdown", json!({"n": 60}))]).to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(running.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("progress"), "{first}");
    let held = Instant::now();
    fabric.warden(&[
        "quarantine",
        "demo/ops",
        "--reason",
        "exfiltration suspected",
    ]);
    let outcome = lines
        .find_map(|line| line.ok().filter(|l| l.starts_with('[')))
        .unwrap();
    let cut_after = held.elapsed();
    let outcome: Vec<Value> = serde_json::from_str(&outcome).unwrap();
    // The SDK reports the broken stream as a local error (or the connection as gone).
    let ended = outcome[0]["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("stream ended without a response"));
    assert!(
        outcome[0].get("cut").is_some() || ended,
        "the stream was not cut: {outcome:?}"
    );
    eprintln!("quarantine cut the streaming call {cut_after:?} after `warden quarantine` returned");
    assert!(
        cut_after < Duration::from_secs(3),
        "cut after {cut_after:?}"
    );

    // Its credentials are revoked, and new ones are refused while it is held.
    let out = calls(
        &fabric,
        &agent,
        json!([call("echo", json!({"text": "hi"}))]),
    );
    assert!(out[0].get("ok").is_none(), "{out:?}");
    let out = fabric.cli(
        &fabric.token,
        &[
            "agent",
            "credential",
            "demo/ops",
            "--task",
            "t",
            "--out",
            fabric.dir.path().join("again").to_str().unwrap(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quarantined"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = fabric.cli(&fabric.token, &["quarantine"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("exfiltration suspected"));

    fabric.warden(&["release", "demo/ops", "--reason", "false alarm"]);
    let fresh = fabric.dir.path().join("fresh");
    fabric.warden(&[
        "agent",
        "credential",
        "demo/ops",
        "--task",
        "t",
        "--out",
        fresh.to_str().unwrap(),
    ]);
    let out = calls(
        &fabric,
        &fresh,
        json!([call("echo", json!({"text": "back"}))]),
    );
    assert_eq!(ok(&out[0]), "back");

    let trail = fabric.dir.path().join("data/control-audit");
    let hold = recorded(&trail, |r| r["action"] == "quarantine");
    assert_eq!(hold["reason"], "exfiltration suspected");
    assert!(
        hold["revokedInstances"][0]
            .as_str()
            .unwrap()
            .contains("/agent/ops/i-"),
        "{hold}"
    );
    recorded(&trail, |r| {
        r["action"] == "release" && r["reason"] == "false alarm"
    });
}

#[test]
fn the_kill_switch_stops_every_agent_within_a_second_and_is_recorded() {
    let (_server, fabric) = site(POLICY, "");
    let agent = ops(&fabric);
    let out = calls(
        &fabric,
        &agent,
        json!([call("echo", json!({"text": "before"}))]),
    );
    assert_eq!(ok(&out[0]), "before");
    fabric.warden(&["freeze", "--reason", "incident 42"]);
    // Frozen, not even a session starts: the SDK's `initialize` is refused as frozen, or (had
    // it started before) the call is.
    common::eventually("the freeze reaches the gateway", || {
        let out = calls(
            &fabric,
            &agent,
            json!([call("echo", json!({"text": "during"}))]),
        );
        out[0]["error"]["data"]["reason"] == "frozen"
            || out[0]["cut"]
                .as_str()
                .is_some_and(|cut| cut.contains("'reason': 'frozen'"))
    });
    fabric.warden(&["unfreeze", "--reason", "incident 42 contained"]);
    common::eventually("the thaw reaches the gateway", || {
        let out = calls(
            &fabric,
            &agent,
            json!([call("echo", json!({"text": "after"}))]),
        );
        out[0]["ok"] == "after"
    });

    let audit = fabric.dir.path().join("data/audit");
    let denied = recorded(&audit, |r| r["reason"] == "frozen");
    assert_eq!(denied["outcome"], "deny");
    let trail = fabric.dir.path().join("data/control-audit");
    recorded(&trail, |r| {
        r["action"] == "freeze" && r["reason"] == "incident 42"
    });
    recorded(&trail, |r| r["action"] == "unfreeze");
}

#[test]
fn acknowledged_approvals_holds_and_their_records_survive_kill_9() {
    let (_server, mut fabric) = site(POLICY, "");
    let agent = ops(&fabric);
    fabric.warden(&[
        "agent",
        "register",
        "demo/rogue",
        "--label",
        "app=ops",
        "--right",
        "mcp.*=demo/*",
    ]);
    let alice = fabric.admin("alice", "approver", &["sre"]);
    let out = calls(
        &fabric,
        &agent,
        json!([call("delete_namespace", json!({"namespace": "dev"}))]),
    );
    let id = refused(&out[0]).0["approvals"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(approve(&fabric, &alice, &id).status.success());
    fabric.warden(&["quarantine", "demo/rogue", "--reason", "acting strangely"]);

    fabric.crash_and_restart();

    // The hold is still in force, the approval still approved and usable exactly once.
    let list = fabric.cli(&fabric.token, &["quarantine"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("acting strangely"));
    let out = fabric.cli(
        &fabric.token,
        &[
            "agent",
            "credential",
            "demo/rogue",
            "--task",
            "t",
            "--out",
            fabric.dir.path().join("rogue").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let out = calls(
        &fabric,
        &agent,
        json!([
            with_approval("delete_namespace", json!({"namespace": "dev"}), &id),
            with_approval("delete_namespace", json!({"namespace": "dev"}), &id),
        ]),
    );
    assert_eq!(ok(&out[0]), "deleted namespace dev");
    assert!(refused(&out[1]).1.contains("used already"), "{out:?}");
    // Both logs verify after the crash, with every acknowledged step in them.
    let trail = fabric.dir.path().join("data/control-audit");
    for step in ["approval.requested", "approval.approved", "approval.used"] {
        recorded(&trail, |r| {
            r["action"] == step && r["approval"] == id.as_str()
        });
    }
    recorded(&trail, |r| r["action"] == "quarantine");
    for (log, key) in [
        ("data/control-audit", "data/control-audit.pub"),
        ("data/audit", "data/audit.pub"),
    ] {
        verifies(&fabric, log, key);
    }
}

#[test]
fn undo_runs_the_compensating_call_through_the_pipeline_once_and_records_it() {
    let (_server, fabric) = site(POLICY, "");
    let agent = ops(&fabric);
    let out = calls(
        &fabric,
        &agent,
        json!([
            call("create_branch", json!({"name": "feature-x"})),
            call("echo", json!({"text": "hi"}))
        ]),
    );
    assert_eq!(ok(&out[0]), "created branch feature-x");
    let audit = fabric.dir.path().join("data/audit");
    let created = recorded(&audit, |r| r["target"]["tool"] == "create_branch");
    let echoed = recorded(&audit, |r| r["target"]["tool"] == "echo");
    let gateway = format!("https://127.0.0.1:{}", fabric.gateway_port);
    let undo = |token: &str, decision: &Value| {
        fabric.cli(
            token,
            &[
                "actions",
                "undo",
                decision["decisionId"].as_str().unwrap(),
                "--gateway-url",
                &gateway,
            ],
        )
    };

    let out = undo(&fabric.token, &created);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("deleted branch feature-x"), "{text}");
    // Recorded like any call: the compensating call, for the original agent, with who asked.
    let compensating = recorded(&audit, |r| r["undoOf"] == created["decisionId"]);
    assert_eq!(compensating["outcome"], "allow");
    assert_eq!(compensating["target"]["tool"], "delete_branch");
    assert_eq!(compensating["arguments"]["name"], "feature-x");
    assert_eq!(compensating["agent"], created["agent"]);
    assert_eq!(compensating["undoneBy"], "bootstrap");

    // Once only; never for a tool not declared reversible; never by a non-admin.
    let again = undo(&fabric.token, &created);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("undone already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let echo = undo(&fabric.token, &echoed);
    assert!(String::from_utf8_lossy(&echo.stderr).contains("not declared reversible"));
    let viewer = fabric.admin("vic", "viewer", &[]);
    let denied = undo(&viewer, &created);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("admin token"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
}

const LEARNER_POLICY: &str = r#"apiVersion: warden.dev/v1alpha1
kind: AgentPolicy
metadata: {name: learner, namespace: demo}
spec:
  selector: {matchLabels: {app: learner}}
  mcp:
    - {server: demo, tools: [echo, add, delete_records]}
"#;

/// A fabric whose policy lets demo/learner call three tools (`gateway` is more of the
/// gateway's settings), and that agent's credentials.
fn learner(gateway: &str) -> (Reaped, Fabric, PathBuf) {
    let (server, fabric) = site(LEARNER_POLICY, gateway);
    let [agent] = <[PathBuf; 1]>::try_from(fabric.agent(
        "demo/learner",
        "app=learner",
        &["mcp.*=demo/*"],
        &["i-1"],
    ))
    .unwrap();
    (server, fabric, agent)
}

#[test]
fn recommended_policies_allow_what_the_agent_did_and_nothing_more() {
    let (_server, fabric, agent) = learner("");
    let outcomes = calls(
        &fabric,
        &agent,
        json!([
            call("echo", json!({"text": "hello"})),
            call("add", json!({"a": 1, "b": 2})),
            call("add", json!({"a": 3, "b": 40})),
            call("delete_records", json!({"table": "scratch"})),
            call("delete_records", json!({"table": "tmp"})),
            // Refused by the policy in force: never learned.
            call("read_secrets", json!({})),
        ]),
    );
    for outcome in &outcomes[..5] {
        ok(outcome);
    }
    refused(&outcomes[5]);
    let audit = fabric.dir.path().join("data/audit");
    recorded(&audit, |r| {
        r["outcome"] == "deny" && r["resource"] == "tool demo/read_secrets"
    });
    let out_dir = fabric.dir.path().join("recommended");
    let out = fabric.cli(
        &fabric.token,
        &[
            "policy",
            "recommend",
            "--audit",
            audit.to_str().unwrap(),
            "--agent",
            "demo/learner",
            "--out",
            out_dir.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["replayFailures"], 0, "{report}");
    assert!(report["replayed"].as_u64().unwrap() >= 5, "{report}");
    let policy = std::fs::read_to_string(out_dir.join("demo-learner.yaml")).unwrap();
    assert!(
        policy.contains("spiffe://warden.local/tenant/demo/agent/learner/*"),
        "{policy}"
    );
    assert!(
        policy.contains(r#"["scratch", "tmp"].contains(context.args.table)"#),
        "{policy}"
    );
    assert!(
        policy.contains("context.args.a >= 1 && context.args.a <= 3"),
        "{policy}"
    );
    assert!(!policy.contains("read_secrets"), "{policy}");
    // Beyond what was seen, the recommendation denies: another table, a larger number, a tool
    // the agent never called.
    let agent_id = "spiffe://warden.local/tenant/demo/agent/learner/i-9";
    let deny = |name: &str, tool: &str, args: Value| {
        json!({"name": name, "request": {"agent": {"spiffeId": agent_id},
            "action": {"kind": "mcp.tools/call", "server": "demo", "tool": tool, "args": args}},
            "expect": "deny"})
    };
    let cases = json!({
        "apiVersion": "warden.dev/v1alpha1", "kind": "PolicyTest",
        "metadata": {"name": "beyond"},
        "spec": {"cases": [
            deny("another table", "delete_records", json!({"table": "customers"})),
            deny("a larger number", "add", json!({"a": 99, "b": 2})),
            deny("a tool never called", "read_secrets", json!({})),
        ]},
    });
    std::fs::write(
        out_dir.join("tests/beyond.test.yaml"),
        serde_yaml::to_string(&cases).unwrap(),
    )
    .unwrap();
    let out = fabric.cli(
        &fabric.token,
        &["policy", "test", out_dir.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A second run does not overwrite what a person may have edited.
    let again = fabric.cli(
        &fabric.token,
        &[
            "policy",
            "recommend",
            "--audit",
            audit.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds files"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn staged_policies_record_what_they_would_deny_and_their_promotion_is_recorded() {
    let (_server, fabric, agent) = learner("");
    let audit = fabric.dir.path().join("data/audit");
    let policies = fabric.dir.path().join("policies");
    // A narrower policy, staged beside the one in force (as a recommendation would be). Written
    // once the fabric has settled: an edit in a fresh `serve --role all`'s first seconds can go
    // unseen by its policy watcher (noted, not yet explained).
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(
        policies.join("narrow.yaml"),
        "# only echo, from now on?\napiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: narrow, namespace: demo}\nspec:\n  mode: staged   # watch first\n  selector: {spiffeIds: ['spiffe://warden.local/tenant/demo/agent/learner/*']}\n  mcp:\n    - {server: demo, tools: [echo]}\n",
    )
    .unwrap();
    // The reload that brings it is itself recorded.
    recorded(&audit, |r| {
        r["action"] == "policy.mode"
            && r["resource"] == "demo/narrow"
            && r["target"]["to"] == "staged"
    });
    let outcomes = calls(
        &fabric,
        &agent,
        json!([
            call("echo", json!({"text": "hello"})),
            call("add", json!({"a": 1, "b": 2})),
        ]),
    );
    // Nothing enforced changed: both calls pass.
    ok(&outcomes[0]);
    ok(&outcomes[1]);
    let echo = recorded(&audit, |r| r["resource"] == "tool demo/echo");
    assert_eq!(echo["outcome"], "allow", "{echo}");
    assert_eq!(echo["staged"]["wouldDeny"], false, "{echo}");
    let add = recorded(&audit, |r| r["resource"] == "tool demo/add");
    assert_eq!(add["outcome"], "allow", "{add}");
    assert_eq!(add["staged"]["wouldDeny"], true, "{add}");
    assert_eq!(add["staged"]["reason"], "no-matching-grant", "{add}");
    // Listed as what the staged policy would refuse, and nothing else is.
    let out = fabric.cli(
        &fabric.token,
        &[
            "audit",
            "search",
            "--log",
            audit.to_str().unwrap(),
            "--would-deny",
            "-o",
            "json",
        ],
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("tool demo/add"), "{listed}");
    // Promotion edits the file in place (comments kept) and the gateway records the change.
    let out = fabric.cli(
        &fabric.token,
        &[
            "policy",
            "promote",
            policies.to_str().unwrap(),
            "demo/narrow",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(policies.join("narrow.yaml")).unwrap();
    assert!(text.contains("mode: enforce   # watch first"), "{text}");
    assert!(text.starts_with("# only echo"), "{text}");
    recorded(&audit, |r| {
        r["action"] == "policy.mode"
            && r["resource"] == "demo/narrow"
            && r["target"]["from"] == "staged"
            && r["target"]["to"] == "enforce"
    });
    // Promoting again, or a policy that is not there, says so.
    let again = fabric.cli(
        &fabric.token,
        &[
            "policy",
            "promote",
            policies.to_str().unwrap(),
            "demo/narrow",
        ],
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already enforced"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn a_call_outside_the_learned_baseline_is_detected_as_new_reach() {
    // A baseline learned for one second: then a tool the agent never called is new.
    let (_server, mut fabric, agent) = learner("  detect: {learningSecs: 1}\n");
    ok(&calls(
        &fabric,
        &agent,
        json!([call("echo", json!({"text": "hi"}))]),
    )[0]);
    std::thread::sleep(Duration::from_millis(1500));
    let outcomes = calls(
        &fabric,
        &agent,
        json!([
            call("echo", json!({"text": "again"})),
            call("add", json!({"a": 1, "b": 2})),
        ]),
    );
    ok(&outcomes[0]);
    ok(&outcomes[1]);
    let audit = fabric.dir.path().join("data/audit");
    let detection = recorded(&audit, |r| {
        r["action"] == "detect" && r["target"]["detector"] == "reach.new"
    });
    let summary = detection["target"]["summary"].as_str().unwrap();
    assert!(summary.contains("tool demo/add"), "{detection}");
    assert_eq!(detection["outcome"], "alert", "{detection}");
    // The known tool was not news, and the new one is reported once.
    let reported = || -> Vec<String> {
        common::mcp::records(&audit)
            .into_iter()
            .filter(|r| r["target"]["detector"] == "reach.new")
            .map(|r| {
                r["target"]["summary"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(reported().len(), 1, "{:?}", reported());
    // The baseline outlives a crash (it is saved every 5 s): after kill -9 and a restart the
    // learning is not begun again — what was learned passes, and a new tool is still news.
    common::eventually("the baselines are saved", || {
        std::fs::read_to_string(fabric.dir.path().join("data/audit.baselines.json"))
            .is_ok_and(|saved| saved.contains("tool demo/add"))
    });
    fabric.crash_and_restart();
    let outcomes = calls(
        &fabric,
        &agent,
        json!([
            call("add", json!({"a": 2, "b": 2})),
            call("delete_records", json!({"table": "scratch"})),
        ]),
    );
    ok(&outcomes[0]);
    ok(&outcomes[1]);
    common::eventually("the new tool after the restart is reported", || {
        reported().len() == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = reported();
    assert_eq!(
        after.len(),
        2,
        "the known tool was reported again: {after:?}"
    );
    assert!(after[1].contains("tool demo/delete_records"), "{after:?}");
}
