//! AgentPolicy documents → Cedar policies, each with the index keys slicing needs and a reference
//! back to the rule its author wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;

use warden_model::{
    A2aMethod, Action, ActionKind, AgentIdentity, Host, HttpMethod, HttpPath, LabelKey, LabelValue,
    Labels, Name, Protocol, SpiffeId,
};

use crate::diagnostic::Diagnostic;
use crate::document::{
    A2aRule, AgentPolicyDoc, AttributeSource, EgressRule, HttpRule, LabelOperator, McpRule,
    Selector, Target, parse_byte_size, parse_duration_secs,
};
use crate::locate::Locator;
use crate::matcher::{Destination, Extra, LabelTest, Matcher, SelectorMatcher, TargetMatcher};
use crate::pattern::{
    HostPattern, NamePattern, PortRange, SegmentPattern, UriPattern, all_of, any_of, cedar_str,
    path_char, spiffe_char,
};
use crate::schema::{ArgTypes, blank_strings, resource_type};

/// Longest `when` condition accepted, in bytes.
pub const MAX_CONDITION_LEN: usize = 4096;
/// Most rules of one kind in one document.
pub const MAX_RULES: usize = 1024;
/// Most patterns in one list.
pub const MAX_LIST: usize = 1024;

/// Which policy set a compiled policy belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyRole {
    /// Permits (grants) and forbids (deny rules, limits, event gates): decide allow or deny.
    Grant,
    /// Approval requirements: evaluated only for allowed actions; a match asks for co-signature.
    Approval,
}

/// What the index files a policy under, on the principal side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalKey {
    Any,
    Tenant(String),
    /// Trust domain, tenant and top-level agent name.
    Agent(String, String, String),
    Label(String, String),
}

/// What the index files a policy under, on the resource side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKey {
    /// A service, MCP server or A2A peer by exact name.
    Name(String),
    Host(String),
    /// Hosts below this suffix.
    HostSuffix(String),
}

/// Where a compiled policy came from, for errors and decisions.
#[derive(Debug, Clone)]
pub struct Origin {
    pub file: String,
    pub line: Option<u32>,
    pub document: String,
    /// `spec.mcp[0]`.
    pub rule: String,
    /// The field a validation error most likely points at: the rule's `when`, if it has one.
    pub blame: String,
    /// Line and column of `blame`.
    pub blame_position: Option<(u32, u32)>,
}

/// One Cedar policy, compiled, not yet parsed.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub text: String,
    /// A `forbid` (else a `permit`).
    pub forbid: bool,
    pub role: PolicyRole,
    pub origin: Origin,
    /// Empty means every kind.
    pub kinds: Vec<ActionKind>,
    pub principals: Vec<PrincipalKey>,
    /// Empty means any resource.
    pub resources: Vec<ResourceKey>,
    pub gate: Option<usize>,
    pub approval: Option<usize>,
    /// The structural part, evaluated in Rust when slicing; `None` for raw Cedar.
    pub matcher: Option<Matcher>,
    /// What Cedar still evaluates after the matcher: the author's `when` and what follows it.
    pub residual: Option<String>,
}

/// An event gate: the action is allowed only within `within_secs` after a matching event.
#[derive(Debug, Clone)]
pub struct Gate {
    pub id: String,
    pub event_type: String,
    pub within_secs: u64,
    pub attributes: BTreeMap<String, AttributeSource>,
}

/// An approval requirement as compiled; the bundle adds the policy reference.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub id: String,
    pub group: Name,
    pub required: NonZeroU32,
    pub valid_for_secs: u64,
}

/// What catalogs say about MCP servers, for warnings about rules that can match nothing.
#[derive(Debug, Default)]
pub struct Catalog {
    pub tools: BTreeMap<String, BTreeSet<String>>,
    /// Server → tool → its compensating call, for reversible tools.
    pub undo: BTreeMap<String, BTreeMap<String, crate::document::UndoSpec>>,
    pub prompts: BTreeMap<String, BTreeSet<String>>,
    pub tool_args: ArgTypes,
    pub prompt_args: ArgTypes,
}

/// Agents and actions that exercise the rules, for `warden policy diff`.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub agents: Vec<AgentIdentity>,
    pub actions: Vec<Action>,
}

/// Everything compiled from the AgentPolicy documents of a bundle.
#[derive(Debug, Default)]
pub struct Compiled {
    pub samples: Samples,
    pub policies: Vec<CompiledPolicy>,
    pub gates: Vec<Gate>,
    pub requirements: Vec<Requirement>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Context for reporting on one document.
pub struct DocContext<'a> {
    pub file: &'a str,
    pub locator: &'a Locator,
    pub doc_index: usize,
}

impl DocContext<'_> {
    pub fn error(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(self.file, message)
            .at(self.locator.find(self.doc_index, field))
            .field(field)
    }
    pub fn warning(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::warning(self.file, message)
            .at(self.locator.find(self.doc_index, field))
            .field(field)
    }
}

/// A compiled selector.
pub(crate) struct CompiledSelector {
    condition: String,
    keys: Vec<PrincipalKey>,
    sample: Option<AgentIdentity>,
    pub(crate) matcher: std::sync::Arc<SelectorMatcher>,
}

/// An agent the selector selects, when one is easy to construct.
fn sample_agent(namespace: Option<&str>, selector: &Selector) -> Option<AgentIdentity> {
    let mut labels = Labels::new();
    for (k, v) in &selector.match_labels {
        labels.insert(
            LabelKey::new(k.clone()).ok()?,
            LabelValue::new(v.clone()).ok()?,
        );
    }
    for e in &selector.match_expressions {
        let value = match e.operator {
            LabelOperator::In => e.values.first()?.clone(),
            LabelOperator::Exists => "x".into(),
            LabelOperator::NotIn | LabelOperator::DoesNotExist => continue,
        };
        labels.insert(
            LabelKey::new(e.key.clone()).ok()?,
            LabelValue::new(value).ok()?,
        );
    }
    let id = match selector.spiffe_ids.first() {
        Some(pattern) => {
            let rest = pattern.strip_prefix("spiffe://")?;
            let (td, path) = rest.split_once('/')?;
            let example = SegmentPattern::parse(path, spiffe_char).ok()?.example();
            SpiffeId::new(format!("spiffe://{td}/{}", example.join("/"))).ok()?
        }
        None => SpiffeId::new(format!(
            "spiffe://example.org/tenant/{}/agent/sample/i-1",
            namespace.unwrap_or("default")
        ))
        .ok()?,
    };
    AgentIdentity::new(id, labels, None).ok()
}

fn example_name(pattern: &NamePattern) -> Option<Name> {
    match pattern {
        NamePattern::Any => Name::new("x").ok(),
        NamePattern::Exact(v) => Name::new(v.clone()).ok(),
        NamePattern::Glob(g) => Name::new(g.replace('*', "x")).ok(),
    }
}

/// One (kinds, resource) slice of a target, which becomes one Cedar policy.
struct Clause {
    kinds: Vec<ActionKind>,
    condition: String,
    resources: Vec<ResourceKey>,
    /// Whether the rule's `when` applies (not for the `tools/list` grant an MCP rule implies).
    takes_condition: bool,
    /// Concrete actions this clause matches (conditions aside), for generated diff samples.
    examples: Vec<Action>,
    /// `condition`, for evaluation in Rust.
    matcher: TargetMatcher,
}

static ARG_ACCESS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"context\s*\.\s*args\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)").expect("static regex")
});
static ARG_GUARD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"context\s*\.\s*args\s+has\s+([A-Za-z_][A-Za-z0-9_]*)").expect("static regex")
});

/// Checks a user's `when` condition and wraps it so that arguments the call does not carry make
/// it `absent_means` (false for grants: no permit; true for restrictions: fail closed).
fn user_condition(
    cx: &DocContext<'_>,
    field: &str,
    condition: &str,
    absent_means: bool,
    catalog: &Catalog,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<String> {
    if condition.len() > MAX_CONDITION_LEN {
        diagnostics.push(cx.error(
            field,
            format!(
                "condition is {} bytes; the limit is {MAX_CONDITION_LEN}",
                condition.len()
            ),
        ));
        return None;
    }
    // Parsing alone, as one expression, is what stops a condition from closing the policy's
    // braces or parentheses and escaping the selector it is scoped to.
    if let Err(e) = cedar_policy::Expression::from_str(condition) {
        diagnostics.push(
            cx.error(
                field,
                format!("invalid Cedar condition: {}", one_line(&e.to_string())),
            )
            .help("write one Cedar expression, e.g. `context.args.namespace != \"prod\"`"),
        );
        return None;
    }
    let code = blank_strings(condition);
    let guarded: BTreeSet<&str> = ARG_GUARD
        .captures_iter(&code)
        .filter_map(|c| c.get(1))
        .map(|m| m.as_str())
        .collect();
    let accessed: BTreeSet<&str> = ARG_ACCESS
        .captures_iter(&code)
        .filter_map(|c| c.get(1))
        .map(|m| m.as_str())
        .filter(|a| !guarded.contains(a))
        .collect();
    // The guard below would make Cedar's typechecker treat a branch on an undeclared argument as
    // dead code, so undeclared names are caught here instead.
    let undeclared: Vec<&str> = ARG_ACCESS
        .captures_iter(&code)
        .filter_map(|c| c.get(1))
        .map(|m| m.as_str())
        .filter(|a| !catalog.tool_args.contains_key(*a) && !catalog.prompt_args.contains_key(*a))
        .collect();
    if !undeclared.is_empty() {
        diagnostics.push(
            cx.error(field, format!("the condition uses undeclared argument(s) {}", undeclared.join(", ")))
                .help("declare the tool's inputSchema in a ToolCatalog document (see docs/policy.md) so conditions know each argument's type"),
        );
        return None;
    }
    let mut wrapped = format!("({condition})");
    for arg in accessed.iter().rev() {
        wrapped = format!("(if context.args has {arg} then {wrapped} else {absent_means})");
    }
    Some(wrapped)
}

pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_len<T>(cx: &DocContext<'_>, field: &str, list: &[T], out: &mut Vec<Diagnostic>) -> bool {
    if list.len() > MAX_LIST {
        out.push(cx.error(
            field,
            format!("{} entries; at most {MAX_LIST} are allowed", list.len()),
        ));
        return false;
    }
    true
}

pub(crate) fn compile_selector(
    cx: &DocContext<'_>,
    namespace: Option<&str>,
    selector: &Selector,
    out: &mut Vec<Diagnostic>,
) -> Option<CompiledSelector> {
    let mut conditions = Vec::new();
    let mut matcher = SelectorMatcher {
        tenant: namespace.map(str::to_owned),
        ..SelectorMatcher::default()
    };
    let mut ok = true;
    if let Some(ns) = namespace {
        conditions.push(format!("principal.tenant == {}", cedar_str(ns)));
    }
    let empty = selector.match_labels.is_empty()
        && selector.match_expressions.is_empty()
        && selector.spiffe_ids.is_empty();
    if selector.all_agents && !empty {
        out.push(
            cx.error(
                "spec.selector.allAgents",
                "`allAgents: true` cannot be combined with other selectors",
            )
            .help("remove `allAgents`, or remove the other selector fields"),
        );
        return None;
    }
    if empty && !selector.all_agents {
        out.push(
            cx.error("spec.selector", "the selector is empty, which would select every agent")
                .help("select agents with matchLabels, matchExpressions or spiffeIds; write `allAgents: true` if every agent of the namespace is meant"),
        );
        return None;
    }
    if selector.all_agents && namespace.is_none() {
        out.push(cx.warning(
            "spec.selector.allAgents",
            "this policy selects every agent of every tenant (it has no namespace)",
        ));
    }

    let mut label_keys = Vec::new();
    for (k, v) in &selector.match_labels {
        let field = format!("spec.selector.matchLabels.{k}");
        match (LabelKey::new(k.clone()), LabelValue::new(v.clone())) {
            (Ok(_), Ok(_)) => {
                conditions.push(format!(
                    "principal.hasTag({key}) && principal.getTag({key}) == {}",
                    cedar_str(v),
                    key = cedar_str(k)
                ));
                label_keys.push(PrincipalKey::Label(k.clone(), v.clone()));
                matcher.labels.push(LabelTest::Equals(k.clone(), v.clone()));
            }
            (Err(e), _) | (_, Err(e)) => {
                out.push(cx.error(&field, e.to_string()));
                ok = false;
            }
        }
    }
    let mut in_keys: Option<Vec<PrincipalKey>> = None;
    let mut required: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut present: BTreeSet<&str> = BTreeSet::new();
    let mut absent: BTreeSet<&str> = BTreeSet::new();
    for (k, v) in &selector.match_labels {
        required.entry(k).or_default().insert(v);
        present.insert(k);
    }
    for (i, expr) in selector.match_expressions.iter().enumerate() {
        let field = format!("spec.selector.matchExpressions[{i}]");
        if let Err(e) = LabelKey::new(expr.key.clone()) {
            out.push(cx.error(&format!("{field}.key"), e.to_string()));
            ok = false;
            continue;
        }
        for (j, v) in expr.values.iter().enumerate() {
            if let Err(e) = LabelValue::new(v.clone()) {
                out.push(cx.error(&format!("{field}.values[{j}]"), e.to_string()));
                ok = false;
            }
        }
        let key = cedar_str(&expr.key);
        let values = format!(
            "[{}]",
            expr.values
                .iter()
                .map(|v| cedar_str(v))
                .collect::<Vec<_>>()
                .join(", ")
        );
        match expr.operator {
            LabelOperator::In | LabelOperator::NotIn if expr.values.is_empty() => {
                out.push(cx.error(
                    &format!("{field}.values"),
                    "In and NotIn need at least one value",
                ));
                ok = false;
            }
            LabelOperator::Exists | LabelOperator::DoesNotExist if !expr.values.is_empty() => {
                out.push(cx.error(
                    &format!("{field}.values"),
                    "Exists and DoesNotExist take no values",
                ));
                ok = false;
            }
            LabelOperator::In => {
                conditions.push(format!(
                    "principal.hasTag({key}) && {values}.contains(principal.getTag({key}))"
                ));
                present.insert(&expr.key);
                matcher
                    .labels
                    .push(LabelTest::In(expr.key.clone(), expr.values.clone()));
                let allowed: BTreeSet<&str> = expr.values.iter().map(String::as_str).collect();
                let entry = required.entry(&expr.key).or_insert_with(|| allowed.clone());
                *entry = entry.intersection(&allowed).copied().collect();
                if in_keys.is_none() {
                    in_keys = Some(
                        expr.values
                            .iter()
                            .map(|v| PrincipalKey::Label(expr.key.clone(), v.clone()))
                            .collect(),
                    );
                }
            }
            LabelOperator::NotIn => {
                conditions.push(format!(
                    "(if principal.hasTag({key}) then !{values}.contains(principal.getTag({key})) else true)"
                ));
                matcher
                    .labels
                    .push(LabelTest::NotIn(expr.key.clone(), expr.values.clone()));
                if let Some(set) = required.get_mut(expr.key.as_str()) {
                    for v in &expr.values {
                        set.remove(v.as_str());
                    }
                }
            }
            LabelOperator::Exists => {
                conditions.push(format!("principal.hasTag({key})"));
                matcher.labels.push(LabelTest::Exists(expr.key.clone()));
                present.insert(&expr.key);
            }
            LabelOperator::DoesNotExist => {
                conditions.push(format!("!principal.hasTag({key})"));
                matcher
                    .labels
                    .push(LabelTest::DoesNotExist(expr.key.clone()));
                absent.insert(&expr.key);
            }
        }
    }
    for (key, values) in &required {
        if values.is_empty() {
            out.push(cx.warning(
                "spec.selector",
                format!("the label conditions on `{key}` contradict each other: this policy selects no agent"),
            ));
        }
    }
    for key in present.intersection(&absent) {
        out.push(cx.warning(
            "spec.selector",
            format!("label `{key}` is required both to exist and not to exist: this policy selects no agent"),
        ));
    }

    let mut id_conditions = Vec::new();
    let mut id_keys = Vec::new();
    let mut all_ids_keyed = true;
    if check_len(cx, "spec.selector.spiffeIds", &selector.spiffe_ids, out) {
        for (i, pattern) in selector.spiffe_ids.iter().enumerate() {
            let field = format!("spec.selector.spiffeIds[{i}]");
            let Some(rest) = pattern.strip_prefix("spiffe://") else {
                out.push(cx.error(&field, "a SPIFFE ID pattern must start with `spiffe://`"));
                ok = false;
                continue;
            };
            let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
            if warden_model::TrustDomain::new(td).is_err() {
                out.push(cx.error(
                    &field,
                    format!("`{td}` is not a valid trust domain (wildcards are not allowed there)"),
                ));
                ok = false;
                continue;
            }
            let segments = match SegmentPattern::parse(path, spiffe_char) {
                Ok(s) => s,
                Err(e) => {
                    out.push(cx.error(&field, e));
                    ok = false;
                    continue;
                }
            };
            if segments.matches_everything() {
                out.push(cx.warning(
                    &field,
                    format!("matches every agent of trust domain `{td}`"),
                ));
            }
            let prefix = segments.literal_prefix();
            if let (Some(ns), ["tenant", tenant, ..]) = (namespace, prefix.as_slice())
                && *tenant != ns
            {
                out.push(cx.warning(
                    &field,
                    format!("matches agents of tenant `{tenant}`, but this policy in namespace `{ns}` applies only to tenant `{ns}`: it selects no agent"),
                ));
            }
            match prefix.as_slice() {
                ["tenant", tenant, "agent", name, ..] => id_keys.push(PrincipalKey::Agent(
                    td.to_owned(),
                    (*tenant).to_owned(),
                    (*name).to_owned(),
                )),
                _ => all_ids_keyed = false,
            }
            id_conditions.push(Some(format!(
                "principal.trust_domain == {} && {}",
                cedar_str(td),
                segments.condition("principal.path_depth", "principal.path")
            )));
            matcher.spiffe_ids.push((td.to_owned(), segments));
        }
    }
    if !ok {
        return None;
    }
    if let Some(c) = any_of(id_conditions) {
        conditions.push(c);
    }
    let keys = if !label_keys.is_empty() {
        vec![label_keys.swap_remove(0)]
    } else if let Some(keys) = in_keys {
        keys
    } else if !id_keys.is_empty() && all_ids_keyed {
        id_keys
    } else if let Some(ns) = namespace {
        vec![PrincipalKey::Tenant(ns.to_owned())]
    } else {
        vec![PrincipalKey::Any]
    };
    Some(CompiledSelector {
        condition: all_of(conditions),
        keys,
        sample: sample_agent(namespace, selector),
        matcher: std::sync::Arc::new(matcher),
    })
}

/// Parses one name pattern, reporting a bad one at `field`.
fn name_pattern(
    cx: &DocContext<'_>,
    field: &str,
    text: &str,
    out: &mut Vec<Diagnostic>,
) -> Option<NamePattern> {
    NamePattern::parse(text)
        .map_err(|e| out.push(cx.error(field, e)))
        .ok()
}

/// Parses a list of name patterns; `None` if any is bad (each reported).
fn names(
    cx: &DocContext<'_>,
    field: &str,
    list: &[String],
    out: &mut Vec<Diagnostic>,
) -> Option<Vec<NamePattern>> {
    if !check_len(cx, field, list, out) {
        return None;
    }
    let parsed: Vec<Option<NamePattern>> = list
        .iter()
        .enumerate()
        .map(|(i, p)| name_pattern(cx, &format!("{field}[{i}]"), p, out))
        .collect();
    parsed.into_iter().collect()
}

fn name_keys(patterns: &[&NamePattern]) -> Vec<ResourceKey> {
    if patterns.iter().all(|p| p.exact().is_some()) {
        patterns
            .iter()
            .filter_map(|p| p.exact())
            .map(|n| ResourceKey::Name(n.to_owned()))
            .collect()
    } else {
        vec![]
    }
}

fn egress_clauses(
    cx: &DocContext<'_>,
    field: &str,
    rule: &EgressRule,
    out: &mut Vec<Diagnostic>,
) -> Option<Vec<Clause>> {
    let mut ok = check_len(cx, &format!("{field}.hosts"), &rule.hosts, out)
        && check_len(cx, &format!("{field}.cidrs"), &rule.cidrs, out)
        && check_len(cx, &format!("{field}.ports"), &rule.ports, out);
    if rule.hosts.is_empty() && rule.cidrs.is_empty() {
        out.push(cx.error(field, "an egress rule needs `hosts` or `cidrs`"));
        return None;
    }
    let mut destinations = Vec::new();
    let mut targets = Vec::new();
    let mut port_ranges = Vec::new();
    let mut resources = Vec::new();
    let mut hosts = Vec::new();
    for (i, host) in rule.hosts.iter().enumerate() {
        match HostPattern::parse(host) {
            Ok(p) => {
                hosts.push(p.example());
                targets.push(Destination::Host(p.clone()));
                if p.is_very_broad() {
                    out.push(cx.warning(
                        &format!("{field}.hosts[{i}]"),
                        format!("`{host}` covers a whole top-level domain"),
                    ));
                }
                let (key, suffix) = p.key();
                resources.push(if suffix {
                    ResourceKey::HostSuffix(key.to_owned())
                } else {
                    ResourceKey::Host(key.to_owned())
                });
                destinations.push(Some(p.condition()));
            }
            Err(e) => {
                out.push(cx.error(&format!("{field}.hosts[{i}]"), e));
                ok = false;
            }
        }
    }
    for (i, cidr) in rule.cidrs.iter().enumerate() {
        match cidr.parse::<ipnet::IpNet>() {
            Ok(net) => {
                if net.prefix_len() == 0 {
                    out.push(cx.warning(
                        &format!("{field}.cidrs[{i}]"),
                        format!("`{cidr}` allows every address"),
                    ));
                }
                hosts.push(Host::Ip(net.addr()));
                targets.push(Destination::Cidr(net.trunc()));
                destinations.push(Some(format!(
                    "context has ip && context.ip.isInRange(ip({}))",
                    cedar_str(&net.trunc().to_string())
                )));
            }
            Err(_) => {
                out.push(cx.error(
                    &format!("{field}.cidrs[{i}]"),
                    format!("`{cidr}` is not a CIDR block; write e.g. 10.0.0.0/8 or 2001:db8::/32"),
                ));
                ok = false;
            }
        }
    }
    if !rule.cidrs.is_empty() {
        resources.clear();
    }
    let mut ports = Vec::new();
    let mut example_port = 443;
    for (i, port) in rule.ports.iter().enumerate() {
        let parsed = match port {
            crate::document::PortSpec::Single(0) => Err("port 0 is not a port".to_owned()),
            crate::document::PortSpec::Single(p) => Ok(PortRange { low: *p, high: *p }),
            crate::document::PortSpec::Range(r) => PortRange::parse_range(r),
        };
        match parsed {
            Ok(range) => {
                example_port = range.low;
                port_ranges.push(range);
                ports.push(Some(range.condition()));
            }
            Err(e) => {
                out.push(cx.error(&format!("{field}.ports[{i}]"), e));
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    let mut conditions = vec![any_of(destinations).unwrap_or_else(|| "true".into())];
    conditions.extend(any_of(ports));
    if let Some(protocol) = rule.protocol {
        conditions.push(format!(
            "context.protocol == {}",
            cedar_str(match protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            })
        ));
    }
    let examples = hosts
        .into_iter()
        .map(|host| Action::EgressConnect {
            host,
            port: example_port,
            protocol: rule.protocol.unwrap_or(Protocol::Tcp),
            ip: None,
        })
        .collect();
    Some(vec![Clause {
        kinds: vec![ActionKind::EgressConnect],
        condition: all_of(conditions),
        resources,
        takes_condition: true,
        examples,
        matcher: TargetMatcher::Egress {
            destinations: targets,
            ports: port_ranges,
            protocol: rule.protocol,
        },
    }])
}

fn http_clauses(
    cx: &DocContext<'_>,
    field: &str,
    rule: &HttpRule,
    out: &mut Vec<Diagnostic>,
) -> Option<Vec<Clause>> {
    let service = name_pattern(cx, &format!("{field}.service"), &rule.service, out)?;
    let mut ok = check_len(cx, &format!("{field}.methods"), &rule.methods, out)
        && check_len(cx, &format!("{field}.paths"), &rule.paths, out);
    if rule.methods.is_empty() {
        out.push(
            cx.error(
                &format!("{field}.methods"),
                "list the HTTP methods this rule covers",
            )
            .help("e.g. `methods: [GET, HEAD]`, or `[\"*\"]` for every method"),
        );
        ok = false;
    }
    if rule.paths.is_empty() {
        out.push(
            cx.error(&format!("{field}.paths"), "list the paths this rule covers")
                .help("e.g. `paths: [/v1/items/*]`, or `[/**]` for every path"),
        );
        ok = false;
    }
    let mut methods = Vec::new();
    for (i, m) in rule.methods.iter().enumerate() {
        if m == "*" {
            methods.push(None);
        } else if let Err(e) = warden_model::HttpMethod::new(m) {
            out.push(cx.error(&format!("{field}.methods[{i}]"), e.to_string()));
            ok = false;
        } else {
            methods.push(Some(format!("context.method == {}", cedar_str(m))));
        }
    }
    let mut paths = Vec::new();
    let mut path_patterns = Vec::new();
    let mut example_paths = Vec::new();
    let mut everything = false;
    for (i, p) in rule.paths.iter().enumerate() {
        let parsed = match p.strip_prefix('/') {
            Some(rest) => SegmentPattern::parse(rest, path_char),
            None => Err("a path pattern starts with `/`".into()),
        };
        match parsed {
            Ok(pattern) => {
                example_paths.push(format!("/{}", pattern.example().join("/")));
                everything |= pattern.matches_everything();
                paths.push(Some(
                    pattern.condition("context.path_depth", "context.segments"),
                ));
                path_patterns.push(pattern);
            }
            Err(e) => {
                out.push(cx.error(&format!("{field}.paths[{i}]"), e));
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    if service == NamePattern::Any && everything && methods.contains(&None) {
        out.push(cx.warning(
            field,
            "this rule allows every HTTP request to every service",
        ));
    }
    let method_names = (!methods.contains(&None)).then(|| rule.methods.clone());
    let mut conditions: Vec<String> = service.condition("resource.name").into_iter().collect();
    conditions.extend(any_of(methods));
    conditions.extend(any_of(paths));
    let method = rule
        .methods
        .iter()
        .find(|m| *m != "*")
        .map_or("GET", String::as_str);
    let examples = example_paths
        .iter()
        .filter_map(|p| {
            Some(Action::Http {
                service: example_name(&service)?,
                method: HttpMethod::new(method).ok()?,
                path: HttpPath::new(p).ok()?,
            })
        })
        .collect();
    Some(vec![Clause {
        kinds: vec![ActionKind::Http],
        condition: all_of(conditions),
        resources: name_keys(&[&service]),
        takes_condition: true,
        examples,
        matcher: TargetMatcher::Http {
            service,
            methods: method_names,
            paths: path_patterns,
        },
    }])
}

fn mcp_clauses(
    cx: &DocContext<'_>,
    field: &str,
    rule: &McpRule,
    catalog: &Catalog,
    implies_listing: bool,
    out: &mut Vec<Diagnostic>,
) -> Option<Vec<Clause>> {
    let server = name_pattern(cx, &format!("{field}.server"), &rule.server, out)?;
    if server == NamePattern::Any {
        out.push(cx.warning(&format!("{field}.server"), "`*` covers every MCP server"));
    }
    let tools = names(cx, &format!("{field}.tools"), &rule.tools, out);
    let prompts = names(cx, &format!("{field}.prompts"), &rule.prompts, out);
    let resources_ok = check_len(cx, &format!("{field}.resources"), &rule.resources, out);
    let (tools, prompts) = (tools?, prompts?);
    if !resources_ok {
        return None;
    }
    if tools.is_empty() && prompts.is_empty() && rule.resources.is_empty() {
        out.push(
            cx.error(
                field,
                "this MCP rule names no `tools`, `resources` or `prompts`",
            )
            .help(
                "add e.g. `tools: [list_issues]`, or `tools: [\"*\"]` for every tool of the server",
            ),
        );
        return None;
    }
    let mut uris = Vec::new();
    for (i, uri) in rule.resources.iter().enumerate() {
        // A backslash would be an escape in Cedar's `like`; refusing it keeps `*` the only
        // special character, as everywhere else.
        if uri.is_empty() || uri.len() > 2048 || uri.chars().any(|c| c.is_control() || c == '\\') {
            out.push(cx.error(
                &format!("{field}.resources[{i}]"),
                "a resource URI pattern has 1–2048 characters, no control characters and no `\\`",
            ));
            return None;
        }
        if uri == "*" {
            uris.push(None);
            continue;
        }
        match UriPattern::parse(uri) {
            Ok(pattern) => uris.push(Some(pattern)),
            Err(e) => {
                out.push(cx.error(&format!("{field}.resources[{i}]"), e));
                return None;
            }
        }
    }
    // Tools or prompts a catalog says the server does not have make a rule that matches nothing.
    if let Some(server_name) = server.exact() {
        for (list, known, what) in [
            (&tools, catalog.tools.get(server_name), "tools"),
            (&prompts, catalog.prompts.get(server_name), "prompts"),
        ] {
            let Some(known) = known else { continue };
            for (i, p) in list.iter().enumerate() {
                if !known.iter().any(|t| p.matches(t)) {
                    out.push(cx.warning(
                        &format!("{field}.{what}[{i}]"),
                        format!("no {what} of server `{server_name}` in the catalog match this pattern: the rule matches nothing"),
                    ));
                }
            }
        }
    }
    let keys = name_keys(&[&server]);
    let server_name = example_name(&server);
    let named_examples =
        |patterns: &[NamePattern], make: fn(Name, Name) -> Action| -> Vec<Action> {
            patterns
                .iter()
                .filter_map(|p| Some(make(server_name.clone()?, example_name(p)?)))
                .collect()
        };
    let tool_examples = named_examples(&tools, |server, tool| Action::McpToolsCall {
        server,
        tool,
        args: Default::default(),
    });
    let prompt_examples = named_examples(&prompts, |server, prompt| Action::McpPromptsGet {
        server,
        prompt,
        args: Default::default(),
    });
    let resource_examples: Vec<Action> = uris
        .iter()
        .filter_map(|u| {
            Some(Action::McpResourcesRead {
                server: server_name.clone()?,
                uri: u
                    .as_ref()
                    .map_or_else(|| "x".to_owned(), UriPattern::example),
            })
        })
        .collect();
    let on_server = server.condition("resource.server");
    let with_server = |inner: Option<String>| all_of(on_server.iter().cloned().chain(inner));
    let mut clauses = Vec::new();
    if !tools.is_empty() {
        clauses.push(Clause {
            kinds: vec![ActionKind::McpToolsCall],
            condition: with_server(any_of(
                tools.iter().map(|t| t.condition("resource.name")).collect(),
            )),
            resources: keys.clone(),
            takes_condition: true,
            examples: tool_examples,
            matcher: TargetMatcher::Tools {
                server: server.clone(),
                tools: tools.clone(),
            },
        });
        if implies_listing {
            // Listing the tools and sending the server the client's own messages (below) are
            // allowed alike: one policy for both.
            clauses.push(Clause {
                kinds: vec![ActionKind::McpToolsList, ActionKind::McpClientMessage],
                condition: all_of(server.condition("resource.name")),
                resources: keys.clone(),
                takes_condition: false,
                examples: server_name
                    .iter()
                    .map(|s| Action::McpToolsList { server: s.clone() })
                    .collect(),
                matcher: TargetMatcher::ToolList {
                    server: server.clone(),
                },
            });
        }
    }
    if !uris.is_empty() {
        clauses.push(Clause {
            kinds: vec![ActionKind::McpResourcesRead],
            condition: with_server(any_of(
                uris.iter()
                    .map(|u| u.as_ref().map(UriPattern::condition))
                    .collect(),
            )),
            resources: keys.clone(),
            takes_condition: true,
            examples: resource_examples,
            matcher: TargetMatcher::Resources {
                server: server.clone(),
                uris,
            },
        });
    }
    if !prompts.is_empty() {
        clauses.push(Clause {
            kinds: vec![ActionKind::McpPromptsGet],
            condition: with_server(any_of(
                prompts
                    .iter()
                    .map(|t| t.condition("resource.name"))
                    .collect(),
            )),
            resources: keys,
            takes_condition: true,
            examples: prompt_examples,
            matcher: TargetMatcher::Prompts {
                server: server.clone(),
                prompts: prompts.clone(),
            },
        });
    }
    // Whoever may use a server may answer its requests (sampling, elicitation, roots) and send
    // it the notifications that carry text; what they carry is inspected and decided. A deny
    // rule over every tool of a server (`tools: ["*"]`) covers those messages too, when its
    // condition can apply to them (it reads no tool arguments).
    let every_tool = tools.contains(&NamePattern::Any);
    let denies_messages = !implies_listing
        && every_tool
        && !rule
            .when
            .as_deref()
            .is_some_and(|w| w.contains("context.args"));
    if (implies_listing && tools.is_empty()) || denies_messages {
        clauses.push(Clause {
            kinds: vec![ActionKind::McpClientMessage],
            condition: all_of(server.condition("resource.name")),
            resources: name_keys(&[&server]),
            takes_condition: denies_messages,
            examples: server_name
                .iter()
                .map(|s| Action::McpClientMessage {
                    server: s.clone(),
                    message: Name::new("response").expect("a valid name"),
                })
                .collect(),
            matcher: TargetMatcher::ClientMessages { server },
        });
    }
    Some(clauses)
}

fn a2a_clauses(
    cx: &DocContext<'_>,
    field: &str,
    rule: &A2aRule,
    out: &mut Vec<Diagnostic>,
) -> Option<Vec<Clause>> {
    let peers = names(cx, &format!("{field}.peers"), &rule.peers, out)?;
    if peers.is_empty() {
        out.push(cx.error(
            &format!("{field}.peers"),
            "list the peer agents this rule covers",
        ));
        return None;
    }
    if rule.methods.is_empty() {
        out.push(
            cx.error(
                &format!("{field}.methods"),
                "list the A2A methods this rule covers",
            )
            .help("e.g. `methods: [message/send, tasks/get]`, or `[\"*\"]` for every method"),
        );
        return None;
    }
    let mut kinds = BTreeSet::new();
    for (i, m) in rule.methods.iter().enumerate() {
        if m == "*" {
            kinds.extend(A2aMethod::ALL.map(A2aMethod::kind));
            continue;
        }
        match A2aMethod::from_str(m) {
            Ok(method) => {
                kinds.insert(method.kind());
            }
            Err(e) => {
                out.push(cx.error(&format!("{field}.methods[{i}]"), e.to_string()));
                return None;
            }
        }
    }
    let refs: Vec<&NamePattern> = peers.iter().collect();
    let examples = peers
        .iter()
        .filter_map(example_name)
        .flat_map(|peer| {
            A2aMethod::ALL
                .into_iter()
                .filter(|m| kinds.contains(&m.kind()))
                .map(move |method| Action::A2a {
                    peer: peer.clone(),
                    method,
                })
        })
        .collect();
    Some(vec![Clause {
        kinds: kinds.into_iter().collect(),
        condition: any_of(peers.iter().map(|p| p.condition("resource.name")).collect())
            .unwrap_or_else(|| "true".into()),
        resources: name_keys(&refs),
        takes_condition: true,
        examples,
        matcher: TargetMatcher::Peers {
            peers: peers.clone(),
        },
    }])
}

/// One rule of any kind, borrowed from a grant list or a `deny` / `match` target.
#[derive(Clone, Copy)]
enum Rule<'a> {
    Egress(&'a EgressRule),
    Http(&'a HttpRule),
    Mcp(&'a McpRule),
    A2a(&'a A2aRule),
}

impl<'a> Rule<'a> {
    /// The one rule a target names, with its field name, or an error if it names none or several.
    fn of_target(
        cx: &DocContext<'_>,
        field: &str,
        target: &'a Target,
        out: &mut Vec<Diagnostic>,
    ) -> Option<(Self, &'static str)> {
        let named: Vec<(Self, &'static str)> = [
            target.egress.as_ref().map(|r| (Self::Egress(r), "egress")),
            target.http.as_ref().map(|r| (Self::Http(r), "http")),
            target.mcp.as_ref().map(|r| (Self::Mcp(r), "mcp")),
            target.a2a.as_ref().map(|r| (Self::A2a(r), "a2a")),
        ]
        .into_iter()
        .flatten()
        .collect();
        match named.as_slice() {
            [one] => Some(*one),
            _ => {
                out.push(cx.error(
                    field,
                    "name exactly one of `egress`, `http`, `mcp` or `a2a`",
                ));
                None
            }
        }
    }

    fn when(self) -> Option<&'a str> {
        match self {
            Self::Egress(r) => r.when.as_deref(),
            Self::Http(r) => r.when.as_deref(),
            Self::Mcp(r) => r.when.as_deref(),
            Self::A2a(r) => r.when.as_deref(),
        }
    }

    /// The rule's clauses; a grant of MCP tools also grants listing them.
    fn clauses(
        self,
        cx: &DocContext<'_>,
        field: &str,
        catalog: &Catalog,
        grant: bool,
        out: &mut Vec<Diagnostic>,
    ) -> Option<Vec<Clause>> {
        match self {
            Self::Egress(r) => egress_clauses(cx, field, r, out),
            Self::Http(r) => http_clauses(cx, field, r, out),
            Self::Mcp(r) => mcp_clauses(cx, field, r, catalog, grant, out),
            Self::A2a(r) => a2a_clauses(cx, field, r, out),
        }
    }
}

/// Compiles one AgentPolicy document.
pub fn compile_policy(
    cx: &DocContext<'_>,
    doc: &AgentPolicyDoc,
    catalog: &Catalog,
    compiled: &mut Compiled,
) {
    let out = &mut compiled.diagnostics;
    let errors_before = out.iter().filter(|d| d.is_error()).count();
    let namespace = doc.metadata.namespace.as_deref();
    for (value, field) in [
        (Some(doc.metadata.name.as_str()), "metadata.name"),
        (namespace, "metadata.namespace"),
    ] {
        if let Some(v) = value
            && let Err(e) = LabelValue::new(v).and_then(|_| Name::parse("name", v.to_owned()))
        {
            out.push(cx.error(field, e.to_string()));
        }
    }
    let document = match namespace {
        Some(ns) => format!("{ns}/{}", doc.metadata.name),
        None => doc.metadata.name.clone(),
    };
    let spec = &doc.spec;
    for (len, field) in [
        (spec.egress.len(), "spec.egress"),
        (spec.http.len(), "spec.http"),
        (spec.mcp.len(), "spec.mcp"),
        (spec.a2a.len(), "spec.a2a"),
        (spec.deny.len(), "spec.deny"),
        (spec.approval.len(), "spec.approval"),
        (spec.events.len(), "spec.events"),
    ] {
        if len > MAX_RULES {
            out.push(cx.error(
                field,
                format!("{len} rules; at most {MAX_RULES} are allowed per document"),
            ));
        }
    }
    let Some(selector) = compile_selector(cx, namespace, &spec.selector, out) else {
        return;
    };
    if out.iter().filter(|d| d.is_error()).count() > errors_before {
        return;
    }
    compiled.samples.agents.extend(selector.sample.clone());

    let origin = |rule: &str, blame: &str| {
        let position = cx.locator.find(cx.doc_index, rule);
        Origin {
            file: cx.file.to_owned(),
            line: position.map(|p| p.0),
            document: document.clone(),
            rule: rule.to_owned(),
            blame: blame.to_owned(),
            blame_position: cx.locator.find(cx.doc_index, blame),
        }
    };
    let emit = |compiled: &mut Compiled,
                effect: &str,
                role: PolicyRole,
                clause: &Clause,
                user: Option<&str>,
                extra: Extra,
                rule: &str,
                blame: &str,
                gate: Option<usize>,
                approval: Option<usize>| {
        // With one action the schema already fixes the principal and resource types, so the
        // scope names only the action: every scope check is paid on each evaluation.
        let single = clause.kinds.len() == 1;
        let actions = if clause.kinds.is_empty() {
            "action".to_owned()
        } else if let [kind] = clause.kinds.as_slice() {
            format!("action == Action::{}", cedar_str(kind.as_str()))
        } else {
            let list = clause
                .kinds
                .iter()
                .map(|k| format!("Action::{}", cedar_str(k.as_str())))
                .collect::<Vec<_>>()
                .join(", ");
            format!("action in [{list}]")
        };
        let resource_scope = match clause.kinds.first() {
            Some(k) if !single => format!("resource is {}", resource_type(*k)),
            _ => "resource".into(),
        };
        let principal_scope = if clause.kinds.is_empty() || single {
            "principal"
        } else {
            "principal is Agent"
        };
        let mut text = format!(
            "{effect} ({principal_scope}, {actions}, {resource_scope})\nwhen {{ {} }}\nwhen {{ {} }}",
            selector.condition, clause.condition
        );
        let user = user.filter(|_| clause.takes_condition);
        if let Some(user) = user {
            text.push_str(&format!("\nwhen {{ {user} }}"));
        }
        let extra_cedar = extra.cedar();
        if let Some(extra) = &extra_cedar {
            text.push('\n');
            text.push_str(extra);
        }
        text.push(';');
        // Cedar evaluates the author's `when` before the clause after it, so when there is a
        // `when` both stay in Cedar and errors surface exactly as in the full policy. The
        // residual keeps the scope (which the matcher has already checked, so it costs one
        // comparison) so that it type-checks as the full policy does: it is what the bundle
        // validates.
        let residual = user.map(|user| {
            format!(
                "{effect} ({principal_scope}, {actions}, {resource_scope})\nwhen {{ {user} }}{};",
                extra_cedar.map(|e| format!("\n{e}")).unwrap_or_default()
            )
        });
        let matcher = Matcher {
            kinds: clause.kinds.clone(),
            selector: std::sync::Arc::clone(&selector.matcher),
            target: clause.matcher.clone(),
            extra: if residual.is_some() {
                Extra::None
            } else {
                extra
            },
        };
        compiled
            .samples
            .actions
            .extend(clause.examples.iter().cloned());
        compiled.policies.push(CompiledPolicy {
            text,
            forbid: effect == "forbid",
            role,
            origin: origin(rule, blame),
            kinds: clause.kinds.clone(),
            principals: selector.keys.clone(),
            resources: clause.resources.clone(),
            gate,
            approval,
            matcher: Some(matcher),
            residual,
        });
    };

    // Grants.
    let grant_rules = (spec
        .egress
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("spec.egress[{i}]"), Rule::Egress(r))))
    .chain(
        spec.http
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("spec.http[{i}]"), Rule::Http(r))),
    )
    .chain(
        spec.mcp
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("spec.mcp[{i}]"), Rule::Mcp(r))),
    )
    .chain(
        spec.a2a
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("spec.a2a[{i}]"), Rule::A2a(r))),
    );
    for (field, rule) in grant_rules {
        let clauses = rule.clauses(cx, &field, catalog, true, &mut compiled.diagnostics);
        let when_field = format!("{field}.when");
        let user = rule.when().map(|w| {
            user_condition(
                cx,
                &when_field,
                w,
                false,
                catalog,
                &mut compiled.diagnostics,
            )
        });
        let (Some(clauses), None | Some(Some(_))) = (clauses, &user) else {
            continue;
        };
        let user = user.flatten();
        let blame = if rule.when().is_some() {
            when_field.clone()
        } else {
            field.clone()
        };
        for clause in &clauses {
            emit(
                compiled,
                "permit",
                PolicyRole::Grant,
                clause,
                user.as_deref(),
                Extra::None,
                &field,
                &blame,
                None,
                None,
            );
        }
    }

    // Restrictions, approvals and gates share target handling; their conditions fail closed.
    enum Kind {
        Deny,
        Approval(usize),
        Gate(usize),
    }
    let mut restricted: Vec<(String, Target, Kind)> = Vec::new();
    for (i, t) in spec.deny.iter().enumerate() {
        restricted.push((format!("spec.deny[{i}]"), t.clone(), Kind::Deny));
    }
    for (i, a) in spec.approval.iter().enumerate() {
        let field = format!("spec.approval[{i}]");
        let group = Name::parse("approver group", a.approvers.group.clone());
        let required = NonZeroU32::new(a.approvers.required);
        let valid_for = parse_duration_secs(&a.valid_for);
        match (group, required, valid_for) {
            (Ok(group), Some(required), Ok(valid_for_secs))
                if valid_for_secs > 0 && valid_for_secs <= 86_400 =>
            {
                compiled.requirements.push(Requirement {
                    id: format!("{document}#approval[{i}]"),
                    group,
                    required,
                    valid_for_secs,
                });
                restricted.push((
                    format!("{field}.match"),
                    a.target.clone(),
                    Kind::Approval(compiled.requirements.len() - 1),
                ));
            }
            (group, required, valid_for) => {
                if let Err(e) = group {
                    compiled
                        .diagnostics
                        .push(cx.error(&format!("{field}.approvers.group"), e.to_string()));
                }
                if required.is_none() {
                    compiled.diagnostics.push(cx.error(
                        &format!("{field}.approvers.required"),
                        "at least one approval must be required",
                    ));
                }
                match valid_for {
                    Err(e) => compiled
                        .diagnostics
                        .push(cx.error(&format!("{field}.validFor"), e)),
                    Ok(s) if s == 0 || s > 86_400 => compiled
                        .diagnostics
                        .push(cx.error(&format!("{field}.validFor"), "must be between 1s and 24h")),
                    Ok(_) => {}
                }
            }
        }
    }
    for (i, e) in spec.events.iter().enumerate() {
        let field = format!("spec.events[{i}]");
        let mut ok = true;
        if let Err(err) = Name::parse("event type", e.after.event_type.clone()) {
            compiled
                .diagnostics
                .push(cx.error(&format!("{field}.after.type"), err.to_string()));
            ok = false;
        }
        let within = match parse_duration_secs(&e.after.within) {
            Ok(s) if s > 0 && s <= 7 * 86_400 => s,
            Ok(_) => {
                compiled.diagnostics.push(cx.error(
                    &format!("{field}.after.within"),
                    "must be between 1s and 7d",
                ));
                ok = false;
                0
            }
            Err(err) => {
                compiled
                    .diagnostics
                    .push(cx.error(&format!("{field}.after.within"), err));
                ok = false;
                0
            }
        };
        for (name, source) in &e.after.attributes {
            if let AttributeSource::Agent(prop) = source
                && !matches!(prop.as_str(), "name" | "tenant" | "spiffeId")
            {
                compiled.diagnostics.push(cx.error(
                    &format!("{field}.after.attributes.{name}.agent"),
                    format!("unknown agent property `{prop}`; use name, tenant or spiffeId"),
                ));
                ok = false;
            }
        }
        if ok {
            compiled.gates.push(Gate {
                id: format!("{document}#events[{i}]"),
                event_type: e.after.event_type.clone(),
                within_secs: within,
                attributes: e.after.attributes.clone(),
            });
            restricted.push((
                format!("{field}.match"),
                e.target.clone(),
                Kind::Gate(compiled.gates.len() - 1),
            ));
        }
    }
    for (field, target, kind) in restricted {
        let Some((rule, name)) = Rule::of_target(cx, &field, &target, &mut compiled.diagnostics)
        else {
            continue;
        };
        let sub_field = format!("{field}.{name}");
        let Some(clauses) = rule.clauses(cx, &sub_field, catalog, false, &mut compiled.diagnostics)
        else {
            continue;
        };
        let when = rule.when();
        let when_field = format!("{sub_field}.when");
        let user = match when {
            Some(w) => {
                match user_condition(cx, &when_field, w, true, catalog, &mut compiled.diagnostics) {
                    Some(u) => Some(u),
                    None => continue,
                }
            }
            None => None,
        };
        let rule = field.trim_end_matches(".match").to_owned();
        let blame = if when.is_some() {
            when_field
        } else {
            rule.clone()
        };
        for clause in &clauses {
            match kind {
                Kind::Deny => emit(
                    compiled,
                    "forbid",
                    PolicyRole::Grant,
                    clause,
                    user.as_deref(),
                    Extra::None,
                    &rule,
                    &blame,
                    None,
                    None,
                ),
                Kind::Approval(r) => {
                    let unless = Extra::NotApproved {
                        requirement: compiled.requirements[r].id.clone(),
                    };
                    emit(
                        compiled,
                        "permit",
                        PolicyRole::Approval,
                        clause,
                        user.as_deref(),
                        unless,
                        &rule,
                        &blame,
                        None,
                        Some(r),
                    );
                }
                Kind::Gate(g) => {
                    let id = compiled.gates[g].id.clone();
                    emit(
                        compiled,
                        "permit",
                        PolicyRole::Grant,
                        clause,
                        user.as_deref(),
                        Extra::GateOpen {
                            gate: g,
                            id: id.clone(),
                        },
                        &rule,
                        &blame,
                        Some(g),
                        None,
                    );
                    emit(
                        compiled,
                        "forbid",
                        PolicyRole::Grant,
                        clause,
                        user.as_deref(),
                        Extra::GateClosed { gate: g, id },
                        &rule,
                        &blame,
                        Some(g),
                        None,
                    );
                }
            }
        }
    }

    // Limits.
    if let Some(limits) = &spec.limits {
        let all_kinds = Clause {
            kinds: vec![],
            condition: "true".into(),
            resources: vec![],
            takes_condition: false,
            examples: vec![],
            matcher: TargetMatcher::Any,
        };
        if let Some(n) = limits.requests_per_minute {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            emit(
                compiled,
                "forbid",
                PolicyRole::Grant,
                &all_kinds,
                None,
                Extra::RequestsAtLeast(n),
                "spec.limits.requestsPerMinute",
                "spec.limits.requestsPerMinute",
                None,
                None,
            );
        }
        if let Some(size) = &limits.bytes_per_hour {
            match parse_byte_size(size) {
                Ok(n) => {
                    let n = i64::try_from(n).unwrap_or(i64::MAX);
                    emit(
                        compiled,
                        "forbid",
                        PolicyRole::Grant,
                        &all_kinds,
                        None,
                        Extra::BytesOver(n),
                        "spec.limits.bytesPerHour",
                        "spec.limits.bytesPerHour",
                        None,
                        None,
                    );
                }
                Err(e) => compiled
                    .diagnostics
                    .push(cx.error("spec.limits.bytesPerHour", e)),
            }
        }
    }
}
