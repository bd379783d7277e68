//! The A2A adapter (JSON-RPC binding; A2A 1.0 method names and the older 0.3 ones): classifies
//! a request into an action and the task it touches, finds the task ids a response hands out,
//! filters task listings to the caller's own tasks, and points agent cards at the gateway.
//! It never decides; the pipeline does.

use serde_json::{Map, Value};
use warden_model::{A2aMethod, Action, Name};

use crate::jsonrpc::{Codes, Invalid};

/// A2A itself defines -32001 to -32009 (task not found, not cancelable, …), so Warden's
/// refusals sit further up the server-error range.
pub const DENIED: i64 = -32050;
pub const NEEDS_APPROVAL: i64 = -32051;
pub const CODES: Codes = Codes {
    denied: DENIED,
    needs_approval: NEEDS_APPROVAL,
};
/// A2A's own code for a task the server does not know; a task of another agent gets it too,
/// so its existence does not leak.
pub const TASK_NOT_FOUND: i64 = -32001;

/// What a request asks of the peer.
#[derive(Debug)]
pub struct Call {
    pub action: Action,
    /// The existing task the request addresses; the caller must own it.
    pub task: Option<String>,
    /// Where the peer is asked to push task updates; reaching it is egress of the caller's.
    pub push_url: Option<String>,
    /// The response lists tasks, and is filtered to the caller's own.
    pub lists_tasks: bool,
    /// The response is an agent card, and is pointed at the gateway.
    pub returns_card: bool,
}

/// The method an A2A 1.0 or 0.3 JSON-RPC method name stands for.
fn method(name: &str) -> Option<A2aMethod> {
    Some(match name {
        "SendMessage" | "message/send" => A2aMethod::MessageSend,
        "SendStreamingMessage" | "message/stream" => A2aMethod::MessageStream,
        "GetTask" | "tasks/get" => A2aMethod::TasksGet,
        "ListTasks" | "tasks/list" => A2aMethod::TasksList,
        "CancelTask" | "tasks/cancel" => A2aMethod::TasksCancel,
        "SubscribeToTask" | "tasks/resubscribe" => A2aMethod::TasksResubscribe,
        "CreateTaskPushNotificationConfig"
        | "GetTaskPushNotificationConfig"
        | "ListTaskPushNotificationConfigs"
        | "DeleteTaskPushNotificationConfig"
        | "tasks/pushNotificationConfig/set"
        | "tasks/pushNotificationConfig/get"
        | "tasks/pushNotificationConfig/list"
        | "tasks/pushNotificationConfig/delete" => A2aMethod::TasksPushNotificationConfig,
        "GetExtendedAgentCard" | "agent/getAuthenticatedExtendedCard" => A2aMethod::AgentCard,
        _ => return None,
    })
}

fn invalid_params(message: impl Into<String>) -> Invalid {
    Invalid {
        code: -32602,
        message: message.into(),
    }
}

/// A string field, refused if present with another type or absurdly long.
fn string_field<'a>(object: &'a Value, field: &str) -> Result<Option<&'a str>, Invalid> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 1024 => Ok(Some(s)),
        Some(_) => Err(invalid_params(format!(
            "`{field}` must be a string of at most 1024 bytes"
        ))),
    }
}

pub fn classify(peer: &Name, rpc: &str, params: &Value) -> Result<Call, Invalid> {
    let method = method(rpc).ok_or_else(|| Invalid {
        code: -32601,
        message: format!(
            "method `{}` is not forwarded by Warden",
            rpc.chars().take(80).collect::<String>()
        ),
    })?;
    if !matches!(params, Value::Object(_) | Value::Null) {
        return Err(invalid_params("`params` must be an object"));
    }
    let (task, push_url) = match method {
        A2aMethod::MessageSend | A2aMethod::MessageStream => {
            let message = params
                .get("message")
                .filter(|m| m.is_object())
                .ok_or_else(|| invalid_params("`params.message` is required"))?;
            let configuration = params.get("configuration").unwrap_or(&Value::Null);
            // 1.0 names it `taskPushNotificationConfig`, 0.3 `pushNotificationConfig`.
            let push = configuration
                .get("taskPushNotificationConfig")
                .or_else(|| configuration.get("pushNotificationConfig"))
                .unwrap_or(&Value::Null);
            (string_field(message, "taskId")?, string_field(push, "url")?)
        }
        A2aMethod::TasksPushNotificationConfig => {
            // 1.0 names the task `taskId`; 0.3 `taskId` when setting and `id` otherwise.
            let task = match string_field(params, "taskId")? {
                Some(task) => Some(task),
                None => string_field(params, "id")?,
            };
            let config = params.get("pushNotificationConfig").unwrap_or(&Value::Null);
            let url = match string_field(params, "url")? {
                Some(url) => Some(url),
                None => string_field(config, "url")?,
            };
            if task.is_none() {
                return Err(invalid_params("the task id (`taskId`) is required"));
            }
            (task, url)
        }
        A2aMethod::TasksGet | A2aMethod::TasksCancel | A2aMethod::TasksResubscribe => {
            let task = string_field(params, "id")?;
            if task.is_none() {
                return Err(invalid_params("the task id (`id`) is required"));
            }
            (task, None)
        }
        A2aMethod::TasksList | A2aMethod::AgentCard => (None, None),
    };
    Ok(Call {
        action: Action::A2a {
            peer: peer.clone(),
            method,
        },
        task: task.map(str::to_owned),
        push_url: push_url.map(str::to_owned),
        lists_tasks: method == A2aMethod::TasksList,
        returns_card: method == A2aMethod::AgentCard,
    })
}

/// Where a request says what it means and which approvals it presents: `params.metadata`, or
/// the message's (`warden/intent`, `warden/approval`).
pub fn metadata(params: &Value) -> Option<&Value> {
    params
        .get("metadata")
        .or_else(|| params.get("message")?.get("metadata"))
}

/// Every task id a JSON-RPC response (or one streamed event) hands to the client: a task, a
/// message or an update belonging to one, in the 1.0 (`{"task": {…}}`) or 0.3 (`{"kind":
/// "task", …}`) shape.
pub fn task_ids(response: &Value) -> Vec<String> {
    let Some(result) = response.get("result") else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    let mut push = |v: Option<&Value>| {
        if let Some(id) = v.and_then(Value::as_str)
            && !ids.iter().any(|known| known == id)
        {
            ids.push(id.to_owned());
        }
    };
    push(result.get("task").and_then(|t| t.get("id")));
    for wrapper in ["message", "statusUpdate", "artifactUpdate"] {
        push(result.get(wrapper).and_then(|w| w.get("taskId")));
    }
    match result.get("kind").and_then(Value::as_str) {
        Some("task") => push(result.get("id")),
        Some(_) => push(result.get("taskId")),
        None => {}
    }
    ids
}

/// Keeps in a task listing only the tasks `owned` accepts (the totals follow).
pub fn filter_tasks(response: &mut Value, owned: &dyn Fn(&str) -> bool) {
    let Some(result) = response.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(tasks) = result.get_mut("tasks").and_then(Value::as_array_mut) else {
        return;
    };
    tasks.retain(|task| task.get("id").and_then(Value::as_str).is_some_and(owned));
    let kept = tasks.len();
    if result.contains_key("totalSize") {
        result.insert("totalSize".into(), kept.into());
    }
}

/// Points an agent card at the gateway: every JSON-RPC interface gets `rpc_url`, interfaces the
/// gateway does not carry (gRPC, HTTP+JSON) are removed, and so are the card's signatures (they
/// cover the peer's own addresses) and its security schemes (agents authenticate to Warden;
/// the gateway brings the peer's own credential).
pub fn rewrite_card(card: &mut Value, rpc_url: &str) {
    let Some(card) = card.as_object_mut() else {
        return;
    };
    let jsonrpc = |interface: &Value, field: &str| {
        interface
            .get(field)
            .and_then(Value::as_str)
            .is_some_and(|b| b.eq_ignore_ascii_case("JSONRPC"))
    };
    let mut point = |key: &str, binding_field: &str| {
        if let Some(interfaces) = card.get_mut(key).and_then(Value::as_array_mut) {
            interfaces.retain(|i| jsonrpc(i, binding_field));
            for interface in interfaces.iter_mut() {
                if let Some(interface) = interface.as_object_mut() {
                    interface.insert("url".into(), rpc_url.into());
                }
            }
        }
    };
    // 1.0
    point("supportedInterfaces", "protocolBinding");
    // 0.3
    point("additionalInterfaces", "transport");
    if card.contains_key("url") || card.contains_key("preferredTransport") {
        card.insert("url".into(), rpc_url.into());
        card.insert("preferredTransport".into(), "JSONRPC".into());
    }
    let has_1_0_interface = card
        .get("supportedInterfaces")
        .and_then(Value::as_array)
        .is_some_and(|i| !i.is_empty());
    if !has_1_0_interface && !card.contains_key("url") {
        let mut interface = Map::new();
        interface.insert("url".into(), rpc_url.into());
        interface.insert("protocolBinding".into(), "JSONRPC".into());
        interface.insert("protocolVersion".into(), "1.0".into());
        card.insert(
            "supportedInterfaces".into(),
            Value::Array(vec![Value::Object(interface)]),
        );
    }
    for field in [
        "signatures",
        "securitySchemes",
        "securityRequirements",
        "security",
    ] {
        card.remove(field);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn peer() -> Name {
        Name::new("planner").unwrap()
    }

    #[test]
    fn both_protocol_versions_classify_alike() {
        for (new, old) in [
            ("SendMessage", "message/send"),
            ("SendStreamingMessage", "message/stream"),
        ] {
            let params = json!({"message": {"messageId": "m", "taskId": "t1", "parts": []}});
            let a = classify(&peer(), new, &params).unwrap();
            let b = classify(&peer(), old, &params).unwrap();
            assert_eq!(a.action, b.action);
            assert_eq!(a.task.as_deref(), Some("t1"));
        }
        let get = classify(&peer(), "GetTask", &json!({"id": "t2"})).unwrap();
        assert_eq!(get.task.as_deref(), Some("t2"));
        let push = classify(
            &peer(),
            "tasks/pushNotificationConfig/set",
            &json!({"taskId": "t3", "pushNotificationConfig": {"url": "https://hook.example/x"}}),
        )
        .unwrap();
        assert_eq!(push.task.as_deref(), Some("t3"));
        assert_eq!(push.push_url.as_deref(), Some("https://hook.example/x"));
        assert!(
            classify(&peer(), "ListTasks", &Value::Null)
                .unwrap()
                .lists_tasks
        );
    }

    #[test]
    fn malformed_and_unknown_requests_are_refused() {
        for (rpc, params) in [
            ("Mystery", json!({})),
            ("SendMessage", json!({})),
            ("SendMessage", json!({"message": "hi"})),
            ("GetTask", json!({})),
            ("GetTask", json!({"id": 7})),
            ("CancelTask", json!({"id": "x".repeat(2000)})),
            ("GetTask", json!([1])),
            ("DeleteTaskPushNotificationConfig", json!({"id": null})),
        ] {
            assert!(classify(&peer(), rpc, &params).is_err(), "{rpc} {params}");
        }
    }

    #[test]
    fn task_ids_are_found_in_every_response_shape() {
        for (response, want) in [
            (json!({"result": {"task": {"id": "a"}}}), vec!["a"]),
            (
                json!({"result": {"statusUpdate": {"taskId": "b"}}}),
                vec!["b"],
            ),
            (
                json!({"result": {"artifactUpdate": {"taskId": "c"}}}),
                vec!["c"],
            ),
            (json!({"result": {"message": {"messageId": "m"}}}), vec![]),
            (json!({"result": {"kind": "task", "id": "d"}}), vec!["d"]),
            (
                json!({"result": {"kind": "status-update", "taskId": "e"}}),
                vec!["e"],
            ),
            (json!({"error": {"code": 1}}), vec![]),
        ] {
            assert_eq!(task_ids(&response), want, "{response}");
        }
    }

    #[test]
    fn listings_keep_only_own_tasks() {
        let mut listing =
            json!({"result": {"tasks": [{"id": "mine"}, {"id": "theirs"}, {}], "totalSize": 3}});
        filter_tasks(&mut listing, &|id| id == "mine");
        assert_eq!(
            listing,
            json!({"result": {"tasks": [{"id": "mine"}], "totalSize": 1}})
        );
    }

    #[test]
    fn cards_point_at_the_gateway() {
        let mut card = json!({
            "name": "planner",
            "supportedInterfaces": [
                {"url": "http://10.0.0.5/rpc", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
                {"url": "10.0.0.5:50051", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
            ],
            "signatures": [{"protected": "x", "signature": "y"}],
            "securitySchemes": {"bearer": {}},
        });
        rewrite_card(&mut card, "https://gw/a2a/planner");
        assert_eq!(
            card,
            json!({"name": "planner", "supportedInterfaces": [
                {"url": "https://gw/a2a/planner", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
            ]})
        );
        let mut old = json!({"name": "p", "url": "http://10.0.0.5/", "preferredTransport": "GRPC",
            "additionalInterfaces": [{"url": "http://10.0.0.5/", "transport": "JSONRPC"}]});
        rewrite_card(&mut old, "https://gw/a2a/p");
        assert_eq!(old["url"], "https://gw/a2a/p");
        assert_eq!(old["preferredTransport"], "JSONRPC");
        assert_eq!(old["additionalInterfaces"][0]["url"], "https://gw/a2a/p");
        let mut grpc_only =
            json!({"supportedInterfaces": [{"url": "x", "protocolBinding": "GRPC"}]});
        rewrite_card(&mut grpc_only, "https://gw/a2a/p");
        assert_eq!(
            grpc_only["supportedInterfaces"][0]["url"],
            "https://gw/a2a/p"
        );
    }
}
