//! Human co-signature. A gateway files an approval request bound to the exact call — agent
//! instance, action, resource and a hash of the canonical arguments — when policy says the call
//! needs approval. Approvers from the named group sign off (N of M, never the admin who
//! registered the agent or one above it); a quorum approves, one rejection rejects. An approval
//! expires, is spent by use (once, or as many times as the approvers allowed), and fits no other
//! call. Every step is recorded in the control audit trail before it is acknowledged.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use warden_model::{ApprovalRequirement, SpiffeId};

use crate::control::{AdminRecord, AgentRecord, Control, ControlError, bad, now, random_hex};
use crate::store::{AGENTS, APPROVALS};

/// Pending requests one agent instance may have open: a looping agent cannot flood approvers.
const MAX_PENDING_PER_AGENT: usize = 32;
/// Most uses an approver may allow for one approval.
const MAX_USES: u32 = 100;
/// Largest arguments shown to approvers, in bytes of JSON.
const MAX_SHOWN_ARGUMENTS: usize = 16 * 1024;
const MAX_TEXT: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    /// Every allowed use spent.
    Used,
    /// Not approved in time, or approved but not used in time.
    Expired,
}

/// The exact call an approval is for. (Flattened into requests, so it cannot deny unknown
/// fields: serde does not combine the two.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalBinding {
    /// The agent instance that asked; no other may use the approval.
    pub agent: SpiffeId,
    /// The action kind, e.g. `mcp.tools/call`.
    pub action: String,
    pub resource: String,
    /// `sha256:<hex>` of the canonical JSON of the call's arguments.
    pub arguments_hash: String,
}

/// What a gateway files.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequest {
    #[serde(flatten)]
    pub binding: ApprovalBinding,
    /// The agents above the asking one, root first.
    #[serde(default)]
    pub parents: Vec<SpiffeId>,
    /// The call's arguments, for approvers to read (dropped beyond 16 KiB).
    #[serde(default)]
    pub arguments: Option<serde_json::Value>,
    pub requirement: ApprovalRequirement,
    /// The agent's stated intent.
    #[serde(default)]
    pub justification: Option<String>,
    pub decision_id: String,
    pub gateway: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignOff {
    pub by: String,
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Use {
    pub decision_id: String,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub id: String,
    pub status: ApprovalStatus,
    pub created: i64,
    /// Until when a pending request may be approved, or an approval used.
    pub expires: i64,
    #[serde(flatten)]
    pub binding: ApprovalBinding,
    #[serde(default)]
    pub parents: Vec<SpiffeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    pub requirement: ApprovalRequirement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    pub decision_id: String,
    pub gateway: String,
    #[serde(default)]
    pub approvals: Vec<SignOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<SignOff>,
    /// Uses the approvers allowed (the fewest any of them said).
    pub uses_allowed: u32,
    #[serde(default)]
    pub uses: Vec<Use>,
}

impl Approval {
    /// The status at `now`: pending and approved ones lapse at `expires`.
    fn status_at(&self, now: i64) -> ApprovalStatus {
        match self.status {
            ApprovalStatus::Pending | ApprovalStatus::Approved if now >= self.expires => {
                ApprovalStatus::Expired
            }
            status => status,
        }
    }

    fn current(mut self, now: i64) -> Self {
        self.status = self.status_at(now);
        self
    }
}

/// What an approver says.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Verdict {
    /// Uses this approver allows (default 1).
    #[serde(default)]
    pub uses: Option<u32>,
    #[serde(default)]
    pub comment: Option<String>,
}

/// What a gateway learns when it spends a use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spent {
    /// The requirement the approval satisfies.
    pub requirement: String,
    pub remaining_uses: u32,
}

fn text(what: &str, value: Option<String>) -> Result<Option<String>, ControlError> {
    match value {
        Some(v) if v.len() > MAX_TEXT => {
            Err(bad(format!("the {what} is longer than {MAX_TEXT} bytes")))
        }
        v => Ok(v),
    }
}

impl Control {
    /// Files an approval request (from a gateway) and notifies the configured webhook.
    pub fn request_approval(&self, request: ApprovalRequest) -> Result<Approval, ControlError> {
        let now = now().unix_timestamp();
        let justification = text("justification", request.justification)?;
        let arguments = request
            .arguments
            .filter(|a| a.to_string().len() <= MAX_SHOWN_ARGUMENTS);
        let pending = self
            .store()
            .values::<Approval>(APPROVALS)?
            .into_iter()
            .filter(|a| a.binding.agent == request.binding.agent)
            .filter(|a| a.status_at(now) == ApprovalStatus::Pending)
            .count();
        if pending >= MAX_PENDING_PER_AGENT {
            return Err(ControlError::Conflict(format!(
                "{} already has {pending} approval requests waiting; wait for them, or ask an \
                 approver to reject them",
                request.binding.agent
            )));
        }
        let validity = i64::try_from(request.requirement.valid_for_secs).unwrap_or(i64::MAX);
        let approval = Approval {
            id: format!("apr_{}", random_hex(12)?),
            status: ApprovalStatus::Pending,
            created: now,
            expires: now.saturating_add(validity),
            binding: request.binding,
            parents: request.parents,
            arguments,
            requirement: request.requirement,
            justification,
            decision_id: request.decision_id,
            gateway: request.gateway,
            approvals: Vec::new(),
            rejection: None,
            uses_allowed: 1,
            uses: Vec::new(),
        };
        self.store().put(APPROVALS, &approval.id, &approval)?;
        self.trail().record(json!({
            "action": "approval.requested", "approval": approval.id, "agent": approval.binding.agent.as_str(),
            "call": {"action": approval.binding.action, "resource": approval.binding.resource,
                     "argumentsHash": approval.binding.arguments_hash},
            "requirement": approval.requirement.id, "group": approval.requirement.group.as_str(),
            "justification": approval.justification, "decisionId": approval.decision_id,
        }))?;
        self.notify_approvers(&approval);
        self.approvals_changed();
        Ok(approval)
    }

    pub fn approval(&self, id: &str) -> Result<Approval, ControlError> {
        let now = now().unix_timestamp();
        self.store()
            .get::<Approval>(APPROVALS, id)?
            .map(|a| a.current(now))
            .ok_or_else(|| ControlError::NotFound(format!("no approval {id}")))
    }

    /// Approvals, newest first; only those in `status` when given.
    pub fn approvals(&self, status: Option<ApprovalStatus>) -> Result<Vec<Approval>, ControlError> {
        let now = now().unix_timestamp();
        let mut all: Vec<Approval> = self
            .store()
            .values::<Approval>(APPROVALS)?
            .into_iter()
            .map(|a| a.current(now))
            .filter(|a| status.is_none_or(|s| a.status == s))
            .collect();
        all.sort_by_key(|a| std::cmp::Reverse(a.created));
        Ok(all)
    }

    /// Waits until approval `id` is no longer pending, or `timeout` passes.
    pub async fn wait_for_approval(&self, id: &str, timeout: Duration) {
        let mut changes = self.approvals_version().subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending = {
                let id = id.to_owned();
                let now = now().unix_timestamp();
                self.store()
                    .get::<Approval>(APPROVALS, &id)
                    .ok()
                    .flatten()
                    .is_some_and(|a| a.status_at(now) == ApprovalStatus::Pending)
            };
            if !pending
                || tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
            {
                return;
            }
        }
    }

    /// Why `approver` may not sign off on `approval`, if they may not.
    fn check_approver(
        &self,
        approval: &Approval,
        approver: &AdminRecord,
    ) -> Result<(), ControlError> {
        let group = &approval.requirement.group;
        if !approver.groups.contains(group) {
            return Err(ControlError::Forbidden(format!(
                "{} is not in approver group {group}; this approval needs members of it",
                approver.name
            )));
        }
        // Whoever registered the agent, or an agent above it, does not co-sign its actions.
        for id in std::iter::once(&approval.binding.agent).chain(&approval.parents) {
            if let Some(agent) = self.agent_of(id)?
                && agent.registered_by.as_deref() == Some(approver.name.as_str())
            {
                return Err(ControlError::Forbidden(format!(
                    "{} registered {}/{} (the requesting agent or one above it) and cannot \
                     approve its actions; another member of {group} must",
                    approver.name, agent.tenant, agent.name
                )));
            }
        }
        Ok(())
    }

    /// The registered agent an instance's SPIFFE ID belongs to.
    fn agent_of(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, ControlError> {
        let segments: Vec<&str> = id.segments().collect();
        // …/tenant/<t>/agent/<name>/<instance>[/agent/<name>/<instance>…]: the last name.
        let (Some(tenant), Some(name)) = (segments.get(1), segments.iter().rev().nth(1)) else {
            return Ok(None);
        };
        Ok(self.store().get(AGENTS, &format!("{tenant}/{name}"))?)
    }

    /// Changes a pending approval on an approver's word, in one durable write, after checking
    /// that they may decide on it.
    fn sign(
        &self,
        id: &str,
        approver: &AdminRecord,
        change: impl FnOnce(&mut Approval, i64) -> Result<(), ControlError>,
    ) -> Result<Approval, ControlError> {
        self.check_approver(&self.approval(id)?, approver)?;
        let now = now().unix_timestamp();
        self.store()
            .update(APPROVALS, id, |stored: Option<Approval>| {
                let mut approval = stored
                    .ok_or_else(|| ControlError::NotFound(format!("no approval {id}")))?
                    .current(now);
                if approval.status != ApprovalStatus::Pending {
                    return Err(ControlError::Conflict(format!(
                        "approval {id} is {:?}, not pending",
                        approval.status
                    )));
                }
                change(&mut approval, now)?;
                Ok::<_, ControlError>(approval)
            })?
    }

    /// Signs off on a pending approval; the quorum's last sign-off approves it.
    pub fn approve(
        &self,
        id: &str,
        approver: &AdminRecord,
        verdict: Verdict,
    ) -> Result<Approval, ControlError> {
        let uses = verdict.uses.unwrap_or(1);
        if uses == 0 || uses > MAX_USES {
            return Err(bad(format!("uses is 1 to {MAX_USES}")));
        }
        let comment = text("comment", verdict.comment)?;
        let approval = self.sign(id, approver, |approval, now| {
            if approval.approvals.iter().any(|s| s.by == approver.name) {
                return Err(ControlError::Conflict(format!(
                    "{} has already approved {id}; it needs another approver",
                    approver.name
                )));
            }
            approval.approvals.push(SignOff {
                by: approver.name.clone(),
                at: now,
                comment: comment.clone(),
            });
            approval.uses_allowed = if approval.approvals.len() == 1 {
                uses
            } else {
                approval.uses_allowed.min(uses)
            };
            if approval.approvals.len() >= approval.requirement.required.get() as usize {
                approval.status = ApprovalStatus::Approved;
                let validity =
                    i64::try_from(approval.requirement.valid_for_secs).unwrap_or(i64::MAX);
                approval.expires = now.saturating_add(validity);
            }
            Ok(())
        })?;
        self.trail().record(json!({
            "action": "approval.approved", "approval": id, "by": approver.name, "comment": comment,
            "usesAllowed": uses, "signOffs": approval.approvals.len(),
            "required": approval.requirement.required.get(), "status": approval.status,
        }))?;
        self.approvals_changed();
        Ok(approval)
    }

    pub fn reject(
        &self,
        id: &str,
        approver: &AdminRecord,
        verdict: Verdict,
    ) -> Result<Approval, ControlError> {
        let comment = text("comment", verdict.comment)?;
        let approval = self.sign(id, approver, |approval, now| {
            approval.status = ApprovalStatus::Rejected;
            approval.rejection = Some(SignOff {
                by: approver.name.clone(),
                at: now,
                comment: comment.clone(),
            });
            Ok(())
        })?;
        self.trail().record(
            json!({"action": "approval.rejected", "approval": id, "by": approver.name, "comment": comment}),
        )?;
        self.approvals_changed();
        Ok(approval)
    }

    /// Spends one use of an approval on the call `binding` describes (from a gateway): refused
    /// unless it is approved, unexpired, has a use left, and is for exactly this call.
    pub fn use_approval(
        &self,
        id: &str,
        binding: &ApprovalBinding,
        decision_id: &str,
    ) -> Result<Spent, ControlError> {
        let now = now().unix_timestamp();
        let approval = self
            .store()
            .update(APPROVALS, id, |stored: Option<Approval>| {
                let mut approval = stored
                    .ok_or_else(|| ControlError::NotFound(format!("no approval {id}")))?
                    .current(now);
                if approval.binding != *binding {
                    let what = if approval.binding.agent != binding.agent {
                        "another agent"
                    } else if approval.binding.action != binding.action
                        || approval.binding.resource != binding.resource
                    {
                        "another action or resource"
                    } else {
                        "other arguments"
                    };
                    return Err(ControlError::Forbidden(format!(
                        "approval {id} was given for {what}, not this call"
                    )));
                }
                match approval.status {
                    ApprovalStatus::Approved => {}
                    ApprovalStatus::Pending => {
                        return Err(ControlError::Conflict(format!(
                            "approval {id} is still pending ({} of {} approvers)",
                            approval.approvals.len(),
                            approval.requirement.required
                        )));
                    }
                    ApprovalStatus::Used => {
                        return Err(ControlError::Conflict(format!(
                            "approval {id} has been used already"
                        )));
                    }
                    ApprovalStatus::Rejected => {
                        return Err(ControlError::Conflict(format!(
                            "approval {id} was rejected"
                        )));
                    }
                    ApprovalStatus::Expired => {
                        return Err(ControlError::Conflict(format!("approval {id} has expired")));
                    }
                }
                approval.uses.push(Use {
                    decision_id: decision_id.to_owned(),
                    at: now,
                });
                if approval.uses.len() >= approval.uses_allowed as usize {
                    approval.status = ApprovalStatus::Used;
                }
                Ok::<_, ControlError>(approval)
            })??;
        let remaining_uses = approval
            .uses_allowed
            .saturating_sub(u32::try_from(approval.uses.len()).unwrap_or(u32::MAX));
        self.trail().record(json!({
            "action": "approval.used", "approval": id, "decisionId": decision_id,
            "agent": binding.agent.as_str(), "remainingUses": remaining_uses,
        }))?;
        self.approvals_changed();
        Ok(Spent {
            requirement: approval.requirement.id,
            remaining_uses,
        })
    }

    fn approvals_changed(&self) {
        self.approvals_version().send_modify(|v| *v += 1);
    }

    /// Tells the configured webhook about a new request, off the caller's path, retrying a few
    /// times; a webhook that stays down is logged, and approvers still see the request in the
    /// CLI and the API.
    fn notify_approvers(&self, approval: &Approval) {
        let Some(url) = self.config().approval_webhook.clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.http_client().clone();
        let body = json!({"type": "approval.requested", "approval": approval}).to_string();
        let id = approval.id.clone();
        runtime.spawn(async move {
            let mut delay = Duration::from_millis(200);
            for attempt in 1..=5 {
                let sent = client
                    .send(
                        http::Method::POST,
                        &url,
                        &[("content-type", "application/json")],
                        Some(body.clone().into_bytes()),
                        64 * 1024,
                    )
                    .await;
                match sent {
                    Ok(response) if response.status.is_success() => return,
                    Ok(response) => eprintln!(
                        "warden-control: approval webhook answered {} for {id} (attempt {attempt})",
                        response.status
                    ),
                    Err(e) => eprintln!(
                        "warden-control: approval webhook failed for {id} (attempt {attempt}): {e}"
                    ),
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        });
    }
}
