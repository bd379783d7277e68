//! The Cedar schema every bundle is validated against: entity types for agents and what they
//! reach, one action per action kind, and a typed context per action. Tool and prompt argument
//! types come from the bundle's `ToolCatalog` documents.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use warden_model::ActionKind;

use crate::pattern::{MAX_SEGMENTS, cedar_str};

/// The Cedar type of a tool argument, as far as conditions can use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgType {
    String,
    Long,
    Bool,
    StringSet,
    LongSet,
}

impl ArgType {
    /// Maps a JSON Schema property to a Cedar type, when Cedar has one for it.
    pub fn from_json_schema(schema: &serde_json::Value) -> Option<Self> {
        let ty = schema.get("type")?.as_str()?;
        Some(match ty {
            "string" => Self::String,
            "integer" => Self::Long,
            "boolean" => Self::Bool,
            "array" => match schema.get("items")?.get("type")?.as_str()? {
                "string" => Self::StringSet,
                "integer" => Self::LongSet,
                _ => return None,
            },
            _ => return None,
        })
    }

    fn cedar(self) -> &'static str {
        match self {
            Self::String => "String",
            Self::Long => "Long",
            Self::Bool => "Bool",
            Self::StringSet => "Set<String>",
            Self::LongSet => "Set<Long>",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Long => "integer",
            Self::Bool => "boolean",
            Self::StringSet => "array of strings",
            Self::LongSet => "array of integers",
        }
    }
}

/// Argument names usable in conditions, with their types.
pub type ArgTypes = BTreeMap<String, ArgType>;

/// The Cedar entity type of the resource of each action kind.
pub fn resource_type(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Http => "Service",
        ActionKind::EgressConnect => "Host",
        ActionKind::McpToolsCall => "Tool",
        ActionKind::McpToolsList => "McpServer",
        ActionKind::McpResourcesRead => "McpResource",
        ActionKind::McpPromptsGet => "Prompt",
        _ => "Peer",
    }
}

fn record(fields: &ArgTypes) -> String {
    let mut out = String::from("{");
    for (name, ty) in fields {
        let _ = write!(out, "{}?: {}, ", cedar_str(name), ty.cedar());
    }
    out.push('}');
    out
}

/// Renders the schema in Cedar's human-readable schema syntax.
pub fn schema_text(tool_args: &ArgTypes, prompt_args: &ArgTypes) -> String {
    let segments: String = (0..MAX_SEGMENTS)
        .map(|i| format!("s{i}?: String"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = format!(
        r#"type Segments = {{ {segments} }};
type Findings = {{
  injection_score: Long,
  secret_count: Long,
  sensitive_count: Long,
  tool_drift: Bool,
  rules: Set<String>,
}};
type Usage = {{ requests_last_minute: Long, bytes_last_hour: Long }};
type Args = {tool};
type PromptArgs = {prompt};
entity Agent {{
  spiffe_id: String,
  trust_domain: String,
  tenant: String,
  name: String,
  depth: Long,
  path_depth: Long,
  path: Segments,
  task?: String,
}} tags String;
entity Service {{ name: String }};
entity Host {{ name: String, label_count: Long, is_ip: Bool }};
entity McpServer {{ name: String }};
entity Tool {{ server: String, name: String }};
entity McpResource {{ server: String, uri: String }};
entity Prompt {{ server: String, name: String }};
entity Peer {{ name: String }};
"#,
        tool = record(tool_args),
        prompt = record(prompt_args),
    );
    let common = "time: Long, intent: String, findings: Findings, usage: Usage, body_bytes: Long, \
                  approved: Set<String>, gates: Set<String>";
    for kind in ActionKind::ALL {
        let extra = match kind {
            ActionKind::Http => ", method: String, path: String, path_depth: Long, segments: Segments",
            ActionKind::EgressConnect => ", port: Long, protocol: String, ip?: __cedar::ipaddr",
            ActionKind::McpToolsCall => ", args: Args",
            ActionKind::McpPromptsGet => ", args: PromptArgs",
            _ => "",
        };
        let _ = writeln!(
            s,
            "action {} appliesTo {{ principal: [Agent], resource: [{}], context: {{ {common}{extra} }} }};",
            cedar_str(kind.as_str()),
            resource_type(kind)
        );
    }
    s
}
