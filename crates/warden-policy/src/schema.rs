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
        ActionKind::McpToolsList | ActionKind::McpClientMessage => "McpServer",
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
entity McpResource {{ server: String, uri: String, depth: Long, segments: Segments }};
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
            ActionKind::Http => {
                ", method: String, path: String, path_depth: Long, segments: Segments"
            }
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

/// Context attributes, as bits, so a request can build only what its candidate policies read.
pub const CONTEXT_ATTRIBUTES: [&str; 15] = [
    "time",
    "intent",
    "findings",
    "usage",
    "body_bytes",
    "approved",
    "gates",
    "method",
    "path",
    "path_depth",
    "segments",
    "port",
    "protocol",
    "ip",
    "args",
];

/// Which context attributes a policy can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContextUse(u32);

impl ContextUse {
    pub const ALL: Self = Self(u32::MAX);

    /// Reads the attributes a Cedar policy text mentions. Only `context.NAME` and
    /// `context has NAME` are understood; any other use of `context` (indexing, comparing the
    /// whole record, a quoted name) counts as reading everything, so the analysis can only
    /// over-approximate.
    pub fn of_policy(cedar: &str) -> Self {
        let code = blank_strings(cedar);
        let bytes = code.as_bytes();
        let mut used = 0u32;
        let mut from = 0;
        while let Some(found) = code[from..].find("context") {
            let start = from + found;
            let end = start + "context".len();
            from = end;
            let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
            if (start > 0 && ident(bytes[start - 1])) || bytes.get(end).copied().is_some_and(ident)
            {
                continue;
            }
            let rest = code[end..].trim_start();
            let name = if let Some(after) = rest.strip_prefix('.') {
                after.trim_start()
            } else if let Some(after) = rest.strip_prefix("has") {
                if !after.starts_with(char::is_whitespace) {
                    return Self::ALL;
                }
                after.trim_start()
            } else {
                return Self::ALL;
            };
            let len = name.bytes().take_while(|b| ident(*b)).count();
            match CONTEXT_ATTRIBUTES.iter().position(|a| *a == &name[..len]) {
                Some(i) => used |= 1 << i,
                None => return Self::ALL,
            }
        }
        Self(used)
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn reads(self, attribute: &str) -> bool {
        CONTEXT_ATTRIBUTES
            .iter()
            .position(|a| *a == attribute)
            .is_none_or(|i| self.0 & (1 << i) != 0)
    }
}

/// Replaces the contents of Cedar string literals with spaces, so scans only see code.
pub fn blank_strings(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in expr.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                out.push('"');
                continue;
            }
            out.push(' ');
        } else {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_use_reads_dotted_and_has_forms() {
        let u = ContextUse::of_policy(
            "permit(principal,action,resource) when { context.port == 1 && context has ip && \"context.args\" == \"x\" };",
        );
        assert!(u.reads("port") && u.reads("ip"));
        assert!(!u.reads("args") && !u.reads("findings"));
        assert_eq!(
            ContextUse::of_policy("permit(principal,action,resource);"),
            ContextUse::default()
        );
    }

    #[test]
    fn context_use_is_conservative() {
        for text in [
            "when { context[\"port\"] == 1 }",
            "when { context == {} }",
            "when { context has \"port\" }",
            "when { context.unknown_thing }",
            "when { context hasport }",
        ] {
            assert_eq!(ContextUse::of_policy(text), ContextUse::ALL, "{text}");
        }
        // Identifiers that merely contain the word are not uses.
        assert_eq!(
            ContextUse::of_policy("when { principal.mycontext == 1 }"),
            ContextUse::default()
        );
    }
}
