//! Audit records as OCSF events (schema 1.5): API Activity (6003) for MCP and A2A calls, HTTP
//! Activity (4002) for HTTP API calls, Network Activity (4001) for egress, and a Detection
//! Finding (2004) for each inspection finding. Every activity carries the record exactly as
//! logged, its Merkle leaf index, a signed checkpoint covering it and its audit path in that
//! tree, so a SIEM copy is checked with nothing but the public key.

use serde_json::{Value, json};

/// The record exactly as logged, where it sits in the log, and a signed checkpoint that covers
/// it.
pub struct Provenance<'a> {
    pub record: &'a str,
    pub index: u64,
    pub leaf_hash: &'a str,
    pub checkpoint: &'a str,
    /// The record's audit path (hex) in the tree the checkpoint signs.
    pub path: &'a [String],
}

fn str_field<'a>(record: &'a Value, name: &str) -> &'a str {
    record.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// The OCSF events for one record (the activity, then one finding per inspection finding).
pub fn events(record: &Value, provenance: &Provenance<'_>) -> Vec<Value> {
    let action = str_field(record, "action");
    let outcome = str_field(record, "outcome");
    // A policy's change of mode is an operation that happened, not a refused call.
    let allowed = outcome == "allow" || action == "policy.mode";
    let time_ms = record
        .get("time")
        .and_then(Value::as_i64)
        .unwrap_or_default()
        * 1000;
    let target = record.get("target").cloned().unwrap_or(Value::Null);
    if action == "detect" {
        return vec![detection(record, provenance, &target, time_ms)];
    }
    let (class_uid, category_uid, class_name, activity_id, activity_name) = match action {
        "http" => {
            let (id, name) = http_activity(target.get("method").and_then(Value::as_str));
            (4002, 4, "HTTP Activity", id, name)
        }
        "egress.connect" => (4001, 4, "Network Activity", 1, "Open"),
        "policy.mode" => (6003, 6, "API Activity", 3, "Update"),
        _ => (6003, 6, "API Activity", 99, "Other"),
    };
    let warden = json!({
        "leaf_index": provenance.index,
        "leaf_hash": provenance.leaf_hash,
        "checkpoint": provenance.checkpoint,
        "path": provenance.path,
        "record": provenance.record,
    });
    let activity_metadata = metadata(record, provenance);
    let actor = json!({
        "user": {"uid": str_field(record, "agent"), "type": "Service", "org": {"uid": str_field(record, "tenant")}},
        "session": {"uid": record.get("task").cloned().unwrap_or(Value::Null)},
        "app_name": str_field(record, "gateway"),
    });
    let mut activity = json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "time": time_ms,
        "severity_id": if allowed { 1 } else { 3 },
        "status_id": if allowed { 1 } else { 2 },
        "status": if allowed { "Success" } else { "Failure" },
        "status_detail": outcome,
        "message": format!("{action} on {} — {outcome}", str_field(record, "resource")),
        "metadata": activity_metadata,
        "actor": actor,
        "src_endpoint": source_endpoint(record),
        "unmapped": {"warden": warden},
    });
    match class_uid {
        4002 => {
            activity["http_request"] = json!({
                "http_method": target.get("method").cloned().unwrap_or(Value::Null),
                "url": {"path": target.get("path").cloned().unwrap_or(Value::Null),
                        "hostname": target.get("service").cloned().unwrap_or(Value::Null)},
            });
            activity["dst_endpoint"] =
                json!({"name": target.get("service").cloned().unwrap_or(Value::Null)});
            // A refused request never reached the upstream: the answer was the gateway's.
            if !allowed {
                activity["http_response"] = json!({"code": 403});
                activity["http_status"] = json!(403);
            }
        }
        4001 => {
            activity["dst_endpoint"] = json!({
                "hostname": target.get("host").cloned().unwrap_or(Value::Null),
                "port": target.get("port").cloned().unwrap_or(Value::Null),
                "ip": target.get("ip").cloned().unwrap_or(Value::Null),
            });
        }
        _ => {
            activity["api"] = json!({
                "operation": action,
                "service": {"name": target.get("server").or_else(|| target.get("peer")).cloned().unwrap_or(Value::Null)},
                "request": {"uid": str_field(record, "decisionId")},
            });
            activity["resources"] =
                json!([{"name": str_field(record, "resource"), "type": action}]);
        }
    }
    let mut out = vec![activity];
    for finding in record
        .get("findings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(finding_of(time_ms, 3, json!({
            "message": format!("inspection finding in {action} on {}", str_field(record, "resource")),
            "finding_info": {
                "uid": format!("{}:{}", str_field(record, "decisionId"), out.len()),
                "title": finding.get("kind").and_then(Value::as_str).unwrap_or("inspection finding"),
                "desc": finding.to_string(),
            },
            "metadata": metadata(record, provenance),
            "unmapped": {"warden": {"leaf_index": provenance.index, "leaf_hash": provenance.leaf_hash, "checkpoint": provenance.checkpoint}},
        })));
    }
    out
}

/// A detector's finding (a scan, a deny storm) as a Detection Finding, its evidence the decisions
/// that make it.
fn detection(record: &Value, provenance: &Provenance<'_>, target: &Value, time_ms: i64) -> Value {
    let detector = target
        .get("detector")
        .and_then(Value::as_str)
        .unwrap_or("detection");
    let response = str_field(record, "outcome");
    let severity = if response == "quarantine" { 4 } else { 3 };
    finding_of(
        time_ms,
        severity,
        json!({
            "message": format!("{detector} by {}: {}", str_field(record, "agent"),
                               target.get("summary").and_then(Value::as_str).unwrap_or_default()),
            "finding_info": {
                "uid": str_field(record, "decisionId"),
                "title": detector,
                "desc": target.get("summary").cloned().unwrap_or(Value::Null),
                "related_events_uids": target.get("evidence").cloned().unwrap_or(Value::Null),
            },
            "actor": {"user": {"uid": str_field(record, "agent"), "type": "Service",
                                "org": {"uid": str_field(record, "tenant")}},
                      "app_name": str_field(record, "gateway")},
            "remediation": {"desc": response},
            "metadata": metadata(record, provenance),
            "unmapped": {"warden": {"leaf_index": provenance.index, "leaf_hash": provenance.leaf_hash,
                                    "checkpoint": provenance.checkpoint, "path": provenance.path,
                                    "record": provenance.record}},
        }),
    )
}

/// A Detection Finding (2004) of `severity`: `fields` with the class's own.
fn finding_of(time_ms: i64, severity: u8, mut fields: Value) -> Value {
    let class = json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": 200401,
        "time": time_ms,
        "severity_id": severity,
        "status_id": 1,
    });
    if let (Value::Object(fields), Value::Object(class)) = (&mut fields, class) {
        fields.extend(class);
    }
    fields
}

/// OCSF's HTTP Activity ids are the request methods.
fn http_activity(method: Option<&str>) -> (u32, &'static str) {
    match method.map(str::to_ascii_uppercase).as_deref() {
        Some("CONNECT") => (1, "Connect"),
        Some("DELETE") => (2, "Delete"),
        Some("GET") => (3, "Get"),
        Some("HEAD") => (4, "Head"),
        Some("OPTIONS") => (5, "Options"),
        Some("POST") => (6, "Post"),
        Some("PUT") => (7, "Put"),
        Some("TRACE") => (8, "Trace"),
        Some("PATCH") => (9, "Patch"),
        _ => (99, "Other"),
    }
}

/// The caller's address from the record's `source` (`ip:port`); a call that came over stdio has
/// none and is named for its transport.
fn source_endpoint(record: &Value) -> Value {
    match str_field(record, "source").parse::<std::net::SocketAddr>() {
        Ok(address) => json!({"ip": address.ip().to_string(), "port": address.port()}),
        Err(_) => json!({"name": "stdio"}),
    }
}

fn metadata(record: &Value, provenance: &Provenance<'_>) -> Value {
    json!({
        "version": "1.5.0",
        "uid": str_field(record, "decisionId"),
        "product": {"name": "Warden", "vendor_name": "Warden"},
        "log_name": "warden-audit",
        "sequence": provenance.index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_kind_maps_to_its_class() {
        let provenance = Provenance {
            record: "{}",
            index: 7,
            leaf_hash: "ab",
            checkpoint: "log\n8\nroot\n\n— log sig\n",
            path: &[],
        };
        for (action, class) in [
            ("mcp.tools/call", 6003),
            ("a2a.message/send", 6003),
            ("http", 4002),
            ("egress.connect", 4001),
        ] {
            let record = json!({"action": action, "outcome": "deny", "time": 1, "decisionId": "d",
                                "findings": [{"kind": "secret"}], "target": {"host": "h", "port": 443}});
            let events = events(&record, &provenance);
            assert_eq!(events[0]["class_uid"], class, "{action}");
            assert_eq!(events[0]["status_id"], 2);
            assert_eq!(events[0]["unmapped"]["warden"]["leaf_index"], 7);
            assert_eq!(events[1]["class_uid"], 2004);
        }
    }

    #[test]
    fn a_change_of_policy_mode_is_an_api_update_that_succeeded() {
        let provenance = Provenance {
            record: "{}",
            index: 1,
            leaf_hash: "ef",
            checkpoint: "c",
            path: &[],
        };
        let record = json!({"action": "policy.mode", "outcome": "staged", "time": 3,
                            "decisionId": "pol_1", "resource": "acme/bot",
                            "target": {"policy": "acme/bot", "from": "enforce", "to": "staged"}});
        let events = events(&record, &provenance);
        assert_eq!(events[0]["class_uid"], 6003);
        assert_eq!(events[0]["activity_name"], "Update");
        assert_eq!(events[0]["status_id"], 1);
        assert_eq!(events[0]["status_detail"], "staged");
    }

    #[test]
    fn a_detection_is_one_detection_finding_naming_its_evidence() {
        let provenance = Provenance {
            record: "{}",
            index: 3,
            leaf_hash: "cd",
            checkpoint: "c",
            path: &[],
        };
        let record = json!({"action": "detect", "outcome": "quarantine", "time": 2,
                            "decisionId": "det_1", "agent": "spiffe://td/tenant/t/agent/a/i-1",
                            "target": {"detector": "scan.ports", "summary": "15 distinct ports",
                                       "evidence": ["d1", "d2"]}});
        let events = events(&record, &provenance);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["class_uid"], 2004);
        assert_eq!(events[0]["finding_info"]["title"], "scan.ports");
        assert_eq!(
            events[0]["finding_info"]["related_events_uids"],
            json!(["d1", "d2"])
        );
        assert_eq!(events[0]["remediation"]["desc"], "quarantine");
    }
}
