//! Exact Rust evaluation of the structural part of compiled policies.
//!
//! A generated policy is `scope ∧ selector ∧ target ∧ when ∧ extra`. Everything but the author's
//! `when` is a fixed shape over the agent and the action, and evaluating it through Cedar's AST
//! interpreter dominates a sliced decision. So the compiler also builds a [`Matcher`] for that
//! shape and a *residual* Cedar policy holding only the `when` (and the extra clause that follows
//! it). Sliced evaluation runs the matcher and hands Cedar only residuals; unsliced evaluation
//! runs the full Cedar text. The two must agree on every request — outcome, reason, errors and
//! deciding policies — which the slicing property test checks.
//!
//! Mirroring Cedar exactly means: the same canonical values the engine puts in the request, the
//! same `like` semantics (`*` only; patterns never contain `\`), and conditions evaluated in the
//! order Cedar evaluates them, so an error surfaces (or is short-circuited) the same way.

use std::collections::BTreeSet;

use warden_model::{Action, ActionKind, AgentIdentity, DecisionRequest, Host, Protocol};

use crate::pattern::{HostPattern, NamePattern, PortRange, SegmentPattern, UriPattern, cedar_str};

/// A label condition of a selector.
#[derive(Debug, Clone)]
pub enum LabelTest {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// The agents a selector selects.
#[derive(Debug, Clone, Default)]
pub struct SelectorMatcher {
    pub tenant: Option<String>,
    pub labels: Vec<LabelTest>,
    /// Trust domain and path pattern; any may match. Empty means no SPIFFE constraint.
    pub spiffe_ids: Vec<(String, SegmentPattern)>,
}

impl SelectorMatcher {
    pub fn matches(&self, agent: &AgentIdentity) -> bool {
        if self
            .tenant
            .as_deref()
            .is_some_and(|t| t != agent.tenant().as_str())
        {
            return false;
        }
        let label = |key: &str| {
            agent
                .labels()
                .iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v.as_str())
        };
        let labels_hold = self.labels.iter().all(|test| match test {
            LabelTest::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelTest::In(k, values) => label(k).is_some_and(|v| values.iter().any(|x| x == v)),
            LabelTest::NotIn(k, values) => label(k).is_none_or(|v| !values.iter().any(|x| x == v)),
            LabelTest::Exists(k) => label(k).is_some(),
            LabelTest::DoesNotExist(k) => label(k).is_none(),
        });
        if !labels_hold {
            return false;
        }
        if self.spiffe_ids.is_empty() {
            return true;
        }
        let segments: Vec<&str> = agent.spiffe_id().segments().collect();
        self.spiffe_ids
            .iter()
            .any(|(td, pattern)| td == agent.trust_domain() && pattern.matches(&segments))
    }
}

/// One destination of an egress rule.
#[derive(Debug, Clone)]
pub enum Destination {
    Host(HostPattern),
    Cidr(ipnet::IpNet),
}

/// The action side of one clause.
#[derive(Debug, Clone)]
pub enum TargetMatcher {
    /// Every action of the clause's kinds (limits).
    Any,
    Egress {
        destinations: Vec<Destination>,
        ports: Vec<PortRange>,
        protocol: Option<Protocol>,
    },
    Http {
        service: NamePattern,
        /// `None` when `*` is among the methods.
        methods: Option<Vec<String>>,
        paths: Vec<SegmentPattern>,
    },
    Tools {
        server: NamePattern,
        tools: Vec<NamePattern>,
    },
    ToolList {
        server: NamePattern,
    },
    ClientMessages {
        server: NamePattern,
    },
    Resources {
        server: NamePattern,
        /// `None` for `*`.
        uris: Vec<Option<UriPattern>>,
    },
    Prompts {
        server: NamePattern,
        prompts: Vec<NamePattern>,
    },
    Peers {
        peers: Vec<NamePattern>,
    },
}

fn any_name(patterns: &[NamePattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

impl TargetMatcher {
    /// Whether this is an egress rule with a host pattern `host` matches.
    pub fn names_host(&self, host: &Host) -> bool {
        match self {
            Self::Egress { destinations, .. } => destinations
                .iter()
                .any(|d| matches!(d, Destination::Host(pattern) if pattern.matches(host))),
            _ => false,
        }
    }

    pub fn matches(&self, action: &Action) -> bool {
        match (self, action) {
            (Self::Any, _) => true,
            (
                Self::Egress {
                    destinations,
                    ports,
                    protocol,
                },
                Action::EgressConnect {
                    host,
                    port,
                    protocol: actual,
                    ip,
                },
            ) => {
                let address = ip.or(match host {
                    Host::Ip(ip) => Some(*ip),
                    Host::Dns(_) => None,
                });
                destinations.iter().any(|d| match d {
                    Destination::Host(pattern) => pattern.matches(host),
                    Destination::Cidr(net) => address.is_some_and(|a| net.contains(&a)),
                }) && (ports.is_empty() || ports.iter().any(|r| (r.low..=r.high).contains(port)))
                    && protocol.is_none_or(|p| p == *actual)
            }
            (
                Self::Http {
                    service: s,
                    methods,
                    paths,
                },
                Action::Http {
                    service,
                    method,
                    path,
                },
            ) => {
                let segments: Vec<&str> = path
                    .as_str()
                    .split('/')
                    .skip(1)
                    .filter(|s| !s.is_empty())
                    .collect();
                s.matches(service.as_str())
                    && methods
                        .as_ref()
                        .is_none_or(|m| m.iter().any(|x| x == method.as_str()))
                    && paths.iter().any(|p| p.matches(&segments))
            }
            (Self::Tools { server: s, tools }, Action::McpToolsCall { server, tool, .. }) => {
                s.matches(server.as_str()) && any_name(tools, tool.as_str())
            }
            (Self::ToolList { server: s }, Action::McpToolsList { server })
            | (
                Self::ToolList { server: s } | Self::ClientMessages { server: s },
                Action::McpClientMessage { server, .. },
            ) => s.matches(server.as_str()),
            (Self::Resources { server: s, uris }, Action::McpResourcesRead { server, uri }) => {
                s.matches(server.as_str())
                    && uris
                        .iter()
                        .any(|u| u.as_ref().is_none_or(|p| p.matches(uri)))
            }
            (
                Self::Prompts { server: s, prompts },
                Action::McpPromptsGet { server, prompt, .. },
            ) => s.matches(server.as_str()) && any_name(prompts, prompt.as_str()),
            (Self::Peers { peers }, Action::A2a { peer, .. }) => any_name(peers, peer.as_str()),
            _ => false,
        }
    }
}

/// The clause a policy carries after its `when`: event gates, approvals, limits.
#[derive(Debug, Clone)]
pub enum Extra {
    None,
    /// Holds while the gate is satisfied (the gate's permit).
    GateOpen {
        gate: usize,
        id: String,
    },
    /// Holds while the gate is not satisfied (the gate's forbid).
    GateClosed {
        gate: usize,
        id: String,
    },
    /// Holds until an approval satisfies the requirement.
    NotApproved {
        requirement: String,
    },
    RequestsAtLeast(i64),
    BytesOver(i64),
}

impl Extra {
    /// The clause in Cedar, appended to the policy text.
    pub fn cedar(&self) -> Option<String> {
        Some(match self {
            Self::None => return None,
            Self::GateOpen { id, .. } => {
                format!("when {{ context.gates.contains({}) }}", cedar_str(id))
            }
            Self::GateClosed { id, .. } => {
                format!("unless {{ context.gates.contains({}) }}", cedar_str(id))
            }
            Self::NotApproved { requirement } => {
                format!(
                    "unless {{ context.approved.contains({}) }}",
                    cedar_str(requirement)
                )
            }
            Self::RequestsAtLeast(n) => {
                format!("when {{ context.usage.requests_last_minute >= {n} }}")
            }
            Self::BytesOver(n) => {
                format!("when {{ context.usage.bytes_last_hour + context.body_bytes > {n} }}")
            }
        })
    }

    /// Evaluates the clause as Cedar would, including Cedar's overflow error.
    pub fn holds(
        &self,
        request: &DecisionRequest,
        open_gates: &BTreeSet<usize>,
    ) -> Result<bool, String> {
        let saturate = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Ok(match self {
            Self::None => true,
            Self::GateOpen { gate, .. } => open_gates.contains(gate),
            Self::GateClosed { gate, .. } => !open_gates.contains(gate),
            Self::NotApproved { requirement } => {
                !request.context.approved.iter().any(|a| a == requirement)
            }
            Self::RequestsAtLeast(n) => saturate(request.context.usage.requests_last_minute) >= *n,
            Self::BytesOver(n) => {
                let total = saturate(request.context.usage.bytes_last_hour)
                    .checked_add(saturate(request.context.body_bytes))
                    .ok_or_else(|| {
                        "integer overflow adding bytes_last_hour and body_bytes".to_owned()
                    })?;
                total > *n
            }
        })
    }
}

/// The structural part of one compiled policy.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub kinds: Vec<ActionKind>,
    pub selector: std::sync::Arc<SelectorMatcher>,
    pub target: TargetMatcher,
    /// Evaluated here only when the policy has no residual; otherwise it is part of it.
    pub extra: Extra,
}

impl Matcher {
    /// Whether scope, selector and target hold.
    pub fn matches(&self, request: &DecisionRequest) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&request.action.kind()))
            && self.selector.matches(&request.agent)
            && self.target.matches(&request.action)
    }
}
