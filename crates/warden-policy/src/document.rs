//! The YAML documents a bundle is written in: `AgentPolicy`, `ToolCatalog` and `PolicyTest`.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use warden_model::{DecisionRequest, Protocol};

pub const API_VERSION: &str = "warden.dev/v1alpha1";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// Accepted for Kubernetes compatibility; policy does not read them.
    #[serde(default, rename = "labels")]
    _labels: BTreeMap<String, String>,
    #[serde(default, rename = "annotations")]
    _annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentPolicyDoc {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: Metadata,
    pub spec: AgentPolicySpec,
}

/// How Warden answers its detectors for the agents a policy selects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionPolicyDoc {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: Metadata,
    pub spec: DetectionPolicySpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DetectionPolicySpec {
    pub selector: Selector,
    pub responses: Vec<DetectionRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DetectionRule {
    /// Detector names (`scan.ports`, …), or `*` for every detector.
    pub detectors: Vec<String>,
    pub response: DetectionAction,
    /// How long a quarantine lasts (`10m`); absent: until a person releases it.
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
}

/// What a detection leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectionAction {
    /// Recorded (and on the decision stream), nothing more.
    Alert,
    /// The agent instance is quarantined through the control plane.
    Quarantine,
}

/// Whether a policy's decisions take effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Decides.
    #[default]
    Enforce,
    /// Decides on the side: what it would have done is recorded, what is enforced is not
    /// changed.
    Staged,
}

/// What an AgentPolicy grants, denies and gates for the agents it selects.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentPolicySpec {
    /// `staged`: evaluated and recorded (`wouldDeny`), not enforced.
    #[serde(default)]
    pub mode: PolicyMode,
    pub selector: Selector,
    #[serde(default)]
    pub egress: Vec<EgressRule>,
    #[serde(default)]
    pub http: Vec<HttpRule>,
    #[serde(default)]
    pub mcp: Vec<McpRule>,
    #[serde(default)]
    pub a2a: Vec<A2aRule>,
    #[serde(default)]
    pub deny: Vec<Target>,
    #[serde(default)]
    pub approval: Vec<ApprovalRule>,
    #[serde(default)]
    pub events: Vec<EventRule>,
    #[serde(default)]
    pub limits: Option<Limits>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
    #[serde(default)]
    pub spiffe_ids: Vec<String>,
    /// Must be set, and alone, to select every agent of the namespace.
    #[serde(default)]
    pub all_agents: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelExpression {
    pub key: String,
    pub operator: LabelOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

/// A port or an inclusive range, written `443` or `"8000-8100"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Single(u16),
    Range(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    #[serde(default)]
    pub when: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    pub service: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub when: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct McpRule {
    pub server: String,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub prompts: Vec<String>,
    #[serde(default)]
    pub when: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct A2aRule {
    pub peers: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub when: Option<String>,
}

/// One kind of destination: exactly one of the fields is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Target {
    #[serde(default)]
    pub egress: Option<EgressRule>,
    #[serde(default)]
    pub http: Option<HttpRule>,
    #[serde(default)]
    pub mcp: Option<McpRule>,
    #[serde(default)]
    pub a2a: Option<A2aRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Approvers {
    pub group: String,
    pub required: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApprovalRule {
    #[serde(rename = "match")]
    pub target: Target,
    pub approvers: Approvers,
    /// How long an approval stays usable, e.g. `15m`.
    #[serde(default = "default_valid_for")]
    pub valid_for: String,
}

fn default_valid_for() -> String {
    "15m".into()
}

/// Where the value an event attribute must equal comes from: written `{arg: NAME}`,
/// `{value: TEXT}` or `{agent: name|tenant|spiffeId}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AttributeSourceWire")]
pub enum AttributeSource {
    /// A tool or prompt argument of the request.
    Arg(String),
    /// A fixed value.
    Value(String),
    /// A property of the calling agent: `name`, `tenant` or `spiffeId`.
    Agent(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributeSourceWire {
    arg: Option<String>,
    value: Option<String>,
    agent: Option<String>,
}

impl TryFrom<AttributeSourceWire> for AttributeSource {
    type Error = String;
    fn try_from(w: AttributeSourceWire) -> Result<Self, Self::Error> {
        match (w.arg, w.value, w.agent) {
            (Some(a), None, None) => Ok(Self::Arg(a)),
            (None, Some(v), None) => Ok(Self::Value(v)),
            (None, None, Some(p)) => Ok(Self::Agent(p)),
            _ => Err(
                "write exactly one of `arg: NAME`, `value: TEXT` or `agent: name|tenant|spiffeId`"
                    .into(),
            ),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventGateSpec {
    #[serde(rename = "type")]
    pub event_type: String,
    /// How long after the event the action stays allowed, e.g. `10m`.
    pub within: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, AttributeSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventRule {
    #[serde(rename = "match")]
    pub target: Target,
    pub after: EventGateSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// A size such as `100Mi`, `1G` or `5000`.
    #[serde(default)]
    pub bytes_per_hour: Option<ByteSize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ToolCatalogDoc {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(rename = "metadata")]
    _metadata: Metadata,
    pub spec: ToolCatalogSpec,
}

/// The tools (and prompts) of MCP servers, with their input schemas as `tools/list` returns them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ToolCatalogSpec {
    pub servers: Vec<CatalogServer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CatalogServer {
    pub name: String,
    #[serde(default)]
    pub tools: Vec<CatalogTool>,
    #[serde(default)]
    pub prompts: Vec<CatalogPrompt>,
}

/// Unknown fields are allowed here so a `tools/list` entry can be pasted as it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogTool {
    pub name: String,
    #[serde(default)]
    pub input_schema: Option<serde_json::Value>,
    /// Declares the tool reversible: the compensating call `warden actions undo` makes.
    #[serde(default)]
    pub undo: Option<UndoSpec>,
}

/// The compensating call for a reversible tool: another tool of the same server, with arguments
/// taken from the original call or fixed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UndoSpec {
    pub tool: String,
    #[serde(default)]
    pub arguments: BTreeMap<String, UndoArgument>,
}

/// `{arg: NAME}` (the original call's argument, as it was) or `{value: ANY}` (fixed JSON).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "UndoArgumentWire", into = "UndoArgumentWire")]
pub enum UndoArgument {
    Arg(String),
    Value(serde_json::Value),
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct UndoArgumentWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<serde_json::Value>,
}

impl TryFrom<UndoArgumentWire> for UndoArgument {
    type Error = String;
    fn try_from(w: UndoArgumentWire) -> Result<Self, Self::Error> {
        match (w.arg, w.value) {
            (Some(arg), None) => Ok(Self::Arg(arg)),
            (None, Some(value)) => Ok(Self::Value(value)),
            _ => Err("write exactly one of `arg: NAME` or `value: ANY`".into()),
        }
    }
}

impl From<UndoArgument> for UndoArgumentWire {
    fn from(a: UndoArgument) -> Self {
        match a {
            UndoArgument::Arg(arg) => Self {
                arg: Some(arg),
                value: None,
            },
            UndoArgument::Value(value) => Self {
                arg: None,
                value: Some(value),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogPrompt {
    pub name: String,
    #[serde(default)]
    pub arguments: Vec<CatalogPromptArgument>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogPromptArgument {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTestDoc {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: Metadata,
    pub spec: PolicyTestSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTestSpec {
    pub cases: Vec<TestCaseSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpectedOutcome {
    Allow,
    Deny,
    NeedsApproval,
}

impl ExpectedOutcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::NeedsApproval => "needs-approval",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestCaseSpec {
    pub name: String,
    pub request: DecisionRequest,
    pub expect: ExpectedOutcome,
    /// Deciding policies the decision must name, as `namespace/name spec.field[i]` (the
    /// document and rule), in any order.
    #[serde(default)]
    pub decided_by: Option<Vec<String>>,
}

/// Parses durations such as `90s`, `15m`, `1h30m`, `2d`.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a duration; write e.g. `30s`, `15m`, `1h30m` or `2d`");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .ok_or_else(bad)?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n = number.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if number.is_some() {
        return Err(bad());
    }
    Ok(total)
}

/// Parses byte sizes: `5000`, `64Ki`, `100Mi`, `1Gi`, `10K`, `5M`, `2G`.
pub fn parse_byte_size(size: &ByteSize) -> Result<u64, String> {
    let text = match size {
        ByteSize::Bytes(n) => return Ok(*n),
        ByteSize::Text(t) => t.as_str(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let bad = || format!("`{text}` is not a size; write e.g. `5000`, `64Ki`, `100Mi` or `1G`");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit {
        "" => 1,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("15m"), Ok(900));
        assert_eq!(parse_duration_secs("1h30m"), Ok(5400));
        for bad in ["", "15", "m", "1x", "99999999999999999999s"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(
            parse_byte_size(&ByteSize::Text("100Mi".into())),
            Ok(100 << 20)
        );
        assert_eq!(parse_byte_size(&ByteSize::Bytes(7)), Ok(7));
        assert!(parse_byte_size(&ByteSize::Text("1Q".into())).is_err());
        assert!(parse_byte_size(&ByteSize::Text("99999999999T".into())).is_err());
    }
}
