//! Slicing must never change a decision: for random bundles and random requests, the sliced
//! decision equals the unsliced one — same outcome, same reason, same deciding policies.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use proptest::prelude::*;
use warden_model::{Decision, DecisionRequest, Outcome};
use warden_policy::{Bundle, LoadLimits, Slicing, SourceFile};

const CATALOG: &str = r#"apiVersion: warden.dev/v1alpha1
kind: ToolCatalog
metadata: {name: catalog}
spec:
  servers:
    - name: s1
      tools:
        - {name: t1, inputSchema: {properties: {n: {type: integer}, s: {type: string}}}}
        - {name: t2, inputSchema: {properties: {n: {type: integer}}}}
        - {name: get_x}
    - name: s2
      tools: [{name: t1}, {name: t3}]
      prompts: [{name: pr, arguments: [{name: topic}]}]
"#;

const RAW_CEDAR: &[&str] = &[
    "forbid (principal, action, resource) when { principal.depth > 2 };",
    "permit (principal, action == Action::\"mcp.tools/call\", resource) when { resource.name == \"t3\" };",
    "forbid (principal, action in [Action::\"egress.connect\", Action::\"http\"], resource) when { context.intent == \"bad\" };",
    "permit (principal is Agent, action, resource is Peer) when { principal.tenant == \"globex\" };",
    "permit (principal, action == Action::\"egress.connect\", resource) when { !(context has ip) && resource.name == \"other.io\" };",
    "forbid (principal, action == Action::\"http\", resource) when { context.segments has s1 && context.segments.s1 == \"b\" };",
];

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(items)
}

fn subset(items: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::subsequence(items, 1..=items.len().min(3)).prop_map(|v| {
        format!(
            "[{}]",
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn selector() -> impl Strategy<Value = String> {
    prop_oneof![
        (pick(&["x", "y", "z"])).prop_map(|a| format!("{{matchLabels: {{app: {a}}}}}")),
        (pick(&["x", "y"]), pick(&["dev", "prod"]))
            .prop_map(|(a, e)| format!("{{matchLabels: {{app: {a}, env: {e}}}}}")),
        (subset(&["x", "y", "z"]))
            .prop_map(|v| format!("{{matchExpressions: [{{key: app, operator: In, values: {v}}}]}}")),
        (subset(&["dev", "prod"])).prop_map(|v| format!(
            "{{matchExpressions: [{{key: env, operator: NotIn, values: {v}}}, {{key: app, operator: Exists}}]}}"
        )),
        Just("{matchExpressions: [{key: env, operator: DoesNotExist}]}".to_owned()),
        (pick(&["acme", "globex"]), pick(&["a", "b"]), pick(&["*", "**", "i1", "i*", "{id}"]))
            .prop_map(|(t, n, i)| format!("{{spiffeIds: [\"spiffe://td/tenant/{t}/agent/{n}/{i}\"]}}")),
        (pick(&["acme", "globex"]))
            .prop_map(|t| format!("{{spiffeIds: [\"spiffe://td/tenant/{t}/**\"]}}")),
        (pick(&["*", "b"])).prop_map(|n| format!(
            "{{spiffeIds: [\"spiffe://td/tenant/*/agent/{n}/**\"], matchLabels: {{app: x}}}}"
        )),
        (pick(&["i*", "*"])).prop_map(|i| format!(
            "{{spiffeIds: [\"spiffe://td/tenant/acme/agent/a/{i}/agent/*/j1\", \"spiffe://other/tenant/acme/agent/a/{i}\"]}}"
        )),
        Just("{allAgents: true}".to_owned()),
    ]
}

fn condition() -> impl Strategy<Value = String> {
    pick(&[
        "",
        "context.args.n > 2",
        "context.args.s == \"v\"",
        "context.args.n + 9223372036854775806 > 0",
        "context.intent like \"*fix*\"",
        "context.findings.injection_score > 50",
        "principal.depth == 1",
    ])
    .prop_map(|c| {
        if c.is_empty() {
            String::new()
        } else {
            format!(", when: '{c}'")
        }
    })
}

fn mcp_target(with_condition: bool) -> impl Strategy<Value = String> {
    (
        pick(&["s1", "s2", "s*"]),
        subset(&["t1", "t2", "t3", "get_*", "*"]),
        condition(),
        pick(&[
            "",
            "",
            ", resources: [\"file:///docs/*\"]",
            ", resources: [\"*\"]",
            ", prompts: [pr]",
            ", prompts: [\"p*\"], resources: [\"mem://*/x\"]",
        ]),
    )
        .prop_map(move |(s, t, c, extra)| {
            let c = if with_condition { c } else { String::new() };
            // Argument conditions type-check only where every clause of the rule has arguments.
            let c = if c.contains("args") && (s != "s1" || extra.contains("resources")) {
                String::new()
            } else {
                c
            };
            format!("{{server: {s}, tools: {t}{extra}{c}}}")
        })
}

fn egress_target() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            subset(&["a.com", "*.a.com", "**.a.com", "other.io"]),
            subset(&["443", "80-90"]),
            pick(&["", ", protocol: udp", ", protocol: tcp"]),
        )
            .prop_map(|(h, p, proto)| format!("{{hosts: {h}, ports: {p}{proto}}}")),
        (pick(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::/0"
        ]))
        .prop_map(|c| format!("{{cidrs: [\"{c}\"]}}")),
        Just("{hosts: [\"*.a.com\"], cidrs: [\"10.1.0.0/16\"], ports: [443]}".to_owned()),
    ]
}

fn http_target() -> impl Strategy<Value = String> {
    (
        pick(&["svc1", "svc2", "svc*"]),
        subset(&["GET", "POST", "*"]),
        subset(&[
            "/v1/*",
            "/v1/**",
            "/v2/items/{id}",
            "/**",
            "/files/*.pdf",
            "/v*/a",
        ]),
    )
        .prop_map(|(s, m, p)| format!("{{service: {s}, methods: {m}, paths: {p}}}"))
}

fn a2a_target() -> impl Strategy<Value = String> {
    (
        subset(&["p1", "p2", "w-*"]),
        subset(&["message/send", "tasks/get", "*"]),
    )
        .prop_map(|(p, m)| format!("{{peers: {p}, methods: {m}}}"))
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        mcp_target(true).prop_map(|t| format!("{{mcp: {t}}}")),
        egress_target().prop_map(|t| format!("{{egress: {t}}}")),
        http_target().prop_map(|t| format!("{{http: {t}}}")),
        a2a_target().prop_map(|t| format!("{{a2a: {t}}}")),
    ]
}

fn policy(index: usize) -> impl Strategy<Value = String> {
    (
        prop::option::of(pick(&["acme", "globex"])),
        selector(),
        prop::collection::vec(mcp_target(true), 0..3),
        prop::collection::vec(egress_target(), 0..2),
        prop::collection::vec(http_target(), 0..2),
        prop::collection::vec(a2a_target(), 0..2),
        prop::collection::vec(target(), 0..2),
        prop::collection::vec(
            prop_oneof![
                target(),
                Just("{mcp: {server: \"s*\", tools: [\"*\"]}}".to_owned()),
                Just("{egress: {hosts: [\"**.a.com\"]}}".to_owned()),
            ],
            0..3,
        ),
        prop::collection::vec(target(), 0..2),
        prop::option::of(1u64..5),
    )
        .prop_map(move |(ns, sel, mcp, egress, http, a2a, deny, approval, events, limit)| {
            let mut s = format!("apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {{name: p{index}");
            if let Some(ns) = ns {
                s.push_str(&format!(", namespace: {ns}"));
            }
            s.push_str(&format!("}}\nspec:\n  selector: {sel}\n"));
            let list = |name: &str, items: &[String]| {
                if items.is_empty() {
                    String::new()
                } else {
                    format!("  {name}: [{}]\n", items.join(", "))
                }
            };
            s.push_str(&list("mcp", &mcp));
            s.push_str(&list("egress", &egress));
            s.push_str(&list("http", &http));
            s.push_str(&list("a2a", &a2a));
            s.push_str(&list("deny", &deny));
            let approvals: Vec<String> = approval
                .iter()
                .map(|t| format!("{{match: {t}, approvers: {{group: g, required: 1}}}}"))
                .collect();
            s.push_str(&list("approval", &approvals));
            let gates: Vec<String> = events
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let attribute = if i % 2 == 0 { "{k: {agent: name}}" } else { "{k: {arg: s}}" };
                    format!("{{match: {t}, after: {{type: spike, within: 10m, attributes: {attribute}}}}}")
                })
                .collect();
            s.push_str(&list("events", &gates));
            match limit {
                Some(n) if n % 2 == 0 => s.push_str(&format!("  limits: {{requestsPerMinute: {n}}}\n")),
                Some(n) => s.push_str(&format!(
                    "  limits: {{requestsPerMinute: {n}, bytesPerHour: {}Ki}}\n",
                    n * 10
                )),
                None => {}
            }
            s
        })
}

fn bundle_sources() -> impl Strategy<Value = Vec<SourceFile>> {
    (2usize..10, prop::sample::subsequence(RAW_CEDAR, 0..=2))
        .prop_flat_map(|(n, raw)| {
            let policies: Vec<_> = (0..n).map(policy).collect();
            (policies, Just(raw))
        })
        .prop_map(|(policies, raw)| {
            let mut files = vec![SourceFile {
                path: "catalog.yaml".into(),
                text: CATALOG.into(),
            }];
            files.push(SourceFile {
                path: "policies.yaml".into(),
                text: policies.join("---\n"),
            });
            if !raw.is_empty() {
                files.push(SourceFile {
                    path: "raw.cedar".into(),
                    text: raw.join("\n"),
                });
            }
            files
        })
}

fn request() -> impl Strategy<Value = DecisionRequest> {
    let agent = (
        pick(&["acme", "globex"]),
        pick(&["a", "b", "c"]),
        pick(&["i1", "i2"]),
        prop::option::of(pick(&["sub", "b"])),
        prop::option::of(pick(&["x", "y", "z"])),
        prop::option::of(pick(&["dev", "prod"])),
        pick(&["td", "td", "td", "other"]),
    )
        .prop_map(|(t, n, i, sub, app, env, td)| {
            let mut id = format!("spiffe://{td}/tenant/{t}/agent/{n}/{i}");
            if let Some(sub) = sub {
                id.push_str(&format!("/agent/{sub}/j1"));
            }
            let mut labels = serde_json::Map::new();
            if let Some(app) = app {
                labels.insert("app".into(), app.into());
            }
            if let Some(env) = env {
                labels.insert("env".into(), env.into());
            }
            serde_json::json!({"spiffeId": id, "labels": labels})
        });
    let action = prop_oneof![
        (
            pick(&["s1", "s2", "s3"]),
            pick(&["t1", "t2", "t3", "get_x", "zz"]),
            prop::option::of(0i64..5),
            prop::option::of(pick(&["v", "w"])),
        )
            .prop_map(|(s, t, n, sv)| {
                let mut args = serde_json::Map::new();
                if let Some(n) = n {
                    args.insert("n".into(), n.into());
                }
                if let Some(sv) = sv {
                    args.insert("s".into(), sv.into());
                }
                serde_json::json!({"kind": "mcp.tools/call", "server": s, "tool": t, "args": args})
            }),
        (pick(&["s1", "s2"])).prop_map(|s| serde_json::json!({"kind": "mcp.tools/list", "server": s})),
        (
            pick(&["a.com", "x.a.com", "y.x.a.com", "other.io", "10.1.2.3", "[2001:db8::1]", "A.COM."]),
            pick(&[443u16, 85, 22]),
            prop::option::of(pick(&["10.1.0.9", "192.168.1.1", "2001:db8::7", "::ffff:10.1.0.9"])),
            pick(&["tcp", "udp"]),
        )
            .prop_map(|(h, p, ip, proto)| serde_json::json!(
                {"kind": "egress.connect", "host": h, "port": p, "ip": ip, "protocol": proto}
            )),
        (
            pick(&["svc1", "svc2", "svcx"]),
            pick(&["GET", "POST", "DELETE"]),
            pick(&["/v1/a", "/v1/a/b", "/v2/items/7", "/", "/v3", "/files/x.pdf", "/files/x.pdf/y", "/v9/a", "/v1/%61"]),
        )
            .prop_map(|(s, m, p)| serde_json::json!({"kind": "http", "service": s, "method": m, "path": p})),
        (
            pick(&["p1", "p2", "w-1", "q"]),
            pick(&["a2a.message/send", "a2a.tasks/get", "a2a.tasks/cancel"]),
        )
            .prop_map(|(p, k)| serde_json::json!({"kind": k, "peer": p})),
        (pick(&["s1", "s2"]), pick(&["pr", "px", "q"])).prop_map(|(s, p)| serde_json::json!(
            {"kind": "mcp.prompts/get", "server": s, "prompt": p, "args": {"topic": "x"}}
        )),
        (
            pick(&["s1", "s2"]),
            pick(&["file:///docs/a", "file:///etc/passwd", "mem://k/x", "mem://k/y"]),
        )
            .prop_map(|(s, u)| serde_json::json!({"kind": "mcp.resources/read", "server": s, "uri": u})),
    ];
    let context = (
        pick(&["", "fix it", "bad"]),
        0u64..6,
        any::<bool>(),
        any::<bool>(),
        prop::option::of(0u8..100),
        pick(&[0u64, 30_000, u64::MAX]),
    )
        .prop_map(|(intent, rpm, event, approved, injection, bytes)| {
            let mut c = serde_json::json!({
                "time": 1_000_000,
                "usage": {"requestsLastMinute": rpm, "bytesLastHour": bytes},
                "bodyBytes": 100,
            });
            if !intent.is_empty() {
                c["intent"] = intent.into();
            }
            if event {
                c["events"] = serde_json::json!([
                    {"id": "e", "type": "spike", "time": 999_900, "publisher": "m", "attributes": {"k": "a"}},
                    {"id": "f", "type": "spike", "time": 999_800, "publisher": "m", "attributes": {"k": "v"}},
                ]);
            }
            if approved {
                c["approved"] = serde_json::json!(["p0#approval[0]", "acme/p1#approval[0]"]);
            }
            if let Some(score) = injection {
                c["findings"] = serde_json::json!([{"kind": "injection", "rule": "r", "score": score}]);
            }
            c
        });
    (agent, action, context).prop_map(|(agent, action, context)| {
        serde_json::from_value(
            serde_json::json!({"agent": agent, "action": action, "context": context}),
        )
        .expect("generated requests are valid")
    })
}

/// Equal decisions: same outcome and reason, errors on both sides or neither (their wording may
/// differ between the Rust matcher and Cedar), same requirements and deciding policies.
fn same(a: &Decision, b: &Decision) -> bool {
    let shape = |d: &Decision| match &d.outcome {
        Outcome::Allow => ("allow", None, false, vec![]),
        Outcome::Deny { reason, errors } => {
            ("deny", Some(reason.clone()), !errors.is_empty(), vec![])
        }
        Outcome::NeedsApproval { requirements } => (
            "needs-approval",
            None,
            false,
            requirements.iter().map(|r| r.id.clone()).collect(),
        ),
    };
    shape(a) == shape(b) && a.deciding == b.deciding && a.bundle == b.bundle
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn sliced_decisions_equal_unsliced(sources in bundle_sources(), requests in prop::collection::vec(request(), 24)) {
        let bundle = match Bundle::from_sources(sources.clone(), LoadLimits::default()) {
            Ok(b) => b,
            Err(e) => panic!("generated bundle rejected: {e}\n{}", sources.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("\n=====\n")),
        };
        prop_assert_eq!(type_errors(&bundle), Vec::<String>::new());
        for request in &requests {
            let sliced = bundle.decide_with(request, Slicing::On);
            let unsliced = bundle.decide_with(request, Slicing::Off);
            prop_assert!(same(&sliced, &unsliced), "request {}\nsliced   {:?}\nunsliced {:?}", serde_json::to_string(request).unwrap(), sliced, unsliced);
        }
    }
}

/// Every compiled policy, type-checked against the bundle's schema as a whole. A bundle loads
/// without handing Cedar the policies its matchers decide alone, so this is what keeps the
/// compiler's output honest.
fn type_errors(bundle: &Bundle) -> Vec<String> {
    let policies = bundle.policies().iter().enumerate().map(|(n, info)| {
        cedar_policy::Policy::parse(
            Some(cedar_policy::PolicyId::new(format!("p{n}"))),
            &*info.text,
        )
        .expect("every compiled policy parses")
    });
    let set = cedar_policy::PolicySet::from_policies(policies).expect("distinct ids");
    cedar_policy::Validator::new(bundle.schema().clone())
        .validate(&set, cedar_policy::ValidationMode::Strict)
        .validation_errors()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn every_generated_policy_type_checks() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    let examples = Bundle::load_dir(&dir, LoadLimits::default()).unwrap();
    assert_eq!(type_errors(&examples), Vec::<String>::new());
    let synthetic = warden_policy::synth::synthetic(2_000, 16, 7);
    let synthetic = Bundle::from_sources(synthetic.sources, LoadLimits::default()).unwrap();
    assert_eq!(type_errors(&synthetic), Vec::<String>::new());
}

/// Guards the generator: the property above only means something if the random bundles allow,
/// deny and ask for approval in a good share of cases.
#[test]
fn generated_cases_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeMap::<&'static str, usize>::new();
    let mut forbidden = 0;
    let mut errors = 0;
    for _ in 0..60 {
        let sources = bundle_sources().new_tree(&mut runner).unwrap().current();
        let bundle = Bundle::from_sources(sources, LoadLimits::default()).unwrap();
        for _ in 0..30 {
            let request = request().new_tree(&mut runner).unwrap().current();
            let d = bundle.decide(&request);
            *seen.entry(d.outcome.label()).or_default() += 1;
            if matches!(
                d.outcome,
                warden_model::Outcome::Deny {
                    reason: warden_model::DenyReason::Forbidden,
                    ..
                }
            ) {
                forbidden += 1;
            }
            if matches!(&d.outcome, warden_model::Outcome::Deny { errors: e, .. } if !e.is_empty())
            {
                errors += 1;
            }
        }
    }
    assert!(seen.get("allow").copied().unwrap_or(0) > 50, "{seen:?}");
    assert!(
        seen.get("needs-approval").copied().unwrap_or(0) > 5,
        "{seen:?}"
    );
    assert!(errors > 5, "{seen:?} errors={errors}");
    assert!(forbidden > 50, "{seen:?} forbidden={forbidden}");
}
