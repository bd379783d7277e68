//! Tools withheld from agents, whatever the transport (streamable HTTP, HTTP+SSE, stdio): a tool
//! whose definition is not the pinned one — a rug pull — or whose description or schema carries
//! instructions for the model is hidden from listings and its calls refused (`tool-withheld`)
//! until a person approves it.

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::Value;
use warden_model::{Action, FindingKind, Name};

use crate::pipeline::Pipeline;

/// `server/tool` of the tools withheld now, as the last listings showed them.
#[derive(Default)]
pub struct Withheld(Mutex<HashSet<String>>);

impl Withheld {
    pub fn contains(&self, server: &Name, tool: &Name) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&format!("{server}/{tool}"))
    }

    fn set(&self, key: String, withheld: bool) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if withheld {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }
}

/// The tools a listing answer offers (every `result.tools` item of its messages).
pub fn listed_tools(messages: &[Value]) -> Vec<&Value> {
    messages
        .iter()
        .filter_map(|m| m.get("result")?.get("tools")?.as_array())
        .flatten()
        .collect()
}

/// Checks each listed tool against its pin (with the control plane, when the pipeline has a
/// desk) and for instructions in its definition; records which are withheld, and returns their
/// names, for the listing to hide.
pub async fn withhold_tools(
    pipeline: &Pipeline,
    server: &Name,
    messages: &[Value],
) -> HashSet<String> {
    let mut hidden = HashSet::new();
    for tool in listed_tools(messages) {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            continue;
        };
        let Ok(tool_name) = Name::new(name) else {
            continue;
        };
        let definition = serde_json::json!({
            "name": name,
            "description": tool.get("description"),
            "inputSchema": tool.get("inputSchema"),
        });
        let action = Action::McpToolsCall {
            server: server.clone(),
            tool: tool_name,
            args: serde_json::Map::new(),
        };
        let poisoned = pipeline
            .inspect_content(&action, &definition)
            .iter()
            .any(|f| f.kind == FindingKind::Injection && f.score >= 70);
        let approved = match pipeline.desk() {
            Some(desk) => desk
                .tool_approved(server.as_str(), name, &definition)
                .await
                .unwrap_or_else(|e| {
                    // Unknown is not approved: fail closed.
                    tracing::warn!("cannot check tool {server}/{name}'s pin: {e}");
                    false
                }),
            None => true,
        };
        let key = format!("{server}/{name}");
        let withheld = poisoned || !approved;
        if withheld {
            tracing::warn!(
                "withholding tool {key}: {}",
                if poisoned {
                    "its description carries instructions"
                } else {
                    "its definition changed since it was approved"
                }
            );
            hidden.insert(name.to_owned());
        }
        pipeline.withheld().set(key, withheld);
    }
    hidden
}
