use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::event::Event;
use crate::identity::AgentIdentity;

/// The kinds of content finding that policy conditions can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    Injection,
    Secret,
    SensitiveData,
    ToolDrift,
}

/// One thing an inspector noticed. Findings are facts for policy, never verdicts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Finding {
    pub kind: FindingKind,
    pub rule: String,
    /// JSON pointer to where in the body it was found.
    #[serde(default)]
    pub location: String,
    /// 0–100.
    pub score: u8,
}

/// Usage counters the gateway keeps per agent, for limit rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Usage {
    pub requests_last_minute: u64,
    pub bytes_last_hour: u64,
}

/// Everything about a request beyond who and what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestContext {
    /// Unix time in seconds; the decision time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
    /// What the agent says it is doing and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Recent events the pipeline attached, for event gates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// Ids of approval requirements that a verified approval for this exact call satisfies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved: Vec<String>,
    #[serde(default)]
    pub usage: Usage,
    /// Request body size in bytes.
    #[serde(default)]
    pub body_bytes: u64,
}

/// One question for the decision engine: may this agent do this, now?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DecisionRequest {
    pub agent: AgentIdentity,
    pub action: Action,
    #[serde(default)]
    pub context: RequestContext,
}
