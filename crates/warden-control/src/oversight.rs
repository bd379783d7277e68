//! Quarantine and the kill switch. A hold stops an agent — an instance or every instance of a
//! name, with all their sub-agents — at once on every gateway, revokes the credentials issued
//! under it, and is recorded with who held it and why; a release undoes it (new credentials are
//! needed: the old ones stay revoked). A freeze stops all agent traffic. Gateways follow the
//! state by long poll, so each change reaches them within about a second.

use serde_json::json;
use warden_authority::Revocation;
use warden_model::{Freeze, Hold, Name, Oversight, SpiffeId};

use crate::control::{Control, ControlError, InstanceRecord, bad, now};
use crate::store::{INSTANCES, META};

const OVERSIGHT: &str = "oversight";
/// Longest reason accepted.
const MAX_REASON_BYTES: usize = 1024;

/// A detection a gateway reports.
pub struct Detected<'a> {
    pub agent: &'a str,
    pub detector: &'a str,
    pub summary: &'a str,
    pub evidence: &'a [String],
    pub quarantine: bool,
    /// How long the quarantine lasts; `None`: until a person releases it.
    pub for_secs: Option<u64>,
}

/// The longest quarantine a detection may set with a time limit (30 days).
const MAX_TIMED_HOLD_SECS: u64 = 30 * 86_400;

fn reason(text: &str) -> Result<String, ControlError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(bad("say why: a reason is required (--reason)"));
    }
    if text.len() > MAX_REASON_BYTES {
        return Err(bad(format!(
            "the reason is longer than {MAX_REASON_BYTES} bytes"
        )));
    }
    Ok(text.to_owned())
}

impl Control {
    /// The agents a reference names: `tenant/name` (a registered agent, every instance) or a
    /// SPIFFE ID in this trust domain (an instance or a name).
    pub fn agent_scope(&self, agent: &str) -> Result<SpiffeId, ControlError> {
        if agent.starts_with("spiffe://") {
            let id = SpiffeId::new(agent).map_err(|e| bad(e.to_string()))?;
            if id.trust_domain() != self.config().trust_domain.as_str() {
                return Err(bad(format!(
                    "{id} is not in trust domain {}",
                    self.config().trust_domain.as_str()
                )));
            }
            Revocation::Agent(id.clone()).validate()?;
            return Ok(id);
        }
        let (tenant, name) = agent.split_once('/').ok_or_else(|| {
            bad(format!(
                "`{agent}` names no agent: write tenant/name or a SPIFFE ID"
            ))
        })?;
        let tenant = Name::new(tenant).map_err(|e| bad(format!("tenant: {e}")))?;
        let name = Name::new(name).map_err(|e| bad(format!("agent name: {e}")))?;
        self.agent_record(&tenant, &name)?;
        self.spiffe_id(&format!("tenant/{tenant}/agent/{name}"))
    }

    pub fn oversight(&self) -> Result<Oversight, ControlError> {
        Ok(self.store().get(META, OVERSIGHT)?.unwrap_or_default())
    }

    /// Changes the state in one durable write, records why, and tells the gateways.
    fn change_oversight(
        &self,
        record: serde_json::Value,
        change: impl FnOnce(&mut Oversight) -> Result<(), ControlError>,
    ) -> Result<Oversight, ControlError> {
        let state = self
            .store()
            .update(META, OVERSIGHT, |current: Option<Oversight>| {
                let mut state = current.unwrap_or_default();
                change(&mut state)?;
                state.version += 1;
                Ok::<_, ControlError>(state)
            })??;
        self.trail().record(record)?;
        self.oversight_version().send_replace(state.version);
        Ok(state)
    }

    /// Holds an agent: its traffic is denied and its open streams cut on every gateway, and the
    /// credentials issued under it are revoked.
    pub fn quarantine(&self, agent: &str, why: &str, by: &str) -> Result<Oversight, ControlError> {
        self.quarantine_until(agent, why, by, None)
    }

    /// A quarantine that lifts by itself at `until` (Unix seconds) when given.
    pub fn quarantine_until(
        &self,
        agent: &str,
        why: &str,
        by: &str,
        until: Option<i64>,
    ) -> Result<Oversight, ControlError> {
        let scope = self.agent_scope(agent)?;
        let why = reason(why)?;
        if let Some(hold) = self
            .oversight()?
            .quarantined
            .iter()
            .find(|h| h.scope == scope)
        {
            return Err(ControlError::Conflict(format!(
                "{scope} is already quarantined (by {}: {})",
                hold.by, hold.reason
            )));
        }
        let since = now().unix_timestamp();
        let revoked = self.revoke_instances_within(&scope)?;
        let record = json!({"action": "quarantine", "agent": scope.as_str(), "reason": why,
                            "by": by, "revokedInstances": revoked, "until": until});
        self.change_oversight(record, |state| {
            if let Some(hold) = state.quarantined.iter().find(|h| h.scope == scope) {
                return Err(ControlError::Conflict(format!(
                    "{scope} is already quarantined (by {}: {})",
                    hold.by, hold.reason
                )));
            }
            state.quarantined.push(Hold {
                scope: scope.clone(),
                reason: why.clone(),
                by: by.to_owned(),
                since,
                until,
            });
            Ok(())
        })
    }

    /// Records a gateway's detection in the control trail and, when it asks, quarantines the
    /// agent, the reason naming the detection. What the quarantine did comes back.
    pub fn detected(
        &self,
        detection: &Detected<'_>,
        by: &str,
    ) -> Result<serde_json::Value, ControlError> {
        let short = |text: &str, what: &str, most: usize| {
            if text.is_empty() || text.len() > most {
                Err(bad(format!(
                    "a detection's {what} must be 1 to {most} bytes"
                )))
            } else {
                Ok(())
            }
        };
        short(detection.detector, "detector", 64)?;
        short(detection.summary, "summary", 512)?;
        if detection.evidence.len() > 1024 || detection.evidence.iter().any(|id| id.len() > 128) {
            return Err(bad(
                "a detection's evidence is at most 1,024 decision ids of 128 bytes",
            ));
        }
        let scope = self.agent_scope(detection.agent)?;
        self.trail().record(json!({
            "action": "detection", "agent": scope.as_str(), "detector": detection.detector,
            "summary": detection.summary, "evidence": detection.evidence, "by": by,
            "quarantine": detection.quarantine,
        }))?;
        if !detection.quarantine {
            return Ok(json!({"quarantined": false}));
        }
        let why = format!(
            "detected by {by}: {} ({})",
            detection.summary, detection.detector
        );
        let until = match detection.for_secs {
            Some(secs) if secs > MAX_TIMED_HOLD_SECS => {
                return Err(bad(format!(
                    "a detection's quarantine lasts at most {MAX_TIMED_HOLD_SECS} s (or until released: leave forSecs out)"
                )));
            }
            Some(secs) => Some(now().unix_timestamp() + i64::try_from(secs).unwrap_or(0)),
            None => None,
        };
        match self.quarantine_until(scope.as_str(), &why, &format!("detector on {by}"), until) {
            Ok(_) => Ok(json!({"quarantined": true})),
            Err(ControlError::Conflict(held)) => Ok(json!({"quarantined": true, "already": held})),
            Err(e) => Err(e),
        }
    }

    /// Lifts the holds whose time limit has passed (recorded as released by `expiry`); how many.
    pub fn release_expired(&self, now: i64) -> Result<usize, ControlError> {
        let expired: Vec<SpiffeId> = self
            .oversight()?
            .quarantined
            .iter()
            .filter(|h| h.until.is_some_and(|until| until <= now))
            .map(|h| h.scope.clone())
            .collect();
        for scope in &expired {
            match self.release(scope.as_str(), "its time limit passed", "expiry") {
                Ok(_) | Err(ControlError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(expired.len())
    }

    /// Lifts a hold. The agent needs new credentials to act again.
    pub fn release(&self, agent: &str, why: &str, by: &str) -> Result<Oversight, ControlError> {
        let scope = self.agent_scope(agent)?;
        let why = reason(why)?;
        let record = json!({"action": "release", "agent": scope.as_str(), "reason": why, "by": by});
        self.change_oversight(record, |state| {
            let before = state.quarantined.len();
            state.quarantined.retain(|h| h.scope != scope);
            if state.quarantined.len() == before {
                return Err(ControlError::NotFound(format!(
                    "{scope} is not quarantined (see `warden quarantine list`)"
                )));
            }
            Ok(())
        })
    }

    /// Throws the kill switch: every gateway denies all agent traffic and cuts open streams.
    pub fn freeze(&self, why: &str, by: &str) -> Result<Oversight, ControlError> {
        let why = reason(why)?;
        let since = now().unix_timestamp();
        let record = json!({"action": "freeze", "reason": why, "by": by});
        self.change_oversight(record, |state| {
            if let Some(freeze) = &state.frozen {
                return Err(ControlError::Conflict(format!(
                    "already frozen (by {}: {})",
                    freeze.by, freeze.reason
                )));
            }
            state.frozen = Some(Freeze {
                reason: why.clone(),
                by: by.to_owned(),
                since,
            });
            Ok(())
        })
    }

    pub fn unfreeze(&self, why: &str, by: &str) -> Result<Oversight, ControlError> {
        let why = reason(why)?;
        let record = json!({"action": "unfreeze", "reason": why, "by": by});
        self.change_oversight(record, |state| {
            state
                .frozen
                .take()
                .map(|_| ())
                .ok_or_else(|| ControlError::Conflict("not frozen".into()))
        })
    }

    /// Revokes every instance credentials were issued to under `scope` (with their sub-agents'
    /// and grants), leaving later instances of the same name free to be issued after a release.
    fn revoke_instances_within(&self, scope: &SpiffeId) -> Result<Vec<String>, ControlError> {
        let revocations = self.verifier().revocations();
        let mut revoked = Vec::new();
        for instance in self.store().values::<InstanceRecord>(INSTANCES)? {
            let id = instance.spiffe_id;
            let within = warden_model::scopes(id.as_str()).any(|s| s == scope.as_str());
            if within && revocations.agent_revoked(id.as_str()).is_none() {
                self.revoke(Revocation::Agent(id.clone()))?;
                revoked.push(id.to_string());
            }
        }
        Ok(revoked)
    }
}
