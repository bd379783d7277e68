//! `warden policy …`

use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use warden_model::{DecisionRequest, Outcome};
use warden_policy::testing::{self, TestResult};
use warden_policy::{
    Bundle, Diagnostic, Engine, Explanation, LoadError, LoadLimits, ReloadOutcome, Slicing,
};

use crate::Output;

/// Largest request document `explain` and `decide` accept.
const MAX_REQUEST_BYTES: u64 = 1 << 20;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory; exits 1 with precise errors if it would be rejected.
    Check(CheckArgs),
    /// Run the PolicyTest documents in a policy directory; exits 1 if any fails.
    Test(TestArgs),
    /// Decide one request and show the full reasoning.
    Explain(ExplainArgs),
    /// Show which requests change outcome between two policy directories.
    Diff(DiffArgs),
    /// Decide requests read as JSON lines on stdin, one decision per line on stdout.
    ///
    /// With --watch the bundle reloads when a file changes or on SIGHUP; a bundle that fails to
    /// load is reported on stderr and the last good one keeps deciding.
    Decide(DecideArgs),
    /// Write the bundle's egress and HTTP rules as Kubernetes network policies — a second layer
    /// under Warden, never narrower than what Warden allows. What the format cannot express is
    /// listed on stderr (and in the output's header).
    Export(ExportArgs),
    /// Write least-privilege policies from traffic: for each agent in the audit log, an
    /// AgentPolicy allowing what it was allowed to do and nothing more (tools with their
    /// arguments narrowed to the values, prefixes and ranges seen; routes, hosts, peers), a
    /// ToolCatalog for the conditions, and a PolicyTest suite of the same calls — replayed
    /// against the result before it is reported.
    Recommend(RecommendArgs),
    /// Enforce a staged policy: its `spec.mode: staged` becomes `enforce` in its file, checked by
    /// loading the bundle again. Gateways following the directory enforce it on their next
    /// reload and record the change in their audit logs.
    Promote(PromoteArgs),
}

#[derive(Args)]
pub struct PromoteArgs {
    /// Directory of AgentPolicy YAML, ToolCatalog and .cedar files.
    dir: PathBuf,
    /// The staged policy, `namespace/name` (`name` for one without a namespace).
    policy: String,
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args)]
pub struct RecommendArgs {
    /// The audit log directory (`warden-data/audit` under `warden up`).
    #[arg(long, env = "WARDEN_AUDIT_LOG", default_value = "warden-data/audit")]
    audit: PathBuf,
    /// Only calls since: a time ago (`24h`, `30m`, `7d`), RFC 3339, or Unix seconds.
    #[arg(long)]
    since: Option<String>,
    /// Only this agent: `tenant/name`, or part of its SPIFFE ID; repeat for more.
    #[arg(long)]
    agent: Vec<String>,
    /// The directory to write the recommended bundle to (new, or empty).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Directory of AgentPolicy YAML, ToolCatalog and .cedar files.
    dir: PathBuf,
    /// `networkpolicy` (networking.k8s.io/v1) or `cilium` (CiliumNetworkPolicy, cilium.io/v2).
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// The URL of an HTTP service the `http` rules name, as NAME=URL (the gateway's upstream);
    /// repeat for more.
    #[arg(long = "service", value_name = "NAME=URL")]
    services: Vec<String>,
    /// A label of the Warden gateway's pods, which agents must always reach, as KEY=VALUE.
    #[arg(
        long = "gateway-label",
        value_name = "KEY=VALUE",
        default_value = "app.kubernetes.io/name=warden-gateway"
    )]
    gateway_labels: Vec<String>,
    /// YAML documents (text) or one JSON array (json).
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Networkpolicy,
    Cilium,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Directory of AgentPolicy YAML, ToolCatalog and .cedar files.
    dir: PathBuf,
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args)]
pub struct TestArgs {
    dir: PathBuf,
    /// Run only tests whose suite or name contains this text.
    #[arg(long)]
    filter: Option<String>,
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args)]
pub struct ExplainArgs {
    dir: PathBuf,
    /// The request as JSON or YAML: a file, or `-` for stdin.
    #[arg(long, short)]
    request: String,
    /// Evaluate every policy instead of the sliced subset.
    #[arg(long)]
    no_slicing: bool,
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args)]
pub struct DiffArgs {
    old: PathBuf,
    new: PathBuf,
    /// Most requests to compare (test cases first, then generated ones).
    #[arg(long, default_value_t = 5000)]
    samples: usize,
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args)]
pub struct DecideArgs {
    dir: PathBuf,
    /// Reload on file changes and on SIGHUP.
    #[arg(long)]
    watch: bool,
}

pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check(a) => check(&a.dir, a.output),
        PolicyCommand::Test(a) => test(&a.dir, a.filter.as_deref(), a.output),
        PolicyCommand::Explain(a) => explain(&a),
        PolicyCommand::Diff(a) => diff(&a),
        PolicyCommand::Decide(a) => decide(&a),
        PolicyCommand::Export(a) => export(&a),
        PolicyCommand::Recommend(a) => recommend(&a),
        PolicyCommand::Promote(a) => promote(&a),
    }
}

fn promote(args: &PromoteArgs) -> anyhow::Result<ExitCode> {
    let bundle = match load(&args.dir, args.output) {
        Ok(b) => b,
        Err(code) => return Ok(code),
    };
    match bundle.modes().get(&args.policy) {
        Some(warden_policy::PolicyMode::Staged) => {}
        Some(warden_policy::PolicyMode::Enforce) => {
            bail!("{} is already enforced", args.policy)
        }
        None => bail!(
            "no AgentPolicy {} in {} (`warden policy check {}` lists them)",
            args.policy,
            args.dir.display(),
            args.dir.display()
        ),
    }
    let file = bundle
        .staged()
        .and_then(|staged| {
            staged
                .policies()
                .iter()
                .find(|p| p.reference.document == args.policy)
        })
        .map(|p| args.dir.join(&p.reference.file))
        .with_context(|| format!("cannot tell which file holds {}", args.policy))?;
    let original = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let promoted = with_mode_enforced(&original, &args.policy).with_context(|| {
        format!(
            "cannot find `mode: staged` in {}'s document in {}; change it to `mode: enforce` by hand",
            args.policy,
            file.display()
        )
    })?;
    let write = |text: &str| -> anyhow::Result<()> {
        let temporary = file.with_extension("promote.tmp");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &file))
            .with_context(|| format!("cannot write {}", file.display()))
    };
    write(&promoted)?;
    let enforced = Bundle::load_dir(&args.dir, LoadLimits::default())
        .ok()
        .is_some_and(|b| b.modes().get(&args.policy) == Some(&warden_policy::PolicyMode::Enforce));
    if !enforced {
        write(&original)?;
        bail!(
            "{} did not load with {} enforced; it is left as it was",
            args.dir.display(),
            args.policy
        );
    }
    match args.output {
        Output::Json => println!(
            "{}",
            json!({"policy": args.policy, "file": file, "from": "staged", "to": "enforce"})
        ),
        Output::Text => println!(
            "{}: staged → enforced in {}; gateways following {} enforce it on their next reload and record the change",
            args.policy,
            file.display(),
            args.dir.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `text` (a YAML file of documents) with the `mode: staged` of `policy`'s document made
/// `mode: enforce`, everything else — comments, order, other documents — as it was.
fn with_mode_enforced(text: &str, policy: &str) -> Option<String> {
    let (namespace, name) = match policy.split_once('/') {
        Some((namespace, name)) => (Some(namespace), name),
        None => (None, policy),
    };
    let staged = regex::Regex::new(r"(^|[\s{,])mode:(\s*)staged\b").ok()?;
    let mut out = String::with_capacity(text.len());
    let mut promoted = false;
    for document in split_documents(text) {
        let is_it = serde_yaml::from_str::<serde_yaml::Value>(document)
            .ok()
            .is_some_and(|doc| {
                doc["kind"].as_str() == Some("AgentPolicy")
                    && doc["metadata"]["name"].as_str() == Some(name)
                    && doc["metadata"]["namespace"].as_str() == namespace
            });
        if is_it && !promoted && staged.is_match(document) {
            out.push_str(&staged.replace(document, "${1}mode:${2}enforce"));
            promoted = true;
        } else {
            out.push_str(document);
        }
    }
    promoted.then_some(out)
}

/// The documents of a YAML file, each with its `---` line, so joining them gives the file back.
fn split_documents(text: &str) -> Vec<&str> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if at > start && line.trim_end() == "---" {
            documents.push(&text[start..at]);
            start = at;
        }
        at += line.len();
    }
    documents.push(&text[start..]);
    documents
}

fn recommend(args: &RecommendArgs) -> anyhow::Result<ExitCode> {
    let since = args
        .since
        .as_deref()
        .map(crate::audit::parse_time)
        .transpose()?;
    if args.out.exists()
        && std::fs::read_dir(&args.out)
            .with_context(|| format!("cannot read {}", args.out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} already holds files; give --out a new or empty directory (nothing is overwritten)",
            args.out.display()
        );
    }
    let agents: Vec<String> = args
        .agent
        .iter()
        .map(|a| match a.split_once('/') {
            Some((tenant, name)) if !a.contains(':') => format!("/tenant/{tenant}/agent/{name}/"),
            _ => a.clone(),
        })
        .collect();
    let reader = warden_audit::LogReader::open(&args.audit).with_context(|| {
        format!(
            "cannot open the audit log {} (--audit, WARDEN_AUDIT_LOG)",
            args.audit.display()
        )
    })?;
    let total = reader.size()?;
    let progress = std::io::IsTerminal::is_terminal(&io::stderr());
    let mut recommender = warden_policy::Recommender::new();
    let (mut read, mut used, mut over_bound) = (0u64, 0u64, 0u64);
    for record in reader.records(0)? {
        let (_, record) = record?;
        read += 1;
        if progress && read % 250_000 == 0 {
            eprint!("\rread {read} of {total} records");
        }
        let Ok(value) = serde_json::from_slice::<Value>(&record) else {
            continue;
        };
        let recent = since.is_none_or(|since| {
            value
                .get("time")
                .and_then(Value::as_i64)
                .is_some_and(|t| t >= since)
        });
        let chosen = agents.is_empty()
            || value
                .get("agent")
                .and_then(Value::as_str)
                .is_some_and(|id| agents.iter().any(|a| id.contains(a.as_str())));
        if !(recent && chosen) {
            continue;
        }
        match recommender.observe(&value) {
            warden_policy::Observed::Used => used += 1,
            warden_policy::Observed::OverBound => over_bound += 1,
            warden_policy::Observed::Ignored => {}
        }
    }
    if progress && read >= 250_000 {
        eprintln!();
    }
    if used == 0 {
        bail!(
            "no allowed calls in {} ({read} records{}); nothing to recommend",
            args.audit.display(),
            if agents.is_empty() && since.is_none() {
                ""
            } else {
                " read, none matching --agent/--since"
            }
        );
    }
    let recommendation = recommender.finish();
    for (name, text) in &recommendation.files {
        let path = args.out.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // What was written must load and allow every call it was made from.
    let bundle = Bundle::load_dir(&args.out, LoadLimits::default()).map_err(|e| {
        print_diagnostics(&e.diagnostics);
        anyhow::anyhow!(
            "the recommended bundle in {} does not load (a bug in recommend; please report it)",
            args.out.display()
        )
    })?;
    let results: Vec<TestResult> = bundle
        .tests()
        .iter()
        .map(|c| testing::run_case(&bundle, c))
        .collect();
    let failed: Vec<&TestResult> = results.iter().filter(|r| !r.passed).collect();
    match args.output {
        Output::Json => println!(
            "{}",
            json!({
                "out": args.out,
                "records": read,
                "calls": used,
                "overBound": over_bound,
                "files": recommendation.files.iter().map(|(name, _)| name).collect::<Vec<_>>(),
                "agents": recommendation.agents,
                "replayed": results.len(),
                "replayFailures": failed.len(),
            })
        ),
        Output::Text => {
            println!(
                "{used} allowed calls of {} agent(s), from {read} records, written to {}:",
                recommendation.agents.len(),
                args.out.display()
            );
            for agent in &recommendation.agents {
                println!(
                    "  {}  {} calls: {} tools, {} routes, {} destinations, {} peers",
                    agent.selects,
                    agent.calls,
                    agent.tools,
                    agent.routes,
                    agent.destinations,
                    agent.peers
                );
            }
            for (name, _) in &recommendation.files {
                println!("  {name}");
            }
            println!(
                "replayed {} distinct calls against it: {} allowed",
                results.len(),
                results.len() - failed.len()
            );
            if over_bound > 0 {
                println!(
                    "{over_bound} calls were past what one agent's recommendation remembers and are not covered"
                );
            }
            println!(
                "review it, then `warden policy diff YOUR_BUNDLE {}` to see what it would change",
                args.out.display()
            );
        }
    }
    for failure in &failed {
        eprintln!(
            "not allowed by the recommendation: {} {:?}",
            failure.name, failure.failures
        );
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let pairs = |items: &[String],
                 what: &str|
     -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        items
            .iter()
            .map(|item| {
                item.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .with_context(|| format!("{what} `{item}` is not KEY=VALUE"))
            })
            .collect()
    };
    let options = warden_policy::ExportOptions {
        services: pairs(&args.services, "--service")?,
        gateway_labels: pairs(&args.gateway_labels, "--gateway-label")?,
    };
    let format = match args.format {
        ExportFormat::Networkpolicy => warden_policy::NetworkFormat::NetworkPolicy,
        ExportFormat::Cilium => warden_policy::NetworkFormat::Cilium,
    };
    let exported = match warden_policy::network_policies(&args.dir, format, &options) {
        Ok(exported) => exported,
        Err(e) => {
            print_diagnostics(&e.diagnostics);
            eprintln!("the bundle does not load; nothing exported");
            return Ok(ExitCode::from(1));
        }
    };
    for note in &exported.not_expressed {
        eprintln!("not expressed: {note}");
    }
    let mut out = io::stdout().lock();
    match args.output {
        Output::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&exported.resources)?
        )?,
        Output::Text => {
            writeln!(
                out,
                "# Generated by `warden policy export` from {}.",
                args.dir.display()
            )?;
            writeln!(
                out,
                "# A second layer under Warden, which still decides every call."
            )?;
            for note in &exported.not_expressed {
                writeln!(out, "# not expressed: {note}")?;
            }
            for resource in &exported.resources {
                writeln!(out, "---")?;
                write!(out, "{}", serde_yaml::to_string(resource)?)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        eprintln!("{d}");
    }
}

/// Loads a bundle, printing its warnings; on failure prints the errors (or JSON) and says so.
fn load(dir: &Path, output: Output) -> Result<Bundle, ExitCode> {
    match Bundle::load_dir(dir, LoadLimits::default()) {
        Ok(bundle) => {
            if output == Output::Text {
                print_diagnostics(bundle.warnings());
            }
            Ok(bundle)
        }
        Err(e) => {
            report_load_error(dir, &e, output);
            Err(ExitCode::FAILURE)
        }
    }
}

fn report_load_error(dir: &Path, e: &LoadError, output: Output) {
    match output {
        Output::Text => {
            print_diagnostics(&e.diagnostics);
            let errors = e.errors().count();
            eprintln!("{}: rejected with {errors} error(s)", dir.display());
        }
        Output::Json => println!(
            "{}",
            json!({"dir": dir, "valid": false, "diagnostics": e.diagnostics})
        ),
    }
}

fn check(dir: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let bundle = match load(dir, output) {
        Ok(b) => b,
        Err(code) => return Ok(code),
    };
    match output {
        Output::Text => println!(
            "{}: ok — {} policies from {} files, {} test cases, bundle {}",
            dir.display(),
            bundle.len(),
            bundle.files().len(),
            bundle.tests().len(),
            bundle.hash()
        ),
        Output::Json => println!(
            "{}",
            json!({
                "dir": dir,
                "valid": true,
                "bundle": bundle.hash(),
                "policies": bundle.len(),
                "files": bundle.files(),
                "tests": bundle.tests().len(),
                "diagnostics": bundle.warnings(),
            })
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn test(dir: &Path, filter: Option<&str>, output: Output) -> anyhow::Result<ExitCode> {
    let bundle = match load(dir, output) {
        Ok(b) => b,
        Err(code) => return Ok(code),
    };
    let results: Vec<TestResult> = bundle
        .tests()
        .iter()
        .filter(|c| filter.is_none_or(|f| c.suite.contains(f) || c.spec.name.contains(f)))
        .map(|c| testing::run_case(&bundle, c))
        .collect();
    let failed = results.iter().filter(|r| !r.passed).count();
    let passed = results.len() - failed;
    match output {
        Output::Text => {
            for r in &results {
                let mark = if r.passed { "ok  " } else { "FAIL" };
                println!("{mark} {} / {}", r.suite, r.name);
                for f in &r.failures {
                    let at = r.line.map_or(String::new(), |l| format!(":{l}"));
                    println!("       {f}\n       at {}{at}", r.file);
                }
            }
            println!("{passed} passed, {failed} failed");
        }
        Output::Json => println!(
            "{}",
            json!({"bundle": bundle.hash(), "passed": passed, "failed": failed, "results": results})
        ),
    }
    if results.is_empty() {
        eprintln!("no test cases found; add PolicyTest documents (see docs/policy.md)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn read_request(source: &str) -> anyhow::Result<DecisionRequest> {
    let mut text = String::new();
    let reader: Box<dyn Read> = if source == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            std::fs::File::open(source)
                .with_context(|| format!("cannot open request file {source}"))?,
        )
    };
    reader
        .take(MAX_REQUEST_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read request {source}"))?;
    if text.len() as u64 > MAX_REQUEST_BYTES {
        bail!("the request is larger than {MAX_REQUEST_BYTES} bytes");
    }
    // YAML is a superset of JSON, so one parser reads both.
    warden_policy::parse_yaml(&text).map_err(|e| {
        anyhow::anyhow!(
            "{source} is not a valid request: {e}; see docs/policy.md (\"Requests\") for the format"
        )
    })
}

fn explain(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let request = read_request(&args.request)?;
    let bundle = match load(&args.dir, args.output) {
        Ok(b) => b,
        Err(code) => return Ok(code),
    };
    let slicing = if args.no_slicing {
        Slicing::Off
    } else {
        Slicing::On
    };
    let explanation = bundle.explain(&request, slicing);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&explanation)?),
        Output::Text => print_explanation(&request, &explanation),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_explanation(request: &DecisionRequest, e: &Explanation) {
    let d = &e.decision;
    println!(
        "decision   {}  ({})",
        d.outcome.label().to_uppercase(),
        d.id
    );
    println!("agent      {}", request.agent.spiffe_id());
    println!(
        "action     {} on {}",
        request.action.kind(),
        request.action.resource()
    );
    if let Some(intent) = &request.context.intent {
        println!("intent     {intent}");
    }
    println!("bundle     {}", d.bundle);
    println!("evaluated  {} of {} policies", e.evaluated, e.total);
    match &d.outcome {
        Outcome::Allow => println!("why        allowed by the grants below; no deny rule matched"),
        Outcome::Deny { reason, errors } => match reason {
            warden_model::DenyReason::NoMatchingGrant => {
                println!("why        no policy grants this action (deny by default)")
            }
            warden_model::DenyReason::Forbidden => println!("why        a deny rule matched"),
            warden_model::DenyReason::OutsideGrant => {
                println!("why        policy allows it, but the task grant does not")
            }
            warden_model::DenyReason::AuditUnavailable => {
                println!("why        the audit log could not record it")
            }
            warden_model::DenyReason::Quarantined
            | warden_model::DenyReason::Frozen
            | warden_model::DenyReason::ToolWithheld
            | warden_model::DenyReason::NotForwarded
            | warden_model::DenyReason::Unidentified => {
                println!(
                    "why        the gateway stopped it (quarantine, kill switch, withheld tool, malformed message, unidentified caller)"
                )
            }
            warden_model::DenyReason::EvaluationError => {
                println!("why        evaluation failed, so Warden denies:");
                for err in errors {
                    println!("             {err}");
                }
            }
        },
        Outcome::NeedsApproval { requirements } => {
            println!("why        allowed only with human co-signature:");
            for r in requirements {
                println!(
                    "             {} approval(s) from group `{}`, valid {}s (requirement {})",
                    r.required, r.group, r.valid_for_secs, r.id
                );
            }
        }
    }
    for (title, refs) in [
        ("grants", &e.permits),
        ("denies", &e.forbids),
        ("approvals", &e.approvals),
    ] {
        for r in refs {
            println!("{title:<10} {r}");
        }
    }
    for g in &e.gates {
        println!("event gate {g} satisfied");
    }
    for s in &e.sources {
        println!("\n# {} ({})", s.policy, s.policy.id);
        println!("{}", s.cedar);
    }
}

fn diff(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let (old, new) = match (load(&args.old, args.output), load(&args.new, args.output)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(code), _) | (_, Err(code)) => return Ok(code),
    };
    let requests = testing::diff_requests(&old, &new, args.samples);
    let changes = testing::diff(&old, &new, &requests);
    match args.output {
        Output::Json => println!(
            "{}",
            json!({
                "old": old.hash(), "new": new.hash(),
                "compared": requests.len(), "changed": changes.len(), "changes": changes,
            })
        ),
        Output::Text => {
            for c in &changes {
                println!(
                    "{} → {}  {} {} {}  ({})",
                    c.old.outcome.label(),
                    c.new.outcome.label(),
                    c.request.agent.spiffe_id(),
                    c.request.action.kind(),
                    c.request.action.resource(),
                    c.origin
                );
            }
            println!(
                "{} of {} requests change outcome ({} → {})",
                changes.len(),
                requests.len(),
                old.hash().short(),
                new.hash().short()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

enum Line {
    Text(String),
    TooLong,
    NotUtf8,
}

/// Reads one line of at most `max` bytes without ever holding more: a longer line is consumed
/// and reported, so a client cannot make the process buffer an unbounded line.
fn read_bounded_line(reader: &mut impl BufRead, max: u64) -> io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let read = reader.by_ref().take(max + 1).read_until(b'\n', &mut buf)?;
    if read == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && buf.len() as u64 > max {
        // Skip the rest of the line in bounded chunks.
        loop {
            let (done, used) = {
                let chunk = reader.fill_buf()?;
                match chunk.iter().position(|b| *b == b'\n') {
                    Some(i) => (true, i + 1),
                    None => (chunk.is_empty(), chunk.len()),
                }
            };
            reader.consume(used);
            if done {
                break;
            }
        }
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(
        String::from_utf8(buf).map_or(Line::NotUtf8, Line::Text),
    ))
}

fn report_reload(result: Result<ReloadOutcome, LoadError>) {
    match result {
        Ok(ReloadOutcome::Swapped { old, new }) => {
            eprintln!("policy bundle reloaded: {} → {}", old.short(), new.short())
        }
        Ok(ReloadOutcome::Unchanged(_)) => {}
        Err(e) => eprintln!("policy reload rejected; the previous bundle keeps serving\n{e}"),
    }
}

fn decide(args: &DecideArgs) -> anyhow::Result<ExitCode> {
    let engine = match Engine::load(&args.dir, LoadLimits::default()) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            report_load_error(&args.dir, &e, Output::Text);
            return Ok(ExitCode::FAILURE);
        }
    };
    print_diagnostics(engine.current().warnings());
    eprintln!(
        "serving bundle {} from {}",
        engine.current().hash(),
        args.dir.display()
    );
    let _watch = if args.watch {
        let hup_engine = Arc::clone(&engine);
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
            .context("cannot install the SIGHUP handler")?;
        std::thread::Builder::new()
            .name("warden-sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    report_reload(hup_engine.reload());
                }
            })
            .context("cannot start the SIGHUP thread")?;
        Some(
            engine
                .watch(report_reload)
                .context("cannot watch the policy directory")?,
        )
    } else {
        None
    };
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    let mut n = 0;
    while let Some(line) =
        read_bounded_line(&mut stdin, MAX_REQUEST_BYTES).context("cannot read stdin")?
    {
        n += 1;
        let response = match line {
            Line::TooLong => {
                json!({"line": n, "error": format!("request larger than {MAX_REQUEST_BYTES} bytes")})
            }
            Line::NotUtf8 => json!({"line": n, "error": "request is not UTF-8"}),
            Line::Text(text) if text.trim().is_empty() => continue,
            Line::Text(text) => match serde_json::from_str::<DecisionRequest>(&text) {
                Ok(request) => serde_json::to_value(engine.decide(&request))?,
                Err(e) => json!({"line": n, "error": format!("invalid request: {e}")}),
            },
        };
        writeln!(stdout, "{response}")?;
        stdout.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
