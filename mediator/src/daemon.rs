//! Attaching the configured regions and running one dispatcher per pool, with the
//! control loop (session epoch, heartbeat, shutdown) on the calling thread.

use crate::dispatcher::{Dispatcher, DispatcherStats, VmPort};
use crate::executor::{CpuExecutor, Executor};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vgpu_config::{Backend, Config, PoolConfig};
use vgpu_ring::{Access, Region};

/// Host `CLOCK_MONOTONIC` in nanoseconds (the heartbeat's clock).
#[must_use]
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| Duration::from(t).as_nanos() as u64)
}

/// The executor a pool's configuration asks for.
///
/// # Errors
///
/// If the pool asks for a GPU that cannot be used and has no CPU fallback.
pub fn executor_for(pool: &PoolConfig) -> Result<Box<dyn Executor>> {
    match pool.backend {
        Backend::Cpu => Ok(Box::new(CpuExecutor)),
        Backend::Cuda { device, fallback_to_cpu } => match cuda_executor(device) {
            Ok(executor) => {
                tracing::info!("Pool {}: CUDA device {device}", pool.name);
                Ok(executor)
            }
            Err(reason) if fallback_to_cpu => {
                tracing::error!(
                    "Pool {}: CUDA device {device} unusable ({reason}); FALLING BACK TO THE CPU as configured (fallback = \"cpu\")",
                    pool.name
                );
                Ok(Box::new(CpuExecutor))
            }
            Err(reason) => bail!(
                "pool {}: backend = \"cuda\" (device {device}) but {reason}; add fallback = \"cpu\" to run this pool on the CPU instead",
                pool.name
            ),
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda_executor(device: u32) -> Result<Box<dyn Executor>, String> {
    crate::cuda::CudaExecutor::new(device)
        .map(|e| Box::new(e) as Box<dyn Executor>)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda_executor(_device: u32) -> Result<Box<dyn Executor>, String> {
    Err("this vgpu-mediator was built without the `cuda` feature".to_owned())
}

/// Open every VM's region and check it against the configuration.
///
/// # Errors
///
/// Naming the region: missing, not a region, other geometry, other identity.
pub fn attach(config: &Config) -> Result<Vec<(vgpu_config::VmConfig, Arc<Region>)>> {
    let mut attached = Vec::new();
    for vm in &config.vms {
        let path = &vm.region;
        let region = Region::open_expecting(path, Access::ReadWrite, config.geometry)
            .with_context(|| {
                format!(
                    "vm {}: region {} (create it with `ivshmem-setup create`)",
                    vm.id,
                    path.display()
                )
            })?;
        let found = region.identity(0)?;
        if found != vm.identity() {
            bail!(
                "vm {}: region {} holds identity vm {} pool {:?} priority {}, but the config says vm {} pool {} priority {}; \
                 recreate it with `ivshmem-setup create`",
                vm.id,
                path.display(),
                found.vm_id,
                char::from(found.pool as u8),
                found.priority,
                vm.id,
                vm.pool,
                vm.priority
            );
        }
        attached.push((vm.clone(), Arc::new(region)));
    }
    Ok(attached)
}

/// A new session epoch: non-zero and different from every region's current one.
fn new_epoch(regions: &[Arc<Region>]) -> u64 {
    let mut epoch = (monotonic_ns() ^ (u64::from(std::process::id()) << 40)) | 1;
    while regions.iter().any(|r| r.epoch() == epoch) {
        epoch = epoch.wrapping_add(2);
    }
    epoch
}

/// Serve `config` until `shutdown` is set; returns each pool's counters.
///
/// # Errors
///
/// If a region cannot be attached or a thread cannot be started.
pub fn serve(
    config: &Config,
    shutdown: &Arc<AtomicBool>,
    log_requests: bool,
) -> Result<BTreeMap<char, DispatcherStats>> {
    let attached = attach(config)?;
    // Executors first: a pool that cannot get its GPU stops the start before any
    // region announces a session.
    let executors = config
        .pools
        .values()
        .map(|pool| Ok((pool, executor_for(pool)?)))
        .collect::<Result<Vec<_>>>()?;
    let regions: Vec<Arc<Region>> = attached.iter().map(|(_, r)| Arc::clone(r)).collect();
    let epoch = new_epoch(&regions);
    let interval = config.mediator.heartbeat_interval;
    let interval_ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
    for region in &regions {
        region.store_heartbeat(monotonic_ns())?;
        region.begin_session(epoch, std::process::id(), interval_ms)?;
    }
    let mut by_pool: BTreeMap<char, Vec<VmPort>> = BTreeMap::new();
    for (vm, region) in attached {
        by_pool.entry(vm.pool).or_default().push(VmPort::new(vm, region)?);
    }
    tracing::info!(
        "=== GPU Mediation Daemon Started === (epoch {epoch:#x}, {} VMs)",
        regions.len()
    );
    let mut threads = Vec::new();
    for (pool, executor) in executors {
        let name = &pool.name;
        let vms = by_pool.remove(name).unwrap_or_default();
        tracing::info!("Pool {name} Queue: Ready ({} VMs, {:?})", vms.len(), pool.policy);
        let dispatcher = Dispatcher::new(pool, vms, executor, &config.mediator, log_requests)?;
        let flag = Arc::clone(shutdown);
        let thread = std::thread::Builder::new()
            .name(format!("pool-{name}"))
            .spawn(move || dispatcher.run(&flag))
            .context("start a dispatcher thread")?;
        threads.push((*name, thread));
    }
    // Control loop: heartbeat until told to stop.
    let mut next_beat = Instant::now() + interval;
    while !shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_beat {
            let beat = monotonic_ns();
            for region in &regions {
                region.store_heartbeat(beat)?;
            }
            next_beat = now + interval;
        }
        // Shutdown is noticed within 50 ms; fewer wake-ups keep an idle daemon cheap.
        std::thread::sleep(next_beat.saturating_duration_since(now).min(Duration::from_millis(50)));
    }
    tracing::info!("shutting down: finishing jobs in hand");
    let mut stats = BTreeMap::new();
    for (name, thread) in threads {
        match thread.join() {
            Ok(s) => {
                stats.insert(name, s);
            }
            Err(_) => bail!("pool {name}'s dispatcher panicked"),
        }
    }
    Ok(stats)
}
