//! Evaluation: a [`DecisionRequest`] against a [`Bundle`], deny by default, failing closed.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, Response,
    RestrictedExpression,
};
use serde::Serialize;
use serde_json::Value;
use warden_model::{
    Action, ActionKind, AgentIdentity, Decision, DecisionId, DecisionRequest, DenyReason,
    FindingKind, Host, Outcome, PolicyRef, Resource,
};

use crate::bundle::{Bundle, policy_number};
use crate::compile::Gate;
use crate::document::AttributeSource;
use crate::index::{FastMap, RequestKeys, SlicedSet};
use crate::pattern::{MAX_SEGMENTS, UriPattern};
use crate::schema::{ArgType, ArgTypes, ContextUse, resource_type};

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
    EntityTypeName::from_str(name)
        .unwrap_or_else(|_| unreachable!("`{name}` is a valid Cedar type name"))
}

static AGENT_TYPE: LazyLock<EntityTypeName> = LazyLock::new(|| type_name("Agent"));
static ACTIONS: LazyLock<Vec<EntityUid>> = LazyLock::new(|| {
    ActionKind::ALL
        .iter()
        .map(|k| EntityUid::from_type_name_and_id(type_name("Action"), EntityId::new(k.as_str())))
        .collect()
});
static RESOURCE_TYPES: LazyLock<Vec<EntityTypeName>> = LazyLock::new(|| {
    ActionKind::ALL
        .iter()
        .map(|k| type_name(resource_type(*k)))
        .collect()
});

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

fn segments_record<'a>(
    segments: impl Iterator<Item = &'a str>,
) -> Result<RestrictedExpression, String> {
    record(
        segments
            .take(MAX_SEGMENTS)
            .enumerate()
            .map(|(i, s)| (format!("s{i}"), string(s)))
            .collect(),
    )
}

/// The entity store of a request depends only on the agent and the resource, and the same agents
/// call the same tools again and again; building it costs more than evaluating the handful of
/// policies a sliced decision runs, so it is built once per pair and shared.
pub(crate) struct EntityCache {
    /// By agent, then resource, so a lookup borrows the caller's identity instead of cloning it.
    /// The map and how many entries it holds in all.
    entries: std::sync::RwLock<(EntityMap, usize)>,
}

type EntityMap = FastMap<AgentIdentity, FastMap<Resource, Arc<RequestEntities>>>;

pub(crate) struct RequestEntities {
    agent: EntityUid,
    resource: EntityUid,
    entities: Entities,
}

impl EntityCache {
    const LIMIT: usize = 16_384;

    pub(crate) fn new() -> Self {
        Self {
            entries: std::sync::RwLock::new((FastMap::default(), 0)),
        }
    }

    fn get(&self, agent: &AgentIdentity, action: &Action) -> Result<Arc<RequestEntities>, String> {
        let resource = action.resource();
        if let Ok(entries) = self.entries.read()
            && let Some(hit) = entries
                .0
                .get(agent)
                .and_then(|by_resource| by_resource.get(&resource))
        {
            return Ok(Arc::clone(hit));
        }
        let (agent_uid, agent_entity) = agent_entity(agent)?;
        let (resource_uid, resource_entity) = resource_entity(action)?;
        let entities = Entities::from_entities([agent_entity, resource_entity], None)
            .map_err(|e| e.to_string())?;
        let built = Arc::new(RequestEntities {
            agent: agent_uid,
            resource: resource_uid,
            entities,
        });
        if let Ok(mut guard) = self.entries.write() {
            let (entries, count) = &mut *guard;
            if *count >= Self::LIMIT {
                entries.clear();
                *count = 0;
            }
            let previous = entries
                .entry(agent.clone())
                .or_default()
                .insert(resource, Arc::clone(&built));
            if previous.is_none() {
                *count += 1;
            }
        }
        Ok(built)
    }
}

fn agent_entity(agent: &AgentIdentity) -> Result<(EntityUid, Entity), String> {
    let uid = EntityUid::from_type_name_and_id(
        AGENT_TYPE.clone(),
        EntityId::new(agent.spiffe_id().as_str()),
    );
    let path_depth = agent.spiffe_id().segments().count();
    let mut attrs = vec![
        ("spiffe_id".to_owned(), string(agent.spiffe_id().as_str())),
        ("trust_domain".to_owned(), string(agent.trust_domain())),
        ("tenant".to_owned(), string(agent.tenant().as_str())),
        ("name".to_owned(), string(agent.name().as_str())),
        ("depth".to_owned(), long(agent.depth())),
        ("path_depth".to_owned(), long(path_depth)),
        (
            "path".to_owned(),
            segments_record(agent.spiffe_id().segments())?,
        ),
    ];
    if let Some(task) = agent.task() {
        attrs.push(("task".to_owned(), string(task.as_str())));
    }
    let tags = agent
        .labels()
        .iter()
        .map(|(k, v)| (k.to_string(), string(v.as_str())));
    let entity = Entity::new_with_tags(uid.clone(), attrs, [], tags).map_err(|e| e.to_string())?;
    Ok((uid, entity))
}

fn resource_entity(action: &Action) -> Result<(EntityUid, Entity), String> {
    let (id, attrs): (String, Vec<(&str, RestrictedExpression)>) = match action {
        Action::Http { service, .. } => (
            service.to_string(),
            vec![("name", string(service.as_str()))],
        ),
        Action::EgressConnect { host, .. } => (
            host.to_string(),
            vec![
                ("name", string(&host.to_string())),
                ("label_count", long(host.label_count())),
                (
                    "is_ip",
                    RestrictedExpression::new_bool(matches!(host, Host::Ip(_))),
                ),
            ],
        ),
        Action::McpToolsList { server } | Action::McpClientMessage { server, .. } => {
            (server.to_string(), vec![("name", string(server.as_str()))])
        }
        Action::McpToolsCall { server, tool, .. } => (
            format!("{server}#{tool}"),
            vec![
                ("server", string(server.as_str())),
                ("name", string(tool.as_str())),
            ],
        ),
        Action::McpResourcesRead { server, uri } => (
            format!("{server}#{uri}"),
            vec![
                ("server", string(server.as_str())),
                ("uri", string(uri)),
                ("depth", long(UriPattern::parts_of(uri).count())),
                ("segments", segments_record(UriPattern::parts_of(uri))?),
            ],
        ),
        Action::McpPromptsGet { server, prompt, .. } => (
            format!("{server}#{prompt}"),
            vec![
                ("server", string(server.as_str())),
                ("name", string(prompt.as_str())),
            ],
        ),
        Action::A2a { peer, .. } => (peer.to_string(), vec![("name", string(peer.as_str()))]),
    };
    let uid = EntityUid::from_type_name_and_id(
        RESOURCE_TYPES[kind_index(action.kind())].clone(),
        EntityId::new(id),
    );
    let entity = Entity::new(
        uid.clone(),
        attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        std::collections::HashSet::new(),
    )
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
            .and_then(|items| {
                items
                    .iter()
                    .map(|v| v.as_str().map(string))
                    .collect::<Option<Vec<_>>>()
            })
            .map(RestrictedExpression::new_set),
        ArgType::LongSet => value
            .as_array()
            .and_then(|items| items.iter().map(as_long).collect::<Option<Vec<_>>>())
            .map(RestrictedExpression::new_set),
    };
    converted.ok_or_else(mismatch)
}

/// Declared arguments as a Cedar record; undeclared ones are not visible to policy.
fn args_record(
    args: &serde_json::Map<String, Value>,
    declared: &ArgTypes,
) -> Result<RestrictedExpression, String> {
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
                gate_value(source, request)
                    .is_some_and(|want| event.attributes.get(key) == Some(&want))
            })
    })
}

/// Builds the request context, with only the attributes `reads` covers: the candidate policies
/// cannot see the rest, and a policy that reads one that is missing errs, which denies.
fn context_for(
    request: &DecisionRequest,
    now: i64,
    gates: &[String],
    reads: ContextUse,
    args: Option<RestrictedExpression>,
) -> Result<Context, String> {
    let ctx = &request.context;
    let score = |kind| {
        ctx.findings
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| i64::from(f.score))
            .max()
            .unwrap_or(0)
    };
    let count = |kind| long(ctx.findings.iter().filter(|f| f.kind == kind).count());
    let mut fields: Vec<(String, RestrictedExpression)> = Vec::new();
    let mut add = |name: &str,
                   value: &dyn Fn() -> Result<RestrictedExpression, String>|
     -> Result<(), String> {
        if reads.reads(name) {
            fields.push((name.to_owned(), value()?));
        }
        Ok(())
    };
    add("findings", &|| {
        record(vec![
            (
                "injection_score".into(),
                RestrictedExpression::new_long(score(FindingKind::Injection)),
            ),
            ("secret_count".into(), count(FindingKind::Secret)),
            ("sensitive_count".into(), count(FindingKind::SensitiveData)),
            (
                "tool_drift".into(),
                RestrictedExpression::new_bool(
                    ctx.findings
                        .iter()
                        .any(|f| f.kind == FindingKind::ToolDrift),
                ),
            ),
            (
                "rules".into(),
                RestrictedExpression::new_set(ctx.findings.iter().map(|f| string(&f.rule))),
            ),
        ])
    })?;
    add("usage", &|| {
        record(vec![
            (
                "requests_last_minute".into(),
                long(ctx.usage.requests_last_minute),
            ),
            ("bytes_last_hour".into(), long(ctx.usage.bytes_last_hour)),
        ])
    })?;
    add("time", &|| Ok(RestrictedExpression::new_long(now)))?;
    add("intent", &|| {
        Ok(string(ctx.intent.as_deref().unwrap_or("")))
    })?;
    add("body_bytes", &|| Ok(long(ctx.body_bytes)))?;
    add("approved", &|| {
        Ok(RestrictedExpression::new_set(
            ctx.approved.iter().map(|a| string(a)),
        ))
    })?;
    add("gates", &|| {
        Ok(RestrictedExpression::new_set(
            gates.iter().map(|g| string(g)),
        ))
    })?;
    match &request.action {
        Action::Http { method, path, .. } => {
            add("method", &|| Ok(string(method.as_str())))?;
            add("path", &|| Ok(string(path.as_str())))?;
            add("path_depth", &|| Ok(long(path.depth())))?;
            add("segments", &|| {
                segments_record(path.as_str().split('/').skip(1).filter(|s| !s.is_empty()))
            })?;
        }
        Action::EgressConnect {
            host,
            port,
            protocol,
            ip,
        } => {
            add("port", &|| Ok(long(*port)))?;
            add("protocol", &|| Ok(string(protocol.as_str())))?;
            let address = ip.or(match host {
                Host::Ip(ip) => Some(*ip),
                Host::Dns(_) => None,
            });
            if let Some(ip) = address {
                add("ip", &|| Ok(RestrictedExpression::new_ip(ip.to_string())))?;
            }
        }
        _ => {}
    }
    if let Some(args) = args {
        add("args", &|| Ok(args.clone()))?;
    }
    Context::from_pairs(fields).map_err(|e| e.to_string())
}

/// Decision ids come from a per-thread buffer of random bytes refilled 256 ids at a time: one RNG
/// call per id cost more than a whole policy evaluation.
fn new_decision_id() -> DecisionId {
    const IDS: usize = 256;
    thread_local! {
        static BUFFER: std::cell::RefCell<(Vec<u8>, usize)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    BUFFER.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (bytes, used) = &mut *guard;
        if *used == 0 || *used >= bytes.len() {
            bytes.resize(IDS * 16, 0);
            // A failing system RNG would leave zero ids; ids label decisions, they protect nothing.
            let _ = aws_lc_rs::rand::fill(bytes);
            *used = 0;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[*used..*used + 16]);
        *used += 16;
        DecisionId::from_bytes(id)
    })
}

/// What an evaluation found, in global policy numbers: references are built only for what a
/// decision or an explanation shows.
struct Judgement {
    outcome: Outcome,
    permits: Vec<usize>,
    forbids: Vec<usize>,
    approvals: Vec<usize>,
    gates: Vec<String>,
    evaluated: usize,
}

impl Judgement {
    /// The policies that decided: the forbids that denied, or the permits that allowed and the
    /// approval rules still pending.
    fn deciding(&self) -> Vec<usize> {
        match &self.outcome {
            Outcome::Allow => self.permits.clone(),
            Outcome::Deny {
                reason: DenyReason::Forbidden,
                ..
            } => self.forbids.clone(),
            Outcome::Deny { .. } => Vec::new(),
            Outcome::NeedsApproval { .. } => self
                .permits
                .iter()
                .chain(&self.approvals)
                .copied()
                .collect(),
        }
    }
}

/// What Cedar needs to evaluate a request, built only when some policy needs Cedar.
struct CedarInput {
    request: Request,
    entities: Arc<RequestEntities>,
}

/// Which policies of one set matched, by effect, and what failed.
#[derive(Default)]
struct Verdict {
    permits: Vec<usize>,
    forbids: Vec<usize>,
    errors: Vec<String>,
}

impl Bundle {
    /// Decides `request`: allow, deny or needs-approval, with the deciding policies.
    pub fn decide(&self, request: &DecisionRequest) -> Decision {
        self.decide_with(request, Slicing::On)
    }

    /// Whether some argument values could let `request` through: its decision is not a denial,
    /// or a permitting rule's structure (who, which kind, which resource) matches and only its
    /// conditions stand in the way. Listings use it, so a tool an agent may call with the right
    /// arguments stays visible; every call is still decided with its real arguments. A rule that
    /// forbids the request as it stands hides it.
    pub fn could_allow(&self, request: &DecisionRequest) -> bool {
        match self.decide(request).outcome {
            Outcome::Allow | Outcome::NeedsApproval { .. } => true,
            Outcome::Deny {
                reason: DenyReason::Forbidden,
                ..
            } => false,
            Outcome::Deny { .. } => {
                let keys = RequestKeys::new(&request.agent, &request.action);
                self.grants.candidates(&keys).into_iter().any(|c| {
                    !self.grants.is_forbid(c)
                        && self.grants.matcher(c).is_some_and(|m| m.matches(request))
                })
            }
        }
    }

    /// Whether some permitting egress rule for `agent` names `host`, on any port or protocol
    /// and whatever its conditions: what a confined agent's DNS responder answers. A name no
    /// rule names is not resolved, so lookups cannot carry data out; every connection to what
    /// it resolves to is still decided in full.
    pub fn could_reach(&self, agent: &AgentIdentity, host: &Host) -> bool {
        let probe = Action::EgressConnect {
            host: host.clone(),
            port: 0,
            protocol: warden_model::Protocol::Tcp,
            ip: None,
        };
        let keys = RequestKeys::new(agent, &probe);
        self.grants.candidates(&keys).into_iter().any(|c| {
            !self.grants.is_forbid(c)
                && self.grants.matcher(c).is_some_and(|m| {
                    (m.kinds.is_empty() || m.kinds.contains(&ActionKind::EgressConnect))
                        && m.selector.matches(agent)
                        && m.target.names_host(host)
                })
        })
    }

    /// A denial Warden makes before policy is consulted (a message it does not forward): a
    /// decision of this bundle, with its own id, that no policy decided.
    pub fn refusal(&self, reason: DenyReason) -> Decision {
        Decision {
            id: new_decision_id(),
            outcome: Outcome::denied(reason),
            deciding: Vec::new(),
            bundle: self.hash().clone(),
        }
    }

    /// Decides with or without slicing; both must agree, which tests check.
    pub fn decide_with(&self, request: &DecisionRequest, slicing: Slicing) -> Decision {
        let judgement = self.judgement(request, slicing);
        self.decision(&judgement)
    }

    /// The decision a judgement makes, naming only its deciding policies.
    fn decision(&self, judgement: &Judgement) -> Decision {
        Decision {
            id: new_decision_id(),
            deciding: self.refs_of(&judgement.deciding()),
            outcome: judgement.outcome.clone(),
            bundle: self.hash.clone(),
        }
    }

    fn candidates(&self, set: &SlicedSet, keys: &RequestKeys, slicing: Slicing) -> Vec<u32> {
        match slicing {
            Slicing::Off => (0..u32::try_from(set.len()).unwrap_or(u32::MAX)).collect(),
            Slicing::On => set.candidates(keys),
        }
    }

    /// First pass over a set: decides in Rust every candidate whose matcher settles it, and
    /// returns the candidates Cedar must still evaluate (all of them when unsliced).
    fn prejudge(
        &self,
        set: &SlicedSet,
        ids: &[u32],
        candidates: &[u32],
        slicing: Slicing,
        request: &DecisionRequest,
        open_gates: &BTreeSet<usize>,
    ) -> (Verdict, Vec<u32>) {
        let mut verdict = Verdict::default();
        if slicing == Slicing::Off {
            return (verdict, candidates.to_vec());
        }
        let mut pending = Vec::new();
        for c in candidates {
            let Some(matcher) = set.matcher(*c) else {
                pending.push(*c);
                continue;
            };
            if !matcher.matches(request) {
                continue;
            }
            if set.single(*c).is_some() {
                pending.push(*c);
                continue;
            }
            let n = ids[*c as usize] as usize;
            match matcher.extra.holds(request, open_gates) {
                Ok(true) if set.is_forbid(*c) => verdict.forbids.push(n),
                Ok(true) => verdict.permits.push(n),
                Ok(false) => {}
                Err(e) => verdict.errors.push(match self.policies.get(n) {
                    Some(info) => format!(
                        "{}: error while evaluating policy `p{n}`: {e}",
                        info.reference
                    ),
                    None => e,
                }),
            }
        }
        (verdict, pending)
    }

    /// Second pass: Cedar evaluates what the first left, whole set or candidate by candidate.
    fn judge(
        &self,
        set: &SlicedSet,
        pending: &[u32],
        slicing: Slicing,
        cedar: &CedarInput,
        verdict: &mut Verdict,
    ) {
        let mut absorb = |response: Response, forbid: Option<bool>| {
            verdict.errors.extend(self.errors(&response));
            for id in response.diagnostics().reason() {
                let Some(n) = policy_number(id.as_ref()) else {
                    continue;
                };
                let is_forbid =
                    forbid.unwrap_or(response.decision() == cedar_policy::Decision::Deny);
                if is_forbid {
                    &mut verdict.forbids
                } else {
                    &mut verdict.permits
                }
                .push(n);
            }
        };
        let entities = &cedar.entities.entities;
        match slicing {
            Slicing::Off => match set.all() {
                Ok(all) => absorb(
                    AUTHORIZER.is_authorized(&cedar.request, all, entities),
                    None,
                ),
                Err(e) => verdict.errors.push(e),
            },
            Slicing::On => {
                for c in pending {
                    if let Some(single) = set.single(*c) {
                        absorb(
                            AUTHORIZER.is_authorized(&cedar.request, single, entities),
                            Some(set.is_forbid(*c)),
                        );
                    }
                }
            }
        }
        verdict.permits.sort_unstable();
        verdict.forbids.sort_unstable();
    }

    /// The tool or prompt arguments as Cedar sees them, refusing values of the wrong type.
    fn converted_args(&self, action: &Action) -> Result<Option<RestrictedExpression>, String> {
        match action {
            Action::McpToolsCall { args, .. } => args_record(args, &self.tool_args).map(Some),
            Action::McpPromptsGet { args, .. } => args_record(args, &self.prompt_args).map(Some),
            _ => Ok(None),
        }
    }

    fn refs_of(&self, numbers: &[usize]) -> Vec<PolicyRef> {
        numbers
            .iter()
            .filter_map(|n| self.policies.get(*n))
            .map(|p| p.reference.clone())
            .collect()
    }

    fn errors(&self, response: &Response) -> Vec<String> {
        response
            .diagnostics()
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(inner) = e;
                match self.info(inner.policy_id()) {
                    Some(info) => format!(
                        "{}: {}",
                        info.reference,
                        crate::compile::one_line(&e.to_string())
                    ),
                    None => crate::compile::one_line(&e.to_string()),
                }
            })
            .collect()
    }

    /// Decides `request` and says why, with the Cedar text of every policy involved.
    pub fn explain(&self, request: &DecisionRequest, slicing: Slicing) -> Explanation {
        let judgement = self.judgement(request, slicing);
        let mut named: Vec<usize> = judgement
            .permits
            .iter()
            .chain(&judgement.forbids)
            .chain(&judgement.approvals)
            .copied()
            .collect();
        named.sort_unstable();
        named.dedup();
        let errors = match &judgement.outcome {
            Outcome::Deny { errors, .. } => errors.clone(),
            _ => Vec::new(),
        };
        Explanation {
            decision: self.decision(&judgement),
            evaluated: judgement.evaluated,
            total: self.policies.len(),
            permits: self.refs_of(&judgement.permits),
            forbids: self.refs_of(&judgement.forbids),
            approvals: self.refs_of(&judgement.approvals),
            gates: judgement.gates,
            errors,
            sources: named
                .into_iter()
                .filter_map(|n| self.policies.get(n))
                .map(|p| PolicySource {
                    policy: p.reference.clone(),
                    cedar: p.text.to_string(),
                })
                .collect(),
        }
    }

    /// Evaluates `request`; any failure becomes an evaluation-error denial.
    fn judgement(&self, request: &DecisionRequest, slicing: Slicing) -> Judgement {
        let mut judgement = Judgement {
            outcome: Outcome::denied(DenyReason::NoMatchingGrant),
            permits: Vec::new(),
            forbids: Vec::new(),
            approvals: Vec::new(),
            gates: Vec::new(),
            evaluated: 0,
        };
        if let Err(errors) = self.evaluate(request, slicing, &mut judgement) {
            judgement.outcome = Outcome::evaluation_error(errors);
        }
        judgement
    }

    fn evaluate(
        &self,
        request: &DecisionRequest,
        slicing: Slicing,
        out: &mut Judgement,
    ) -> Result<(), Vec<String>> {
        let one = |e: String| vec![e];
        let now = request.context.time.unwrap_or_else(now_unix);
        let kind = request.action.kind();
        // Arguments of the wrong type deny whatever the policies say, so they are converted
        // (and checked) before anything is evaluated.
        let args = self.converted_args(&request.action).map_err(one)?;
        let keys = RequestKeys::new(&request.agent, &request.action);

        let grant_candidates = self.candidates(&self.grants, &keys, slicing);
        let approval_candidates = self.candidates(&self.approvals, &keys, slicing);
        let gates: BTreeSet<usize> = grant_candidates
            .iter()
            .filter_map(|c| self.grants.gate(*c))
            .collect();
        let open_gates: BTreeSet<usize> = gates
            .into_iter()
            .filter(|g| gate_satisfied(&self.gates[*g], request, now))
            .collect();
        let satisfied: Vec<String> = open_gates
            .iter()
            .map(|g| self.gates[*g].id.clone())
            .collect();
        out.gates = satisfied.clone();
        out.evaluated = grant_candidates.len();

        let (mut granted, grants_pending) = self.prejudge(
            &self.grants,
            &self.grant_ids,
            &grant_candidates,
            slicing,
            request,
            &open_gates,
        );
        let (mut pending, approvals_pending) = self.prejudge(
            &self.approvals,
            &self.approval_ids,
            &approval_candidates,
            slicing,
            request,
            &open_gates,
        );
        let cedar = if grants_pending.is_empty() && approvals_pending.is_empty() {
            None
        } else {
            let reads = match slicing {
                Slicing::Off => ContextUse::ALL,
                Slicing::On => grants_pending
                    .iter()
                    .map(|c| self.grant_ids[*c as usize])
                    .chain(
                        approvals_pending
                            .iter()
                            .map(|c| self.approval_ids[*c as usize]),
                    )
                    .fold(ContextUse::default(), |acc, n| {
                        acc.union(self.policies[n as usize].context)
                    }),
            };
            let entities = self
                .entities
                .get(&request.agent, &request.action)
                .map_err(one)?;
            let context = context_for(request, now, &satisfied, reads, args).map_err(one)?;
            let request = Request::new(
                entities.agent.clone(),
                ACTIONS[kind_index(kind)].clone(),
                entities.resource.clone(),
                context,
                None,
            )
            .map_err(|e| one(e.to_string()))?;
            Some(CedarInput { request, entities })
        };
        if let Some(cedar) = &cedar {
            self.judge(&self.grants, &grants_pending, slicing, cedar, &mut granted);
        }
        if !granted.errors.is_empty() {
            return Err(granted.errors);
        }
        if !granted.forbids.is_empty() {
            out.forbids = granted.forbids;
            out.outcome = Outcome::denied(DenyReason::Forbidden);
            return Ok(());
        }
        if granted.permits.is_empty() {
            return Ok(());
        }
        out.permits = granted.permits;
        out.evaluated += approval_candidates.len();
        if let Some(cedar) = &cedar {
            self.judge(
                &self.approvals,
                &approvals_pending,
                slicing,
                cedar,
                &mut pending,
            );
        }
        if !pending.errors.is_empty() {
            return Err(pending.errors);
        }
        if pending.permits.is_empty() {
            out.outcome = Outcome::Allow;
            return Ok(());
        }
        let requirements = pending
            .permits
            .iter()
            .filter_map(|n| self.policies.get(*n)?.approval)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|r| self.requirements[r].clone())
            .collect();
        out.approvals = pending.permits;
        out.outcome = Outcome::NeedsApproval { requirements };
        Ok(())
    }
}
