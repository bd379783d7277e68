//! `warden`: the one binary of the Warden security fabric for AI agents.

mod audit;
mod control;
mod demo;
mod fabric;
mod inspect;
mod oversight;
mod policy;
mod run;
mod telemetry;

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
    /// The whole fabric on localhost — control plane, gateway, demo MCP server and policies —
    /// with copy-paste examples.
    Up(fabric::UpArgs),
    /// Run a part of the fabric: the control plane, the gateway, or both.
    Serve(fabric::ServeArgs),
    /// Run an agent confined by the kernel: every connection it makes goes to the local gateway
    /// and is decided as this agent instance's; nothing else gets out (raw sockets, other UDP),
    /// and the agent holds no credential. Needs root. `warden run --agent TENANT/NAME -- <command>
    /// [args…]`
    Run(run::RunArgs),
    /// Run a local stdio MCP server behind Warden's pipeline: calls are decided, listings
    /// filtered, decisions recorded. `warden mcp-stdio --credential DIR --server NAME
    /// --policies DIR -- <command> [args…]`
    McpStdio(fabric::McpStdioArgs),
    /// Scan a file or standard input for prompt injection, secrets and sensitive data, and
    /// explain the findings (exit 1 when there are any).
    Inspect(inspect::InspectArgs),
    /// The tamper-evident audit log: verify it, prove records and consistency, tail, search.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// What the detectors found (from the audit log): list them, or show one with its evidence.
    #[command(subcommand)]
    Detections(audit::DetectionsCommand),
    /// Register agents, issue and delegate their credentials, revoke them.
    Agent {
        #[command(subcommand)]
        command: control::AgentCommand,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// Exchange evidence (a join token or a platform identity token) for credentials.
    Attest {
        #[command(flatten)]
        args: control::AttestArgs,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// Rotate the authority's keys; print the trust bundle.
    Authority {
        #[command(subcommand)]
        command: control::AuthorityCommand,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// Create admin credentials: approvers (with their groups), publishers, gateways, viewers.
    Admin {
        #[command(subcommand)]
        command: oversight::AdminCommand,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// Quarantine an agent (`tenant/name`, or a SPIFFE ID for one instance): on every gateway
    /// within a second its traffic and its sub-agents' is denied, open streams and connections
    /// are cut, and its credentials revoked. Without AGENT, shows who is held.
    Quarantine {
        agent: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// Release a quarantined agent (it needs new credentials to act again).
    Release {
        agent: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// The kill switch: stop all agent traffic on every gateway at once, for incident response.
    Freeze {
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// Let agent traffic flow again after a freeze.
    Unfreeze {
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// Human co-signature: list, show, approve or reject approval requests.
    Approvals {
        #[command(subcommand)]
        command: oversight::ApprovalsCommand,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// Tools withheld after their definition changed (rug pulls): list them, approve them.
    Tools {
        #[command(subcommand)]
        command: oversight::ToolsCommand,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// Undo a reversible action: its compensating call, through the gateway, audited.
    Actions {
        #[command(subcommand)]
        command: oversight::ActionsCommand,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// Publish events that event-gated policies wait for; list them.
    Events {
        #[command(subcommand)]
        command: oversight::EventsCommand,
        #[command(flatten)]
        connection: control::Connection,
    },
    /// Revoke a grant (and all delegated from it), a task, an agent, or a revocation id.
    Revoke {
        #[arg(value_enum)]
        kind: control::RevocationKind,
        value: String,
        #[command(flatten)]
        connection: control::Connection,
    },
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

/// `warden … | head` ends quietly: once the reader has gone, a write to stdout ends the command
/// instead of panicking (Rust ignores SIGPIPE, so the write fails and `print!` panics).
fn exit_quietly_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_closed_pipe();
    let _telemetry = match telemetry::init() {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("warden: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(command) => policy::run(command),
        Command::Up(args) => fabric::up(args),
        Command::Serve(args) => fabric::serve(args),
        Command::McpStdio(args) => fabric::mcp_stdio(args),
        Command::Run(args) => run::run(args),
        Command::Audit(command) => audit::run(command),
        Command::Detections(command) => audit::detections(command),
        Command::Inspect(args) => inspect::run(args),
        Command::Agent {
            command,
            connection,
        } => control::agent(command, connection),
        Command::Attest { args, connection } => control::attest(args, connection),
        Command::Authority {
            command,
            connection,
        } => control::authority(command, connection),
        Command::Revoke {
            kind,
            value,
            connection,
        } => control::revoke(kind, value, connection),
        Command::Admin {
            command,
            connection,
        } => oversight::admin(command, connection),
        Command::Quarantine {
            agent,
            reason,
            connection,
        } => oversight::quarantine(agent, reason, true, connection),
        Command::Release {
            agent,
            reason,
            connection,
        } => oversight::quarantine(Some(agent), Some(reason), false, connection),
        Command::Freeze { reason, connection } => oversight::kill_switch(true, reason, connection),
        Command::Unfreeze { reason, connection } => {
            oversight::kill_switch(false, reason, connection)
        }
        Command::Approvals {
            command,
            connection,
        } => oversight::approvals(command, connection),
        Command::Events {
            command,
            connection,
        } => oversight::events(command, connection),
        Command::Actions {
            command,
            connection,
        } => oversight::actions(command, connection),
        Command::Tools {
            command,
            connection,
        } => oversight::tools(command, connection),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
