//! A bundle: every policy source in a directory, compiled, validated and indexed as one unit with
//! one content hash.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator,
};
use serde::Deserialize;
use warden_model::{ActionKind, ApprovalRequirement, BundleHash, PolicyRef};

use crate::compile::{
    Catalog, Compiled, CompiledPolicy, DocContext, Gate, Origin, PolicyRole, PrincipalKey, Samples,
    compile_policy, one_line,
};
use crate::decide::EntityCache;
use crate::diagnostic::{Diagnostic, LoadError};
use crate::document::{
    API_VERSION, AgentPolicyDoc, DetectionAction, DetectionPolicyDoc, PolicyMode, PolicyTestDoc,
    TestCaseSpec, ToolCatalogDoc, UndoSpec,
};
use crate::index::{Indexed, SlicedSet};
use crate::locate::Locator;
use crate::schema::{ArgType, ArgTypes, ContextUse, schema_text};

/// Bounds on what a bundle may hold, so a hostile or mistaken directory cannot exhaust memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadLimits {
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    pub max_files: usize,
    pub max_documents: usize,
    pub max_dir_depth: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 4 << 20,
            max_total_bytes: 256 << 20,
            max_files: 10_000,
            max_documents: 200_000,
            max_dir_depth: 16,
        }
    }
}

/// One policy source: a path relative to the bundle root and its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

/// A policy unit test, from a `PolicyTest` document.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub file: String,
    pub line: Option<u32>,
    pub suite: String,
    pub spec: TestCaseSpec,
}

/// A compiled policy as the bundle keeps it: its reference and its Cedar text.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    pub reference: PolicyRef,
    pub text: Arc<str>,
    pub role: PolicyRole,
    pub gate: Option<usize>,
    pub approval: Option<usize>,
    /// The context attributes the policy can read when sliced (its residual, if it has one).
    pub(crate) context: ContextUse,
}

/// A loaded, validated, indexed set of policies.
pub struct Bundle {
    pub(crate) hash: BundleHash,
    pub(crate) grants: SlicedSet,
    pub(crate) approvals: SlicedSet,
    /// Global policy number → info; Cedar ids are `p<number>`.
    pub(crate) policies: Vec<PolicyInfo>,
    /// Grant-set position → global number, and likewise for approvals.
    pub(crate) grant_ids: Vec<u32>,
    pub(crate) approval_ids: Vec<u32>,
    pub(crate) gates: Vec<Gate>,
    pub(crate) requirements: Vec<ApprovalRequirement>,
    pub(crate) tool_args: ArgTypes,
    pub(crate) prompt_args: ArgTypes,
    undo: BTreeMap<String, BTreeMap<String, UndoSpec>>,
    pub(crate) schema: Schema,
    pub(crate) entities: EntityCache,
    samples: Samples,
    tests: Vec<TestCase>,
    warnings: Vec<Diagnostic>,
    files: Vec<String>,
    /// The staged policies, compiled on their own (with the catalogs and raw Cedar).
    staged: Option<Box<Bundle>>,
    /// Every AgentPolicy (`namespace/name`) and its mode.
    modes: BTreeMap<String, PolicyMode>,
    /// The DetectionPolicies' rules, in bundle order.
    detections: Vec<DetectionResponder>,
}

/// One rule of a DetectionPolicy, compiled.
struct DetectionResponder {
    policy: String,
    selector: std::sync::Arc<crate::matcher::SelectorMatcher>,
    /// Empty: every detector.
    detectors: Vec<String>,
    action: DetectionAction,
    for_secs: u64,
}

/// What a DetectionPolicy says to do about one detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectionResponse {
    pub action: DetectionAction,
    /// How long a quarantine lasts, in seconds; 0 until a person releases it.
    pub for_secs: u64,
    /// The DetectionPolicy (`namespace/name`) that said so.
    pub policy: String,
}

/// The detectors a DetectionPolicy may name (`warden-detect`'s, kept in step by a test there).
pub const DETECTORS: [&str; 7] = [
    "scan.hosts",
    "scan.ports",
    "deny-storm",
    "toxic-flow",
    "grant.two-addresses",
    "reach.new",
    "rate.spike",
];

fn compile_detection(
    cx: &DocContext<'_>,
    doc: &DetectionPolicyDoc,
    out: &mut Vec<DetectionResponder>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let policy = match &doc.metadata.namespace {
        Some(ns) => format!("{ns}/{}", doc.metadata.name),
        None => doc.metadata.name.clone(),
    };
    let selector = &doc.spec.selector;
    if !selector.match_labels.is_empty() || !selector.match_expressions.is_empty() {
        diagnostics.push(
            cx.error(
                "spec.selector",
                "a DetectionPolicy selects agents by spiffeIds or allAgents: detectors see an agent's SPIFFE ID, not its labels",
            )
            .help("write `selector: {allAgents: true}` or `selector: {spiffeIds: [\"spiffe://…/agent/NAME/*\"]}`"),
        );
        return;
    }
    let Some(compiled) = crate::compile::compile_selector(
        cx,
        doc.metadata.namespace.as_deref(),
        selector,
        diagnostics,
    ) else {
        return;
    };
    if doc.spec.responses.is_empty() {
        diagnostics.push(cx.error(
            "spec.responses",
            "a DetectionPolicy needs at least one response",
        ));
    }
    for (i, rule) in doc.spec.responses.iter().enumerate() {
        let field = format!("spec.responses[{i}]");
        let unknown: Vec<&String> = rule
            .detectors
            .iter()
            .filter(|d| d.as_str() != "*" && !DETECTORS.contains(&d.as_str()))
            .collect();
        if rule.detectors.is_empty() || !unknown.is_empty() {
            diagnostics.push(
                cx.error(
                    &format!("{field}.detectors"),
                    if unknown.is_empty() {
                        "name at least one detector, or `*`".to_owned()
                    } else {
                        format!("unknown detector(s) {unknown:?}")
                    },
                )
                .help(format!(
                    "detectors: {}, or `*` for all",
                    DETECTORS.join(", ")
                )),
            );
            continue;
        }
        let for_secs = match (&rule.duration, rule.response) {
            (None, _) => 0,
            (Some(_), DetectionAction::Alert) => {
                diagnostics.push(cx.error(
                    &format!("{field}.for"),
                    "`for` is how long a quarantine lasts; an alert has none",
                ));
                continue;
            }
            (Some(text), DetectionAction::Quarantine) => {
                match crate::document::parse_duration_secs(text) {
                    Ok(secs) if secs > 0 => secs,
                    Ok(_) => {
                        diagnostics.push(cx.error(
                        &format!("{field}.for"),
                        "a quarantine of no time; leave `for` out to hold until a person releases it",
                    ));
                        continue;
                    }
                    Err(e) => {
                        diagnostics.push(cx.error(&format!("{field}.for"), e));
                        continue;
                    }
                }
            }
        };
        out.push(DetectionResponder {
            policy: policy.clone(),
            selector: std::sync::Arc::clone(&compiled.matcher),
            detectors: if rule.detectors.iter().any(|d| d == "*") {
                Vec::new()
            } else {
                rule.detectors.clone()
            },
            action: rule.response,
            for_secs,
        });
    }
}

/// Which of a bundle's AgentPolicies a compilation takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Enforced,
    Staged,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("hash", &self.hash)
            .field("policies", &self.policies.len())
            .finish_non_exhaustive()
    }
}

enum Parsed {
    Policy(Box<AgentPolicyDoc>, usize),
    Detection(Box<DetectionPolicyDoc>, usize),
    Catalog(ToolCatalogDoc, usize),
    Tests(PolicyTestDoc, usize),
}

impl Bundle {
    /// Loads every `.yaml`, `.yml` and `.cedar` file under `dir` (hidden entries skipped).
    pub fn load_dir(dir: &Path, limits: LoadLimits) -> Result<Self, LoadError> {
        let files = read_dir(dir, limits)?;
        Self::from_sources(files, limits)
    }

    /// Compiles a bundle from sources already in memory.
    pub fn from_sources(files: Vec<SourceFile>, limits: LoadLimits) -> Result<Self, LoadError> {
        Self::compile_part(files, limits, Part::Enforced)
    }

    fn compile_part(
        files: Vec<SourceFile>,
        limits: LoadLimits,
        part: Part,
    ) -> Result<Self, LoadError> {
        let mut diagnostics = Vec::new();
        let mut parsed: Vec<(usize, Parsed)> = Vec::new();
        let mut locators = Vec::with_capacity(files.len());
        let mut documents = 0usize;
        let mut raw_cedar = Vec::new();
        let mut contributing = vec![false; files.len()];
        for (f, file) in files.iter().enumerate() {
            if file.path.ends_with(".cedar") {
                raw_cedar.push(f);
                contributing[f] = true;
                locators.push(Locator::default());
                continue;
            }
            match Locator::new(&file.text) {
                Ok(locator) => locators.push(locator),
                Err((message, line, column)) => {
                    diagnostics.push(
                        Diagnostic::error(&file.path, format!("not valid YAML: {message}"))
                            .at(Some((line, column))),
                    );
                    locators.push(Locator::default());
                    continue;
                }
            }
            for (doc_index, de) in serde_yaml::Deserializer::from_str(&file.text).enumerate() {
                documents += 1;
                if documents > limits.max_documents {
                    diagnostics.push(Diagnostic::error(
                        &file.path,
                        format!(
                            "the bundle has more than {} documents",
                            limits.max_documents
                        ),
                    ));
                    return Err(LoadError { diagnostics });
                }
                let value = match serde_yaml::Value::deserialize(de) {
                    Ok(v) => v,
                    Err(e) => {
                        diagnostics.push(yaml_error(&file.path, &e));
                        break;
                    }
                };
                if value.is_null() {
                    continue;
                }
                let cx = DocContext {
                    file: &file.path,
                    locator: &locators[f],
                    doc_index,
                };
                match parse_document(&cx, value) {
                    Ok(doc) => {
                        contributing[f] |= !matches!(doc, Parsed::Tests(..));
                        parsed.push((f, doc));
                    }
                    Err(d) => diagnostics.push(d),
                }
            }
        }

        let catalog = build_catalog(&files, &locators, &parsed, &mut diagnostics);
        let mut compiled = Compiled::default();
        let mut names: HashMap<String, (String, Option<u32>)> = HashMap::new();
        let mut modes = BTreeMap::new();
        let mut detections: Vec<DetectionResponder> = Vec::new();
        let mut tests = Vec::new();
        for (f, doc) in &parsed {
            let file = &files[*f];
            match doc {
                Parsed::Policy(doc, doc_index) => {
                    let cx = DocContext {
                        file: &file.path,
                        locator: &locators[*f],
                        doc_index: *doc_index,
                    };
                    let id = match &doc.metadata.namespace {
                        Some(ns) => format!("{ns}/{}", doc.metadata.name),
                        None => doc.metadata.name.clone(),
                    };
                    let line = locators[*f].find(*doc_index, "metadata.name").map(|p| p.0);
                    if let Some((other, other_line)) = names.get(&id) {
                        compiled.diagnostics.push(cx.error("metadata.name", format!(
                            "AgentPolicy `{id}` is defined twice; the other is at {other}:{}",
                            other_line.map_or("?".into(), |l| l.to_string())
                        )).help("give each policy a unique namespace/name"));
                        continue;
                    }
                    names.insert(id.clone(), (file.path.clone(), line));
                    modes.insert(id, doc.spec.mode);
                    if (doc.spec.mode == PolicyMode::Staged) == (part == Part::Staged) {
                        compile_policy(&cx, doc, &catalog, &mut compiled);
                    }
                }
                Parsed::Tests(_, _) if part == Part::Staged => {}
                Parsed::Tests(doc, doc_index) => {
                    for (i, case) in doc.spec.cases.iter().enumerate() {
                        tests.push(TestCase {
                            file: file.path.clone(),
                            line: locators[*f]
                                .find(*doc_index, &format!("spec.cases[{i}]"))
                                .map(|p| p.0),
                            suite: doc.metadata.name.clone(),
                            spec: case.clone(),
                        });
                    }
                }
                Parsed::Detection(doc, doc_index) if part == Part::Enforced => {
                    let cx = DocContext {
                        file: &file.path,
                        locator: &locators[*f],
                        doc_index: *doc_index,
                    };
                    compile_detection(&cx, doc, &mut detections, &mut compiled.diagnostics);
                }
                Parsed::Catalog(..) | Parsed::Detection(..) => {}
            }
        }
        diagnostics.append(&mut compiled.diagnostics);
        for f in &raw_cedar {
            compile_raw_cedar(&files[*f], &mut compiled, &mut diagnostics);
        }

        let schema = match Schema::from_cedarschema_str(&schema_text(
            &catalog.tool_args,
            &catalog.prompt_args,
        )) {
            Ok((schema, _)) => schema,
            Err(e) => {
                diagnostics.push(Diagnostic::error("<schema>", format!("the generated Cedar schema is invalid: {}", one_line(&e.to_string())))
                    .help("an argument name in a ToolCatalog may be unusable in Cedar; rename or remove it"));
                return Err(LoadError { diagnostics });
            }
        };

        // Cedar parses and type-checks only what it evaluates: raw Cedar, and the residual of a
        // generated policy (the author's condition, in the policy's scope). A generated policy
        // its matcher decides alone is never given to Cedar (sliced), so a Cedar object for each
        // would only cost time and memory at every start; the unsliced reference parses the
        // full texts when first asked (`SlicedSet::all`), and the property tests type-check
        // every full text to keep the compiler honest.
        let cedar_texts: Vec<(usize, &str)> = compiled
            .policies
            .iter()
            .enumerate()
            .filter_map(|(n, p)| match (&p.matcher, &p.residual) {
                (None, _) => Some((n, p.text.as_str())),
                (Some(_), residual) => Some((n, residual.as_deref()?)),
            })
            .collect();
        let cedar_policies = match parse_numbered(&cedar_texts) {
            Ok(parsed) => parsed,
            Err(failures) => {
                for (n, e) in failures {
                    diagnostics.push(origin_error(
                        &compiled.policies[n].origin,
                        format!("invalid Cedar: {e}"),
                    ));
                }
                return Err(LoadError { diagnostics });
            }
        };
        let type_errors = match type_errors(&schema, &cedar_policies) {
            Ok(errors) => errors,
            Err(e) => {
                diagnostics.push(Diagnostic::error("<bundle>", e));
                return Err(LoadError { diagnostics });
            }
        };
        for (n, message, help) in type_errors {
            let mut d = origin_error(
                &compiled.policies[n].origin,
                format!("the condition does not type-check: {message}"),
            );
            d.help = Some(help.unwrap_or_else(|| {
                "conditions see `principal`, `resource` and `context` as described in docs/policy.md; tool arguments must be declared in a ToolCatalog".into()
            }));
            diagnostics.push(d);
        }
        // Per policy: the raw policy, or the residual.
        let mut cedar_policies: HashMap<usize, Policy> = cedar_policies.into_iter().collect();
        if diagnostics.iter().any(Diagnostic::is_error) {
            return Err(LoadError { diagnostics });
        }

        let mut grant_policies = Vec::with_capacity(compiled.policies.len());
        let mut approval_policies = Vec::new();
        let mut grant_ids = Vec::new();
        let mut approval_ids = Vec::new();
        let mut infos = Vec::with_capacity(compiled.policies.len());
        for (n, policy) in compiled.policies.iter().enumerate() {
            let id = u32::try_from(n).unwrap_or(u32::MAX);
            let (cedar, residual) = match &policy.matcher {
                None => (cedar_policies.remove(&n), None),
                Some(_) => (None, cedar_policies.remove(&n)),
            };
            let text: Arc<str> = Arc::from(policy.text.as_str());
            let entry = Indexed {
                number: n,
                text: Arc::clone(&text),
                policy: cedar,
                forbid: policy.forbid,
                principals: policy.principals.clone(),
                kinds: policy.kinds.clone(),
                resources: policy.resources.clone(),
                matcher: policy.matcher.clone(),
                residual,
                gate: policy.gate,
            };
            match policy.role {
                PolicyRole::Grant => {
                    grant_policies.push(entry);
                    grant_ids.push(id);
                }
                PolicyRole::Approval => {
                    approval_policies.push(entry);
                    approval_ids.push(id);
                }
            }
            infos.push(PolicyInfo {
                reference: PolicyRef {
                    id: format!("p{n}"),
                    file: policy.origin.file.clone(),
                    line: policy.origin.line,
                    document: policy.origin.document.clone(),
                    rule: policy.origin.rule.clone(),
                },
                text,
                role: policy.role,
                gate: policy.gate,
                approval: policy.approval,
                context: ContextUse::of_policy(policy.residual.as_deref().unwrap_or(&policy.text)),
            });
        }
        let build = |policies| {
            SlicedSet::new(policies).map_err(|e| LoadError {
                diagnostics: vec![Diagnostic::error("<bundle>", one_line(&e))],
            })
        };
        let grants = build(grant_policies)?;
        let approvals = build(approval_policies)?;
        let requirements = compiled
            .requirements
            .iter()
            .enumerate()
            .map(|(r, req)| ApprovalRequirement {
                id: req.id.clone(),
                group: req.group.clone(),
                required: req.required,
                valid_for_secs: req.valid_for_secs,
                policy: infos
                    .iter()
                    .find(|i| i.approval == Some(r))
                    .map(|i| i.reference.clone())
                    .unwrap_or_else(|| PolicyRef {
                        id: String::new(),
                        file: String::new(),
                        line: None,
                        document: String::new(),
                        rule: req.id.clone(),
                    }),
            })
            .collect();

        let hash = content_hash(
            files
                .iter()
                .zip(&contributing)
                .filter(|(_, c)| **c)
                .map(|(f, _)| f),
        );
        let staged = if part == Part::Enforced && modes.values().any(|m| *m == PolicyMode::Staged) {
            let staged = Self::compile_part(files.clone(), limits, Part::Staged)?;
            Some(Box::new(staged))
        } else {
            None
        };
        Ok(Self {
            hash,
            grants,
            approvals,
            policies: infos,
            grant_ids,
            approval_ids,
            gates: compiled.gates,
            requirements,
            tool_args: catalog.tool_args,
            prompt_args: catalog.prompt_args,
            undo: catalog.undo,
            schema,
            entities: EntityCache::new(),
            samples: compiled.samples,
            tests,
            warnings: diagnostics,
            files: files.into_iter().map(|f| f.path).collect(),
            staged,
            modes,
            detections,
        })
    }

    /// Whether any event gate waits for events of this type: only those need reach decisions.
    pub fn gates_on(&self, event_type: &str) -> bool {
        self.gates.iter().any(|g| g.event_type == event_type)
    }

    /// The compensating call of a reversible tool, if the catalog declares one.
    pub fn undo_for(&self, server: &str, tool: &str) -> Option<&UndoSpec> {
        self.undo.get(server)?.get(tool)
    }

    /// The bundle's staged policies, compiled on their own: what they would decide, for the
    /// agents they select ([`Bundle::governs`]).
    pub fn staged(&self) -> Option<&Bundle> {
        self.staged.as_deref()
    }

    /// What DetectionPolicies say to do when `detector` fires for `agent` (known by its SPIFFE
    /// ID): the strictest of the rules that apply — a quarantine over an alert, one until
    /// released over a timed one, a longer one over a shorter. `None` when none applies.
    pub fn detection_response(
        &self,
        agent: &warden_model::AgentIdentity,
        detector: &str,
    ) -> Option<DetectionResponse> {
        self.detections
            .iter()
            .filter(|r| r.detectors.is_empty() || r.detectors.iter().any(|d| d == detector))
            .filter(|r| r.selector.matches(agent))
            .max_by_key(|r| (r.action, r.for_secs == 0, r.for_secs))
            .map(|r| DetectionResponse {
                action: r.action,
                for_secs: r.for_secs,
                policy: r.policy.clone(),
            })
    }

    /// Each AgentPolicy (`namespace/name`) with its mode.
    pub fn modes(&self) -> &BTreeMap<String, PolicyMode> {
        &self.modes
    }

    /// Whether any of this bundle's AgentPolicies selects `agent`.
    pub fn governs(&self, agent: &warden_model::AgentIdentity) -> bool {
        let count = u32::try_from(self.grants.len()).unwrap_or(u32::MAX);
        (0..count).any(|c| {
            self.grants
                .matcher(c)
                .is_some_and(|m| m.selector.matches(agent))
        })
    }

    pub fn hash(&self) -> &BundleHash {
        &self.hash
    }
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }
    /// Agents and actions that exercise this bundle's rules.
    pub fn samples(&self) -> &Samples {
        &self.samples
    }
    pub fn tests(&self) -> &[TestCase] {
        &self.tests
    }
    pub fn files(&self) -> &[String] {
        &self.files
    }
    pub fn policies(&self) -> &[PolicyInfo] {
        &self.policies
    }
    /// Number of compiled Cedar policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub(crate) fn info(&self, id: &PolicyId) -> Option<&PolicyInfo> {
        self.policies.get(policy_number(id.as_ref())?)
    }
}

/// Policies by global number.
pub(crate) type Numbered = Vec<(usize, Policy)>;
/// Policy numbers with what went wrong.
pub(crate) type Failures = Vec<(usize, String)>;

/// Parses numbered policy texts, each exactly one policy, naming them `p<number>`.
///
/// One parser run per policy: parsing them all as one text was measured slower and, since Cedar
/// keeps source spans per policy, took twice the memory.
pub(crate) fn parse_numbered(texts: &[(usize, &str)]) -> Result<Numbered, Failures> {
    let results = in_shares(texts, |texts| {
        let mut parsed = Vec::with_capacity(texts.len());
        let mut failures = Vec::new();
        for (n, text) in texts {
            match Policy::parse(Some(PolicyId::new(format!("p{n}"))), text) {
                Ok(p) => parsed.push((*n, p)),
                Err(e) => failures.push((*n, one_line(&e.to_string()))),
            }
        }
        (parsed, failures)
    });
    let mut parsed = Vec::with_capacity(texts.len());
    let mut failures = Vec::new();
    for (mut p, mut f) in results {
        parsed.append(&mut p);
        failures.append(&mut f);
    }
    if failures.is_empty() {
        Ok(parsed)
    } else {
        Err(failures)
    }
}

/// `work` over `items` in one share per core, the results in order. Parsing and type-checking
/// are most of a big bundle's load, and each policy is parsed and checked alone.
fn in_shares<T: Sync, R: Send>(items: &[T], work: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let shares = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(items.len().div_ceil(MIN_PARSE_SHARE))
        .max(1);
    if shares == 1 {
        return vec![work(items)];
    }
    let work = &work;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(items.len().div_ceil(shares))
            .map(|share| scope.spawn(move || work(share)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// What strict validation finds wrong with `policies`: per policy number, the message and help.
fn type_errors(
    schema: &Schema,
    policies: &[(usize, Policy)],
) -> Result<Vec<(usize, String, Option<String>)>, String> {
    let validator = Validator::new(schema.clone());
    let shares: Vec<Result<Vec<_>, String>> = in_shares(policies, |share| {
        let set = PolicySet::from_policies(share.iter().map(|(_, p)| p.clone()))
            .map_err(|e| one_line(&e.to_string()))?;
        let result = validator.validate(&set, ValidationMode::Strict);
        Ok(result
            .validation_errors()
            .map(|error| {
                (
                    policy_number(error.policy_id().as_ref()).unwrap_or(0),
                    without_policy_id(&one_line(&error.to_string())).to_owned(),
                    miette::Diagnostic::help(error).map(|h| h.to_string()),
                )
            })
            .collect::<Vec<_>>())
    });
    let mut errors = Vec::new();
    for share in shares {
        errors.extend(share?);
    }
    Ok(errors)
}

/// Fewest policies worth a thread of their own.
const MIN_PARSE_SHARE: usize = 256;

/// The global number of a policy named `p<number>`.
pub(crate) fn policy_number(id: &str) -> Option<usize> {
    id.strip_prefix('p')?.parse().ok()
}

fn origin_error(origin: &Origin, message: String) -> Diagnostic {
    Diagnostic::error(&origin.file, message)
        .field(&origin.blame)
        .at(origin.blame_position)
}

/// Cedar names the generated policy id (`for policy `p7`, …`), which means nothing to authors;
/// the diagnostic already says which rule it is.
fn without_policy_id(message: &str) -> &str {
    match message.strip_prefix("for policy `") {
        Some(rest) => rest.split_once("`, ").map_or(message, |(_, m)| m),
        None => message,
    }
}

fn yaml_error(file: &str, e: &serde_yaml::Error) -> Diagnostic {
    let position = e.location().map(|l| {
        (
            u32::try_from(l.line()).unwrap_or(u32::MAX),
            u32::try_from(l.column()).unwrap_or(u32::MAX),
        )
    });
    Diagnostic::error(file, format!("not valid YAML: {e}")).at(position)
}

/// Reads the header, then the typed document of that kind.
fn parse_document(cx: &DocContext<'_>, value: serde_yaml::Value) -> Result<Parsed, Diagnostic> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    if api_version.as_deref() != Some(API_VERSION) {
        return Err(cx
            .error(
                "apiVersion",
                format!(
                    "apiVersion is {}, expected `{API_VERSION}`",
                    api_version.map_or("missing".into(), |v| format!("`{v}`"))
                ),
            )
            .help(format!(
                "start the document with `apiVersion: {API_VERSION}`"
            )));
    }
    fn typed<T: serde::de::DeserializeOwned>(
        cx: &DocContext<'_>,
        value: serde_yaml::Value,
    ) -> Result<T, Diagnostic> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            let mut d = cx.error(&field, e.inner().to_string());
            if field.is_empty() {
                d.field = None;
            }
            d
        })
    }
    match kind.as_deref() {
        Some("AgentPolicy") => Ok(Parsed::Policy(Box::new(typed(cx, value)?), cx.doc_index)),
        Some("DetectionPolicy") => Ok(Parsed::Detection(Box::new(typed(cx, value)?), cx.doc_index)),
        Some("ToolCatalog") => Ok(Parsed::Catalog(typed(cx, value)?, cx.doc_index)),
        Some("PolicyTest") => Ok(Parsed::Tests(typed(cx, value)?, cx.doc_index)),
        Some(other) => Err(cx
            .error("kind", format!("unknown kind `{other}`"))
            .help("use AgentPolicy, ToolCatalog or PolicyTest")),
        None => Err(cx
            .error("kind", "the document has no `kind`")
            .help("add `kind: AgentPolicy`")),
    }
}

fn build_catalog(
    files: &[SourceFile],
    locators: &[Locator],
    parsed: &[(usize, Parsed)],
    diagnostics: &mut Vec<Diagnostic>,
) -> Catalog {
    let mut catalog = Catalog::default();
    // Argument name → (type, where first declared); `None` once declarations conflict.
    let mut tool_args: BTreeMap<String, Option<(ArgType, String)>> = BTreeMap::new();
    for (f, doc) in parsed {
        let Parsed::Catalog(doc, doc_index) = doc else {
            continue;
        };
        let cx = DocContext {
            file: &files[*f].path,
            locator: &locators[*f],
            doc_index: *doc_index,
        };
        for (s, server) in doc.spec.servers.iter().enumerate() {
            let tools = catalog.tools.entry(server.name.clone()).or_default();
            for (t, tool) in server.tools.iter().enumerate() {
                tools.insert(tool.name.clone());
                if let Some(undo) = &tool.undo {
                    if server.tools.iter().any(|other| other.name == undo.tool) {
                        catalog
                            .undo
                            .entry(server.name.clone())
                            .or_default()
                            .insert(tool.name.clone(), undo.clone());
                    } else {
                        diagnostics.push(cx.error(
                            &format!("spec.servers[{s}].tools[{t}].undo.tool"),
                            format!(
                                "`{}` is not a tool of server {} in this catalog; the compensating call must be one",
                                undo.tool, server.name
                            ),
                        ));
                    }
                }
                let Some(properties) = tool
                    .input_schema
                    .as_ref()
                    .and_then(|s| s.get("properties"))
                    .and_then(|p| p.as_object())
                else {
                    continue;
                };
                for (arg, schema) in properties {
                    let Some(ty) = ArgType::from_json_schema(schema) else {
                        continue;
                    };
                    let here = format!("{}/{}", server.name, tool.name);
                    match tool_args.get(arg) {
                        None => {
                            tool_args.insert(arg.clone(), Some((ty, here)));
                        }
                        Some(Some((existing, first))) if *existing != ty => {
                            diagnostics.push(cx.warning(
                                &format!("spec.servers[{s}].tools[{t}].inputSchema.properties.{arg}"),
                                format!("argument `{arg}` is {} here but {} in {first}; conditions cannot use it", ty.describe(), existing.describe()),
                            ));
                            tool_args.insert(arg.clone(), None);
                        }
                        _ => {}
                    }
                }
            }
            let prompts = catalog.prompts.entry(server.name.clone()).or_default();
            for prompt in &server.prompts {
                prompts.insert(prompt.name.clone());
                for a in &prompt.arguments {
                    catalog.prompt_args.insert(a.name.clone(), ArgType::String);
                }
            }
        }
    }
    catalog.tool_args = tool_args
        .into_iter()
        .filter_map(|(k, v)| v.map(|(t, _)| (k, t)))
        .collect();
    catalog
}

/// Byte offsets where each top-level statement of a Cedar file starts, skipping comments and
/// strings, so raw policies can be reported by line.
fn statement_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    let mut expecting = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if expecting && !b.is_ascii_whitespace() {
            starts.push(i);
            expecting = false;
        }
        if b == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
        } else if b == b';' {
            expecting = true;
        }
        i += 1;
    }
    starts
}

fn line_of(text: &str, offset: usize) -> u32 {
    let before = text.get(..offset).unwrap_or(text);
    u32::try_from(before.matches('\n').count() + 1).unwrap_or(u32::MAX)
}

fn compile_raw_cedar(
    file: &SourceFile,
    compiled: &mut Compiled,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let set = match PolicySet::from_str(&file.text) {
        Ok(set) => set,
        Err(e) => {
            let offset = miette::Diagnostic::labels(&e)
                .and_then(|mut l| l.next())
                .map(|l| l.offset());
            let mut d = Diagnostic::error(
                &file.path,
                format!("invalid Cedar: {}", one_line(&e.to_string())),
            );
            d.line = offset.map(|o| line_of(&file.text, o));
            diagnostics.push(d);
            return;
        }
    };
    if set.templates().next().is_some() {
        diagnostics.push(
            Diagnostic::error(&file.path, "Cedar templates are not supported in bundles")
                .help("write static policies"),
        );
        return;
    }
    let starts = statement_starts(&file.text);
    let mut policies: Vec<&Policy> = set.policies().collect();
    policies.sort_by_key(|p| {
        p.id()
            .to_string()
            .trim_start_matches("policy")
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    for (n, policy) in policies.into_iter().enumerate() {
        let line = starts.get(n).map(|o| line_of(&file.text, *o));
        let rule = policy
            .annotation("id")
            .map_or_else(|| format!("policy[{n}]"), str::to_owned);
        let kinds = match policy.action_constraint() {
            ActionConstraint::Any => vec![],
            ActionConstraint::Eq(uid) => action_kind(&uid).into_iter().collect(),
            ActionConstraint::In(uids) => {
                let kinds: Vec<ActionKind> = uids.iter().filter_map(action_kind).collect();
                // An action group Warden does not know about: keep it reachable from every kind.
                if kinds.len() == uids.len() {
                    kinds
                } else {
                    vec![]
                }
            }
        };
        compiled.policies.push(CompiledPolicy {
            text: policy.to_string(),
            forbid: policy.effect() == cedar_policy::Effect::Forbid,
            role: PolicyRole::Grant,
            origin: Origin {
                file: file.path.clone(),
                line,
                document: file.path.clone(),
                rule: rule.clone(),
                blame: rule,
                blame_position: line.map(|l| (l, 1)),
            },
            kinds,
            principals: vec![PrincipalKey::Any],
            resources: vec![],
            gate: None,
            approval: None,
            matcher: None,
            residual: None,
        });
    }
}

fn action_kind(uid: &cedar_policy::EntityUid) -> Option<ActionKind> {
    ActionKind::from_str(uid.id().unescaped()).ok()
}

fn content_hash<'a>(files: impl Iterator<Item = &'a SourceFile>) -> BundleHash {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for file in files {
        // Length-prefixed, so no two different bundles serialise to the same bytes.
        ctx.update(&(file.path.len() as u64).to_be_bytes());
        ctx.update(file.path.as_bytes());
        ctx.update(&(file.text.len() as u64).to_be_bytes());
        ctx.update(file.text.as_bytes());
    }
    let digest = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    BundleHash::from_sha256(out)
}

pub(crate) fn read_dir(root: &Path, limits: LoadLimits) -> Result<Vec<SourceFile>, LoadError> {
    let fail = |path: &Path, message: String| LoadError {
        diagnostics: vec![Diagnostic::error(path.display().to_string(), message)],
    };
    let meta = fs::metadata(root)
        .map_err(|e| fail(root, format!("cannot read the policy directory: {e}")))?;
    if !meta.is_dir() {
        return Err(fail(
            root,
            "is not a directory; pass the directory that holds the policies".into(),
        ));
    }
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| fail(&dir, format!("cannot list: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| fail(&dir, format!("cannot list: {e}")))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let file_type = entry.file_type().map_err(|e| fail(&path, e.to_string()))?;
            if file_type.is_dir() {
                if depth + 1 > limits.max_dir_depth {
                    return Err(fail(
                        &path,
                        format!("directories nest deeper than {}", limits.max_dir_depth),
                    ));
                }
                stack.push((path, depth + 1));
                continue;
            }
            if !(name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".cedar")) {
                continue;
            }
            // Symlinks to files are followed (Kubernetes ConfigMap mounts use them); symlinks to
            // directories are not, so a link cannot make the walk loop.
            let meta = fs::metadata(&path).map_err(|e| fail(&path, format!("cannot read: {e}")))?;
            if !meta.is_file() {
                continue;
            }
            if files.len() >= limits.max_files {
                return Err(fail(
                    root,
                    format!("more than {} policy files", limits.max_files),
                ));
            }
            if meta.len() > limits.max_file_bytes {
                return Err(fail(
                    &path,
                    format!(
                        "is {} bytes; the limit per file is {}",
                        meta.len(),
                        limits.max_file_bytes
                    ),
                ));
            }
            let mut text = String::new();
            fs::File::open(&path)
                .and_then(|f| f.take(limits.max_file_bytes + 1).read_to_string(&mut text))
                .map_err(|e| fail(&path, format!("cannot read as UTF-8 text: {e}")))?;
            if text.len() as u64 > limits.max_file_bytes {
                return Err(fail(
                    &path,
                    format!(
                        "is larger than the limit of {} bytes per file",
                        limits.max_file_bytes
                    ),
                ));
            }
            total += text.len() as u64;
            if total > limits.max_total_bytes {
                return Err(fail(
                    root,
                    format!(
                        "policy files exceed {} bytes in total",
                        limits.max_total_bytes
                    ),
                ));
            }
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            files.push(SourceFile {
                path: relative,
                text,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}
