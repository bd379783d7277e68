//! The inspect stage: request bodies scanned by `warden-inspect` for injection, secrets and
//! sensitive data; findings become decision context (`context.findings`) and audit record
//! fields, never verdicts.

use warden_inspect::{Kind, Scanner};
use warden_model::{Action, Finding, FindingKind};

use crate::pipeline::Inspector;

pub struct ContentInspector {
    scanner: Scanner,
    /// What is redacted from results rather than reported for policy.
    redact: Vec<Kind>,
}

impl ContentInspector {
    pub fn new(scanner: Scanner, redact: Vec<Kind>) -> Self {
        Self { scanner, redact }
    }
}

/// A scanner's finding as decisions and records carry it: the rule id names the encodings peeled
/// to find it (`secret.aws-access-key-id+base64`).
pub fn to_model(finding: warden_inspect::Finding) -> Finding {
    let mut rule = finding.rule;
    for encoding in &finding.via {
        rule.push('+');
        rule.push_str(encoding.label());
    }
    Finding {
        kind: match finding.kind {
            Kind::Injection => FindingKind::Injection,
            Kind::Secret => FindingKind::Secret,
            Kind::SensitiveData => FindingKind::SensitiveData,
        },
        rule,
        location: finding.location,
        score: finding.score,
    }
}

impl Inspector for ContentInspector {
    fn inspect_request(&self, _action: &Action, body: &[u8]) -> Vec<Finding> {
        if body.is_empty() {
            return Vec::new();
        }
        self.scanner
            .scan_body(body)
            .into_iter()
            .map(to_model)
            .collect()
    }

    fn redact_result(&self, _action: &Action, result: &mut serde_json::Value) -> Vec<Finding> {
        if self.redact.is_empty() {
            return Vec::new();
        }
        self.scanner
            .redact_json(result, &self.redact)
            .into_iter()
            .map(to_model)
            .collect()
    }

    fn inspect_result(&self, _action: &Action, result: &serde_json::Value) -> Vec<Finding> {
        self.scanner
            .scan_json(result)
            .into_iter()
            .map(to_model)
            .collect()
    }
}
