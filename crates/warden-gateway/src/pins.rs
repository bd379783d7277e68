//! Tools withheld from agents, whatever the transport (streamable HTTP, HTTP+SSE, stdio): a tool
//! whose definition is not the pinned one — a rug pull — or whose description or schema carries
//! instructions for the model is hidden from listings and its calls refused (`tool-withheld`)
//! until a person approves it.

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::Value;
use warden_model::Name;

/// `server/tool` of the tools withheld now, as the last listings showed them.
#[derive(Default)]
pub struct Withheld(Mutex<HashSet<String>>);

impl Withheld {
    pub fn contains(&self, server: &Name, tool: &Name) -> bool {
        let withheld = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Asked on every tool call: the common answer costs no allocation.
        !withheld.is_empty() && withheld.contains(&format!("{server}/{tool}"))
    }

    pub(crate) fn set(&self, key: String, withheld: bool) {
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
