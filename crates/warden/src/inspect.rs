//! `warden inspect FILE|-`: scan content from the command line and explain the findings.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use warden_inspect::{Config, Finding, SENSITIVE_SETS, Scanner};

use crate::Output;

/// Largest input read.
const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Args)]
pub struct InspectArgs {
    /// A file to scan (JSON is scanned value by value), or `-` for standard input.
    input: String,
    /// Sensitive-data sets to look for, comma-separated (default: all of email, payment-card,
    /// iban, us-ssn, phone-number; `none` for none).
    #[arg(long)]
    sensitive: Option<String>,
    /// Skip the prompt-injection rules.
    #[arg(long)]
    no_injection: bool,
    /// Skip the statistical injection classifier (the injection rules still run).
    #[arg(long)]
    no_classifier: bool,
    /// The least classifier probability, in percent, reported as a finding.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    classifier_min_score: u8,
    /// Skip the secret rules.
    #[arg(long)]
    no_secrets: bool,
    /// Treat each input line as its own sample (a JSON string is decoded first) and print one
    /// JSON array of findings per line: for evaluations over many samples.
    #[arg(long)]
    lines: bool,
    /// How to print the findings.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// What a rule's finding means, for people.
fn explain(rule: &str) -> &'static str {
    match rule {
        "injection.instruction-override" => {
            "tells the model to ignore or override its instructions"
        }
        "injection.new-instructions" => "announces new or \"real\" instructions for the model",
        "injection.role-impersonation" => "imitates a system or developer message",
        "injection.persona-switch" => {
            "tries to switch the model into another role without its rules"
        }
        "injection.exfiltration" => {
            "asks for secrets, credentials or the conversation to be sent somewhere"
        }
        "injection.conceal-from-user" => "asks the model to hide what it does from the user",
        "injection.tool-bait" => "pushes the model to call a tool",
        "injection.hidden-html-comment" => "hides instructions in an HTML comment",
        "injection.css-hidden-text" => "hides text from people with CSS",
        "injection.markdown-exfiltration" => {
            "a markdown image whose URL query can carry data out when rendered"
        }
        "injection.hidden-unicode-tags" => {
            "text in Unicode tag characters: invisible to people, read by models"
        }
        "injection.invisible-characters" => "zero-width or bidirectional control characters",
        "injection.classifier" => {
            "reads like instructions to a model (statistical classifier; score = probability)"
        }
        "secret.named-field" => "a high-entropy value in a field named like a secret",
        "secret.password-assignment" => "a password, key or token assigned a high-entropy value",
        "inspect.too-deep" => "JSON nested too deep to inspect",
        rule if rule.starts_with("secret.") => "a credential in its real format",
        rule if rule.starts_with("pii.") => "personal or payment data",
        _ => "",
    }
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let sensitive = match args.sensitive.as_deref() {
        None => SENSITIVE_SETS.iter().map(|s| (*s).to_owned()).collect(),
        Some("none") => Vec::new(),
        Some(list) => list.split(',').map(|s| s.trim().to_owned()).collect(),
    };
    let scanner = Scanner::try_new(&Config {
        injection: !args.no_injection,
        classifier: !args.no_classifier,
        classifier_min_score: args.classifier_min_score,
        secrets: !args.no_secrets,
        sensitive,
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    let mut bytes = Vec::new();
    if args.input == "-" {
        std::io::stdin()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
    } else {
        std::fs::File::open(&args.input)
            .with_context(|| format!("cannot open {}", args.input))?
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", args.input))?;
    }
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_INPUT_BYTES,
        "{} is larger than {} MiB",
        args.input,
        MAX_INPUT_BYTES >> 20
    );
    if args.lines {
        let mut any = false;
        for line in String::from_utf8_lossy(&bytes).lines() {
            let findings = match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::String(text)) => scanner.scan_text(&text, ""),
                Ok(value) => scanner.scan_json(&value),
                Err(_) => scanner.scan_text(line, ""),
            };
            any |= !findings.is_empty();
            println!("{}", serde_json::to_string(&findings)?);
        }
        return Ok(if any {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    let findings = scanner.scan_body(&bytes);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
        Output::Text => print_findings(&findings),
    }
    // Like grep: 1 when something was found, so scripts can act on it.
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_findings(findings: &[Finding]) {
    if findings.is_empty() {
        println!("no findings");
        return;
    }
    for f in findings {
        let at = if f.location.is_empty() {
            "(text)"
        } else {
            &f.location
        };
        let via = if f.via.is_empty() {
            String::new()
        } else {
            format!(
                ", hidden in {}",
                f.via
                    .iter()
                    .map(|e| e.label())
                    .collect::<Vec<_>>()
                    .join(" in ")
            )
        };
        println!(
            "{:<8} {:<34} score {:>3}  at {at}{via}\n         {}",
            format!("{:?}", f.severity).to_uppercase(),
            f.rule,
            f.score,
            explain(&f.rule)
        );
    }
    println!("{} findings", findings.len());
}
