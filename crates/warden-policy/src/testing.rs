//! Policy unit tests (`PolicyTest` documents), and bundle diffs over tests plus generated requests.

use serde::Serialize;
use warden_model::{Decision, DecisionRequest, Outcome};

use crate::bundle::{Bundle, TestCase};
use crate::decide::Slicing;
use crate::document::ExpectedOutcome;

/// The result of one test case.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TestResult {
    pub suite: String,
    pub name: String,
    pub file: String,
    pub line: Option<u32>,
    pub passed: bool,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    pub decision: Decision,
}

fn outcome_matches(expected: ExpectedOutcome, outcome: &Outcome) -> bool {
    matches!(
        (expected, outcome),
        (ExpectedOutcome::Allow, Outcome::Allow)
            | (ExpectedOutcome::Deny, Outcome::Deny { .. })
            | (
                ExpectedOutcome::NeedsApproval,
                Outcome::NeedsApproval { .. }
            )
    )
}

/// How a deciding policy is written in `decidedBy`: `document rule`, e.g. `acme/bot spec.mcp[0]`.
pub fn policy_label(p: &warden_model::PolicyRef) -> String {
    format!("{} {}", p.document, p.rule)
}

/// Runs one test case against `bundle`.
pub fn run_case(bundle: &Bundle, case: &TestCase) -> TestResult {
    let decision = bundle.decide(&case.spec.request);
    let mut failures = Vec::new();
    if !outcome_matches(case.spec.expect, &decision.outcome) {
        let mut why = format!(
            "expected {}, got {}",
            case.spec.expect.label(),
            decision.outcome.label()
        );
        if let Outcome::Deny { errors, .. } = &decision.outcome
            && !errors.is_empty()
        {
            why.push_str(&format!(" (errors: {})", errors.join("; ")));
        }
        if !decision.deciding.is_empty() {
            let by: Vec<String> = decision.deciding.iter().map(policy_label).collect();
            why.push_str(&format!(" decided by {}", by.join(", ")));
        }
        failures.push(why);
    }
    if let Some(expected) = &case.spec.decided_by {
        let mut got: Vec<String> = decision.deciding.iter().map(policy_label).collect();
        got.sort();
        got.dedup();
        let mut want = expected.clone();
        want.sort();
        want.dedup();
        if got != want {
            failures.push(format!(
                "expected deciding policies [{}], got [{}]",
                want.join(", "),
                got.join(", ")
            ));
        }
    }
    TestResult {
        suite: case.suite.clone(),
        name: case.spec.name.clone(),
        file: case.file.clone(),
        line: case.line,
        passed: failures.is_empty(),
        failures,
        decision,
    }
}

/// Runs every test case of the bundle.
pub fn run_tests(bundle: &Bundle) -> Vec<TestResult> {
    bundle
        .tests()
        .iter()
        .map(|case| run_case(bundle, case))
        .collect()
}

/// One request whose outcome differs between two bundles.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// The test case it came from, or `generated`.
    pub origin: String,
    pub request: DecisionRequest,
    pub old: Decision,
    pub new: Decision,
}

/// Outcomes of the requests in `requests` (labelled) that change from `old` to `new`.
pub fn diff(old: &Bundle, new: &Bundle, requests: &[(String, DecisionRequest)]) -> Vec<Change> {
    requests
        .iter()
        .filter_map(|(origin, request)| {
            let before = old.decide_with(request, Slicing::On);
            let after = new.decide_with(request, Slicing::On);
            let same = before.outcome.label() == after.outcome.label()
                && same_requirements(&before.outcome, &after.outcome);
            (!same).then(|| Change {
                origin: origin.clone(),
                request: request.clone(),
                old: before,
                new: after,
            })
        })
        .collect()
}

fn same_requirements(a: &Outcome, b: &Outcome) -> bool {
    match (a, b) {
        (
            Outcome::NeedsApproval { requirements: x },
            Outcome::NeedsApproval { requirements: y },
        ) => x.iter().map(|r| &r.id).eq(y.iter().map(|r| &r.id)),
        _ => true,
    }
}

/// Requests for a diff: every test case of both bundles, then generated requests pairing the
/// sample agents with the sample actions of both, up to `limit` in all.
pub fn diff_requests(old: &Bundle, new: &Bundle, limit: usize) -> Vec<(String, DecisionRequest)> {
    let mut requests: Vec<(String, DecisionRequest)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for case in old.tests().iter().chain(new.tests()) {
        let key = serde_json::to_string(&case.spec.request).unwrap_or_default();
        if seen.insert(key) {
            requests.push((
                format!("test {}/{}", case.suite, case.spec.name),
                case.spec.request.clone(),
            ));
        }
    }
    let agents: Vec<_> = old
        .samples()
        .agents
        .iter()
        .chain(&new.samples().agents)
        .collect();
    let actions: Vec<_> = old
        .samples()
        .actions
        .iter()
        .chain(&new.samples().actions)
        .collect();
    'outer: for agent in &agents {
        for action in &actions {
            if requests.len() >= limit {
                break 'outer;
            }
            let request = DecisionRequest {
                agent: (*agent).clone(),
                action: (*action).clone(),
                context: Default::default(),
            };
            let key = serde_json::to_string(&request).unwrap_or_default();
            if seen.insert(key) {
                requests.push(("generated".into(), request));
            }
        }
    }
    requests
}
