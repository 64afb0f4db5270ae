//! Support for the project's multi-process tests, benchmarks and demo: the peer roles a
//! child process plays over a shared region, CPU pinning, and latency summaries.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod peer;
pub mod stats;
pub mod system;

use anyhow::{Context, Result};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::{Pid, SysconfVar, sysconf};

/// Cores online on this machine (not only those this process may run on: a child
/// inherits its parent's pinning).
#[must_use]
pub fn online_cores() -> usize {
    match sysconf(SysconfVar::_NPROCESSORS_ONLN) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => 1,
    }
}

/// Pin the calling thread to `core` (modulo the number of cores), so the two busy-polling
/// sides of a benchmark run on different cores. Returns the core used.
///
/// # Errors
///
/// If the affinity cannot be set.
pub fn pin_to_core(core: usize) -> Result<usize> {
    let core = core % online_cores();
    let mut set = CpuSet::new();
    set.set(core).context("cpu set")?;
    sched_setaffinity(Pid::from_raw(0), &set).context("sched_setaffinity")?;
    Ok(core)
}
