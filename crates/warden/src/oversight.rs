//! The CLI for people overseeing agents: admins and approvers, quarantine and the kill switch,
//! approvals, and events.

use std::process::ExitCode;

use clap::Subcommand;
use http::Method;
use serde_json::{Value, json};

use crate::audit::rfc3339;
use crate::control::{Api, Connection, runtime};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create an admin credential; the token is shown once.
    Create {
        name: String,
        /// admin, approver, auditor, publisher, gateway or viewer.
        #[arg(long)]
        role: String,
        /// An approver group this admin belongs to (policies name the group); repeat for more.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// Approval requests (pending ones unless --status says otherwise).
    List {
        /// pending, approved, rejected, used, expired or all.
        #[arg(long, default_value = "pending")]
        status: String,
    },
    /// One request: the exact call, the agent's justification, sign-offs and uses.
    Show { id: String },
    /// Sign off on a request (as a member of its approver group).
    Approve {
        id: String,
        /// How many times the approved call may run (default once).
        #[arg(long)]
        uses: Option<u32>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a request; the call stays refused.
    Reject {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Publish an event (needs the publisher role), e.g. `traffic-spike --attr deployment=web`.
    Publish {
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// An attribute as `key=value`; repeat for more.
        #[arg(long = "attr")]
        attributes: Vec<String>,
    },
    /// Published events, oldest first.
    List,
}

#[derive(Subcommand)]
pub enum ActionsCommand {
    /// Run the compensating call of a reversible tool call (declared in the ToolCatalog) through
    /// the gateway that decided it, on the original agent's behalf; recorded like any call.
    Undo {
        /// The decision id of the call to undo (as refusals and `warden audit` show it).
        decision: String,
        /// The gateway that made the decision.
        #[arg(
            long,
            env = "WARDEN_GATEWAY_URL",
            default_value = "https://127.0.0.1:8443"
        )]
        gateway_url: String,
    },
}

fn block(
    connection: Connection,
    run: impl AsyncFnOnce(&Api) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(connection)?;
    runtime()?.block_on(async move {
        run(&api).await?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn admin(command: AdminCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    block(connection, async |api| {
        let AdminCommand::Create { name, role, groups } = command;
        let answer = api
            .call(
                Method::POST,
                "/v1/admins",
                Some(json!({"name": name, "role": role, "groups": groups})),
            )
            .await?;
        api.print(&answer, |a| {
            format!(
                "admin {name} ({role}) created; its token (shown once, store it now):\n  {}",
                a["token"].as_str().unwrap_or_default()
            )
        });
        Ok(())
    })
}

fn describe_oversight(state: &Value) -> String {
    let mut lines = Vec::new();
    match &state["frozen"] {
        Value::Null => lines.push("traffic: flowing".to_owned()),
        frozen => lines.push(format!(
            "traffic: FROZEN by {} since {}: {}",
            frozen["by"].as_str().unwrap_or_default(),
            rfc3339(frozen.get("since")),
            frozen["reason"].as_str().unwrap_or_default()
        )),
    }
    let held = state["quarantined"].as_array().cloned().unwrap_or_default();
    if held.is_empty() {
        lines.push("quarantined: none".into());
    }
    for hold in held {
        let until = match hold.get("until").filter(|u| !u.is_null()) {
            Some(until) => format!(" until {}", rfc3339(Some(until))),
            None => String::new(),
        };
        lines.push(format!(
            "quarantined: {} by {} since {}{until}: {}",
            hold["scope"].as_str().unwrap_or_default(),
            hold["by"].as_str().unwrap_or_default(),
            rfc3339(hold.get("since")),
            hold["reason"].as_str().unwrap_or_default()
        ));
    }
    lines.join("\n")
}

/// Holds an agent (`hold`), releases it, or (with neither) shows who is held.
pub fn quarantine(
    agent: Option<String>,
    reason: Option<String>,
    hold: bool,
    connection: Connection,
) -> anyhow::Result<ExitCode> {
    block(connection, async |api| {
        let state = match (agent, reason) {
            (Some(agent), Some(reason)) => {
                let path = if hold {
                    "/v1/quarantine"
                } else {
                    "/v1/quarantine/release"
                };
                api.call(
                    Method::POST,
                    path,
                    Some(json!({"agent": agent, "reason": reason})),
                )
                .await?
            }
            (Some(_), None) => anyhow::bail!("say why: --reason is required"),
            (None, _) => api.call(Method::GET, "/v1/oversight", None).await?,
        };
        api.print(&state, describe_oversight);
        Ok(())
    })
}

/// Throws (`freeze`) or resets (`unfreeze`) the kill switch.
pub fn kill_switch(
    freeze: bool,
    reason: String,
    connection: Connection,
) -> anyhow::Result<ExitCode> {
    block(connection, async |api| {
        let path = if freeze { "/v1/freeze" } else { "/v1/unfreeze" };
        let state = api
            .call(Method::POST, path, Some(json!({"reason": reason})))
            .await?;
        api.print(&state, describe_oversight);
        Ok(())
    })
}

fn describe_approval(a: &Value) -> String {
    let signed: Vec<&str> = a["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["by"].as_str())
        .collect();
    let mut text = format!(
        "{id}  {status}  {action} {resource}\n  agent          {agent}\n  arguments      {arguments} ({hash})\n  justification  {why}\n  needs          {required} of group {group} ({signed} signed{by})\n  expires        {expires}   uses {used}/{allowed}   decision {decision}",
        id = a["id"].as_str().unwrap_or_default(),
        status = a["status"].as_str().unwrap_or_default(),
        action = a["action"].as_str().unwrap_or_default(),
        resource = a["resource"].as_str().unwrap_or_default(),
        agent = a["agent"].as_str().unwrap_or_default(),
        arguments = if a["arguments"].is_null() {
            "(not shown)".to_owned()
        } else {
            a["arguments"].to_string()
        },
        hash = a["argumentsHash"].as_str().unwrap_or_default(),
        why = a["justification"].as_str().unwrap_or("(none given)"),
        required = a["requirement"]["required"],
        group = a["requirement"]["group"].as_str().unwrap_or_default(),
        signed = signed.len(),
        by = if signed.is_empty() {
            String::new()
        } else {
            format!(": {}", signed.join(", "))
        },
        expires = rfc3339(a.get("expires")),
        used = a["uses"].as_array().map_or(0, Vec::len),
        allowed = a["usesAllowed"],
        decision = a["decisionId"].as_str().unwrap_or_default(),
    );
    if let Some(rejection) = a["rejection"].as_object() {
        text.push_str(&format!(
            "\n  rejected by    {} {}",
            rejection
                .get("by")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            rejection
                .get("comment")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ));
    }
    text
}

pub fn approvals(command: ApprovalsCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    block(connection, async |api| {
        match command {
            ApprovalsCommand::List { status } => {
                let list = api
                    .call(Method::GET, &format!("/v1/approvals?status={status}"), None)
                    .await?;
                api.print(&list, |l| {
                    let items = l.as_array().cloned().unwrap_or_default();
                    if items.is_empty() {
                        return format!("no {status} approval requests");
                    }
                    items
                        .iter()
                        .map(describe_approval)
                        .collect::<Vec<_>>()
                        .join("\n\n")
                });
            }
            ApprovalsCommand::Show { id } => {
                let approval = api
                    .call(Method::GET, &format!("/v1/approvals/{id}"), None)
                    .await?;
                api.print(&approval, describe_approval);
            }
            ApprovalsCommand::Approve { id, uses, comment } => {
                let approval = api
                    .call(
                        Method::POST,
                        &format!("/v1/approvals/{id}/approve"),
                        Some(json!({"uses": uses, "comment": comment})),
                    )
                    .await?;
                api.print(&approval, describe_approval);
            }
            ApprovalsCommand::Reject { id, comment } => {
                let approval = api
                    .call(
                        Method::POST,
                        &format!("/v1/approvals/{id}/reject"),
                        Some(json!({"comment": comment})),
                    )
                    .await?;
                api.print(&approval, describe_approval);
            }
        }
        Ok(())
    })
}

pub fn events(command: EventsCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    block(connection, async |api| {
        match command {
            EventsCommand::Publish {
                event_type,
                attributes,
            } => {
                let mut attrs = serde_json::Map::new();
                for item in &attributes {
                    let (k, v) = item
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("attribute `{item}` is not key=value"))?;
                    attrs.insert(k.to_owned(), json!(v));
                }
                let event = api
                    .call(
                        Method::POST,
                        "/v1/events",
                        Some(json!({"type": event_type, "attributes": attrs})),
                    )
                    .await?;
                api.print(&event, |e| {
                    format!(
                        "published {} {} at {} (sequence {})",
                        e["event"]["type"].as_str().unwrap_or_default(),
                        e["event"]["id"].as_str().unwrap_or_default(),
                        rfc3339(e["event"].get("time")),
                        e["sequence"]
                    )
                });
            }
            EventsCommand::List => {
                let events = api.call(Method::GET, "/v1/events?since=0", None).await?;
                api.print(&events, |v| {
                    let items = v["events"].as_array().cloned().unwrap_or_default();
                    if items.is_empty() {
                        return "no events".into();
                    }
                    items
                        .iter()
                        .map(|e| {
                            format!(
                                "{} {} {} by {} {}",
                                e["sequence"],
                                rfc3339(e["event"].get("time")),
                                e["event"]["type"].as_str().unwrap_or_default(),
                                e["event"]["publisher"].as_str().unwrap_or_default(),
                                e["event"]["attributes"]
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                });
            }
        }
        Ok(())
    })
}

pub fn actions(command: ActionsCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    let ActionsCommand::Undo {
        decision,
        gateway_url,
    } = command;
    let token = connection.token.clone().ok_or_else(|| {
        anyhow::anyhow!("undo needs an admin token: set WARDEN_TOKEN (or --token)")
    })?;
    block(connection, async |api| {
        // The gateway's certificate chains to the authority's roots.
        let bundle = api.call(Method::GET, "/v1/bundle", None).await?;
        let roots = bundle["x509Pem"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the control plane's bundle has no x509Pem"))?;
        let client =
            warden_control::HttpClient::with_tls(std::time::Duration::from_secs(60), roots, None)?;
        let auth = format!("Bearer {token}");
        let response = client
            .send(
                Method::POST,
                &format!("{}/actions/undo", gateway_url.trim_end_matches('/')),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                Some(json!({"decisionId": decision}).to_string().into_bytes()),
                1 << 20,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e} (is the gateway at {gateway_url}? --gateway-url)"))?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if !response.status.is_success() {
            anyhow::bail!(
                "{} ({})",
                answer["error"]["message"]
                    .as_str()
                    .unwrap_or("the gateway refused"),
                response.status
            );
        }
        api.print(&answer, |a| {
            format!(
                "undone: {} {} with {} (decision {}, undoing {})\nresult: {}",
                a["call"]["server"].as_str().unwrap_or_default(),
                a["call"]["tool"].as_str().unwrap_or_default(),
                a["call"]["arguments"],
                a["decisionId"].as_str().unwrap_or_default(),
                a["undoOf"].as_str().unwrap_or_default(),
                a["result"]["content"][0]["text"]
                    .as_str()
                    .map_or_else(|| a["result"].to_string(), str::to_owned)
            )
        });
        Ok(())
    })
}

#[derive(Subcommand)]
pub enum ToolsCommand {
    /// Tools withheld because their definition changed since it was approved (a rug pull).
    Pending {
        /// Every pinned tool, not only the changed ones.
        #[arg(long)]
        all: bool,
    },
    /// Approve a tool's changed definition (`server/tool`): gateways offer it again.
    Approve { tool: String },
}

pub fn tools(command: ToolsCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    block(connection, async |api| {
        match command {
            ToolsCommand::Pending { all } => {
                let status = if all { "all" } else { "pending" };
                let pins = api
                    .call(Method::GET, &format!("/v1/tools?status={status}"), None)
                    .await?;
                api.print(&pins, |p| {
                    let items = p.as_array().cloned().unwrap_or_default();
                    if items.is_empty() {
                        return "no tool awaits approval".into();
                    }
                    items
                        .iter()
                        .map(|pin| {
                            let mut text = format!(
                                "{}/{}  approved {} by {}",
                                pin["server"].as_str().unwrap_or_default(),
                                pin["tool"].as_str().unwrap_or_default(),
                                pin["approved"]["hash"].as_str().unwrap_or_default(),
                                pin["approved"]["by"].as_str().unwrap_or_default()
                            );
                            if let Some(pending) = pin.get("pending").filter(|p| !p.is_null()) {
                                text.push_str(&format!(
                                    "\n  CHANGED to {} at {}:\n  was: {}\n  now: {}",
                                    pending["hash"].as_str().unwrap_or_default(),
                                    rfc3339(pending.get("at")),
                                    pin["approved"]["definition"],
                                    pending["definition"]
                                ));
                            }
                            text
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                });
            }
            ToolsCommand::Approve { tool } => {
                let (server, name) = tool.split_once('/').ok_or_else(|| {
                    anyhow::anyhow!("name the tool as server/tool, e.g. github/create_issue")
                })?;
                let pin = api
                    .call(
                        Method::POST,
                        &format!("/v1/tools/{server}/{name}/approve"),
                        Some(json!({})),
                    )
                    .await?;
                api.print(&pin, |p| {
                    format!(
                        "approved {tool}: {}",
                        p["approved"]["hash"].as_str().unwrap_or_default()
                    )
                });
            }
        }
        Ok(())
    })
}
