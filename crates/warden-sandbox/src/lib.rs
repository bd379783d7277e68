//! Confinement for `warden run` on Linux: the agent's processes live in a cgroup (v2) of their
//! own, and eBPF programs attached to that cgroup hand every TCP connection to the gateway's
//! transparent listener, send DNS to the gateway's responder and refuse everything else (other
//! UDP, raw and other sockets). The gateway reads back where each connection was going
//! ([`Confinement::origin`]) and which cgroup — hence which agent instance — it came from.
//!
//! - [`Cgroup`]: create, enter, kill and remove an agent's cgroup; [`spawn`] starts the agent
//!   in it as an unprivileged user who cannot leave it.
//! - [`Confinement`]: the programs, loaded once per gateway and attached to each agent's cgroup.
//! - [`Metering`]: what the programs cost per run, as the kernel counts it.
//! - [`session`]: what `warden run` and the gateway say to each other over the gateway's local
//!   socket.

mod cgroup;
mod kernel;
mod metering;
pub mod session;
mod spawn;

pub use cgroup::Cgroup;
pub use kernel::{Confinement, Origin, Redirect, Refusal, Refusals, Refused};
pub use metering::{Metering, ProgramCost};
pub use spawn::{User, spawn};

/// Why confinement cannot be set up. Each says what is missing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("confinement needs Linux with cgroup v2 and eBPF; this system is not Linux")]
    NotLinux,
    #[error(
        "no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo): mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot load the confinement programs into the kernel (needs root, or CAP_BPF with CAP_NET_ADMIN, and a kernel with cgroup BPF): {0}"
    )]
    Load(String),
    #[error("cannot attach {program} to {cgroup}: {source}")]
    Attach {
        program: &'static str,
        cgroup: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl SandboxError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
