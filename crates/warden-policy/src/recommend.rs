//! Least privilege from traffic: AgentPolicy documents that allow what each agent was seen doing
//! (its allowed calls in the audit log) and nothing more, a ToolCatalog declaring the argument
//! types their conditions read, and a PolicyTest suite replaying the same calls.
//!
//! What is generalized, and how (docs/policy.md, "Recommending policies"):
//! - a tool's string argument seen with few token-like values (no spaces, at most 64 bytes) is
//!   limited to them; otherwise to their common prefix up to a separator, when there is one; an integer to the range seen; a boolean
//!   seen with one value to that value; an argument not carried by every call may be absent;
//! - an HTTP path segment that looks like an identifier (digits, a UUID, a long hex or token)
//!   becomes `*`;
//! - everything else is kept exactly as seen: tools, servers, services, methods, hosts, ports,
//!   addresses (as `/32` or `/128`), resources, prompts, peers.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// String values remembered per argument before only their common prefix is kept.
const MAX_DISTINCT: usize = 64;
/// At most this many distinct values become an enumeration.
const MAX_ENUMERATED: usize = 8;
/// Shortest common prefix worth a `like` condition.
const MIN_PREFIX: usize = 3;
/// Test cases generated per agent (distinct calls, first seen first).
const MAX_CASES: usize = 200;
/// Distinct tools, routes, hosts… remembered per agent; beyond, calls are counted as skipped.
const MAX_PER_AGENT: usize = 10_000;

/// What [`Recommender::observe`] made of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// An allowed call, now part of its agent's recommendation.
    Used,
    /// Not a call to learn from: refused, a result's review, a detection, or malformed.
    Ignored,
    /// An allowed call past the bound on what one agent's recommendation remembers.
    OverBound,
}

/// Reads allowed calls, one audit record at a time, and writes the policies they imply.
#[derive(Default)]
pub struct Recommender {
    agents: BTreeMap<String, AgentUse>,
}

/// The recommended bundle: file names and their YAML, and per agent what it covers.
#[derive(Debug)]
pub struct Recommendation {
    pub files: Vec<(String, String)>,
    pub agents: Vec<AgentSummary>,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSummary {
    /// The agents the policy selects (a SPIFFE ID pattern: every instance).
    pub selects: String,
    pub calls: u64,
    pub tools: usize,
    pub routes: usize,
    pub destinations: usize,
    pub peers: usize,
    pub over_bound: u64,
}

#[derive(Default)]
struct AgentUse {
    tenant: String,
    name: String,
    calls: u64,
    over_bound: u64,
    remembered: usize,
    tools: BTreeMap<(String, String), BTreeMap<String, ArgUse>>,
    tool_calls: BTreeMap<(String, String), u64>,
    listed: BTreeSet<String>,
    resources: BTreeMap<String, BTreeSet<String>>,
    prompts: BTreeMap<String, BTreeSet<String>>,
    /// `service path` → methods.
    routes: BTreeMap<String, BTreeSet<String>>,
    /// `protocol host` → ports.
    destinations: BTreeMap<String, BTreeSet<String>>,
    peers: BTreeMap<String, BTreeSet<String>>,
    cases: Vec<Value>,
    cased: BTreeSet<String>,
}

/// Everything seen of one argument of one tool.
#[derive(Default, Clone)]
struct ArgUse {
    present: u64,
    strings: u64,
    integers: u64,
    booleans: u64,
    others: u64,
    distinct: Option<BTreeSet<String>>,
    prefix: Option<String>,
    range: Option<(i64, i64)>,
    bools: BTreeSet<bool>,
}

impl ArgUse {
    fn observe(&mut self, value: &Value) {
        self.present += 1;
        match value {
            Value::String(s) => {
                self.strings += 1;
                if self.strings == 1 {
                    self.distinct = Some(BTreeSet::new());
                }
                if let Some(distinct) = &mut self.distinct {
                    distinct.insert(s.clone());
                    if distinct.len() > MAX_DISTINCT {
                        self.distinct = None;
                    }
                }
                self.prefix = Some(match self.prefix.take() {
                    None => s.clone(),
                    Some(prefix) => common_prefix(&prefix, s).to_owned(),
                });
            }
            Value::Number(n) => match n.as_i64() {
                Some(i) => {
                    self.integers += 1;
                    self.range = Some(match self.range {
                        None => (i, i),
                        Some((lo, hi)) => (lo.min(i), hi.max(i)),
                    });
                }
                None => self.others += 1,
            },
            Value::Bool(b) => {
                self.booleans += 1;
                self.bools.insert(*b);
            }
            _ => self.others += 1,
        }
    }

    /// The one JSON Schema type every value had, when it is one conditions can read.
    fn kind(&self) -> Option<&'static str> {
        let only = |n: u64| n == self.present;
        if only(self.strings) {
            Some("string")
        } else if only(self.integers) {
            Some("integer")
        } else if only(self.booleans) {
            Some("boolean")
        } else {
            None
        }
    }

    /// The Cedar condition on this argument's value, if what was seen narrows it.
    fn condition(&self, name: &str) -> Option<String> {
        let arg = format!("context.args.{name}");
        match self.kind()? {
            "string" => {
                // Names, ids and keywords are enumerated; free text (spaces, long values) is not
                // a set of choices, however few were seen.
                let token_like = |v: &String| v.len() <= 64 && !v.contains(char::is_whitespace);
                if let Some(distinct) = self
                    .distinct
                    .as_ref()
                    .filter(|d| d.len() <= MAX_ENUMERATED && d.iter().all(token_like))
                {
                    let values: Vec<String> = distinct.iter().map(|v| cedar_string(v)).collect();
                    return Some(if values.len() == 1 {
                        format!("{arg} == {}", values[0])
                    } else {
                        format!("[{}].contains({arg})", values.join(", "))
                    });
                }
                let prefix = separated_prefix(self.prefix.as_deref()?)?;
                Some(format!("{arg} like {}", cedar_like_prefix(prefix)))
            }
            "integer" => {
                let (lo, hi) = self.range?;
                Some(if lo == hi {
                    format!("{arg} == {lo}")
                } else {
                    format!("{arg} >= {lo} && {arg} <= {hi}")
                })
            }
            "boolean" if self.bools.len() == 1 => {
                Some(format!("{arg} == {}", self.bools.contains(&true)))
            }
            _ => None,
        }
    }
}

fn common_prefix<'a>(a: &'a str, b: &str) -> &'a str {
    let end = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or_else(|| a.len().min(b.len()), |((i, _), _)| i);
    &a[..end]
}

/// The common prefix cut back to its last separator, so `acme/web` and `acme/api` give `acme/`
/// rather than `acme/` plus whatever letters happened to match.
fn separated_prefix(prefix: &str) -> Option<&str> {
    let end = prefix.rfind(['/', ':', '.', '-', '_', '@'])? + 1;
    (end >= MIN_PREFIX).then(|| &prefix[..end])
}

fn cedar_string(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "\"\"".into())
}

/// A `like` pattern matching everything that starts with `prefix` (its own `*`s escaped).
fn cedar_like_prefix(prefix: &str) -> String {
    let quoted = cedar_string(prefix);
    let inner = &quoted[1..quoted.len() - 1];
    format!("\"{}*\"", inner.replace('*', "\\*"))
}

/// Whether a path segment names one thing among many (an id), not a route.
fn is_identifier(segment: &str) -> bool {
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    let hex = segment.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    !segment.is_empty()
        && (digits == segment.len()
            || (hex && segment.len() >= 12 && digits > 0)
            || (segment.len() >= 16 && digits >= 4))
}

/// A path with its id-like segments (digits, UUIDs, long hex or tokens) as `*`: the route, not
/// the resource (`/v1/invoices/42` → `/v1/invoices/*`).
pub fn route_pattern(path: &str) -> String {
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| if is_identifier(s) { "*" } else { s })
        .collect();
    segments.join("/")
}

/// A SPIFFE ID with every instance replaced by `*`: all instances of the agent (and of its
/// parents, for a sub-agent). `None` when it is not an agent ID.
fn agent_pattern(id: &str) -> Option<(String, String, String)> {
    let rest = id.strip_prefix("spiffe://")?;
    let (trust_domain, path) = rest.split_once('/')?;
    let parts: Vec<&str> = path.split('/').collect();
    let ["tenant", tenant, agents @ ..] = parts.as_slice() else {
        return None;
    };
    if agents.is_empty() || agents.len() % 3 != 0 {
        return None;
    }
    let mut pattern = format!("spiffe://{trust_domain}/tenant/{tenant}");
    let mut names = Vec::new();
    for triple in agents.chunks(3) {
        let ["agent", name, _instance] = triple else {
            return None;
        };
        pattern.push_str(&format!("/agent/{name}/*"));
        names.push(*name);
    }
    Some((pattern, (*tenant).to_owned(), names.join("-")))
}

impl Recommender {
    pub fn new() -> Self {
        Self::default()
    }

    /// Learns from one audit record: an allowed call (not a review of its result, not a
    /// detection) becomes part of its agent's recommendation.
    pub fn observe(&mut self, record: &Value) -> Observed {
        let field = |name: &str| record.get(name).and_then(Value::as_str);
        if field("outcome") != Some("allow") || record.get("phase").is_some_and(|p| !p.is_null()) {
            return Observed::Ignored;
        }
        let (Some(action), Some(agent)) = (field("action"), field("agent")) else {
            return Observed::Ignored;
        };
        let Some((pattern, tenant, name)) = agent_pattern(agent) else {
            return Observed::Ignored;
        };
        let target = record.get("target").and_then(Value::as_object);
        let text = |name: &str| target.and_then(|t| t.get(name)).and_then(Value::as_str);
        let uses = self.agents.entry(pattern).or_insert_with(|| AgentUse {
            tenant,
            name,
            ..AgentUse::default()
        });
        let arguments = record.get("arguments").and_then(Value::as_object);
        let port = || {
            target?
                .get("port")?
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
        };
        let learned = match action {
            "mcp.tools/call" => (|| {
                let key = (text("server")?.to_owned(), text("tool")?.to_owned());
                if !uses.tools.contains_key(&key) {
                    if !uses.room() {
                        return Some(false);
                    }
                    uses.remembered += 1;
                }
                let args = uses.tools.entry(key.clone()).or_default();
                for (arg, value) in arguments.into_iter().flatten() {
                    if args.len() < 256 || args.contains_key(arg) {
                        args.entry(arg.clone()).or_default().observe(value);
                    }
                }
                *uses.tool_calls.entry(key).or_default() += 1;
                Some(true)
            })(),
            "mcp.tools/list" => (|| {
                let server = text("server")?.to_owned();
                if uses.listed.contains(&server) {
                    return Some(true);
                }
                if !uses.room() {
                    return Some(false);
                }
                uses.remembered += 1;
                Some(uses.listed.insert(server))
            })(),
            "mcp.resources/read" => (|| {
                let (server, uri) = (text("server")?, text("uri")?);
                Some(uses.remember(|u| &mut u.resources, server, uri))
            })(),
            "mcp.prompts/get" => (|| {
                let (server, prompt) = (text("server")?, text("prompt")?);
                Some(uses.remember(|u| &mut u.prompts, server, prompt))
            })(),
            "http" => (|| {
                let (service, method) = (text("service")?, text("method")?);
                let key = format!("{service} {}", route_pattern(text("path")?));
                Some(uses.remember(|u| &mut u.routes, &key, method))
            })(),
            "egress.connect" => (|| {
                let key = format!("{} {}", text("protocol").unwrap_or("tcp"), text("host")?);
                Some(uses.remember(|u| &mut u.destinations, &key, &port()?.to_string()))
            })(),
            a2a if a2a.starts_with("a2a.") => (|| {
                let peer = text("peer")?;
                Some(uses.remember(|u| &mut u.peers, peer, &a2a["a2a.".len()..]))
            })(),
            _ => None,
        };
        match learned {
            None => Observed::Ignored,
            Some(false) => {
                uses.over_bound += 1;
                Observed::OverBound
            }
            Some(true) => {
                uses.calls += 1;
                uses.case(agent, action, target, arguments);
                Observed::Used
            }
        }
    }

    /// The policies, the catalog and the tests, by file name.
    pub fn finish(self) -> Recommendation {
        // One argument name has one type across every tool (the catalog's rule): a name used
        // with two types is constrained nowhere.
        let mut kinds: BTreeMap<String, Option<&'static str>> = BTreeMap::new();
        for uses in self.agents.values() {
            for args in uses.tools.values() {
                for (name, arg) in args {
                    let kind = arg.kind().filter(|_| is_identifier_name(name));
                    kinds
                        .entry(name.clone())
                        .and_modify(|k| {
                            if *k != kind {
                                *k = None;
                            }
                        })
                        .or_insert(kind);
                }
            }
        }
        let mut files = Vec::new();
        let mut summaries = Vec::new();
        let mut catalog: BTreeMap<String, BTreeMap<String, BTreeMap<String, &'static str>>> =
            BTreeMap::new();
        let mut cases = Vec::new();
        for (pattern, uses) in &self.agents {
            let document = uses.policy(pattern, &kinds);
            files.push((
                format!("{}-{}.yaml", uses.tenant, uses.name),
                format!(
                    "# Recommended by `warden policy recommend` from {} allowed call(s) of {pattern}:\n# what the agent did, and nothing more. Review before use.\n{}",
                    uses.calls,
                    yaml(&document)
                ),
            ));
            for ((server, tool), args) in &uses.tools {
                let declared = catalog
                    .entry(server.clone())
                    .or_default()
                    .entry(tool.clone())
                    .or_default();
                for name in args.keys() {
                    if let Some(Some(kind)) = kinds.get(name) {
                        declared.insert(name.clone(), kind);
                    }
                }
            }
            cases.extend(uses.cases.iter().cloned());
            summaries.push(AgentSummary {
                selects: pattern.clone(),
                calls: uses.calls,
                tools: uses.tools.len(),
                routes: uses.routes.len(),
                destinations: uses.destinations.len(),
                peers: uses.peers.len(),
                over_bound: uses.over_bound,
            });
        }
        if !catalog.is_empty() {
            let servers: Vec<Value> = catalog
                .into_iter()
                .map(|(server, tools)| {
                    let tools: Vec<Value> = tools
                        .into_iter()
                        .map(|(tool, args)| {
                            let properties: Map<String, Value> = args
                                .into_iter()
                                .map(|(name, kind)| (name, json!({"type": kind})))
                                .collect();
                            json!({"name": tool, "inputSchema": {"type": "object", "properties": properties}})
                        })
                        .collect();
                    json!({"name": server, "tools": tools})
                })
                .collect();
            let document = json!({
                "apiVersion": "warden.dev/v1alpha1",
                "kind": "ToolCatalog",
                "metadata": {"name": "recommended-tools"},
                "spec": {"servers": servers},
            });
            files.push((
                "catalog.yaml".into(),
                format!(
                    "# The argument types the recommended conditions read, as the calls carried them.\n# If your bundle has a ToolCatalog for these servers already, keep yours.\n{}",
                    yaml(&document)
                ),
            ));
        }
        if !cases.is_empty() {
            let document = json!({
                "apiVersion": "warden.dev/v1alpha1",
                "kind": "PolicyTest",
                "metadata": {"name": "recommended"},
                "spec": {"cases": cases},
            });
            files.push((
                "tests/recommended.test.yaml".into(),
                format!(
                    "# The calls the recommendation was made from: each must stay allowed.\n{}",
                    yaml(&document)
                ),
            ));
        }
        Recommendation {
            files,
            agents: summaries,
        }
    }
}

/// Whether `context.args.<name>` can be written (conditions read arguments by identifier).
fn is_identifier_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(
            name,
            "true" | "false" | "if" | "then" | "else" | "in" | "like" | "has" | "is"
        )
}

fn yaml(document: &Value) -> String {
    serde_yaml::to_string(document).unwrap_or_default()
}

impl AgentUse {
    /// Whether another distinct tool, route, host… may be remembered.
    fn room(&self) -> bool {
        self.remembered < MAX_PER_AGENT
    }

    /// Notes `value` under `key` in the map `of` picks; false when that would pass the bound.
    fn remember(
        &mut self,
        of: impl FnOnce(&mut Self) -> &mut BTreeMap<String, BTreeSet<String>>,
        key: &str,
        value: &str,
    ) -> bool {
        let room = self.room();
        let map = of(self);
        if map.get(key).is_some_and(|set| set.contains(value)) {
            return true;
        }
        if !room {
            return false;
        }
        map.entry(key.to_owned())
            .or_default()
            .insert(value.to_owned());
        self.remembered += 1;
        true
    }

    /// A test case for this call, unless an identical one exists or there are enough.
    fn case(
        &mut self,
        agent: &str,
        action: &str,
        target: Option<&Map<String, Value>>,
        arguments: Option<&Map<String, Value>>,
    ) {
        if self.cases.len() >= MAX_CASES {
            return;
        }
        let mut wire = target.cloned().unwrap_or_default();
        wire.insert("kind".into(), action.into());
        if let Some(arguments) = arguments {
            wire.insert("args".into(), Value::Object(arguments.clone()));
        }
        let key = Value::Object(wire.clone()).to_string();
        if !self.cased.insert(key) {
            return;
        }
        let described = describe(&wire);
        self.cases.push(json!({
            "name": format!("{} {described} (#{})", self.name, self.cases.len() + 1),
            "request": {"agent": {"spiffeId": agent}, "action": wire},
            "expect": "allow",
        }));
    }

    fn policy(&self, pattern: &str, kinds: &BTreeMap<String, Option<&'static str>>) -> Value {
        let mut spec = Map::new();
        spec.insert("selector".into(), json!({"spiffeIds": [pattern]}));
        let mut mcp = Vec::new();
        let servers: BTreeSet<&String> = self
            .tools
            .keys()
            .map(|(server, _)| server)
            .chain(self.listed.iter())
            .chain(self.resources.keys())
            .chain(self.prompts.keys())
            .collect();
        for server in servers {
            let mut unconditioned = Vec::new();
            for ((s, tool), args) in self.tools.range((server.clone(), String::new())..) {
                if s != server {
                    break;
                }
                let calls = self.tool_calls.get(&(s.clone(), tool.clone())).copied();
                let conditions: Vec<String> = args
                    .iter()
                    .filter(|(name, _)| matches!(kinds.get(*name), Some(Some(_))))
                    .filter_map(|(name, arg)| {
                        let condition = arg.condition(name)?;
                        Some(if Some(arg.present) == calls {
                            condition
                        } else {
                            format!("(!(context.args has {name}) || ({condition}))")
                        })
                    })
                    .collect();
                if conditions.is_empty() {
                    unconditioned.push(tool.clone());
                } else {
                    mcp.push(
                        json!({"server": server, "tools": [tool], "when": conditions.join(" && ")}),
                    );
                }
            }
            let mut rule = Map::new();
            rule.insert("server".into(), server.clone().into());
            if !unconditioned.is_empty() {
                rule.insert("tools".into(), json!(unconditioned));
            }
            if let Some(uris) = self.resources.get(server) {
                rule.insert("resources".into(), json!(uris));
            }
            if let Some(prompts) = self.prompts.get(server) {
                rule.insert("prompts".into(), json!(prompts));
            }
            // Listing alone (no tool called) still needs a rule of the server.
            let listed_only = self.listed.contains(server)
                && !self.tools.keys().any(|(s, _)| s == server)
                && rule.len() == 1;
            if listed_only {
                rule.insert("tools".into(), json!([]));
            }
            if rule.len() > 1 {
                mcp.push(Value::Object(rule));
            }
        }
        if !mcp.is_empty() {
            spec.insert("mcp".into(), Value::Array(mcp));
        }
        // Paths of a service with the same methods share a rule.
        let mut by_methods: BTreeMap<(&str, Vec<&String>), Vec<&str>> = BTreeMap::new();
        for (route, methods) in &self.routes {
            let (service, path) = route.split_once(' ').unwrap_or((route, "/"));
            by_methods
                .entry((service, methods.iter().collect()))
                .or_default()
                .push(path);
        }
        let http: Vec<Value> = by_methods
            .into_iter()
            .map(|((service, methods), paths)| {
                json!({"service": service, "methods": methods, "paths": paths})
            })
            .collect();
        if !http.is_empty() {
            spec.insert("http".into(), Value::Array(http));
        }
        let mut egress = Vec::new();
        // Destinations with the same ports and protocol share a rule: hosts, and addresses.
        type Destinations<'a> = (Vec<&'a str>, Vec<String>);
        let mut by_ports: BTreeMap<(Vec<u16>, &str), Destinations> = BTreeMap::new();
        for (destination, ports) in &self.destinations {
            let (protocol, host) = destination.split_once(' ').unwrap_or(("tcp", destination));
            let mut ports: Vec<u16> = ports.iter().filter_map(|p| p.parse().ok()).collect();
            ports.sort_unstable();
            let entry = by_ports.entry((ports, protocol)).or_default();
            match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(v4)) => entry.1.push(format!("{v4}/32")),
                Ok(std::net::IpAddr::V6(v6)) => entry.1.push(format!("{v6}/128")),
                Err(_) => entry.0.push(host),
            }
        }
        for ((ports, protocol), (hosts, cidrs)) in by_ports {
            if !hosts.is_empty() {
                egress.push(json!({"hosts": hosts, "ports": ports, "protocol": protocol}));
            }
            if !cidrs.is_empty() {
                egress.push(json!({"cidrs": cidrs, "ports": ports, "protocol": protocol}));
            }
        }
        if !egress.is_empty() {
            spec.insert("egress".into(), Value::Array(egress));
        }
        let a2a: Vec<Value> = self
            .peers
            .iter()
            .map(|(peer, methods)| json!({"peers": [peer], "methods": methods}))
            .collect();
        if !a2a.is_empty() {
            spec.insert("a2a".into(), Value::Array(a2a));
        }
        json!({
            "apiVersion": "warden.dev/v1alpha1",
            "kind": "AgentPolicy",
            "metadata": {"name": format!("{}-recommended", self.name), "namespace": self.tenant},
            "spec": spec,
        })
    }
}

/// A call in a few words, for a test case's name.
fn describe(wire: &Map<String, Value>) -> String {
    let text = |name: &str| wire.get(name).and_then(Value::as_str).unwrap_or_default();
    match text("kind") {
        "mcp.tools/call" => format!("calls {}/{}", text("server"), text("tool")),
        "mcp.tools/list" => format!("lists {}'s tools", text("server")),
        "mcp.resources/read" => format!("reads {}", text("uri")),
        "mcp.prompts/get" => format!("gets prompt {}/{}", text("server"), text("prompt")),
        "http" => format!("{} {} {}", text("method"), text("service"), text("path")),
        "egress.connect" => format!(
            "connects to {}:{}",
            text("host"),
            wire.get("port").and_then(Value::as_u64).unwrap_or_default()
        ),
        kind => format!("{kind} {}", text("peer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_in_paths_are_recognised() {
        assert_eq!(route_pattern("/v1/invoices/42"), "/v1/invoices/*");
        assert_eq!(
            route_pattern("/v1/users/3f2a9c1e-77b0-4c1a-9d2e-0a1b2c3d4e5f/keys"),
            "/v1/users/*/keys"
        );
        assert_eq!(route_pattern("/v2/status"), "/v2/status");
        assert_eq!(route_pattern("/api/v1/items"), "/api/v1/items");
    }

    #[test]
    fn agent_ids_become_patterns_over_their_instances() {
        assert_eq!(
            agent_pattern("spiffe://td/tenant/acme/agent/bot/i-1"),
            Some((
                "spiffe://td/tenant/acme/agent/bot/*".into(),
                "acme".into(),
                "bot".into()
            ))
        );
        assert_eq!(
            agent_pattern("spiffe://td/tenant/acme/agent/bot/i-1/agent/helper/h-2").map(|p| p.0),
            Some("spiffe://td/tenant/acme/agent/bot/*/agent/helper/*".into())
        );
        assert_eq!(agent_pattern("spiffe://td/tenant/acme"), None);
        assert_eq!(agent_pattern("spiffe://td/tenant/acme/agent/bot"), None);
    }

    #[test]
    fn string_arguments_narrow_to_values_or_a_prefix() {
        let mut few = ArgUse::default();
        for v in ["acme/web", "acme/api", "acme/web"] {
            few.observe(&json!(v));
        }
        assert_eq!(
            few.condition("repo").as_deref(),
            Some(r#"["acme/api", "acme/web"].contains(context.args.repo)"#)
        );
        let mut many = ArgUse::default();
        for i in 0..20 {
            many.observe(&json!(format!("acme/repo{i}")));
        }
        assert_eq!(
            many.condition("repo").as_deref(),
            Some(r#"context.args.repo like "acme/*""#)
        );
        let mut prose = ArgUse::default();
        prose.observe(&json!("please summarise the incident"));
        assert_eq!(prose.condition("text"), None);
        let mut unrelated = ArgUse::default();
        for i in 0..20 {
            unrelated.observe(&json!(format!("{i}x")));
        }
        assert_eq!(unrelated.condition("text"), None);
        let mut star = ArgUse::default();
        for i in 0..20 {
            star.observe(&json!(format!("a*b/{i}")));
        }
        assert_eq!(
            star.condition("p").as_deref(),
            Some(r#"context.args.p like "a\*b/*""#)
        );
    }

    #[test]
    fn numbers_and_booleans_narrow_to_what_was_seen() {
        let mut n = ArgUse::default();
        for v in [3, 7, 5] {
            n.observe(&json!(v));
        }
        assert_eq!(
            n.condition("replicas").as_deref(),
            Some("context.args.replicas >= 3 && context.args.replicas <= 7")
        );
        let mut b = ArgUse::default();
        b.observe(&json!(false));
        assert_eq!(
            b.condition("force").as_deref(),
            Some("context.args.force == false")
        );
        let mut mixed = ArgUse::default();
        mixed.observe(&json!(1));
        mixed.observe(&json!("1"));
        assert_eq!(mixed.kind(), None);
        assert_eq!(mixed.condition("x"), None);
    }
}
