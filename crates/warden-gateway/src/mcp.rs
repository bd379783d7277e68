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

/// What is done with an answer that arrives apart from its request (on an HTTP+SSE stream, or
/// a stdio server's output) when it comes.
pub enum Awaited {
    /// An answer that goes on as it is (session plumbing, a tools/list refused nothing).
    Plain,
    /// A listing: filtered to what the caller may use.
    Listing(Listing),
    /// A result: reviewed (inspected, decided again, redacted) before it goes on.
    Result(Action),
}

/// The requests in flight whose answers arrive apart from them, by id value (`1` and `1.0`
/// are one id). Every forwarded request is here, so an id cannot be reused while its answer is
/// awaited — a reused id would let one request's answer pass as another's — and an answer
/// nothing awaits is not passed on.
pub struct Awaiting {
    /// By id key: the id as the client sent it, and what its answer needs.
    pending: std::collections::HashMap<String, (Value, Awaited)>,
    limit: usize,
}

impl Awaiting {
    pub fn new(limit: usize) -> Self {
        Self {
            pending: std::collections::HashMap::new(),
            limit,
        }
    }

    /// Notes that the answer to request `id` is awaited, or says why the request is refused.
    pub fn expect(&mut self, id: &Value, what: Awaited) -> Result<(), Invalid> {
        let key = crate::jsonrpc::id_key(id).ok_or_else(|| Invalid {
            code: -32600,
            message: "a request needs a string or integer `id`".into(),
        })?;
        if self.pending.contains_key(&key) {
            return Err(Invalid {
                code: -32600,
                message: format!(
                    "request id {id} is already in flight; give every request its own id"
                ),
            });
        }
        if self.pending.len() >= self.limit {
            return Err(Invalid {
                code: -32000,
                message: "too many requests await their answers; wait for them".into(),
            });
        }
        self.pending.insert(key, (id.clone(), what));
        Ok(())
    }

    /// The id the awaiting request was sent with and what is to be done with the answer carrying
    /// `id`, if a request awaits it; the request is then no longer in flight.
    pub fn answered(&mut self, id: &Value) -> Option<(Value, Awaited)> {
        self.pending.remove(&crate::jsonrpc::id_key(id)?)
    }

    /// Whether the answer carrying `id` is awaited as a tool listing.
    pub fn awaits_tool_listing(&self, id: &Value) -> bool {
        crate::jsonrpc::id_key(id).is_some_and(|key| {
            matches!(
                self.pending.get(&key),
                Some((_, Awaited::Listing(Listing::Tools)))
            )
        })
    }
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
    /// Session plumbing that touches nothing: forwarded for any identified caller who is not
    /// stopped (quarantine, the kill switch).
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

/// A completion asks the server for values of a prompt's argument or a resource template's: it
/// is decided as getting that prompt with the argument (the agent's text goes out in it) or
/// reading that resource, so an agent completes only what it may use.
fn completion(server: &Name, params: &Value) -> Result<Action, Invalid> {
    let bad = |message: &str| Invalid {
        code: -32602,
        message: message.to_owned(),
    };
    let reference = params
        .get("ref")
        .ok_or_else(|| bad("`params.ref` is required"))?;
    match reference.get("type").and_then(Value::as_str) {
        Some("ref/prompt") => {
            let prompt = name_param(reference, "prompt")?;
            let mut args = match params.get("context").and_then(|c| c.get("arguments")) {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(args)) => args.clone(),
                Some(_) => return Err(bad("`params.context.arguments` must be an object")),
            };
            let argument = params
                .get("argument")
                .ok_or_else(|| bad("`params.argument` is required"))?;
            let name = argument
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("`params.argument.name` is required"))?;
            args.insert(
                name.to_owned(),
                argument.get("value").cloned().unwrap_or(Value::Null),
            );
            Ok(Action::McpPromptsGet {
                server: server.clone(),
                prompt,
                args,
            })
        }
        Some("ref/resource") => resource(server, reference),
        _ => Err(bad(
            "`params.ref.type` must be `ref/prompt` or `ref/resource`",
        )),
    }
}

fn resource(server: &Name, params: &Value) -> Result<Action, Invalid> {
    match params.get("uri").and_then(Value::as_str) {
        Some(uri) if uri.len() <= Action::MAX_URI_LEN => {
            let uri = warden_model::canonical_resource_uri(uri).map_err(|e| Invalid {
                code: -32602,
                message: e.to_string(),
            })?;
            Ok(Action::McpResourcesRead {
                server: server.clone(),
                uri,
            })
        }
        _ => Err(Invalid {
            code: -32602,
            message: "`uri` is required (at most 8 KiB)".into(),
        }),
    }
}

/// What a message the client sends that is not a request stands for in records: its method, or
/// `response` for an answer to the server (a method too malformed to be a name is `invalid`).
pub fn client_message(server: &Name, message: &str) -> Action {
    Action::McpClientMessage {
        server: server.clone(),
        message: Name::new(message).unwrap_or_else(|_| Name::new("invalid").expect("a name")),
    }
}

/// A notification from the client. Only those MCP defines for clients are forwarded — the ones
/// carrying free text decided first — and any other is refused: a message without an id is
/// answered by nobody, so a `tools/call` sent that way would otherwise reach the server
/// undecided.
pub fn classify_notification(server: &Name, method: &str) -> Classified {
    match method {
        "notifications/initialized" | "notifications/roots/list_changed" => Classified::Plumbing,
        "notifications/cancelled" | "notifications/progress" => {
            Classified::Action(client_message(server, method))
        }
        other => Classified::Refused(Invalid {
            code: -32600,
            message: format!(
                "`{}` is not a notification MCP defines for clients (a request needs an `id`)",
                other.chars().take(80).collect::<String>()
            ),
        }),
    }
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
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            resource(server, params)
        }
        "completion/complete" => completion(server, params),
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
        "initialize" | "ping" | "logging/setLevel" | "resources/templates/list" => {
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
