//! What the confinement programs cost, as the kernel counts it: while a [`Metering`] is held the
//! kernel times every run of every BPF program (`BPF_ENABLE_STATS`), and [`Metering::read`]
//! gives the runs and the time of Warden's programs so far.

use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::SandboxError;

/// The kernel keeps run statistics while this is held (they cost a little on every run of
/// every program, so they are off otherwise).
pub struct Metering {
    _stats: OwnedFd,
}

/// One of Warden's programs: how often it ran and how long it took altogether, since it was
/// loaded (counting only while statistics were on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramCost {
    /// The program's name as the kernel keeps it (at most 15 bytes: `warden_getpeern`).
    pub name: String,
    pub runs: u64,
    pub time: Duration,
}

impl Metering {
    /// Turns the kernel's run statistics on. Needs root (or CAP_SYS_ADMIN).
    pub fn start() -> Result<Self, SandboxError> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map(|stats| Self { _stats: stats })
            .map_err(|e| {
                SandboxError::Load(format!(
                    "cannot turn on BPF run statistics (BPF_ENABLE_STATS): {e}"
                ))
            })
    }

    /// Every loaded program of Warden's (several gateways' are summed by name), by name.
    pub fn read(&self) -> Result<Vec<ProgramCost>, SandboxError> {
        let mut costs: Vec<ProgramCost> = Vec::new();
        for program in aya::programs::loaded_programs() {
            let program = program.map_err(|e| SandboxError::Load(e.to_string()))?;
            let Some(name) = program.name_as_str().filter(|n| n.starts_with("warden_")) else {
                continue;
            };
            match costs.iter_mut().find(|cost| cost.name == name) {
                Some(cost) => {
                    cost.runs += program.run_count();
                    cost.time += program.run_time();
                }
                None => costs.push(ProgramCost {
                    name: name.to_owned(),
                    runs: program.run_count(),
                    time: program.run_time(),
                }),
            }
        }
        costs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(costs)
    }
}
