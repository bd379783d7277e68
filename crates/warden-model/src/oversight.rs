//! Quarantine and the kill switch, as every gateway sees them: agents held (with everything
//! below them) and whether all agent traffic is frozen. Versions only grow, so a gateway holding
//! version N asks for what changed since N.

use serde::{Deserialize, Serialize};

use crate::identity::SpiffeId;

/// An agent held in quarantine: an instance (`…/agent/<name>/<instance>`) or every instance of a
/// name (`…/agent/<name>`), with all their sub-agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Hold {
    pub scope: SpiffeId,
    pub reason: String,
    /// Who held it: an admin's name, or a detector's.
    pub by: String,
    /// Unix seconds.
    pub since: i64,
    /// When the hold lifts by itself (Unix seconds); `None`: when a person releases it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
}

/// The kill switch, when thrown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Freeze {
    pub reason: String,
    pub by: String,
    pub since: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Oversight {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<Freeze>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Hold>,
}

impl Oversight {
    /// The hold covering an agent with ID `id` and the agents above it, if any.
    pub fn hold_on<'a>(
        &self,
        id: &'a str,
        parents: impl IntoIterator<Item = &'a str>,
    ) -> Option<&Hold> {
        if self.quarantined.is_empty() {
            return None;
        }
        std::iter::once(id)
            .chain(parents)
            .flat_map(scopes)
            .find_map(|scope| self.quarantined.iter().find(|h| h.scope.as_str() == scope))
    }
}

/// Every prefix of a SPIFFE ID that ends at a path segment: the ID itself, its agent name, the
/// instance above it, … — each a scope a revocation or a hold may name.
pub fn scopes(id: &str) -> impl Iterator<Item = &str> {
    let path_start = id.find("//").map_or(0, |i| i + 2);
    id[path_start..]
        .match_indices('/')
        .map(move |(i, _)| &id[..path_start + i])
        .chain(std::iter::once(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(scope: &str) -> Oversight {
        Oversight {
            version: 1,
            frozen: None,
            quarantined: vec![Hold {
                scope: SpiffeId::new(scope).unwrap_or_else(|e| panic!("{e}")),
                reason: "r".into(),
                by: "b".into(),
                since: 0,
                until: None,
            }],
        }
    }

    #[test]
    fn a_hold_covers_the_name_its_instances_and_their_sub_agents_but_not_lookalikes() {
        let state = held("spiffe://td/tenant/t/agent/a");
        let covered = [
            "spiffe://td/tenant/t/agent/a",
            "spiffe://td/tenant/t/agent/a/i-1",
            "spiffe://td/tenant/t/agent/a/i-1/agent/sub/i-2",
        ];
        for id in covered {
            assert!(state.hold_on(id, []).is_some(), "{id}");
        }
        for id in [
            "spiffe://td/tenant/t/agent/ab/i-1",
            "spiffe://td/tenant/t/agent/b/i-1",
        ] {
            assert!(state.hold_on(id, []).is_none(), "{id}");
        }
        // A sub-agent whose own ID does not show it, through its lineage.
        assert!(
            state
                .hold_on(
                    "spiffe://td/tenant/t/agent/x/i-9",
                    ["spiffe://td/tenant/t/agent/a/i-1"]
                )
                .is_some()
        );
    }
}
