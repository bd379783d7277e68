//! `warden audit`: verify a log, prove a record's inclusion and the log's consistency between
//! checkpoints (proofs anyone holding the public key checks offline with `warden audit check`),
//! and read records: `tail` and `search`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use warden_audit::merkle::{Hash, leaf_hash, verify_consistency, verify_inclusion};
use warden_audit::{Checkpoint, LogReader, NoteVerifier};

use crate::Output;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the tree from every record and check every checkpoint's signature and root;
    /// report what is wrong and where. Exit status 1 when anything is.
    Verify {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Print an inclusion proof for record INDEX against the newest checkpoint covering it, as
    /// JSON: the record, its audit path and the signed checkpoint. `warden audit check` (or any
    /// RFC 9162 verifier) checks it with nothing but the public key.
    Prove {
        index: u64,
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Print a consistency proof between the checkpoints of tree sizes OLD and NEW, as JSON:
    /// both signed checkpoints and the proof that NEW extends OLD (nothing rewritten).
    Consistency {
        old: u64,
        new: u64,
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Check offline, with the public key: a proof from `prove` or `consistency`, or a SIEM copy
    /// (OCSF events, one per line, as the export writes them) — a file, or `-` for stdin.
    Check {
        proof: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Print the newest records, then follow new ones as they are written.
    Tail {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        filter: Filter,
        /// Records to show before following.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: u64,
        /// Stop after the existing records instead of following.
        #[arg(long)]
        no_follow: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Print the records that match every filter given, oldest first.
    Search {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        filter: Filter,
        /// Records written at or after this time (RFC 3339, Unix seconds, or ago: 24h, 30m, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Records written before this time (RFC 3339, Unix seconds, or ago: 24h, 30m, 7d).
        #[arg(long)]
        until: Option<String>,
        /// Deciding policy (a substring of its `file:line name rule` reference).
        #[arg(long)]
        policy: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

/// What the detectors found, from the audit log.
#[derive(Subcommand)]
pub enum DetectionsCommand {
    /// Detections, oldest first: when, the detector, the response, the agent, the summary.
    List {
        #[command(flatten)]
        log: LogArgs,
        /// Agent SPIFFE ID, or a part of it.
        #[arg(long)]
        agent: Option<String>,
        /// Only this detector (`scan.ports`, `reach.new`, …).
        #[arg(long)]
        detector: Option<String>,
        /// Detections at or after this time (RFC 3339, Unix seconds, or ago: 24h, 30m, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// One detection and every decision that makes it.
    Show {
        #[command(flatten)]
        log: LogArgs,
        /// The detection's id (`det_…`, as `list` shows it).
        id: String,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

pub fn detections(command: DetectionsCommand) -> anyhow::Result<ExitCode> {
    match command {
        DetectionsCommand::List {
            log,
            agent,
            detector,
            since,
            output,
        } => {
            let since = since.as_deref().map(parse_time).transpose()?;
            let reader = LogReader::open(&log.log)?;
            for record in reader.records(0)? {
                let (_, record) = record?;
                let Ok(value) = serde_json::from_slice::<Value>(&record) else {
                    continue;
                };
                let text = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or("");
                let chosen = text("action") == "detect"
                    && agent.as_deref().is_none_or(|a| text("agent").contains(a))
                    && detector
                        .as_deref()
                        .is_none_or(|d| value["target"]["detector"] == d)
                    && since.is_none_or(|s| value["time"].as_i64().is_some_and(|t| t >= s));
                if !chosen {
                    continue;
                }
                match output {
                    Output::Json => println!("{value}"),
                    Output::Text => println!(
                        "{} {} {:<20} {:<10} {}  {}{}",
                        text("decisionId"),
                        rfc3339(value.get("time")),
                        value["target"]["detector"].as_str().unwrap_or("-"),
                        text("outcome"),
                        text("agent"),
                        value["target"]["summary"].as_str().unwrap_or_default(),
                        value["target"]["policy"]
                            .as_str()
                            .map(|p| format!(" (by {p})"))
                            .unwrap_or_default(),
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DetectionsCommand::Show { log, id, output } => {
            // Two passes over the log, never all of it in memory: the detection, then the
            // decisions it names (which come before it).
            let reader = LogReader::open(&log.log)?;
            let parsed = |record: Vec<u8>| serde_json::from_slice::<Value>(&record).ok();
            let mut detection = None;
            for record in reader.records(0)? {
                let (_, record) = record?;
                if let Some(value) = parsed(record)
                    && value["action"] == "detect"
                    && value["decisionId"] == id.as_str()
                {
                    detection = Some(value);
                    break;
                }
            }
            let Some(detection) = detection else {
                bail!(
                    "no detection {id} in {} (`warden detections list` shows their ids)",
                    log.log.display()
                );
            };
            let wanted: Vec<&str> = detection["target"]["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let mut found: std::collections::HashMap<String, Value> =
                std::collections::HashMap::new();
            for record in reader.records(0)? {
                let (_, record) = record?;
                if found.len() == wanted.len() {
                    break;
                }
                if let Some(value) = parsed(record)
                    && let Some(decision) = value["decisionId"].as_str()
                    && wanted.contains(&decision)
                {
                    found.insert(decision.to_owned(), value);
                }
            }
            let evidence: Vec<&Value> = wanted.iter().filter_map(|id| found.get(*id)).collect();
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"detection": detection, "evidence": evidence})
                ),
                Output::Text => {
                    println!("{}", describe(&detection));
                    println!("evidence ({} decisions):", evidence.len());
                    for record in evidence {
                        println!("  {}", describe(record));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Args)]
pub struct LogArgs {
    /// The audit log directory (`warden-data/audit` under `warden up`).
    #[arg(long, env = "WARDEN_AUDIT_LOG", default_value = "warden-data/audit")]
    log: PathBuf,
}

#[derive(Args)]
pub struct KeyArgs {
    /// The log's public key (`name+keyid+base64`), or a file holding it (`audit.pub`).
    #[arg(
        long,
        env = "WARDEN_AUDIT_KEY",
        default_value = "warden-data/audit.pub"
    )]
    key: String,
}

impl KeyArgs {
    fn verifier(&self) -> anyhow::Result<NoteVerifier> {
        let looks_like_path = self.key.contains('/') || self.key.ends_with(".pub");
        if looks_like_path && !Path::new(&self.key).exists() {
            bail!(
                "--key {}: no such key file; give the log's public key (`audit.pub` beside the log's signing key) or the key itself",
                self.key
            );
        }
        let text = if Path::new(&self.key).is_file() {
            std::fs::read_to_string(&self.key)
                .with_context(|| format!("cannot read the key file {}", self.key))?
        } else {
            self.key.clone()
        };
        NoteVerifier::parse(&text).with_context(|| {
            format!(
                "--key {}: give the public key (name+keyid+base64) or the file holding it",
                self.key
            )
        })
    }
}

#[derive(Args)]
pub struct Filter {
    /// Agent SPIFFE ID, or a part of it (e.g. `agent/assistant`).
    #[arg(long)]
    agent: Option<String>,
    /// allow, deny or needs-approval.
    #[arg(long)]
    outcome: Option<String>,
    /// MCP tool name.
    #[arg(long)]
    tool: Option<String>,
    /// The record's action: `mcp.tools/call`, `http`, `egress.connect`, `detect` (detections)…
    #[arg(long)]
    action: Option<String>,
    /// Only calls that staged policies (`spec.mode: staged`) would have refused.
    #[arg(long)]
    would_deny: bool,
}

impl Filter {
    fn matches(&self, record: &Value) -> bool {
        let field = |name: &str| record.get(name).and_then(Value::as_str).unwrap_or_default();
        self.agent
            .as_ref()
            .is_none_or(|a| field("agent").contains(a.as_str()))
            && self.outcome.as_ref().is_none_or(|o| field("outcome") == o)
            && self.action.as_ref().is_none_or(|a| field("action") == a)
            && (!self.would_deny || record["staged"]["wouldDeny"] == true)
            && self.tool.as_ref().is_none_or(|tool| {
                field("resource")
                    .strip_prefix("tool ")
                    .and_then(|r| r.rsplit_once('/'))
                    .is_some_and(|(_, name)| name == tool)
            })
    }
}

fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> anyhow::Result<Hash> {
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .filter(|b| b.len() == 32)
        .with_context(|| format!("`{text}` is not a 64-digit hex SHA-256 hash"))?;
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes);
    Ok(hash)
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { log, key, output } => verify(&log.log, &key.verifier()?, output),
        AuditCommand::Prove { index, log, key } => prove(&log.log, &key.verifier()?, index),
        AuditCommand::Consistency { old, new, log, key } => {
            consistency(&log.log, &key.verifier()?, old, new)
        }
        AuditCommand::Check { proof, key } => check(&proof, &key.verifier()?),
        AuditCommand::Tail {
            log,
            filter,
            lines,
            no_follow,
            output,
        } => tail(&log.log, &filter, lines, !no_follow, output),
        AuditCommand::Search {
            log,
            filter,
            since,
            until,
            policy,
            limit,
            output,
        } => {
            let since = since.as_deref().map(parse_time).transpose()?;
            let until = until.as_deref().map(parse_time).transpose()?;
            search(
                &log.log,
                &filter,
                since,
                until,
                policy.as_deref(),
                limit,
                output,
            )
        }
    }
}

fn verify(dir: &Path, verifier: &NoteVerifier, output: Output) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let report = warden_audit::verify::verify(dir, verifier)
        .with_context(|| format!("cannot read the audit log in {}", dir.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "ok": report.ok(),
                "records": report.records,
                "checkpoints": report.checkpoints,
                "latest": report.latest.as_ref().map(|c| json!({"origin": c.origin, "size": c.size, "root": hex(&c.root)})),
                "tornTail": report.torn_tail,
                "problems": report.problems,
                "omittedProblems": report.omitted,
            })
        ),
        Output::Text => {
            println!(
                "{} records, {} signed checkpoints, checked in {seconds:.2} s",
                report.records, report.checkpoints
            );
            if let Some(latest) = &report.latest {
                println!(
                    "latest good checkpoint: {} size {} root {}",
                    latest.origin,
                    latest.size,
                    hex(&latest.root)
                );
            }
            if report.torn_tail {
                println!(
                    "note: an incomplete last record (a crash cut its write short; it was never acknowledged)"
                );
            }
            for problem in &report.problems {
                println!("PROBLEM {problem}");
            }
            if report.omitted > 0 {
                println!("... and {} more problems", report.omitted);
            }
            println!(
                "{}",
                if report.ok() {
                    "OK: the log verifies"
                } else {
                    "FAILED: the log does not verify"
                }
            );
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn prove(dir: &Path, verifier: &NoteVerifier, index: u64) -> anyhow::Result<ExitCode> {
    let reader = LogReader::open(dir)?;
    let (checkpoint, note) = reader
        .checkpoints(verifier)?
        .into_iter()
        .rev()
        .find(|(c, _)| c.size > index)
        .with_context(|| {
            format!("no checkpoint covers record {index} yet; checkpoints follow within a second")
        })?;
    let record = reader.record(index)?;
    let (leaf, path) = reader.inclusion_proof(index, checkpoint.size)?;
    let record = String::from_utf8(record).context("the record is not UTF-8")?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "type": "inclusion",
            "index": index,
            "record": record,
            "leafHash": hex(&leaf),
            "treeSize": checkpoint.size,
            "path": path.iter().map(hex).collect::<Vec<_>>(),
            "checkpoint": note,
        }))?
    );
    Ok(ExitCode::SUCCESS)
}

fn consistency(
    dir: &Path,
    verifier: &NoteVerifier,
    old: u64,
    new: u64,
) -> anyhow::Result<ExitCode> {
    let reader = LogReader::open(dir)?;
    let checkpoints = reader.checkpoints(verifier)?;
    let find = |size: u64| {
        checkpoints
            .iter()
            .find(|(c, _)| c.size == size)
            .map(|(_, note)| note.clone())
            .with_context(|| {
                let sizes: Vec<String> = checkpoints
                    .iter()
                    .map(|(c, _)| c.size.to_string())
                    .collect();
                format!(
                    "no checkpoint of size {size}; checkpointed sizes: {}",
                    sizes.join(", ")
                )
            })
    };
    let (old_note, new_note) = (find(old)?, find(new)?);
    let proof = reader.consistency_proof(old, new)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "type": "consistency",
            "old": old_note,
            "new": new_note,
            "path": proof.iter().map(hex).collect::<Vec<_>>(),
        }))?
    );
    Ok(ExitCode::SUCCESS)
}

fn signed(verifier: &NoteVerifier, note: Option<&Value>) -> anyhow::Result<Checkpoint> {
    let note = note
        .and_then(Value::as_str)
        .context("the proof has no signed checkpoint")?;
    let text = verifier.open(note)?;
    Ok(Checkpoint::parse(text)?)
}

fn path_of(proof: &Value) -> anyhow::Result<Vec<Hash>> {
    proof
        .get("path")
        .and_then(Value::as_array)
        .context("the proof has no `path`")?
        .iter()
        .map(|h| unhex(h.as_str().unwrap_or_default()))
        .collect()
}

fn check(file: &Path, verifier: &NoteVerifier) -> anyhow::Result<ExitCode> {
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin().take(1 << 30).read_to_string(&mut text)?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("cannot open {}", file.display()))?
            .take(1 << 30)
            .read_to_string(&mut text)?;
    }
    if let Ok(proof) = serde_json::from_str::<Value>(&text)
        && proof.get("type").is_some()
    {
        println!("{}", check_proof(&proof, verifier)?);
        return Ok(ExitCode::SUCCESS);
    }
    // A SIEM copy: OCSF events, one per line, each carrying its record's proof.
    let (mut checked, mut failed) = (0u64, 0u64);
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let event: Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", n + 1))?;
        let Some(warden) = event
            .pointer("/unmapped/warden")
            .filter(|w| w.get("record").is_some())
        else {
            continue; // findings carry their activity's provenance, not a record of their own
        };
        let proof = json!({
            "type": "inclusion", "index": warden["leaf_index"], "record": warden["record"],
            "path": warden["path"], "checkpoint": warden["checkpoint"],
        });
        match check_proof(&proof, verifier) {
            Ok(_) => checked += 1,
            Err(e) => {
                failed += 1;
                println!("line {}: {e:#}", n + 1);
            }
        }
    }
    if checked + failed == 0 {
        bail!(
            "no proof, and no OCSF events from Warden, in {}",
            file.display()
        );
    }
    println!("{checked} events verified against their signed checkpoints, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_proof(proof: &Value, verifier: &NoteVerifier) -> anyhow::Result<String> {
    let path = path_of(proof)?;
    match proof.get("type").and_then(Value::as_str) {
        Some("inclusion") => {
            let checkpoint = signed(verifier, proof.get("checkpoint"))?;
            let record = proof
                .get("record")
                .and_then(Value::as_str)
                .context("the proof has no `record`")?;
            let index = proof
                .get("index")
                .and_then(Value::as_u64)
                .context("no `index`")?;
            let leaf = leaf_hash(record.as_bytes());
            if verify_inclusion(index, checkpoint.size, &leaf, &path, &checkpoint.root) {
                Ok(format!(
                    "OK: record {index} is in {} at size {} (signed checkpoint verified)",
                    checkpoint.origin, checkpoint.size
                ))
            } else {
                bail!("record {index} is NOT proved to be in the log at that checkpoint")
            }
        }
        Some("consistency") => {
            let old = signed(verifier, proof.get("old"))?;
            let new = signed(verifier, proof.get("new"))?;
            if old.origin != new.origin {
                bail!("the two checkpoints are of different logs");
            }
            if verify_consistency(old.size, new.size, &old.root, &new.root, &path) {
                Ok(format!(
                    "OK: {} at size {} extends size {} without rewriting it",
                    new.origin, new.size, old.size
                ))
            } else {
                bail!("the newer checkpoint is NOT proved to extend the older one")
            }
        }
        _ => bail!("not a proof from `warden audit prove` or `warden audit consistency`"),
    }
}

/// A moment as Unix seconds: RFC 3339, Unix seconds, or a time ago (`90s`, `30m`, `24h`, `7d`).
pub(crate) fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    let ago = text.char_indices().last().and_then(|(at, unit)| {
        let scale = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        text[..at].parse::<i64>().ok()?.checked_mul(scale)
    });
    if let Some(ago) = ago {
        return Ok(time::OffsetDateTime::now_utc().unix_timestamp() - ago);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .with_context(|| {
            format!("`{text}` is neither RFC 3339, Unix seconds, nor a time ago like 24h")
        })
}

fn print_record(record: &[u8], output: Output) {
    match output {
        Output::Json => println!("{}", String::from_utf8_lossy(record)),
        Output::Text => match serde_json::from_slice::<Value>(record) {
            Ok(value) => println!("{}", describe(&value)),
            Err(_) => println!("{}", String::from_utf8_lossy(record)),
        },
    }
}

/// One record on one line, for people: when, the outcome (with its reason), the action, what
/// was asked, the agent, and the process the kernel said asked it.
pub(crate) fn describe(value: &Value) -> String {
    let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or("-");
    let when = rfc3339(value.get("time"));
    let outcome = match value.get("reason").and_then(Value::as_str) {
        Some(reason) => format!("{} ({reason})", field("outcome")),
        None => field("outcome").to_owned(),
    };
    let phase = value
        .get("phase")
        .and_then(Value::as_str)
        .map(|p| format!("[{p}] "))
        .unwrap_or_default();
    let intent = value
        .get("intent")
        .and_then(Value::as_str)
        .map(|i| format!("(intent: {i})"))
        .unwrap_or_default();
    let process = asker(value)
        .map(|process| format!("  by {process}"))
        .unwrap_or_default();
    format!(
        "{when} {outcome:<28} {:<22} {phase}{} {intent}  {}{process}",
        field("action"),
        asked(value),
        field("agent"),
    )
}

/// What a record's call asked for: an HTTP call by method and path, a detection by its
/// detector, the rest by resource.
pub(crate) fn asked(value: &Value) -> String {
    let resource = value.get("resource").and_then(Value::as_str).unwrap_or("-");
    let target = |name: &str| value["target"].get(name).and_then(Value::as_str);
    match (target("method"), target("path"), target("detector")) {
        (Some(method), Some(path), _) => format!("{resource} {method} {path}"),
        (_, _, Some(detector)) => format!(
            "{resource} {detector}: {}",
            target("summary").unwrap_or_default()
        ),
        _ => resource.to_owned(),
    }
}

/// The process the kernel said made a record's call (agents under `warden run`).
pub(crate) fn asker(value: &Value) -> Option<String> {
    let process = value.get("process")?;
    let pid = process.get("pid").and_then(Value::as_u64)?;
    Some(match process.get("executable").and_then(Value::as_str) {
        Some(executable) if !executable.is_empty() => format!("{executable} (pid {pid})"),
        _ => format!("pid {pid}"),
    })
}

fn tail(
    dir: &Path,
    filter: &Filter,
    lines: u64,
    follow: bool,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let reader = LogReader::open(dir)?;
    let size = reader.size()?;
    // Walk back until `lines` matching records are found.
    let mut shown = Vec::new();
    let mut index = size;
    while index > 0 && (shown.len() as u64) < lines {
        index -= 1;
        let record = reader.record(index)?;
        if serde_json::from_slice(&record).is_ok_and(|v| filter.matches(&v)) {
            shown.push(record);
        }
    }
    for record in shown.iter().rev() {
        print_record(record, output);
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut next = size;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if reader.size()? == next {
            continue;
        }
        for record in reader.records(next)? {
            let (index, record) = record?;
            if serde_json::from_slice(&record).is_ok_and(|v| filter.matches(&v)) {
                print_record(&record, output);
            }
            next = index + 1;
        }
    }
}

fn search(
    dir: &Path,
    filter: &Filter,
    since: Option<i64>,
    until: Option<i64>,
    policy: Option<&str>,
    limit: usize,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let reader = LogReader::open(dir)?;
    let mut found = 0;
    for record in reader.records(0)? {
        let (_, record) = record?;
        if found >= limit {
            eprintln!("(stopped at --limit {limit})");
            break;
        }
        let Ok(value) = serde_json::from_slice::<Value>(&record) else {
            continue;
        };
        let time = value
            .get("time")
            .and_then(Value::as_i64)
            .unwrap_or_default();
        let by_policy = policy.is_none_or(|p| {
            value
                .get("deciding")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|x| x.as_str().is_some_and(|x| x.contains(p))))
        });
        if filter.matches(&value)
            && since.is_none_or(|s| time >= s)
            && until.is_none_or(|u| time < u)
            && by_policy
        {
            print_record(&record, output);
            found += 1;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Unix seconds (a JSON number) as RFC 3339, for people; empty when absent.
pub(crate) fn rfc3339(seconds: Option<&Value>) -> String {
    seconds
        .and_then(Value::as_i64)
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
