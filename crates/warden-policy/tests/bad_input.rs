//! Every kind of bad policy input gets a precise error (file, line, field) or warning; nothing
//! panics.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use warden_policy::{Bundle, Diagnostic, LoadLimits, Severity, SourceFile};

fn load(files: &[(&str, &str)]) -> Result<Bundle, Vec<Diagnostic>> {
    let sources = files
        .iter()
        .map(|(path, text)| SourceFile {
            path: (*path).into(),
            text: (*text).into(),
        })
        .collect();
    Bundle::from_sources(sources, LoadLimits::default()).map_err(|e| e.diagnostics)
}

fn errors(files: &[(&str, &str)]) -> Vec<Diagnostic> {
    match load(files) {
        Ok(_) => panic!("bundle should have been rejected"),
        Err(d) => d
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
    }
}

fn warnings(files: &[(&str, &str)]) -> Vec<Diagnostic> {
    match load(files) {
        Ok(b) => b.warnings().to_vec(),
        Err(d) => panic!("bundle should load, got {d:?}"),
    }
}

/// Asserts one error at `line` on `field` whose message contains `needle`.
#[track_caller]
fn assert_error(files: &[(&str, &str)], line: u32, field: &str, needle: &str) {
    let errs = errors(files);
    assert!(
        errs.iter().any(|d| d.line == Some(line)
            && d.field.as_deref() == Some(field)
            && d.message.contains(needle)),
        "expected an error at line {line} on {field} containing {needle:?}; got:\n{}",
        errs.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const HEADER: &str =
    "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: p, namespace: acme}\n";

fn policy(spec: &str) -> String {
    format!("{HEADER}spec:\n{spec}")
}

#[test]
fn malformed_yaml_points_at_the_line() {
    let text = format!("{HEADER}spec:\n  selector: {{matchLabels: {{app: x}}\n  mcp: [\n");
    let errs = errors(&[("p.yaml", &text)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].message.starts_with("not valid YAML"), "{}", errs[0]);
    assert!(errs[0].line.is_some_and(|l| l >= 5), "{}", errs[0]);
}

#[test]
fn unknown_fields_are_named_with_their_location() {
    let text = policy(
        "  selector: {matchLabels: {app: x}}\n  mcp:\n    - server: github\n      tols: [a]\n",
    );
    assert_error(
        &[("p.yaml", &text)],
        8,
        "spec.mcp[0].tols",
        "unknown field `tols`",
    );
}

#[test]
fn wrong_types_are_named_with_their_location() {
    let text = policy(
        "  selector: {matchLabels: {app: x}}\n  egress:\n    - hosts: [a.com]\n      ports: [99999]\n",
    );
    let errs = errors(&[("p.yaml", &text)]);
    assert!(
        errs.iter().any(|d| d
            .field
            .as_deref()
            .is_some_and(|f| f.starts_with("spec.egress[0].ports"))
            && d.line == Some(8)),
        "{errs:?}"
    );
    let text = policy("  selector: {matchLabels: {app: x}}\n  mcp: {server: github}\n");
    assert_error(&[("p.yaml", &text)], 6, "spec.mcp", "expected a sequence");
}

#[test]
fn wrong_api_version_and_kind() {
    let text = "apiVersion: v1\nkind: AgentPolicy\nmetadata: {name: p}\nspec: {}\n";
    assert_error(
        &[("p.yaml", text)],
        1,
        "apiVersion",
        "expected `warden.dev/v1alpha1`",
    );
    let text =
        "apiVersion: warden.dev/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {}\n";
    assert_error(
        &[("p.yaml", text)],
        2,
        "kind",
        "unknown kind `NetworkPolicy`",
    );
}

#[test]
fn deeply_nested_values_are_refused_without_overflowing_the_stack() {
    let depth = 100_000;
    let text = format!(
        "{HEADER}spec:\n  selector: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let errs = errors(&[("p.yaml", &text)]);
    assert!(!errs.is_empty());
}

#[test]
fn alias_bombs_are_refused() {
    let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..9 {
        let prev = if i == 0 {
            "a".to_owned()
        } else {
            format!("a{}", i - 1)
        };
        text.push_str(&format!("a{i}: &a{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    let errs = errors(&[("bomb.yaml", &text)]);
    assert!(!errs.is_empty());
}

#[test]
fn invalid_cedar_in_a_condition() {
    let text = policy(
        "  selector: {matchLabels: {app: x}}\n  mcp:\n    - server: github\n      tools: [a]\n      when: context.args.repo ==\n",
    );
    assert_error(
        &[("p.yaml", &text)],
        9,
        "spec.mcp[0].when",
        "invalid Cedar condition",
    );
}

#[test]
fn a_condition_cannot_break_out_of_its_policy() {
    for attack in [
        "true } ; permit (principal, action, resource) when { true",
        "true) || (true",
        "true }\\nunless { false",
    ] {
        let text = policy(&format!(
            "  selector: {{matchLabels: {{app: x}}}}\n  mcp:\n    - server: github\n      tools: [a]\n      when: '{attack}'\n"
        ));
        assert_error(
            &[("p.yaml", &text)],
            9,
            "spec.mcp[0].when",
            "invalid Cedar condition",
        );
    }
}

#[test]
fn conditions_that_do_not_type_check_are_refused() {
    let catalog = "apiVersion: warden.dev/v1alpha1\nkind: ToolCatalog\nmetadata: {name: c}\nspec:\n  servers:\n    - name: github\n      tools:\n        - name: a\n          inputSchema: {properties: {repo: {type: string}}}\n";
    // Comparing a string with a number, an undeclared argument, an unknown context field.
    for (cond, needle) in [
        ("context.args.repo > 3", "type-check"),
        ("context.args.nope == \"x\"", "undeclared argument(s) nope"),
        ("context.whatever", "type-check"),
    ] {
        let text = policy(&format!(
            "  selector: {{matchLabels: {{app: x}}}}\n  mcp:\n    - server: github\n      tools: [a]\n      when: '{cond}'\n"
        ));
        assert_error(
            &[("c.yaml", catalog), ("p.yaml", &text)],
            9,
            "spec.mcp[0].when",
            needle,
        );
    }
}

#[test]
fn duplicate_names_are_refused_with_both_locations() {
    let text = policy("  selector: {matchLabels: {app: x}}\n  egress: [{hosts: [a.com]}]\n");
    let errs = errors(&[("a.yaml", &text), ("b.yaml", &text)]);
    assert!(
        errs.iter().any(|d| d.file == "b.yaml"
            && d.message.contains("defined twice")
            && d.message.contains("a.yaml:3")),
        "{errs:?}"
    );
}

#[test]
fn an_empty_selector_is_refused() {
    let text = policy("  selector: {}\n  egress: [{hosts: [a.com]}]\n");
    assert_error(
        &[("p.yaml", &text)],
        5,
        "spec.selector",
        "would select every agent",
    );
}

#[test]
fn a_selector_that_matches_nothing_warns() {
    let text = policy(
        "  selector:\n    matchLabels: {app: x}\n    matchExpressions:\n      - {key: app, operator: NotIn, values: [x]}\n  egress: [{hosts: [a.com]}]\n",
    );
    let w = warnings(&[("p.yaml", &text)]);
    assert!(
        w.iter().any(|d| d.message.contains("selects no agent")),
        "{w:?}"
    );
    let text = policy(
        "  selector: {spiffeIds: [\"spiffe://td/tenant/other/agent/a/*\"]}\n  egress: [{hosts: [a.com]}]\n",
    );
    let w = warnings(&[("p.yaml", &text)]);
    assert!(
        w.iter()
            .any(|d| d.message.contains("selects no agent") && d.line == Some(5)),
        "{w:?}"
    );
}

#[test]
fn a_tool_pattern_matching_nothing_in_the_catalog_warns() {
    let catalog = "apiVersion: warden.dev/v1alpha1\nkind: ToolCatalog\nmetadata: {name: c}\nspec:\n  servers:\n    - name: github\n      tools: [{name: list_issues}]\n";
    let text = policy(
        "  selector: {matchLabels: {app: x}}\n  mcp: [{server: github, tools: [list_isues]}]\n",
    );
    let w = warnings(&[("c.yaml", catalog), ("p.yaml", &text)]);
    assert!(
        w.iter()
            .any(|d| d.field.as_deref() == Some("spec.mcp[0].tools[0]")
                && d.message.contains("matches nothing")),
        "{w:?}"
    );
}

#[test]
fn patterns_that_would_match_everything() {
    let text = policy("  selector: {matchLabels: {app: x}}\n  egress: [{hosts: [\"*\"]}]\n");
    assert_error(
        &[("p.yaml", &text)],
        6,
        "spec.egress[0].hosts[0]",
        "every host on the internet",
    );
    let text = policy(
        "  selector: {matchLabels: {app: x}}\n  http: [{service: \"*\", methods: [\"*\"], paths: [\"/**\"]}]\n",
    );
    let w = warnings(&[("p.yaml", &text)]);
    assert!(
        w.iter()
            .any(|d| d.message.contains("every HTTP request to every service")),
        "{w:?}"
    );
    let text =
        policy("  selector: {matchLabels: {app: x}}\n  mcp: [{server: \"*\", tools: [\"*\"]}]\n");
    let w = warnings(&[("p.yaml", &text)]);
    assert!(
        w.iter().any(|d| d.message.contains("every MCP server")),
        "{w:?}"
    );
    let text = policy("  selector: {matchLabels: {app: x}}\n  egress: [{cidrs: [0.0.0.0/0]}]\n");
    let w = warnings(&[("p.yaml", &text)]);
    assert!(
        w.iter().any(|d| d.message.contains("every address")),
        "{w:?}"
    );
}

#[test]
fn invalid_patterns_and_values_are_named() {
    let cases = [
        (
            "  egress: [{hosts: [\"a.*.com\"]}]\n",
            "spec.egress[0].hosts[0]",
        ),
        (
            "  egress: [{hosts: [10.0.0.1]}]\n",
            "spec.egress[0].hosts[0]",
        ),
        (
            "  egress: [{cidrs: [10.0.0.0/33]}]\n",
            "spec.egress[0].cidrs[0]",
        ),
        (
            "  egress: [{hosts: [a.com], ports: [\"90-80\"]}]\n",
            "spec.egress[0].ports[0]",
        ),
        (
            "  http: [{service: s, methods: [get], paths: [/]}]\n",
            "spec.http[0].methods[0]",
        ),
        (
            "  http: [{service: s, methods: [GET], paths: [\"/a/**/b\"]}]\n",
            "spec.http[0].paths[0]",
        ),
        (
            "  http: [{service: s, methods: [GET], paths: [nope]}]\n",
            "spec.http[0].paths[0]",
        ),
        (
            "  http: [{service: s, methods: [GET]}]\n",
            "spec.http[0].paths",
        ),
        (
            "  mcp: [{server: \"bad server\", tools: [a]}]\n",
            "spec.mcp[0].server",
        ),
        (
            "  mcp: [{server: s, tools: [\"a;b\"]}]\n",
            "spec.mcp[0].tools[0]",
        ),
        ("  mcp: [{server: s}]\n", "spec.mcp[0]"),
        (
            "  a2a: [{peers: [p], methods: [tasks/explode]}]\n",
            "spec.a2a[0].methods[0]",
        ),
        (
            "  deny: [{mcp: {server: s, tools: [a]}, http: {service: s, methods: [GET], paths: [/]}}]\n",
            "spec.deny[0]",
        ),
        (
            "  approval: [{match: {mcp: {server: s, tools: [a]}}, approvers: {group: sre, required: 0}}]\n",
            "spec.approval[0].approvers.required",
        ),
        (
            "  approval: [{match: {mcp: {server: s, tools: [a]}}, approvers: {group: sre, required: 1}, validFor: 3y}]\n",
            "spec.approval[0].validFor",
        ),
        (
            "  events: [{match: {mcp: {server: s, tools: [a]}}, after: {type: spike, within: 0s}}]\n",
            "spec.events[0].after.within",
        ),
        (
            "  events: [{match: {mcp: {server: s, tools: [a]}}, after: {type: spike, within: 1m, attributes: {d: {agent: mood}}}}]\n",
            "spec.events[0].after.attributes.d.agent",
        ),
        (
            "  limits: {bytesPerHour: 12XB}\n",
            "spec.limits.bytesPerHour",
        ),
    ];
    for (rule, field) in cases {
        let text = policy(&format!("  selector: {{matchLabels: {{app: x}}}}\n{rule}"));
        let errs = errors(&[("p.yaml", &text)]);
        assert!(
            errs.iter()
                .any(|d| d.field.as_deref() == Some(field) && d.line.is_some()),
            "{rule}: expected an error on {field}, got {errs:?}"
        );
    }
}

#[test]
fn invalid_selectors_are_named() {
    for (selector, field) in [
        (
            "{matchLabels: {\"bad key!\": x}}",
            "spec.selector.matchLabels.bad key!",
        ),
        (
            "{matchExpressions: [{key: a, operator: In, values: []}]}",
            "spec.selector.matchExpressions[0].values",
        ),
        (
            "{spiffeIds: [\"spiffe://*/x\"]}",
            "spec.selector.spiffeIds[0]",
        ),
        (
            "{spiffeIds: [\"http://td/x\"]}",
            "spec.selector.spiffeIds[0]",
        ),
        (
            "{allAgents: true, matchLabels: {a: b}}",
            "spec.selector.allAgents",
        ),
    ] {
        let text = policy(&format!(
            "  selector: {selector}\n  egress: [{{hosts: [a.com]}}]\n"
        ));
        let errs = errors(&[("p.yaml", &text)]);
        assert!(
            errs.iter().any(|d| d.field.as_deref() == Some(field)),
            "{selector}: {errs:?}"
        );
    }
}

#[test]
fn invalid_raw_cedar_points_at_the_line() {
    let errs = errors(&[(
        "x.cedar",
        "// ok\npermit (principal, action, resource);\n\nforbid (principal, action resource);\n",
    )]);
    assert!(
        errs.iter()
            .any(|d| d.file == "x.cedar" && d.line == Some(4)),
        "{errs:?}"
    );
    let errs = errors(&[(
        "x.cedar",
        "permit (principal, action, resource) when { context.nope };\n",
    )]);
    assert!(
        errs.iter()
            .any(|d| d.file == "x.cedar" && d.line == Some(1) && d.message.contains("type-check")),
        "{errs:?}"
    );
    let errs = errors(&[(
        "x.cedar",
        "permit (principal == ?principal, action, resource);\n",
    )]);
    assert!(
        errs.iter().any(|d| d.message.contains("templates")),
        "{errs:?}"
    );
}

#[test]
fn oversized_conditions_and_lists_are_refused() {
    let long = format!("context.intent == \"{}\"", "a".repeat(5000));
    let text = policy(&format!(
        "  selector: {{matchLabels: {{app: x}}}}\n  mcp: [{{server: s, tools: [a], when: '{long}'}}]\n"
    ));
    assert_error(&[("p.yaml", &text)], 6, "spec.mcp[0].when", "limit is 4096");
    let hosts: Vec<String> = (0..1100).map(|i| format!("h{i}.com")).collect();
    let text = policy(&format!(
        "  selector: {{matchLabels: {{app: x}}}}\n  egress: [{{hosts: [{}]}}]\n",
        hosts.join(", ")
    ));
    let errs = errors(&[("p.yaml", &text)]);
    assert!(
        errs.iter().any(|d| d.message.contains("at most 1024")),
        "{errs:?}"
    );
}

#[test]
fn oversized_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.yaml"), "#".repeat(5 << 20)).unwrap();
    let err = Bundle::load_dir(dir.path(), LoadLimits::default()).unwrap_err();
    assert!(
        err.diagnostics[0].message.contains("limit per file"),
        "{err}"
    );
}

#[test]
fn a_missing_directory_says_so() {
    let err = Bundle::load_dir(
        std::path::Path::new("/nonexistent/policies"),
        LoadLimits::default(),
    )
    .unwrap_err();
    assert!(
        err.diagnostics[0]
            .message
            .contains("cannot read the policy directory"),
        "{err}"
    );
}

#[test]
fn errors_render_with_location_field_and_help() {
    let text = policy("  selector: {}\n  egress: [{hosts: [a.com]}]\n");
    let errs = errors(&[("p.yaml", &text)]);
    let rendered = errs[0].to_string();
    assert!(rendered.starts_with("error: p.yaml:5:"), "{rendered}");
    assert!(rendered.contains("spec.selector:"), "{rendered}");
    assert!(rendered.contains("help: "), "{rendered}");
}

const REVERSIBLE: &str = "apiVersion: warden.dev/v1alpha1\nkind: ToolCatalog\nmetadata: {name: k8s}\nspec:\n  servers:\n    - name: k8s\n      tools:\n        - name: scale\n          undo: {tool: scale, arguments: {deployment: {arg: deployment}, replicas: {arg: previous}}}\n        - name: create_branch\n          undo: {tool: delete_branch, arguments: {name: {arg: name}, force: {value: true}}}\n        - name: delete_branch\n";

#[test]
fn a_reversible_tool_names_its_compensating_call() {
    let bundle = load(&[("catalog.yaml", REVERSIBLE)]).unwrap();
    let undo = bundle.undo_for("k8s", "create_branch").unwrap();
    assert_eq!(undo.tool, "delete_branch");
    assert_eq!(
        undo.arguments["force"],
        warden_policy::UndoArgument::Value(serde_json::json!(true))
    );
    assert!(bundle.undo_for("k8s", "delete_branch").is_none());
}

#[test]
fn a_compensating_call_to_an_unknown_tool_is_an_error() {
    let broken = REVERSIBLE.replace("tool: delete_branch", "tool: drop_branch");
    let errors = load(&[("catalog.yaml", &broken)]).unwrap_err();
    assert!(
        errors.iter().any(|d| d
            .to_string()
            .contains("`drop_branch` is not a tool of server k8s")),
        "{errors:?}"
    );
}
