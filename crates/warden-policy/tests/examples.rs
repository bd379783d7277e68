//! The example bundle: its policy tests pass, sliced and unsliced agree on them, and a wrong
//! expectation is reported as a failure.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::path::PathBuf;

use warden_model::{DecisionRequest, Outcome};
use warden_policy::testing::{run_case, run_tests};
use warden_policy::{Bundle, ExpectedOutcome, LoadLimits, Slicing, SourceFile};

fn examples() -> Bundle {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    Bundle::load_dir(&dir, LoadLimits::default()).expect("the example bundle loads")
}

#[test]
fn example_tests_pass() {
    let bundle = examples();
    assert!(bundle.tests().len() >= 40);
    for result in run_tests(&bundle) {
        assert!(
            result.passed,
            "{} / {}: {:?}",
            result.suite, result.name, result.failures
        );
    }
    assert!(bundle.warnings().is_empty(), "{:?}", bundle.warnings());
}

#[test]
fn example_requests_decide_the_same_sliced_and_unsliced() {
    let bundle = examples();
    for case in bundle.tests() {
        let a = bundle.decide_with(&case.spec.request, Slicing::On);
        let b = bundle.decide_with(&case.spec.request, Slicing::Off);
        assert_eq!(
            (a.outcome, a.deciding),
            (b.outcome, b.deciding),
            "{}",
            case.spec.name
        );
    }
}

#[test]
fn wrong_expectations_fail() {
    let bundle = examples();
    for case in bundle.tests() {
        let mut wrong = case.clone();
        wrong.spec.expect = match case.spec.expect {
            ExpectedOutcome::Allow => ExpectedOutcome::Deny,
            _ => ExpectedOutcome::Allow,
        };
        assert!(!run_case(&bundle, &wrong).passed, "{}", case.spec.name);
        if let Some(by) = &case.spec.decided_by {
            let mut wrong = case.clone();
            let mut names = by.clone();
            names.push("acme/nobody spec.mcp[9]".into());
            wrong.spec.decided_by = Some(names);
            assert!(!run_case(&bundle, &wrong).passed, "{}", case.spec.name);
        }
    }
}

#[test]
fn bundle_hash_is_stable_and_tracks_policy_content_only() {
    let a = examples();
    let b = examples();
    assert_eq!(a.hash(), b.hash());
    let policy = "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: p}\nspec:\n  selector: {allAgents: true}\n  egress: [{hosts: [a.com]}]\n";
    let tests = "apiVersion: warden.dev/v1alpha1\nkind: PolicyTest\nmetadata: {name: t}\nspec: {cases: []}\n";
    let load = |files: Vec<(&str, &str)>| {
        Bundle::from_sources(
            files
                .into_iter()
                .map(|(p, t)| SourceFile {
                    path: p.into(),
                    text: t.into(),
                })
                .collect(),
            LoadLimits::default(),
        )
        .unwrap()
    };
    let base = load(vec![("p.yaml", policy)]);
    let with_tests = load(vec![("p.yaml", policy), ("t.yaml", tests)]);
    let edited = load(vec![("p.yaml", &policy.replace("a.com", "b.com"))]);
    let renamed = load(vec![("q.yaml", policy)]);
    assert_eq!(base.hash(), with_tests.hash(), "tests are not policy");
    assert_ne!(base.hash(), edited.hash());
    assert_ne!(base.hash(), renamed.hash());
}

/// Each action kind's context, as the engine builds it, carries every attribute the schema
/// promises: a raw policy per kind that reads them all must evaluate without error.
#[test]
fn request_context_matches_the_schema_for_every_kind() {
    let common = "context.time > 0 && context.intent == \"i\" && context.findings.injection_score == 90 \
                  && context.findings.secret_count == 1 && context.findings.sensitive_count == 0 \
                  && context.findings.tool_drift && context.findings.rules.contains(\"r1\") \
                  && context.usage.requests_last_minute == 3 && context.usage.bytes_last_hour == 4 \
                  && context.body_bytes == 5 && context.approved.contains(\"a\") && context.gates.isEmpty() \
                  && principal.depth == 1 && principal.path_depth == 5 && principal.trust_domain == \"td\" \
                  && principal.name == \"bot\" && principal.tenant == \"t\" && principal has task && principal.task == \"job-1\"";
    let cedar = format!(
        r#"
permit (principal, action == Action::"http", resource) when {{ {common} && resource.name == "svc" && context.method == "GET" && context.path == "/a/b" && context.path_depth == 2 && context.segments has s1 && context.segments.s1 == "b" }};
permit (principal, action == Action::"egress.connect", resource) when {{ {common} && resource.name == "x.io" && resource.label_count == 2 && !resource.is_ip && context.port == 443 && context.protocol == "tcp" && context has ip && context.ip.isInRange(ip("10.0.0.0/8")) }};
permit (principal, action == Action::"mcp.tools/call", resource) when {{ {common} && resource.server == "s" && resource.name == "t" && context.args has n && context.args.n == 2 }};
permit (principal, action == Action::"mcp.tools/list", resource) when {{ {common} && resource.name == "s" }};
permit (principal, action == Action::"mcp.resources/read", resource) when {{ {common} && resource.server == "s" && resource.uri == "file:///x" }};
permit (principal, action == Action::"mcp.prompts/get", resource) when {{ {common} && resource.server == "s" && resource.name == "p" && context.args has topic && context.args.topic == "z" }};
permit (principal, action in [Action::"a2a.message/send", Action::"a2a.message/stream", Action::"a2a.tasks/get", Action::"a2a.tasks/cancel", Action::"a2a.tasks/resubscribe", Action::"a2a.agent/card"], resource) when {{ {common} && resource.name == "peer" }};
"#
    );
    let catalog = "apiVersion: warden.dev/v1alpha1\nkind: ToolCatalog\nmetadata: {name: c}\nspec:\n  servers:\n    - name: s\n      tools: [{name: t, inputSchema: {properties: {n: {type: integer}}}}]\n      prompts: [{name: p, arguments: [{name: topic}]}]\n";
    let bundle = Bundle::from_sources(
        vec![
            SourceFile {
                path: "all.cedar".into(),
                text: cedar,
            },
            SourceFile {
                path: "catalog.yaml".into(),
                text: catalog.into(),
            },
        ],
        LoadLimits::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let actions = [
        r#"{"kind":"http","service":"svc","method":"GET","path":"/a/b"}"#,
        r#"{"kind":"egress.connect","host":"x.io","port":443,"ip":"10.1.1.1"}"#,
        r#"{"kind":"mcp.tools/call","server":"s","tool":"t","args":{"n":2,"ignored":{"deep":[1]}}}"#,
        r#"{"kind":"mcp.tools/list","server":"s"}"#,
        r#"{"kind":"mcp.resources/read","server":"s","uri":"file:///x"}"#,
        r#"{"kind":"mcp.prompts/get","server":"s","prompt":"p","args":{"topic":"z"}}"#,
        r#"{"kind":"a2a.message/send","peer":"peer"}"#,
        r#"{"kind":"a2a.agent/card","peer":"peer"}"#,
    ];
    for action in actions {
        let request: DecisionRequest = serde_json::from_str(&format!(
            r#"{{"agent":{{"spiffeId":"spiffe://td/tenant/t/agent/bot/i1","task":"job-1"}},"action":{action},
               "context":{{"intent":"i","findings":[{{"kind":"injection","rule":"r1","score":90}},{{"kind":"secret","rule":"aws","score":70}},{{"kind":"tool-drift","rule":"pin","score":100}}],
               "usage":{{"requestsLastMinute":3,"bytesLastHour":4}},"bodyBytes":5,"approved":["a"]}}}}"#
        ))
        .unwrap();
        let d = bundle.decide(&request);
        assert_eq!(d.outcome, Outcome::Allow, "{action}: {d:?}");
    }
}

#[test]
fn a_tool_allowed_only_for_some_arguments_could_still_be_allowed() {
    let bundle = examples();
    let request = |tool: &str, labels: &str| -> DecisionRequest {
        serde_json::from_str(&format!(
            r#"{{"agent": {{"spiffeId": "spiffe://acme.example/tenant/acme/agent/support-bot/i-1", "labels": {labels}}},
                "action": {{"kind": "mcp.tools/call", "server": "github", "tool": "{tool}", "args": {{}}}}}}"#
        ))
        .unwrap()
    };
    let bot = r#"{"app": "support-bot"}"#;
    // Allowed outright.
    assert!(bundle.could_allow(&request("list_issues", bot)));
    // Denied without arguments, allowed for acme's repositories: visible.
    let conditional = request("create_comment", bot);
    assert!(!bundle.decide(&conditional).is_allowed());
    assert!(bundle.could_allow(&conditional));
    // No rule at all, or another agent: hidden.
    assert!(!bundle.could_allow(&request("delete_repo", bot)));
    assert!(!bundle.could_allow(&request("create_comment", r#"{"app": "other"}"#)));
}

#[test]
fn names_an_agent_could_reach_are_those_a_permitting_egress_rule_names() {
    let policy = "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: out, namespace: t}\nspec:\n  selector: {matchLabels: {app: a}}\n  egress:\n    - {hosts: [api.example.com, '*.cdn.example.net'], ports: [8443]}\n    - {cidrs: ['10.0.0.0/8']}\n  deny:\n    - egress: {hosts: [blocked.cdn.example.net]}\n";
    let bundle = Bundle::from_sources(
        vec![SourceFile {
            path: "out.yaml".into(),
            text: policy.into(),
        }],
        LoadLimits::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let agent = |labels: &str| -> warden_model::AgentIdentity {
        serde_json::from_str(&format!(
            r#"{{"spiffeId": "spiffe://td/tenant/t/agent/a/i-1", "labels": {labels}}}"#
        ))
        .unwrap()
    };
    let host = |name: &str| warden_model::Host::new(name).unwrap();
    let a = agent(r#"{"app": "a"}"#);
    // Named on some port: answered, though no decision here says which port.
    assert!(bundle.could_reach(&a, &host("api.example.com")));
    assert!(bundle.could_reach(&a, &host("img.cdn.example.net")));
    // Not named, only reachable by address, or named by a deny rule alone: not answered.
    assert!(!bundle.could_reach(&a, &host("exfil.attacker.example")));
    assert!(!bundle.could_reach(&a, &host("cdn.example.net")));
    assert!(!bundle.could_reach(&a, &host("10.1.2.3")));
    // Another agent: nothing.
    assert!(!bundle.could_reach(&agent(r#"{"app": "b"}"#), &host("api.example.com")));
}

#[test]
fn staged_policies_decide_on_the_side_and_never_take_effect() {
    let broad = "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: broad, namespace: t}\nspec:\n  selector: {matchLabels: {app: a}}\n  mcp:\n    - {server: s, tools: ['*']}\n";
    let narrow = "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: narrow, namespace: t}\nspec:\n  mode: staged\n  selector: {spiffeIds: ['spiffe://td/tenant/t/agent/a/*']}\n  mcp:\n    - {server: s, tools: [read]}\n    - {server: other, tools: [write]}\n";
    let bundle = Bundle::from_sources(
        vec![
            SourceFile {
                path: "broad.yaml".into(),
                text: broad.into(),
            },
            SourceFile {
                path: "narrow.yaml".into(),
                text: narrow.into(),
            },
        ],
        LoadLimits::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let request = |agent: &str, server: &str, tool: &str| -> DecisionRequest {
        serde_json::from_value(serde_json::json!({
            "agent": {"spiffeId": format!("spiffe://td/tenant/t/agent/{agent}/i-1"), "labels": {"app": agent}},
            "action": {"kind": "mcp.tools/call", "server": server, "tool": tool},
        }))
        .unwrap()
    };
    // Enforced: the broad policy alone; the staged one grants nothing.
    assert!(bundle.decide(&request("a", "s", "delete")).is_allowed());
    assert!(!bundle.decide(&request("a", "other", "write")).is_allowed());
    // Staged: what the narrow policy would do, for the agents it selects.
    let staged = bundle.staged().expect("a staged part");
    let a = request("a", "s", "delete");
    assert!(staged.governs(&a.agent));
    assert!(!staged.decide(&a).is_allowed());
    assert!(staged.decide(&request("a", "s", "read")).is_allowed());
    assert!(!staged.governs(&request("b", "s", "read").agent));
    assert_eq!(
        bundle.modes().get("t/narrow"),
        Some(&warden_policy::PolicyMode::Staged)
    );
    assert_eq!(
        bundle.modes().get("t/broad"),
        Some(&warden_policy::PolicyMode::Enforce)
    );
    // A staged policy is checked like any other: an error in it refuses the bundle.
    let broken = narrow.replace(
        "tools: [read]",
        "tools: [read], when: 'context.args.nope == 1'",
    );
    let refused = Bundle::from_sources(
        vec![SourceFile {
            path: "narrow.yaml".into(),
            text: broken,
        }],
        LoadLimits::default(),
    );
    assert!(refused.is_err());
    // Without staged policies there is no staged part.
    let plain = Bundle::from_sources(
        vec![SourceFile {
            path: "broad.yaml".into(),
            text: broad.into(),
        }],
        LoadLimits::default(),
    )
    .unwrap();
    assert!(plain.staged().is_none());
}

#[test]
fn detection_policies_choose_the_strictest_response_for_the_agents_they_select() {
    let doc = "apiVersion: warden.dev/v1alpha1\nkind: DetectionPolicy\nmetadata: {name: responses, namespace: t}\nspec:\n  selector: {allAgents: true}\n  responses:\n    - {detectors: [scan.ports, toxic-flow], response: quarantine, for: 10m}\n    - {detectors: ['*'], response: alert}\n---\napiVersion: warden.dev/v1alpha1\nkind: DetectionPolicy\nmetadata: {name: strict, namespace: t}\nspec:\n  selector: {spiffeIds: ['spiffe://td/tenant/t/agent/payments/*']}\n  responses:\n    - {detectors: [scan.ports, deny-storm], response: quarantine}\n";
    let load = |text: &str| {
        Bundle::from_sources(
            vec![SourceFile {
                path: "detection.yaml".into(),
                text: text.into(),
            }],
            LoadLimits::default(),
        )
    };
    let bundle = load(doc).unwrap_or_else(|e| panic!("{e}"));
    let agent = |tenant: &str, name: &str| -> warden_model::AgentIdentity {
        serde_json::from_value(serde_json::json!({
            "spiffeId": format!("spiffe://td/tenant/{tenant}/agent/{name}/i-1"), "labels": {}
        }))
        .unwrap()
    };
    let response = |tenant: &str, name: &str, detector: &str| {
        bundle
            .detection_response(&agent(tenant, name), detector)
            .map(|r| (r.action, r.for_secs, r.policy))
    };
    use warden_policy::DetectionAction::{Alert, Quarantine};
    assert_eq!(
        response("t", "bot", "scan.ports"),
        Some((Quarantine, 600, "t/responses".into()))
    );
    assert_eq!(
        response("t", "bot", "deny-storm"),
        Some((Alert, 0, "t/responses".into()))
    );
    // Until released beats ten minutes; a quarantine beats an alert.
    assert_eq!(
        response("t", "payments", "scan.ports"),
        Some((Quarantine, 0, "t/strict".into()))
    );
    assert_eq!(
        response("t", "payments", "deny-storm"),
        Some((Quarantine, 0, "t/strict".into()))
    );
    // Another tenant: no DetectionPolicy applies (the gateway's settings do).
    assert_eq!(response("other", "bot", "scan.ports"), None);
    // Refused with the field that is wrong.
    for (bad, field) in [
        (
            "selector: {allAgents: true}",
            "selector: {matchLabels: {app: x}}",
        ),
        ("[scan.ports, toxic-flow]", "[scan.prots]"),
        ("response: alert}", "response: alert, for: 5m}"),
        ("for: 10m", "for: 0s"),
    ] {
        let text = doc.replacen(bad, field, 1);
        let error = load(&text).err().unwrap_or_else(|| panic!("{field} loads"));
        assert!(
            error.diagnostics.iter().any(|d| d.is_error()
                && d.field.as_deref().is_some_and(|f| f.starts_with("spec."))),
            "{field}: {error}"
        );
    }
}
