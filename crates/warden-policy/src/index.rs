//! Slicing: an index over compiled policies so a decision evaluates only the few that can apply.
//!
//! Every policy is filed under keys that over-approximate what it can match (a label its selector
//! requires, the agent name its SPIFFE pattern fixes, the MCP server or host it names). A request
//! computes its own keys and gathers the policies filed under them. A policy is left out only if
//! it provably cannot match, so slicing never changes a decision; a property test checks that.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use cedar_policy::{Policy, PolicySet};
use warden_model::{Action, ActionKind, AgentIdentity, Host};

use crate::bundle::parse_numbered;
use crate::compile::{PrincipalKey, ResourceKey};
use crate::matcher::Matcher;

/// Hash maps on the decision path: foldhash is several times faster than SipHash on these short
/// keys and is seeded per process, so keys chosen by a caller cannot be aimed at collisions.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An index key: which kind of key it is (one bit) and a 64-bit hash of its parts.
///
/// The index only has to over-approximate — every candidate is checked exactly afterwards — so a
/// hash collision can at most add a candidate, never lose one, and selecting candidates compares
/// integers instead of chasing strings across the heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    variant: u8,
    hash: u64,
}

const KEY_HASHER: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x7761_7264_656e);

const ANY_PRINCIPAL: u8 = 1;
const TENANT: u8 = 2;
const AGENT: u8 = 4;
const LABEL: u8 = 8;
const ANY_RESOURCE: u8 = 16;
const NAME: u8 = 32;
const HOST: u8 = 64;
const HOST_SUFFIX: u8 = 128;

fn key(variant: u8, parts: &[&str]) -> Key {
    let mut hasher = KEY_HASHER.build_hasher();
    variant.hash(&mut hasher);
    for part in parts {
        part.hash(&mut hasher);
    }
    Key {
        variant,
        hash: hasher.finish(),
    }
}

fn principal_key(k: &PrincipalKey) -> Key {
    match k {
        PrincipalKey::Any => key(ANY_PRINCIPAL, &[]),
        PrincipalKey::Tenant(t) => key(TENANT, &[t]),
        PrincipalKey::Agent(td, t, n) => key(AGENT, &[td, t, n]),
        PrincipalKey::Label(k, v) => key(LABEL, &[k, v]),
    }
}

fn resource_key(k: &ResourceKey) -> Key {
    match k {
        ResourceKey::Name(n) => key(NAME, &[n]),
        ResourceKey::Host(h) => key(HOST, &[h]),
        ResourceKey::HostSuffix(s) => key(HOST_SUFFIX, &[s]),
    }
}

#[derive(Clone, Copy)]
struct Posting {
    policy: u32,
    /// Bit per [`ActionKind`]; all bits for "every kind".
    kinds: u16,
}

struct Entry {
    /// Ranges into the set's key arena; an empty resource range means any resource.
    principals: (u32, u32),
    resources: (u32, u32),
}

/// Index keys of one request.
pub struct RequestKeys {
    kind: ActionKind,
    principals: Vec<Key>,
    resources: Vec<Key>,
}

fn kind_bit(kind: ActionKind) -> u16 {
    let position = ActionKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    1 << position
}

impl RequestKeys {
    pub fn new(agent: &AgentIdentity, action: &Action) -> Self {
        let mut principals = vec![
            key(ANY_PRINCIPAL, &[]),
            key(TENANT, &[agent.tenant().as_str()]),
        ];
        let mut segments = agent.spiffe_id().segments();
        if let (Some(_), Some(tenant), Some(_), Some(name)) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            principals.push(key(AGENT, &[agent.trust_domain(), tenant, name]));
        }
        for (k, v) in agent.labels() {
            principals.push(key(LABEL, &[k.as_str(), v.as_str()]));
        }
        let mut resources = vec![key(ANY_RESOURCE, &[])];
        match action {
            Action::Http { service: n, .. }
            | Action::McpToolsList { server: n }
            | Action::McpClientMessage { server: n, .. }
            | Action::A2a { peer: n, .. } => {
                resources.push(key(NAME, &[n.as_str()]));
            }
            Action::McpToolsCall { server, .. }
            | Action::McpResourcesRead { server, .. }
            | Action::McpPromptsGet { server, .. } => {
                resources.push(key(NAME, &[server.as_str()]));
            }
            Action::EgressConnect { host, .. } => match host {
                Host::Dns(name) => {
                    resources.push(key(HOST, &[name]));
                    let mut rest = name.as_str();
                    while let Some((_, suffix)) = rest.split_once('.') {
                        resources.push(key(HOST_SUFFIX, &[suffix]));
                        rest = suffix;
                    }
                }
                // Host patterns never name an address (those are CIDR rules, filed under
                // "any resource"), so there is no key to look up.
                Host::Ip(_) => {}
            },
        }
        Self {
            kind: action.kind(),
            principals,
            resources,
        }
    }
}

/// A policy with the keys it is filed under: `kinds` empty means every kind, `resources` empty
/// means any resource.
pub struct Indexed {
    /// The policy's global number (its Cedar id is `p<number>`) and its text.
    pub number: usize,
    pub text: Arc<str>,
    /// The parsed policy, where Cedar evaluates it (raw Cedar); `None` when the matcher decides
    /// alone or only the residual is evaluated.
    pub policy: Option<Policy>,
    pub forbid: bool,
    pub principals: Vec<PrincipalKey>,
    pub kinds: Vec<ActionKind>,
    pub resources: Vec<ResourceKey>,
    /// The structural part, for generated policies.
    pub matcher: Option<Matcher>,
    /// What Cedar evaluates once the matcher holds; `None` when the matcher decides alone.
    pub residual: Option<Policy>,
    /// The event gate the policy depends on.
    pub gate: Option<usize>,
}

/// A set of Cedar policies with its slicing index.
///
/// Sliced evaluation checks each candidate's [`Matcher`] and gives Cedar only what is left — a
/// residual condition or a raw policy, each a one-policy set built at load — combining the results
/// as Cedar would. (One set per distinct candidate list needs a cache that the number of
/// agent × resource combinations outgrows.)
pub struct SlicedSet {
    /// Per policy: what Cedar evaluates when sliced (the residual, or the whole raw policy);
    /// `None` when the matcher decides alone.
    singles: Vec<Option<PolicySet>>,
    matchers: Vec<Option<Matcher>>,
    forbids: Vec<bool>,
    entries: Vec<Entry>,
    /// Every policy in one set, for unsliced evaluation: built from the texts on first use, so a
    /// gateway that only slices never holds a second copy of every policy.
    all: OnceLock<Result<PolicySet, String>>,
    texts: Vec<(usize, Arc<str>)>,
    gates: Vec<Option<usize>>,
    /// The keys of every entry, end to end.
    arena: Vec<Key>,
    /// Posting lists: policy and its kind bits, so the wrong kinds are skipped without touching
    /// their entries.
    by_principal: FastMap<Key, Vec<Posting>>,
    /// Filed by resource key alone; the kind is checked on each posting.
    by_resource: FastMap<Key, Vec<Posting>>,
    /// Which key variants have any policy filed under them: probing a big table for a variant
    /// no policy uses costs a cache miss for nothing.
    principal_variants: u8,
    resource_variants: u8,
}

impl SlicedSet {
    /// Builds the index over `policies`, in order. Fails only if two policies share an id.
    pub fn new(policies: Vec<Indexed>) -> Result<Self, String> {
        let mut by_principal: FastMap<Key, Vec<Posting>> = FastMap::default();
        let mut by_resource: FastMap<Key, Vec<Posting>> = FastMap::default();
        let mut arena: Vec<Key> = Vec::new();
        let mut gates = Vec::with_capacity(policies.len());
        let mut entries = Vec::with_capacity(policies.len());
        let mut forbids = Vec::with_capacity(policies.len());
        let mut singles = Vec::with_capacity(policies.len());
        let mut matchers = Vec::with_capacity(policies.len());
        let mut texts = Vec::with_capacity(policies.len());
        for (
            i,
            Indexed {
                number,
                text,
                policy,
                forbid,
                principals,
                kinds,
                resources,
                matcher,
                residual,
                gate,
            },
        ) in policies.into_iter().enumerate()
        {
            gates.push(gate);
            texts.push((number, text));
            let sliced = match (&matcher, residual) {
                (None, _) => Some(policy.ok_or_else(|| {
                    format!("p{number}: neither a matcher nor a Cedar policy decides it")
                })?),
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
            let posting = Posting {
                policy: i,
                kinds: kinds.iter().fold(0, |bits, k| bits | kind_bit(*k)),
            };
            let start = arena_len(&arena);
            for k in principals.iter().map(principal_key) {
                push_unique(by_principal.entry(k).or_default(), posting);
                arena.push(k);
            }
            let middle = arena_len(&arena);
            if resources.is_empty() {
                push_unique(
                    by_resource.entry(key(ANY_RESOURCE, &[])).or_default(),
                    posting,
                );
            }
            for k in resources.iter().map(resource_key) {
                push_unique(by_resource.entry(k).or_default(), posting);
                arena.push(k);
            }
            entries.push(Entry {
                principals: (start, middle),
                resources: (middle, arena_len(&arena)),
            });
            forbids.push(forbid);
        }
        let principal_variants = by_principal.keys().fold(0, |bits, k| bits | k.variant);
        let resource_variants = by_resource.keys().fold(0, |bits, k| bits | k.variant);
        Ok(Self {
            singles,
            matchers,
            gates,
            arena,
            principal_variants,
            resource_variants,
            forbids,
            entries,
            all: OnceLock::new(),
            texts,
            by_principal,
            by_resource,
        })
    }

    pub fn len(&self) -> usize {
        self.singles.len()
    }

    /// Every policy, for unsliced evaluation.
    pub fn all(&self) -> Result<&PolicySet, String> {
        self.all
            .get_or_init(|| {
                let texts: Vec<(usize, &str)> =
                    self.texts.iter().map(|(n, t)| (*n, &**t)).collect();
                let parsed = parse_numbered(&texts).map_err(|failures| {
                    failures
                        .into_iter()
                        .map(|(n, e)| format!("p{n}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                })?;
                PolicySet::from_policies(parsed.into_iter().map(|(_, p)| p))
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
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
        let principal_lists: Vec<&Vec<Posting>> = keys
            .principals
            .iter()
            .filter(|k| self.principal_variants & k.variant != 0)
            .filter_map(|k| self.by_principal.get(k))
            .collect();
        let resource_lists: Vec<&Vec<Posting>> = keys
            .resources
            .iter()
            .filter(|k| self.resource_variants & k.variant != 0)
            .filter_map(|k| self.by_resource.get(k))
            .collect();
        let principal_total: usize = principal_lists.iter().map(|l| l.len()).sum();
        let resource_total: usize = resource_lists.iter().map(|l| l.len()).sum();
        let bit = kind_bit(keys.kind);
        let keys_of = |range: (u32, u32)| &self.arena[range.0 as usize..range.1 as usize];
        let (lists, other_side_matches): (_, &dyn Fn(&Entry) -> bool) =
            if principal_total <= resource_total {
                (principal_lists, &|e: &Entry| {
                    let resources = keys_of(e.resources);
                    resources.is_empty() || resources.iter().any(|r| keys.resources.contains(r))
                })
            } else {
                (resource_lists, &|e: &Entry| {
                    keys_of(e.principals)
                        .iter()
                        .any(|p| keys.principals.contains(p))
                })
            };
        let mut out: Vec<u32> = lists
            .into_iter()
            .flatten()
            .filter(|p| p.kinds & bit != 0 && other_side_matches(&self.entries[p.policy as usize]))
            .map(|p| p.policy)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The event gate policy `i` depends on.
    pub fn gate(&self, i: u32) -> Option<usize> {
        self.gates[i as usize]
    }
}

fn arena_len(arena: &[Key]) -> u32 {
    u32::try_from(arena.len()).unwrap_or(u32::MAX)
}

fn push_unique(list: &mut Vec<Posting>, posting: Posting) {
    if list.last().is_none_or(|last| last.policy != posting.policy) {
        list.push(posting);
    }
}
