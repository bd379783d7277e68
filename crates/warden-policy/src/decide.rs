//! Evaluation: a [`DecisionRequest`] against a [`Bundle`], deny by default, failing closed.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet,
    Request, Response, RestrictedExpression,
};
use serde::Serialize;
use serde_json::Value;
use warden_model::{
    Action, ActionKind, AgentIdentity, Decision, DecisionId, DecisionRequest, DenyReason,
    FindingKind, Host, Outcome, PolicyRef,
};

use crate::bundle::Bundle;
use crate::compile::{Gate, PolicyRole};
use crate::document::AttributeSource;
use crate::index::{RequestKeys, SlicedSet};
use crate::pattern::MAX_SEGMENTS;
use crate::schema::{ArgType, ArgTypes, resource_type};

/// Whether to evaluate only the policies the index selects (the default) or every policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slicing {
    On,
    Off,
}

/// Clock skew tolerated for events stamped slightly in the future, in seconds.
const EVENT_CLOCK_SKEW_SECS: i64 = 30;

/// A decision with its full reasoning.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub decision: Decision,
    /// Policies evaluated / in the bundle.
    pub evaluated: usize,
    pub total: usize,
    /// Grants (permits) that matched.
    pub permits: Vec<PolicyRef>,
    /// Deny rules, limits and event gates (forbids) that matched.
    pub forbids: Vec<PolicyRef>,
    /// Approval rules that matched and are not yet satisfied.
    pub approvals: Vec<PolicyRef>,
    /// Event gates the request's events satisfy.
    pub gates: Vec<String>,
    pub errors: Vec<String>,
    /// Cedar text of every policy named above.
    pub sources: Vec<PolicySource>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicySource {
    pub policy: PolicyRef,
    pub cedar: String,
}

static AUTHORIZER: LazyLock<Authorizer> = LazyLock::new(Authorizer::new);

fn type_name(name: &str) -> EntityTypeName {
    // The names are fixed identifiers, valid by construction.
    EntityTypeName::from_str(name).unwrap_or_else(|_| unreachable!("`{name}` is a valid Cedar type name"))
}

static AGENT_TYPE: LazyLock<EntityTypeName> = LazyLock::new(|| type_name("Agent"));
static ACTIONS: LazyLock<Vec<EntityUid>> = LazyLock::new(|| {
    ActionKind::ALL
        .iter()
        .map(|k| EntityUid::from_type_name_and_id(type_name("Action"), EntityId::new(k.as_str())))
        .collect()
});
static RESOURCE_TYPES: LazyLock<Vec<EntityTypeName>> =
    LazyLock::new(|| ActionKind::ALL.iter().map(|k| type_name(resource_type(*k))).collect());

fn kind_index(kind: ActionKind) -> usize {
    ActionKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn long<T: TryInto<i64>>(n: T) -> RestrictedExpression {
    RestrictedExpression::new_long(n.try_into().unwrap_or(i64::MAX))
}

fn record(fields: Vec<(String, RestrictedExpression)>) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(fields).map_err(|e| e.to_string())
}

fn segments_record<'a>(segments: impl Iterator<Item = &'a str>) -> Result<RestrictedExpression, String> {
    record(
        segments
            .take(MAX_SEGMENTS)
            .enumerate()
            .map(|(i, s)| (format!("s{i}"), string(s)))
            .collect(),
    )
}

fn agent_entity(agent: &AgentIdentity) -> Result<(EntityUid, Entity), String> {
    let uid = EntityUid::from_type_name_and_id(AGENT_TYPE.clone(), EntityId::new(agent.spiffe_id().as_str()));
    let path_depth = agent.spiffe_id().segments().count();
    let mut attrs = vec![
        ("spiffe_id".to_owned(), string(agent.spiffe_id().as_str())),
        ("trust_domain".to_owned(), string(agent.trust_domain())),
        ("tenant".to_owned(), string(agent.tenant().as_str())),
        ("name".to_owned(), string(agent.name().as_str())),
        ("depth".to_owned(), long(agent.depth())),
        ("path_depth".to_owned(), long(path_depth)),
        ("path".to_owned(), segments_record(agent.spiffe_id().segments())?),
    ];
    if let Some(task) = agent.task() {
        attrs.push(("task".to_owned(), string(task.as_str())));
    }
    let tags = agent.labels().iter().map(|(k, v)| (k.to_string(), string(v.as_str())));
    let entity = Entity::new_with_tags(uid.clone(), attrs, [], tags).map_err(|e| e.to_string())?;
    Ok((uid, entity))
}

fn resource_entity(action: &Action) -> Result<(EntityUid, Entity), String> {
    let (id, attrs): (String, Vec<(&str, RestrictedExpression)>) = match action {
        Action::Http { service, .. } => (service.to_string(), vec![("name", string(service.as_str()))]),
        Action::EgressConnect { host, .. } => (
            host.to_string(),
            vec![
                ("name", string(&host.to_string())),
                ("label_count", long(host.label_count())),
                ("is_ip", RestrictedExpression::new_bool(matches!(host, Host::Ip(_)))),
            ],
        ),
        Action::McpToolsList { server } => (server.to_string(), vec![("name", string(server.as_str()))]),
        Action::McpToolsCall { server, tool, .. } => (
            format!("{server}#{tool}"),
            vec![("server", string(server.as_str())), ("name", string(tool.as_str()))],
        ),
        Action::McpResourcesRead { server, uri } => (
            format!("{server}#{uri}"),
            vec![("server", string(server.as_str())), ("uri", string(uri))],
        ),
        Action::McpPromptsGet { server, prompt, .. } => (
            format!("{server}#{prompt}"),
            vec![("server", string(server.as_str())), ("name", string(prompt.as_str()))],
        ),
        Action::A2a { peer, .. } => (peer.to_string(), vec![("name", string(peer.as_str()))]),
    };
    let uid = EntityUid::from_type_name_and_id(RESOURCE_TYPES[kind_index(action.kind())].clone(), EntityId::new(id));
    let entity = Entity::new(uid.clone(), attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(), std::collections::HashSet::new())
        .map_err(|e| e.to_string())?;
    Ok((uid, entity))
}

fn describe_json(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn arg_value(name: &str, ty: ArgType, value: &Value) -> Result<RestrictedExpression, String> {
    let mismatch = || {
        format!(
            "argument `{name}` is {}, but the tool catalog declares it {}",
            describe_json(value),
            ty.describe()
        )
    };
    let as_long = |v: &Value| v.as_i64().map(RestrictedExpression::new_long);
    let converted = match ty {
        ArgType::String => value.as_str().map(string),
        ArgType::Long => as_long(value),
        ArgType::Bool => value.as_bool().map(RestrictedExpression::new_bool),
        ArgType::StringSet => value
            .as_array()
            .and_then(|items| items.iter().map(|v| v.as_str().map(string)).collect::<Option<Vec<_>>>())
            .map(RestrictedExpression::new_set),
        ArgType::LongSet => value
            .as_array()
            .and_then(|items| items.iter().map(as_long).collect::<Option<Vec<_>>>())
            .map(RestrictedExpression::new_set),
    };
    converted.ok_or_else(mismatch)
}

/// Declared arguments as a Cedar record; undeclared ones are not visible to policy.
fn args_record(args: &serde_json::Map<String, Value>, declared: &ArgTypes) -> Result<RestrictedExpression, String> {
    let mut fields = Vec::new();
    for (name, value) in args {
        if let Some(ty) = declared.get(name) {
            fields.push((name.clone(), arg_value(name, *ty, value)?));
        }
    }
    record(fields)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn gate_value(source: &AttributeSource, request: &DecisionRequest) -> Option<String> {
    match source {
        AttributeSource::Value(v) => Some(v.clone()),
        AttributeSource::Arg(name) => match request.action.args()?.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        },
        AttributeSource::Agent(prop) => match prop.as_str() {
            "name" => Some(request.agent.name().to_string()),
            "tenant" => Some(request.agent.tenant().to_string()),
            "spiffeId" => Some(request.agent.spiffe_id().to_string()),
            _ => None,
        },
    }
}

fn gate_satisfied(gate: &Gate, request: &DecisionRequest, now: i64) -> bool {
    let within = i64::try_from(gate.within_secs).unwrap_or(i64::MAX);
    request.context.events.iter().any(|event| {
        event.event_type.as_str() == gate.event_type
            && event.time <= now.saturating_add(EVENT_CLOCK_SKEW_SECS)
            && now.saturating_sub(event.time) <= within
            && gate.attributes.iter().all(|(key, source)| {
                gate_value(source, request).is_some_and(|want| event.attributes.get(key) == Some(&want))
            })
    })
}

fn context_for(request: &DecisionRequest, bundle: &Bundle, now: i64, gates: &[String]) -> Result<Context, String> {
    let ctx = &request.context;
    let score = |kind| {
        ctx.findings.iter().filter(|f| f.kind == kind).map(|f| i64::from(f.score)).max().unwrap_or(0)
    };
    let count = |kind| long(ctx.findings.iter().filter(|f| f.kind == kind).count());
    let findings = record(vec![
        ("injection_score".into(), RestrictedExpression::new_long(score(FindingKind::Injection))),
        ("secret_count".into(), count(FindingKind::Secret)),
        ("sensitive_count".into(), count(FindingKind::SensitiveData)),
        ("tool_drift".into(), RestrictedExpression::new_bool(ctx.findings.iter().any(|f| f.kind == FindingKind::ToolDrift))),
        ("rules".into(), RestrictedExpression::new_set(ctx.findings.iter().map(|f| string(&f.rule)))),
    ])?;
    let usage = record(vec![
        ("requests_last_minute".into(), long(ctx.usage.requests_last_minute)),
        ("bytes_last_hour".into(), long(ctx.usage.bytes_last_hour)),
    ])?;
    let mut fields = vec![
        ("time".to_owned(), RestrictedExpression::new_long(now)),
        ("intent".to_owned(), string(ctx.intent.as_deref().unwrap_or(""))),
        ("findings".to_owned(), findings),
        ("usage".to_owned(), usage),
        ("body_bytes".to_owned(), long(ctx.body_bytes)),
        ("approved".to_owned(), RestrictedExpression::new_set(ctx.approved.iter().map(|a| string(a)))),
        ("gates".to_owned(), RestrictedExpression::new_set(gates.iter().map(|g| string(g)))),
    ];
    match &request.action {
        Action::Http { method, path, .. } => {
            fields.push(("method".into(), string(method.as_str())));
            fields.push(("path".into(), string(path.as_str())));
            fields.push(("path_depth".into(), long(path.depth())));
            fields.push(("segments".into(), segments_record(path.as_str().split('/').skip(1).filter(|s| !s.is_empty()))?));
        }
        Action::EgressConnect { host, port, protocol, ip } => {
            fields.push(("port".into(), long(*port)));
            fields.push(("protocol".into(), string(protocol.as_str())));
            let address = ip.or(match host {
                Host::Ip(ip) => Some(*ip),
                Host::Dns(_) => None,
            });
            if let Some(ip) = address {
                fields.push(("ip".into(), RestrictedExpression::new_ip(ip.to_string())));
            }
        }
        Action::McpToolsCall { args, .. } => fields.push(("args".into(), args_record(args, &bundle.tool_args)?)),
        Action::McpPromptsGet { args, .. } => fields.push(("args".into(), args_record(args, &bundle.prompt_args)?)),
        _ => {}
    }
    Context::from_pairs(fields).map_err(|e| e.to_string())
}

fn new_decision_id() -> DecisionId {
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves a zero id; ids label decisions, they protect nothing.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    DecisionId::from_bytes(bytes)
}

struct Evaluated {
    response: Response,
    evaluated: usize,
}

impl Bundle {
    /// Decides `request`: allow, deny or needs-approval, with the deciding policies.
    pub fn decide(&self, request: &DecisionRequest) -> Decision {
        self.explain(request, Slicing::On).decision
    }

    /// Decides with or without slicing; both must agree, which tests check.
    pub fn decide_with(&self, request: &DecisionRequest, slicing: Slicing) -> Decision {
        self.explain(request, slicing).decision
    }

    fn set_for(&self, set: &SlicedSet, keys: &RequestKeys, slicing: Slicing) -> Result<(Arc<PolicySet>, Vec<u32>), String> {
        match slicing {
            Slicing::Off => Ok((set.all(), (0..u32::try_from(set.len()).unwrap_or(u32::MAX)).collect())),
            Slicing::On => {
                let candidates = set.candidates(keys);
                let slice = set.slice(&candidates).map_err(|e| e.to_string())?;
                Ok((slice, candidates))
            }
        }
    }

    fn refs(&self, response: &Response) -> Vec<PolicyRef> {
        let mut refs: Vec<(usize, PolicyRef)> = response
            .diagnostics()
            .reason()
            .filter_map(|id| {
                let n = id.to_string().strip_prefix('p')?.parse().ok()?;
                Some((n, self.info(id)?.reference.clone()))
            })
            .collect();
        refs.sort_by_key(|(n, _)| *n);
        refs.into_iter().map(|(_, r)| r).collect()
    }

    fn errors(&self, response: &Response) -> Vec<String> {
        response
            .diagnostics()
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(inner) = e;
                match self.info(inner.policy_id()) {
                    Some(info) => format!("{}: {}", info.reference, crate::compile::one_line(&e.to_string())),
                    None => crate::compile::one_line(&e.to_string()),
                }
            })
            .collect()
    }

    /// Decides `request` and says why.
    pub fn explain(&self, request: &DecisionRequest, slicing: Slicing) -> Explanation {
        let mut explanation = Explanation {
            decision: Decision {
                id: new_decision_id(),
                outcome: Outcome::denied(DenyReason::NoMatchingGrant),
                deciding: vec![],
                bundle: self.hash.clone(),
            },
            evaluated: 0,
            total: self.policies.len(),
            permits: vec![],
            forbids: vec![],
            approvals: vec![],
            gates: vec![],
            errors: vec![],
            sources: vec![],
        };
        if let Err(errors) = self.evaluate(request, slicing, &mut explanation) {
            explanation.errors = errors.clone();
            explanation.decision.outcome = Outcome::evaluation_error(errors);
            explanation.decision.deciding.clear();
        }
        let named: BTreeSet<&str> = explanation
            .permits
            .iter()
            .chain(&explanation.forbids)
            .chain(&explanation.approvals)
            .map(|r| r.id.as_str())
            .collect();
        explanation.sources = self
            .policies
            .iter()
            .filter(|p| named.contains(p.reference.id.as_str()))
            .map(|p| PolicySource { policy: p.reference.clone(), cedar: p.text.clone() })
            .collect();
        explanation
    }

    fn evaluate(&self, request: &DecisionRequest, slicing: Slicing, out: &mut Explanation) -> Result<(), Vec<String>> {
        let one = |e: String| vec![e];
        let now = request.context.time.unwrap_or_else(now_unix);
        let kind = request.action.kind();
        let keys = RequestKeys::new(&request.agent, kind, &request.action.resource());
        let (agent_uid, agent) = agent_entity(&request.agent).map_err(one)?;
        let (resource_uid, resource) = resource_entity(&request.action).map_err(one)?;
        let entities = Entities::from_entities([agent, resource], None).map_err(|e| one(e.to_string()))?;
        let action = ACTIONS[kind_index(kind)].clone();

        let (grants, grant_candidates) = self.set_for(&self.grants, &keys, slicing).map_err(one)?;
        let mut gates: BTreeSet<usize> = BTreeSet::new();
        for c in &grant_candidates {
            if let Some(g) = self.policies[self.grant_ids[*c as usize] as usize].gate {
                gates.insert(g);
            }
        }
        let satisfied: Vec<String> = gates
            .into_iter()
            .map(|g| &self.gates[g])
            .filter(|g| gate_satisfied(g, request, now))
            .map(|g| g.id.clone())
            .collect();
        out.gates = satisfied.clone();
        let context = context_for(request, self, now, &satisfied).map_err(one)?;
        let cedar_request = Request::new(agent_uid, action, resource_uid, context, None).map_err(|e| one(e.to_string()))?;

        let run = |set: &PolicySet, evaluated: usize| Evaluated {
            response: AUTHORIZER.is_authorized(&cedar_request, set, &entities),
            evaluated,
        };
        let granted = run(&grants, grant_candidates.len());
        out.evaluated = granted.evaluated;
        let errors = self.errors(&granted.response);
        if !errors.is_empty() {
            return Err(errors);
        }
        let deciding = self.refs(&granted.response);
        if granted.response.decision() == cedar_policy::Decision::Deny {
            if !deciding.is_empty() {
                out.forbids = deciding.clone();
                out.decision.outcome = Outcome::denied(DenyReason::Forbidden);
                out.decision.deciding = deciding;
            }
            return Ok(());
        }
        out.permits = deciding.clone();

        let (approval_set, approval_candidates) = self.set_for(&self.approvals, &keys, slicing).map_err(one)?;
        let pending = run(&approval_set, approval_candidates.len());
        out.evaluated += pending.evaluated;
        let errors = self.errors(&pending.response);
        if !errors.is_empty() {
            return Err(errors);
        }
        let approval_refs = self.refs(&pending.response);
        if approval_refs.is_empty() {
            out.decision.outcome = Outcome::Allow;
            out.decision.deciding = deciding;
            return Ok(());
        }
        let requirements = pending
            .response
            .diagnostics()
            .reason()
            .filter_map(|id| self.info(id))
            .filter(|info| info.role == PolicyRole::Approval)
            .filter_map(|info| info.approval)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|r| self.requirements[r].clone())
            .collect();
        out.approvals = approval_refs.clone();
        out.decision.outcome = Outcome::NeedsApproval { requirements };
        out.decision.deciding = deciding.into_iter().chain(approval_refs).collect();
        Ok(())
    }
}
