//! `warden`: the one binary of the Warden security fabric for AI agents.

mod policy;

/// Policy evaluation allocates many small, short-lived objects; with a large bundle resident,
/// mimalloc keeps that cost flat where the system allocator slows by half.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Warden: a zero-trust security fabric for AI agents.
///
/// Every call an agent makes — MCP tools, A2A peers, HTTP APIs, the internet — is identified,
/// checked against policy-as-code, inspected, recorded and watched.
#[derive(Parser)]
#[command(
    name = "warden",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check, test, explain and compare AgentPolicy bundles.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// One JSON document, for scripts.
    Json,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(command) => policy::run(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
