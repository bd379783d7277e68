//! Tool pinning. Each MCP tool's definition (name, description, input schema) is pinned by hash
//! the first time a gateway sees it; a later listing with another definition — a rug pull — is
//! held pending, and gateways withhold the tool until an admin approves the new definition.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::control::{Control, ControlError, bad, now};
use crate::store::TOOL_PINS;

/// Largest definition kept for people to review.
const MAX_DEFINITION_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pinned {
    /// `sha256:<hex>` of the definition's canonical JSON.
    pub hash: String,
    pub definition: Value,
    /// Who approved it (`first use` for the definition first seen).
    pub by: String,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolPin {
    pub server: String,
    pub tool: String,
    pub approved: Pinned,
    /// A changed definition awaiting approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pinned>,
}

/// What a gateway reports it saw.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ToolSeen {
    pub server: String,
    pub tool: String,
    pub hash: String,
    pub definition: Value,
}

fn key(server: &str, tool: &str) -> String {
    format!("{server}/{tool}")
}

impl Control {
    /// Whether the definition a gateway saw is the approved one (`approved`) or not (`pending`);
    /// the first definition seen of a tool is pinned.
    pub fn observe_tool(&self, seen: ToolSeen) -> Result<&'static str, ControlError> {
        if seen.server.is_empty()
            || seen.tool.is_empty()
            || seen.server.len() + seen.tool.len() > 512
        {
            return Err(bad("server and tool are 1 to 256 characters"));
        }
        if !seen.hash.starts_with("sha256:") || seen.hash.len() != 71 {
            return Err(bad("hash is sha256:<64 hex digits>"));
        }
        let k = key(&seen.server, &seen.tool);
        let current: Option<ToolPin> = self.store().get(TOOL_PINS, &k)?;
        if let Some(pin) = &current {
            if pin.approved.hash == seen.hash {
                return Ok("approved");
            }
            if pin.pending.as_ref().is_some_and(|p| p.hash == seen.hash) {
                return Ok("pending");
            }
        }
        let definition = if seen.definition.to_string().len() <= MAX_DEFINITION_BYTES {
            seen.definition
        } else {
            json!("(too large to keep)")
        };
        let at = now().unix_timestamp();
        let first = current.is_none();
        let pinned = Pinned {
            hash: seen.hash.clone(),
            definition: definition.clone(),
            by: "first use".into(),
            at,
        };
        let (server, tool) = (seen.server, seen.tool);
        self.store()
            .update(TOOL_PINS, &k, |stored: Option<ToolPin>| {
                Ok::<_, ControlError>(match stored {
                    None => ToolPin {
                        server,
                        tool,
                        approved: pinned,
                        pending: None,
                    },
                    Some(mut pin) => {
                        pin.pending = Some(pinned);
                        pin
                    }
                })
            })??;
        let action = if first { "tool.pinned" } else { "tool.changed" };
        self.trail().record(
            json!({"action": action, "tool": k, "hash": seen.hash, "definition": definition}),
        )?;
        Ok(if first { "approved" } else { "pending" })
    }

    pub fn tool_pins(&self, pending_only: bool) -> Result<Vec<ToolPin>, ControlError> {
        Ok(self
            .store()
            .values::<ToolPin>(TOOL_PINS)?
            .into_iter()
            .filter(|p| !pending_only || p.pending.is_some())
            .collect())
    }

    /// Approves a tool's changed definition: gateways offer the tool again.
    pub fn approve_tool(
        &self,
        server: &str,
        tool: &str,
        by: &str,
    ) -> Result<ToolPin, ControlError> {
        let k = key(server, tool);
        let at = now().unix_timestamp();
        let pin = self
            .store()
            .update(TOOL_PINS, &k, |stored: Option<ToolPin>| {
                let mut pin = stored
                    .ok_or_else(|| ControlError::NotFound(format!("no tool {k} has been seen")))?;
                let mut pending = pin.pending.take().ok_or_else(|| {
                    ControlError::Conflict(format!(
                        "{k} has no changed definition awaiting approval"
                    ))
                })?;
                pending.by = by.to_owned();
                pending.at = at;
                pin.approved = pending;
                Ok::<_, ControlError>(pin)
            })??;
        self.trail().record(
            json!({"action": "tool.approved", "tool": k, "hash": pin.approved.hash, "by": by}),
        )?;
        Ok(pin)
    }
}
