//! Slicing: an index over compiled policies so a decision evaluates only the few that can apply.
//!
//! Every policy is filed under keys that over-approximate what it can match (a label its selector
//! requires, the agent name its SPIFFE pattern fixes, the MCP server or host it names). A request
//! computes its own keys and gathers the policies filed under them. A policy is left out only if
//! it provably cannot match, so slicing never changes a decision; a property test checks that.

use std::collections::HashMap;

use cedar_policy::{Policy, PolicySet};
use warden_model::{ActionKind, AgentIdentity, Host, Resource};

use crate::compile::{PrincipalKey, ResourceKey};
use crate::matcher::Matcher;

/// Hash maps on the decision path: foldhash is several times faster than SipHash on these short
/// keys and is seeded per process, so keys chosen by a caller cannot be aimed at collisions.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct Entry {
    principals: Vec<PrincipalKey>,
    /// Bit per [`ActionKind`]; all bits for "every kind".
    kinds: u16,
    /// Empty means any resource.
    resources: Vec<ResourceKey>,
}

/// Index keys of one request.
pub struct RequestKeys {
    kind: ActionKind,
    principals: Vec<PrincipalKey>,
    resources: Vec<ResourceKey>,
}

fn kind_bit(kind: ActionKind) -> u16 {
    let position = ActionKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    1 << position
}

impl RequestKeys {
    pub fn new(agent: &AgentIdentity, kind: ActionKind, resource: &Resource) -> Self {
        let mut principals = vec![
            PrincipalKey::Any,
            PrincipalKey::Tenant(agent.tenant().to_string()),
        ];
        let segments: Vec<&str> = agent.spiffe_id().segments().take(4).collect();
        if let [_, tenant, _, name] = segments.as_slice() {
            principals.push(PrincipalKey::Agent(
                agent.trust_domain().to_owned(),
                (*tenant).to_owned(),
                (*name).to_owned(),
            ));
        }
        for (k, v) in agent.labels() {
            principals.push(PrincipalKey::Label(k.to_string(), v.to_string()));
        }
        let mut resources = vec![ResourceKey::Any];
        match resource {
            Resource::Service(n) | Resource::McpServer(n) | Resource::A2aPeer(n) => {
                resources.push(ResourceKey::Name(n.to_string()));
            }
            Resource::McpTool { server, .. }
            | Resource::McpResource { server, .. }
            | Resource::McpPrompt { server, .. } => {
                resources.push(ResourceKey::Name(server.to_string()));
            }
            Resource::Host { host, .. } => {
                resources.push(ResourceKey::Host(host.to_string()));
                if let Host::Dns(name) = host {
                    let mut rest = name.as_str();
                    while let Some((_, suffix)) = rest.split_once('.') {
                        resources.push(ResourceKey::HostSuffix(suffix.to_owned()));
                        rest = suffix;
                    }
                }
            }
        }
        Self {
            kind,
            principals,
            resources,
        }
    }
}

/// A policy with the keys it is filed under: `kinds` empty means every kind, `resources` empty
/// means any resource.
pub struct Indexed {
    pub policy: Policy,
    pub principals: Vec<PrincipalKey>,
    pub kinds: Vec<ActionKind>,
    pub resources: Vec<ResourceKey>,
    /// The structural part, for generated policies.
    pub matcher: Option<Matcher>,
    /// What Cedar evaluates once the matcher holds; `None` when the matcher decides alone.
    pub residual: Option<Policy>,
}

/// A set of Cedar policies with its slicing index.
///
/// Sliced evaluation runs each candidate on its own (a one-policy set built at load) and combines
/// the results as Cedar would; one set per distinct candidate list would be cheaper per call but
/// needs a cache that the number of agent × resource combinations outgrows.
pub struct SlicedSet {
    /// Per policy: what Cedar evaluates when sliced (the residual, or the whole raw policy);
    /// `None` when the matcher decides alone.
    singles: Vec<Option<PolicySet>>,
    matchers: Vec<Option<Matcher>>,
    forbids: Vec<bool>,
    entries: Vec<Entry>,
    all: PolicySet,
    by_principal: FastMap<PrincipalKey, Vec<u32>>,
    by_resource: FastMap<(ActionKind, ResourceKey), Vec<u32>>,
}

impl SlicedSet {
    /// Builds the index over `policies`, in order. Fails only if two policies share an id.
    pub fn new(policies: Vec<Indexed>) -> Result<Self, String> {
        let mut by_principal: FastMap<PrincipalKey, Vec<u32>> = FastMap::default();
        let mut by_resource: FastMap<(ActionKind, ResourceKey), Vec<u32>> = FastMap::default();
        let mut entries = Vec::with_capacity(policies.len());
        let mut cedar = Vec::with_capacity(policies.len());
        let mut singles = Vec::with_capacity(policies.len());
        let mut matchers = Vec::with_capacity(policies.len());
        for (
            i,
            Indexed {
                policy,
                principals,
                kinds,
                resources,
                matcher,
                residual,
            },
        ) in policies.into_iter().enumerate()
        {
            let sliced = match (&matcher, residual) {
                (None, _) => Some(policy.clone()),
                (Some(_), residual) => residual,
            };
            singles.push(
                sliced
                    .map(|p| PolicySet::from_policies([p]).map_err(|e| e.to_string()))
                    .transpose()?,
            );
            matchers.push(matcher);
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let kinds: Vec<ActionKind> = if kinds.is_empty() {
                ActionKind::ALL.to_vec()
            } else {
                kinds
            };
            for key in &principals {
                push_unique(by_principal.entry(key.clone()).or_default(), i);
            }
            for kind in &kinds {
                if resources.is_empty() {
                    push_unique(by_resource.entry((*kind, ResourceKey::Any)).or_default(), i);
                }
                for key in &resources {
                    push_unique(by_resource.entry((*kind, key.clone())).or_default(), i);
                }
            }
            entries.push(Entry {
                principals,
                kinds: kinds.iter().fold(0, |bits, k| bits | kind_bit(*k)),
                resources,
            });
            cedar.push(policy);
        }
        let all = PolicySet::from_policies(cedar.iter().cloned()).map_err(|e| e.to_string())?;
        let forbids = cedar
            .iter()
            .map(|p| p.effect() == cedar_policy::Effect::Forbid)
            .collect();
        Ok(Self {
            singles,
            matchers,
            forbids,
            entries,
            all,
            by_principal,
            by_resource,
        })
    }

    pub fn len(&self) -> usize {
        self.singles.len()
    }

    /// Every policy, for unsliced evaluation.
    pub fn all(&self) -> &PolicySet {
        &self.all
    }

    /// What Cedar evaluates for policy `i` when sliced, if anything.
    pub fn single(&self, i: u32) -> Option<&PolicySet> {
        self.singles[i as usize].as_ref()
    }

    pub fn matcher(&self, i: u32) -> Option<&Matcher> {
        self.matchers[i as usize].as_ref()
    }

    pub fn is_forbid(&self, i: u32) -> bool {
        self.forbids[i as usize]
    }

    /// Indices of the policies that can apply to a request with these keys, ascending.
    pub fn candidates(&self, keys: &RequestKeys) -> Vec<u32> {
        let empty = Vec::new();
        let principal_lists: Vec<&Vec<u32>> = keys
            .principals
            .iter()
            .map(|k| self.by_principal.get(k).unwrap_or(&empty))
            .collect();
        let resource_lists: Vec<&Vec<u32>> = keys
            .resources
            .iter()
            .map(|k| {
                self.by_resource
                    .get(&(keys.kind, k.clone()))
                    .unwrap_or(&empty)
            })
            .collect();
        let principal_total: usize = principal_lists.iter().map(|l| l.len()).sum();
        let resource_total: usize = resource_lists.iter().map(|l| l.len()).sum();
        let bit = kind_bit(keys.kind);
        let mut out: Vec<u32> = if principal_total <= resource_total {
            principal_lists
                .into_iter()
                .flatten()
                .copied()
                .filter(|i| {
                    let e = &self.entries[*i as usize];
                    e.kinds & bit != 0
                        && (e.resources.is_empty()
                            || e.resources.iter().any(|r| keys.resources.contains(r)))
                })
                .collect()
        } else {
            resource_lists
                .into_iter()
                .flatten()
                .copied()
                .filter(|i| {
                    self.entries[*i as usize]
                        .principals
                        .iter()
                        .any(|p| keys.principals.contains(p))
                })
                .collect()
        };
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn push_unique(list: &mut Vec<u32>, i: u32) {
    if list.last() != Some(&i) {
        list.push(i);
    }
}
