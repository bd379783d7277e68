//! The MCP adapter (streamable HTTP): classifies JSON-RPC messages into actions, forwards them,
//! filters listings to what the caller may use, and binds sessions to the agent that opened them (`owners`).
//! It never decides; the pipeline does.

use serde_json::{Map, Value};
use warden_model::{Action, Name};

use crate::jsonrpc::{Codes, Invalid};

/// JSON-RPC error codes Warden answers MCP clients with (the implementation-defined
/// server-error range).
pub const DENIED: i64 = -32001;
pub const NEEDS_APPROVAL: i64 = -32002;
pub const CODES: Codes = Codes {
    denied: DENIED,
    needs_approval: NEEDS_APPROVAL,
};

/// A listing whose result Warden filters to what the caller may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    Tools,
    Resources,
    Prompts,
}

impl Listing {
    fn key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Resources => "resources",
            Self::Prompts => "prompts",
        }
    }

    /// The action a listed item stands for, if the item is well-formed.
    fn item_action(self, server: &Name, item: &Value) -> Option<Action> {
        match self {
            Self::Tools => Some(Action::McpToolsCall {
                server: server.clone(),
                tool: Name::new(item.get("name")?.as_str()?).ok()?,
                args: Map::new(),
            }),
            Self::Resources => Some(Action::McpResourcesRead {
                server: server.clone(),
                uri: item.get("uri")?.as_str()?.to_owned(),
            }),
            Self::Prompts => Some(Action::McpPromptsGet {
                server: server.clone(),
                prompt: Name::new(item.get("name")?.as_str()?).ok()?,
                args: Map::new(),
            }),
        }
    }
}

/// What a request means for the pipeline.
/// What is done with an answer that arrives apart from its request (on an HTTP+SSE stream, or
/// a stdio server's output) when it comes.
pub enum Awaited {
    /// A listing: filtered to what the caller may use.
    Listing(Listing),
    /// A result: reviewed (inspected, decided again, redacted) before it goes on.
    Result(Action),
}

/// Whether an action's answer is content for the agent's model: a tool's result, a resource, a
/// prompt — what is inspected on the way back.
pub fn returns_content(action: &Action) -> bool {
    matches!(
        action,
        Action::McpToolsCall { .. }
            | Action::McpResourcesRead { .. }
            | Action::McpPromptsGet { .. }
    )
}

pub enum Classified {
    /// Decide this action; forward only if allowed.
    Action(Action),
    /// Forward (decided as `Some(action)` first, if given), then filter the listing in the result.
    Listing(Listing, Option<Action>),
    /// Session plumbing that touches nothing: forwarded for any identified caller.
    Plumbing,
    /// Not forwarded.
    Refused(Invalid),
}

fn arguments(params: &Value) -> Result<Map<String, Value>, Invalid> {
    match params.get("arguments") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(args)) => Ok(args.clone()),
        Some(_) => Err(Invalid {
            code: -32602,
            message: "`arguments` must be an object".into(),
        }),
    }
}

fn name_param(params: &Value, what: &str) -> Result<Name, Invalid> {
    let raw = params.get("name").and_then(Value::as_str).ok_or(Invalid {
        code: -32602,
        message: format!("`params.name` (the {what}) is required"),
    })?;
    Name::new(raw).map_err(|e| Invalid {
        code: -32602,
        message: format!(
            "{what} name `{}`: {e}",
            raw.chars().take(80).collect::<String>()
        ),
    })
}

pub fn classify(server: &Name, method: &str, params: &Value) -> Classified {
    let action = match method {
        "tools/call" => name_param(params, "tool").and_then(|tool| {
            Ok(Action::McpToolsCall {
                server: server.clone(),
                tool,
                args: arguments(params)?,
            })
        }),
        "prompts/get" => name_param(params, "prompt").and_then(|prompt| {
            Ok(Action::McpPromptsGet {
                server: server.clone(),
                prompt,
                args: arguments(params)?,
            })
        }),
        "resources/read" => match params.get("uri").and_then(Value::as_str) {
            Some(uri) if uri.len() <= Action::MAX_URI_LEN => Ok(Action::McpResourcesRead {
                server: server.clone(),
                uri: uri.to_owned(),
            }),
            _ => Err(Invalid {
                code: -32602,
                message: "`params.uri` is required (at most 8 KiB)".into(),
            }),
        },
        "tools/list" => {
            return Classified::Listing(
                Listing::Tools,
                Some(Action::McpToolsList {
                    server: server.clone(),
                }),
            );
        }
        "resources/list" => return Classified::Listing(Listing::Resources, None),
        "prompts/list" => return Classified::Listing(Listing::Prompts, None),
        "initialize"
        | "ping"
        | "logging/setLevel"
        | "completion/complete"
        | "resources/templates/list"
        | "resources/subscribe"
        | "resources/unsubscribe" => {
            return Classified::Plumbing;
        }
        other => {
            return Classified::Refused(Invalid {
                code: -32601,
                message: format!(
                    "method `{}` is not forwarded by Warden",
                    other.chars().take(80).collect::<String>()
                ),
            });
        }
    };
    match action {
        Ok(action) => Classified::Action(action),
        Err(invalid) => Classified::Refused(invalid),
    }
}

/// Where a request says what it means and which approvals it presents: `params._meta`
/// (`warden/intent`, `warden/approval`).
pub fn metadata(params: &Value) -> Option<&Value> {
    params.get("_meta")
}

/// Removes from a JSON-RPC response to a listing every item `may` refuses. Other messages are
/// returned unchanged.
pub fn filter_listing(
    message: &mut Value,
    listing: Listing,
    server: &Name,
    may: &dyn Fn(&Action) -> bool,
) {
    let Some(items) = message
        .get_mut("result")
        .and_then(|r| r.get_mut(listing.key()))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    items.retain(|item| {
        listing
            .item_action(server, item)
            .is_some_and(|action| may(&action))
    });
}
