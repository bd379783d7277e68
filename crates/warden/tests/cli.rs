//! The `warden policy` commands, run as a user would run them.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn warden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warden"))
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies")
}

fn run(args: &[&str]) -> Output {
    warden().args(args).output().expect("warden runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const POLICY: &str = "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: p, namespace: t}\nspec:\n  selector: {matchLabels: {app: a}}\n  egress: [{hosts: [HOST], ports: [443]}]\n";
const REQUEST: &str = r#"{"agent":{"spiffeId":"spiffe://td/tenant/t/agent/a/1","labels":{"app":"a"}},"action":{"kind":"egress.connect","host":"a.com","port":443}}"#;

fn policy_dir(host: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), POLICY.replace("HOST", host)).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `warden policy explain` of the example bundle with `request` in a file.
fn explain_file(request: &str) -> Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), request).unwrap();
    run(&[
        "policy",
        "explain",
        s(&examples()),
        "--request",
        s(file.path()),
    ])
}

#[test]
fn check_accepts_the_examples() {
    let out = run(&["policy", "check", s(&examples())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ok — 21 policies"),
        "{}",
        text(&out.stdout)
    );
    let out = run(&["policy", "check", s(&examples()), "--output", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], true);
    assert!(json["bundle"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn check_rejects_with_precise_errors_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        POLICY.replace("HOST", "a.com").replace("egress", "egres"),
    )
    .unwrap();
    let out = run(&["policy", "check", s(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("error: bad.yaml:6:3: spec.egres: unknown field `egres`"),
        "{err}"
    );
    assert!(err.contains("rejected with 1 error(s)"), "{err}");
    let out = run(&["policy", "check", s(dir.path()), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["diagnostics"][0]["line"], 6);
    assert_eq!(json["diagnostics"][0]["field"], "spec.egres");
}

#[test]
fn test_runs_the_example_suite() {
    let out = run(&["policy", "test", s(&examples())]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("45 passed, 0 failed"));
    let out = run(&[
        "policy",
        "test",
        s(&examples()),
        "--filter",
        "kube-system",
        "-o",
        "json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["passed"], 3);
}

#[test]
fn failing_tests_exit_1_and_say_why() {
    let dir = policy_dir("a.com");
    let test = format!(
        "apiVersion: warden.dev/v1alpha1\nkind: PolicyTest\nmetadata: {{name: t}}\nspec:\n  cases:\n    - name: wrong\n      request: {REQUEST}\n      expect: deny\n"
    );
    std::fs::write(dir.path().join("t.yaml"), test).unwrap();
    let out = run(&["policy", "test", s(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FAIL t / wrong"), "{stdout}");
    assert!(
        stdout.contains("expected deny, got allow decided by t/p spec.egress[0]"),
        "{stdout}"
    );
    assert!(stdout.contains("at t.yaml:6"), "{stdout}");
}

#[test]
fn explain_shows_the_reasoning() {
    let request = r#"{"agent":{"spiffeId":"spiffe://acme.example/tenant/acme/agent/sre-agent/i-1","labels":{"app":"sre-agent","env":"prod"}},
        "action":{"kind":"mcp.tools/call","server":"k8s","tool":"delete_namespace","args":{"namespace":"old"}}}"#;
    let mut child = warden()
        .args([
            "policy",
            "explain",
            s(&examples()),
            "--request",
            "-",
            "-o",
            "json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["decision"]["outcome"], "needs-approval");
    assert_eq!(json["decision"]["requirements"][0]["group"], "sre");
    assert_eq!(json["approvals"][0]["rule"], "spec.approval[0]");
    assert!(
        json["sources"][0]["cedar"]
            .as_str()
            .unwrap()
            .starts_with("permit")
    );

    let out = explain_file(request);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("NEEDS-APPROVAL"), "{stdout}");
    assert!(
        stdout.contains("2 approval(s) from group `sre`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sre-agent.yaml:27 acme/sre-agent spec.approval[0]"),
        "{stdout}"
    );
}

#[test]
fn explain_refuses_a_bad_request() {
    let out = explain_file(r#"{"agent":{"spiffeId":"spiffe://td/x"},"action":{"kind":"http"}}"#);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not a valid request"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "policy",
        "explain",
        s(&examples()),
        "--request",
        "/nonexistent.json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot open request file"));
}

#[test]
fn diff_lists_changed_outcomes() {
    let old = policy_dir("a.com");
    let new = policy_dir("b.com");
    let out = run(&["policy", "diff", s(old.path()), s(new.path()), "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["changed"].as_u64().unwrap() >= 2, "{json}");
    let hosts: Vec<&str> = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["request"]["action"]["host"].as_str().unwrap())
        .collect();
    assert!(
        hosts.contains(&"a.com") && hosts.contains(&"b.com"),
        "{hosts:?}"
    );
    let out = run(&["policy", "diff", s(old.path()), s(old.path())]);
    assert!(text(&out.stdout).contains("0 of"), "{}", text(&out.stdout));
}

#[test]
fn help_describes_every_command() {
    let out = run(&["policy", "--help"]);
    let help = text(&out.stdout);
    for command in ["check", "test", "explain", "diff", "decide"] {
        assert!(help.contains(command), "{help}");
    }
}

/// `decide --watch` answers JSON lines, reloads on file changes and SIGHUP, and keeps serving
/// the last good bundle when a reload fails.
#[test]
fn decide_reloads_and_keeps_the_last_good_bundle() {
    let dir = policy_dir("a.com");
    let mut child = warden()
        .args(["policy", "decide", s(dir.path()), "--watch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = child.stderr.take().unwrap();
    let (err_tx, err_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let _ = err_tx.send(line.unwrap_or_default());
        }
    });
    let mut ask = |line: &str| -> serde_json::Value {
        writeln!(stdin, "{line}").unwrap();
        let mut answer = String::new();
        stdout.read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    };
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match err_rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!("stderr never said {needle:?}"),
            }
        }
    };
    wait_for("serving bundle");
    assert_eq!(ask(REQUEST)["outcome"], "allow");
    assert!(ask("{not json").get("error").is_some());

    std::fs::write(dir.path().join("p.yaml"), POLICY.replace("HOST", "b.com")).unwrap();
    wait_for("policy bundle reloaded");
    assert_eq!(ask(REQUEST)["outcome"], "deny");

    // A broken edit, then SIGHUP: both reloads are rejected and the last good bundle serves on.
    std::fs::write(dir.path().join("p.yaml"), "kind: [").unwrap();
    wait_for("reload rejected");
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for("reload rejected");
    assert_eq!(ask(REQUEST)["outcome"], "deny");
    let allowed = REQUEST.replace("a.com", "b.com");
    assert_eq!(ask(&allowed)["outcome"], "allow");

    std::fs::write(dir.path().join("p.yaml"), POLICY.replace("HOST", "a.com")).unwrap();
    wait_for("policy bundle reloaded");
    assert_eq!(ask(REQUEST)["outcome"], "allow");
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// An oversized or non-UTF-8 line is refused on its own; the requests after it are still answered.
#[test]
fn decide_bounds_each_line() {
    let dir = policy_dir("a.com");
    let mut child = warden()
        .args(["policy", "decide", s(dir.path())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&vec![b'x'; 3 << 20]).unwrap();
        stdin.write_all(b"\n\xff\xfe\n").unwrap();
        writeln!(stdin, "{REQUEST}").unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0]["error"].as_str().unwrap().contains("larger than"));
    assert!(lines[1]["error"].as_str().unwrap().contains("not UTF-8"));
    assert_eq!(lines[2]["outcome"], "allow");
}

/// `warden … | head`: once the reader has gone, the command ends quietly — no panic, nothing on
/// stderr.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let input = tempfile::NamedTempFile::new().unwrap();
    let lines: String = (0..20_000)
        .map(|i| format!("mail ann{i}@example.com about the report\n"))
        .collect();
    std::fs::write(input.path(), lines).unwrap();
    let mut child = warden()
        .args(["inspect", "--lines", s(input.path())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("pii.email"), "{first}");
    // The reader is gone now (its end of the pipe dropped above).
    let out = child.wait_with_output().unwrap();
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
}

/// Admin tokens and grants never travel in the clear to another host: a plain-HTTP control URL
/// that is not loopback is refused before anything is sent.
#[test]
fn the_cli_refuses_a_plain_http_control_plane_off_loopback() {
    let out = warden()
        .args(["agent", "list"])
        .env("WARDEN_CONTROL_URL", "http://control.invalid:8181")
        .env("WARDEN_TOKEN", "wdn_not_sent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("must be https"), "{stderr}");
}

/// Installs (once) the validators of the published Kubernetes and Cilium schemas.
fn schema_validator() -> PathBuf {
    static READY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/k8s");
            if !dir.join("node_modules/@kubernetes-models/cilium").is_dir() {
                let installed = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--quiet"])
                    .current_dir(&dir)
                    .status()
                    .expect("npm runs (apt-get install -y npm)");
                assert!(installed.success(), "npm ci in {} failed", dir.display());
            }
            dir.join("validate.mjs")
        })
        .clone()
}

/// Resources checked against their published schemas; what the validator said.
fn validate(resources: &str) -> (bool, String) {
    let mut child = Command::new("node")
        .arg(schema_validator())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(resources.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), text(&out.stdout))
}

const EXPORTED: &str = "apiVersion: warden.dev/v1alpha1
kind: AgentPolicy
metadata: {name: crawler, namespace: research}
spec:
  selector:
    matchLabels: {app: crawler}
    matchExpressions: [{key: tier, operator: In, values: [batch, web]}]
  egress:
    - {hosts: [api.github.com, '*.slack.com', '**.example.org'], ports: [443]}
    - {cidrs: ['10.20.0.0/16'], ports: ['8000-8100'], protocol: tcp}
    - {cidrs: ['192.0.2.10/32'], ports: [53], protocol: udp}
    - {cidrs: ['203.0.113.0/24'], when: 'context.port == 22'}
  http:
    - {service: catalog, methods: [GET], paths: ['/items/*', '/search/**']}
    - {service: unknown-api, methods: [POST], paths: ['/**']}
  deny:
    - egress: {hosts: [evil.example.org]}
---
apiVersion: warden.dev/v1alpha1
kind: AgentPolicy
metadata: {name: by-id, namespace: research}
spec:
  selector: {spiffeIds: ['spiffe://td/tenant/research/agent/x/*']}
  egress: [{hosts: [a.example.com], ports: [443]}]
";

#[test]
fn exported_network_policies_are_valid_resources_and_say_what_they_leave_out() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), EXPORTED).unwrap();
    let bundle = dir.path().to_str().unwrap();
    for format in ["networkpolicy", "cilium"] {
        let out = run(&[
            "policy",
            "export",
            bundle,
            "--format",
            format,
            "-o",
            "json",
            "--service",
            "catalog=http://10.9.0.7:8080/v1",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let (valid, said) = validate(&text(&out.stdout));
        assert!(valid, "{format}: {said}\n{}", text(&out.stdout));
        let resources: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // The policy that selects by SPIFFE ID only has no pods to select.
        assert_eq!(resources.as_array().unwrap().len(), 1, "{resources}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("research/by-id: selects agents by SPIFFE ID only"),
            "{stderr}"
        );
        assert!(stderr.contains("unknown-api"), "{stderr}");
        assert!(stderr.contains("deny rule"), "{stderr}");
        assert!(stderr.contains("without its `when` condition"), "{stderr}");
        let resource = &resources[0];
        assert_eq!(resource["metadata"]["namespace"], "research");
        let rules = resource["spec"]["egress"].to_string();
        assert!(
            rules.contains("10.20.0.0/16") && rules.contains("8100"),
            "{rules}"
        );
        assert!(rules.contains("192.0.2.10/32"), "{rules}");
        assert!(rules.contains("10.9.0.7/32"), "{rules}");
        match format {
            "cilium" => {
                assert!(
                    rules.contains(r#"{"matchName":"api.github.com"}"#),
                    "{rules}"
                );
                assert!(
                    rules.contains(r#"{"matchPattern":"*.slack.com"}"#),
                    "{rules}"
                );
                assert!(rules.contains(r#""path":"^/items/[^/]+$""#), "{rules}");
                assert!(rules.contains(r#""method":"GET""#), "{rules}");
                assert_eq!(
                    resource["spec"]["endpointSelector"]["matchLabels"]["app"],
                    "crawler"
                );
            }
            _ => {
                // Names become any public address on their ports, never a private one.
                assert!(stderr.contains("names hosts (api.github.com"), "{stderr}");
                assert!(rules.contains("169.254.0.0/16"), "{rules}");
                assert_eq!(
                    resource["spec"]["podSelector"]["matchLabels"]["app"],
                    "crawler"
                );
                assert_eq!(resource["spec"]["policyTypes"][0], "Egress");
            }
        }
    }
    // The validator itself refuses a malformed resource (so the checks above can fail).
    let (valid, said) = validate(
        r#"[{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"x"},"spec":{"podSelector":{},"egress":[{"to":[{"ipBlock":{}}]}]}}]"#,
    );
    assert!(!valid, "{said}");
    // A bundle that does not load exports nothing.
    std::fs::write(dir.path().join("broken.yaml"), "kind: AgentPolicy\n").unwrap();
    let out = run(&["policy", "export", bundle, "--format", "cilium"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
}
