use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::name::Name;

/// A decision's unique id: 128 random bits as 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DecisionId(String);

impl DecisionId {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(hex(&bytes))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TryFrom<String> for DecisionId {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        if is_lower_hex(&value, 32) {
            Ok(Self(value))
        } else {
            Err(ModelError::DecisionId(crate::error::excerpt(&value)))
        }
    }
}
impl From<DecisionId> for String {
    fn from(id: DecisionId) -> Self {
        id.0
    }
}
impl fmt::Display for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The content hash of a policy bundle: `sha256:` and 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BundleHash(String);

impl BundleHash {
    pub fn from_sha256(digest: [u8; 32]) -> Self {
        Self(format!("sha256:{}", hex(&digest)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 12 hex digits, for people.
    pub fn short(&self) -> &str {
        &self.0["sha256:".len().."sha256:".len() + 12]
    }
}
impl TryFrom<String> for BundleHash {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.strip_prefix("sha256:") {
            Some(h) if is_lower_hex(h, 64) => Ok(Self(value)),
            _ => Err(ModelError::BundleHash(crate::error::excerpt(&value))),
        }
    }
}
impl From<BundleHash> for String {
    fn from(h: BundleHash) -> Self {
        h.0
    }
}
impl fmt::Display for BundleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A policy as its author wrote it: the file, the line, the document and the rule within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyRef {
    /// The compiled Cedar policy id.
    pub id: String,
    /// The source file, relative to the bundle root.
    pub file: String,
    /// 1-based line of the rule in the file, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// `namespace/name` of the AgentPolicy, or the file name of a raw Cedar policy.
    pub document: String,
    /// The rule inside the document, as a field path: `spec.mcp[0]`, `spec.deny[2]`.
    pub rule: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line} {} {}", self.file, self.document, self.rule),
            None => write!(f, "{} {} {}", self.file, self.document, self.rule),
        }
    }
}

/// What a matched action needs before it may proceed: `required` approvals from members of
/// `group`, given within `valid_for_secs` before the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApprovalRequirement {
    /// Stable id of the requirement; an approval names the requirement it satisfies.
    pub id: String,
    pub group: Name,
    pub required: NonZeroU32,
    pub valid_for_secs: u64,
    pub policy: PolicyRef,
}

/// Why an action was denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyReason {
    /// No policy grants the action: the default.
    NoMatchingGrant,
    /// A deny rule (Cedar `forbid`) matched.
    Forbidden,
    /// Evaluation failed; Warden denies rather than guess.
    EvaluationError,
    /// Policy allows the action, but the caller's task grant does not cover it.
    OutsideGrant,
    /// The audit log could not make the decision's record durable, so nothing is forwarded.
    AuditUnavailable,
    /// The agent, or one above it, is held in quarantine.
    Quarantined,
    /// The kill switch is thrown: all agent traffic stops.
    Frozen,
    /// The tool's definition changed since it was approved, or its description carries
    /// instructions: it is withheld until a person approves it.
    ToolWithheld,
    /// The message is not one Warden forwards: a request without an id, a notification the
    /// protocol does not define, a body with duplicate keys. Refused whatever policy says.
    NotForwarded,
    /// The caller could not be identified: a missing, tampered, expired, swapped or revoked
    /// credential. Recorded (within a rate) so probing with stolen credentials is seen.
    Unidentified,
}

/// The verdict. Errors exist only inside a denial, and approval requirements only where they are
/// needed, so no decision can both allow and report a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny {
        reason: DenyReason,
        /// Why evaluation failed; non-empty exactly when `reason` is `EvaluationError`.
        errors: Vec<String>,
    },
    NeedsApproval {
        requirements: Vec<ApprovalRequirement>,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny { .. } => "deny",
            Self::NeedsApproval { .. } => "needs-approval",
        }
    }

    pub fn evaluation_error(errors: Vec<String>) -> Self {
        Self::Deny {
            reason: DenyReason::EvaluationError,
            errors,
        }
    }

    pub fn denied(reason: DenyReason) -> Self {
        Self::Deny {
            reason,
            errors: Vec::new(),
        }
    }
}

/// The answer to a [`crate::DecisionRequest`].
///
/// On the wire it is flat: `{"id", "outcome": "allow|deny|needs-approval", "reason", "errors",
/// "requirements", "deciding", "bundle"}`, and a document whose fields contradict its outcome is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DecisionWire", into = "DecisionWire")]
pub struct Decision {
    pub id: DecisionId,
    pub outcome: Outcome,
    /// The policies that decided: the permits that allowed, the forbids that denied, the
    /// approval rules that demanded a co-signature. Empty for a default deny.
    pub deciding: Vec<PolicyRef>,
    pub bundle: BundleHash,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allow)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DecisionWire {
    id: DecisionId,
    outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<DenyReason>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    requirements: Vec<ApprovalRequirement>,
    deciding: Vec<PolicyRef>,
    bundle: BundleHash,
}

impl TryFrom<DecisionWire> for Decision {
    type Error = String;
    fn try_from(w: DecisionWire) -> Result<Self, Self::Error> {
        let outcome = match (w.outcome.as_str(), w.reason) {
            ("allow", None) if w.errors.is_empty() && w.requirements.is_empty() => Outcome::Allow,
            ("deny", Some(DenyReason::EvaluationError))
                if !w.errors.is_empty() && w.requirements.is_empty() =>
            {
                Outcome::evaluation_error(w.errors)
            }
            ("deny", Some(reason))
                if reason != DenyReason::EvaluationError
                    && w.errors.is_empty()
                    && w.requirements.is_empty() =>
            {
                Outcome::denied(reason)
            }
            ("needs-approval", None) if w.errors.is_empty() && !w.requirements.is_empty() => {
                Outcome::NeedsApproval {
                    requirements: w.requirements,
                }
            }
            (outcome, _) => {
                return Err(format!(
                    "decision fields contradict its outcome `{outcome}`: `allow` has no reason, errors or \
                     requirements; `deny` has a reason, and errors exactly when the reason is \
                     `evaluation-error`; `needs-approval` has requirements"
                ));
            }
        };
        Ok(Self {
            id: w.id,
            outcome,
            deciding: w.deciding,
            bundle: w.bundle,
        })
    }
}

impl From<Decision> for DecisionWire {
    fn from(d: Decision) -> Self {
        let outcome = d.outcome.label().to_owned();
        let (reason, errors, requirements) = match d.outcome {
            Outcome::Allow => (None, Vec::new(), Vec::new()),
            Outcome::Deny { reason, errors } => (Some(reason), errors, Vec::new()),
            Outcome::NeedsApproval { requirements } => (None, Vec::new(), requirements),
        };
        Self {
            id: d.id,
            outcome,
            reason,
            errors,
            requirements,
            deciding: d.deciding,
            bundle: d.bundle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_serialize_flat_and_refuse_contradictions() {
        let d = Decision {
            id: DecisionId::from_bytes([7; 16]),
            outcome: Outcome::evaluation_error(vec!["boom".into()]),
            deciding: vec![],
            bundle: BundleHash::from_sha256([1; 32]),
        };
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["outcome"], "deny");
        assert_eq!(json["reason"], "evaluation-error");
        let back: Decision = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, d);

        let mut allow_with_errors = json;
        allow_with_errors["outcome"] = "allow".into();
        assert!(serde_json::from_value::<Decision>(allow_with_errors).is_err());
    }

    #[test]
    fn ids_and_hashes_validate() {
        assert!(serde_json::from_str::<DecisionId>("\"abc\"").is_err());
        assert!(serde_json::from_str::<BundleHash>("\"md5:00\"").is_err());
        assert_eq!(BundleHash::from_sha256([0xab; 32]).short(), "abababababab");
    }
}
