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
    /// What is redacted from what agents send rather than reported for policy.
    redact_requests: Vec<Kind>,
}

impl ContentInspector {
    pub fn new(scanner: Scanner, redact: Vec<Kind>, redact_requests: Vec<Kind>) -> Self {
        Self {
            scanner,
            redact,
            redact_requests,
        }
    }

    fn redact(&self, kinds: &[Kind], value: &mut serde_json::Value) -> Vec<Finding> {
        if kinds.is_empty() {
            return Vec::new();
        }
        self.scanner
            .redact_json(value, kinds)
            .into_iter()
            .map(to_model)
            .collect()
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
        self.redact(&self.redact, result)
    }

    fn redact_request(&self, request: &mut serde_json::Value) -> Vec<Finding> {
        self.redact(&self.redact_requests, request)
    }

    fn redacts_requests(&self) -> bool {
        !self.redact_requests.is_empty()
    }

    fn inspect_result(&self, _action: &Action, result: &serde_json::Value) -> Vec<Finding> {
        self.scanner
            .scan_json(result)
            .into_iter()
            .map(to_model)
            .collect()
    }
}
