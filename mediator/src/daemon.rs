//! Attaching the configured regions (the configuration is the authority: a region the
//! host cannot use quarantines its VM only) and running one dispatcher per pool, with
//! the control loop (session epoch, shutdown) on the calling thread.

use crate::dispatcher::{Dispatcher, DispatcherStats, OnStop};
use crate::executor::{CpuExecutor, Executor};
use crate::metrics::{Exporter, Metrics, PoolMetrics};
use crate::port::{Session, VmPort};
use crate::supervise::Supervisor;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vgpu_config::{Backend, Config, PoolConfig};
use vgpu_doorbell::Bell;
use vgpu_ring::PoolId;

/// Host `CLOCK_MONOTONIC` in nanoseconds (the heartbeat's clock).
///
/// ```
/// use vgpu_mediator::daemon::monotonic_ns;
/// let (a, b) = (monotonic_ns(), monotonic_ns());
/// assert!(a > 0 && b >= a);
/// ```
#[must_use]
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| Duration::from(t).as_nanos() as u64)
}

/// The executor a pool's configuration asks for.
///
/// ```
/// use vgpu_mediator::daemon::executor_for;
/// use vgpu_ring::PoolId;
/// let config = vgpu_config::Config::parse(
///     "[regions]\ndir = \"/tmp\"\n[pools.A]\n[pools.G]\nbackend = \"cuda\"\nfallback = \"cpu\"\n\
///      [[vm]]\nid = 1\npool = \"A\"\npriority = 0\n",
/// )?;
/// let cpu = executor_for(&config.pools[&PoolId::new(b'A').unwrap()])?;
/// assert_eq!(cpu.describe().0, "cpu");
/// // A CUDA pool with a CPU fallback always gets an executor: the GPU, or the CPU.
/// let gpu = executor_for(&config.pools[&PoolId::new(b'G').unwrap()])?;
/// println!("pool G runs on {:?}", gpu.describe());
/// # Ok::<(), anyhow::Error>(())
/// ```
///
/// # Errors
///
/// If the pool asks for a GPU that cannot be used and has no CPU fallback.
pub fn executor_for(pool: &PoolConfig) -> Result<Box<dyn Executor>> {
    match pool.backend {
        Backend::Cpu => Ok(Box::new(CpuExecutor::default())),
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
                Ok(Box::new(CpuExecutor::default()))
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

/// How a mediator is told to stop: a flag that every dispatcher looks at in its passes,
/// and a socket pair whose byte wakes the control thread, which otherwise sleeps until
/// its next supervision tick (an idle mediator polls no flag).
///
/// ```
/// use std::time::Duration;
/// use vgpu_mediator::daemon::Stop;
/// let stop = Stop::new().unwrap();
/// assert!(!stop.wait(Duration::from_millis(1)), "not requested: the wait times out");
/// stop.request();
/// assert!(stop.requested());
/// assert!(stop.wait(Duration::from_secs(60)), "requested: the wait ends at once");
/// ```
#[derive(Debug)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    /// Read by [`Stop::wait`]; written by [`Stop::request`] and the signal handlers.
    asleep: UnixStream,
    waker: UnixStream,
}

impl Stop {
    /// A stop nobody has requested yet.
    ///
    /// ```
    /// let stop = vgpu_mediator::daemon::Stop::new()?;
    /// assert!(!stop.requested());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// If the socket pair cannot be made.
    pub fn new() -> std::io::Result<Self> {
        let (asleep, waker) = UnixStream::pair()?;
        // A full socket already holds a wake-up: a request never blocks on it.
        waker.set_nonblocking(true)?;
        Ok(Self { flag: Arc::new(AtomicBool::new(false)), asleep, waker })
    }

    /// A stop that SIGINT and SIGTERM request: the flag is set first, then the socket
    /// written (in registration order, from the handler; both async-signal-safe).
    ///
    /// ```
    /// let stop = vgpu_mediator::daemon::Stop::on_signals()?;
    /// signal_hook::low_level::raise(signal_hook::consts::SIGTERM)?;
    /// assert!(stop.wait(std::time::Duration::from_secs(60)), "woken by the signal");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// If the handlers cannot be installed.
    pub fn on_signals() -> std::io::Result<Self> {
        let stop = Self::new()?;
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, Arc::clone(&stop.flag))?;
            signal_hook::low_level::pipe::register(signal, stop.waker.try_clone()?)?;
        }
        Ok(stop)
    }

    /// Request the stop (as the signals do).
    ///
    /// ```
    /// let stop = vgpu_mediator::daemon::Stop::new()?;
    /// stop.request();
    /// stop.request(); // as often as anyone likes
    /// assert!(stop.requested());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn request(&self) {
        // SYNC: SeqCst, as signal-hook's handler stores it; the flag carries no data.
        self.flag.store(true, Ordering::SeqCst);
        // Full (a wake-up is pending already) or closed (nobody waits): nothing to do.
        let _ = (&self.waker).write(&[1]);
    }

    /// Whether the stop was requested.
    ///
    /// ```
    /// let stop = vgpu_mediator::daemon::Stop::new()?;
    /// assert!(!stop.requested());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn requested(&self) -> bool {
        // SYNC: pairs with the handler's (or `request`'s) store of the flag, made before
        // the byte this thread may have just read.
        self.flag.load(Ordering::SeqCst)
    }

    /// Sleep until the stop is requested or `timeout` has passed (at least a
    /// millisecond); whether it was requested.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// let stop = Arc::new(vgpu_mediator::daemon::Stop::new()?);
    /// let stopper = { let stop = Arc::clone(&stop); std::thread::spawn(move || stop.request()) };
    /// while !stop.wait(Duration::from_secs(1)) {}
    /// stopper.join().unwrap();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn wait(&self, timeout: Duration) -> bool {
        if self.requested() {
            return true;
        }
        let timeout = timeout.max(Duration::from_millis(1));
        let woken = self.asleep.set_read_timeout(Some(timeout)).and_then(|()| {
            let mut bytes = [0; 16];
            (&self.asleep).read(&mut bytes)
        });
        match woken {
            Ok(n) if n > 0 => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Never expected of a socket pair of our own: sleep anyway rather than spin.
            _ => std::thread::sleep(timeout),
        }
        self.requested()
    }
}

/// How [`serve`] runs.
///
/// ```
/// use vgpu_mediator::daemon::ServeOptions;
/// use vgpu_mediator::dispatcher::OnStop;
/// // What `vgpu-mediator --quiet-requests` serves with.
/// let options = ServeOptions { log_requests: false, on_stop: OnStop::Keep };
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Log the per-request `[QUEUE]`/`[PROCESS]`/`[RESPONSE]` lines.
    pub log_requests: bool,
    /// What happens to queued requests at shutdown.
    pub on_stop: OnStop,
}

/// A new session epoch: non-zero, and different from any earlier one of this host
/// (monotonic time and the process id).
fn new_epoch() -> u64 {
    (monotonic_ns() ^ (u64::from(std::process::id()) << 40)) | 1
}

/// Attach every configured VM (quarantining those whose region is unusable) and group
/// them by pool.
///
/// # Errors
///
/// If another live mediator serves one of the regions, or no VM at all can be served.
fn attach_all(
    config: &Config,
    session: &Session,
    mut bells: BTreeMap<u32, Bell>,
) -> Result<BTreeMap<PoolId, Vec<VmPort>>> {
    let mut by_pool: BTreeMap<PoolId, Vec<VmPort>> = BTreeMap::new();
    let mut reasons = Vec::new();
    for vm in &config.vms {
        let bell = if vm.doorbell.is_some() { bells.remove(&vm.id) } else { None };
        let port = VmPort::attach(vm.clone(), session, bell)
            .with_context(|| format!("vm {}: refusing to start", vm.id))?;
        if let Some(reason) = port.quarantine_reason() {
            reasons.push(format!("vm {}: {reason}", vm.id));
        }
        by_pool.entry(vm.pool).or_default().push(port);
    }
    if reasons.len() == config.vms.len() {
        bail!(
            "no VM can be served ({}); create the regions with `ivshmem-setup create`",
            reasons.join("; ")
        );
    }
    Ok(by_pool)
}

/// Which holder listens on a control socket: the socket file's device, inode and
/// change time (a restarted holder binds a new file).
type HolderId = (u64, u64, i64, i64);

/// The identity of the holder on `control`, if its socket exists.
fn holder_id(control: &Path) -> Option<HolderId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(control).ok()?;
    Some((meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()))
}

/// The host ends of the doorbells of the VMs `wanted`, from the holder on `control`
/// (`ivshmem-setup serve`); a VM it has none for is logged (it is polled).
///
/// # Errors
///
/// If the holder does not answer (not running).
fn hand_over(control: &Path, wanted: &[u32]) -> std::io::Result<BTreeMap<u32, Bell>> {
    let bells: BTreeMap<u32, Bell> = vgpu_doorbell::fetch_bells(control)?
        .into_iter()
        .filter(|bell| wanted.contains(&bell.vm_id))
        .map(|bell| (bell.vm_id, bell))
        .collect();
    let missing: Vec<u32> = wanted.iter().copied().filter(|id| !bells.contains_key(id)).collect();
    if !missing.is_empty() {
        tracing::warn!(
            "the doorbell holder has no doorbell for VMs {missing:?} (started with another config?): they are polled"
        );
    }
    tracing::info!("doorbells of {} VMs received from {}", bells.len(), control.display());
    Ok(bells)
}

/// Watch the doorbell holder for as long as the mediator runs: when a holder that did
/// not answer before does (it was not running at the start), or a new one replaces it
/// (restarted, with its QEMUs: their doorbells are new eventfds), hand each doorbell it
/// gives to its VM's dispatcher through `dispatchers`, which watches it from then on.
/// `known` is the holder whose doorbells the dispatchers have. Looks every `retry`, on
/// a thread of its own, so that a slow holder delays no dispatcher; ends when `stopped`
/// hangs up (at once, or after a hand-over in progress, bounded by its 5 s timeout).
///
/// # Errors
///
/// If the thread cannot be started.
fn watch_holder(
    control: PathBuf,
    dispatchers: BTreeMap<u32, Sender<Bell>>,
    mut known: Option<HolderId>,
    retry: Duration,
    stopped: Receiver<()>,
) -> Result<Option<JoinHandle<()>>> {
    if dispatchers.is_empty() {
        return Ok(None);
    }
    let wanted: Vec<u32> = dispatchers.keys().copied().collect();
    let thread = std::thread::Builder::new().name("doorbells".to_owned()).spawn(move || {
        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(retry) {
            let now = holder_id(&control);
            if now.is_none() || now == known {
                continue;
            }
            // Not answering (yet): said once at the start, not again every retry.
            let Ok(bells) = hand_over(&control, &wanted) else { continue };
            known = now;
            for (vm, bell) in bells {
                if let Some(dispatcher) = dispatchers.get(&vm) {
                    let _ = dispatcher.send(bell);
                }
            }
        }
    });
    Ok(Some(thread.context("start the doorbell thread")?))
}

/// Serve `config` until `stop` is requested; returns each pool's counters.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use vgpu_mediator::daemon::{ServeOptions, Stop, serve};
/// use vgpu_mediator::dispatcher::OnStop;
/// # let dir = tempfile::tempdir()?;
/// # let config = vgpu_config::Config::parse(&format!(
/// #     "[regions]\ndir = {:?}\nsize = \"4M\"\narena_size = \"1M\"\n[pools.A]\n[[vm]]\nid = 1\npool = \"A\"\npriority = 0\n",
/// #     dir.path()
/// # ))?;
/// # let vm = &config.vms[0];
/// # vgpu_ring::Region::create(&vm.region, config.region_size, config.geometry, &[vm.identity().slot()], false)?;
/// let stop = Arc::new(Stop::new()?);
/// let stopper = {
///     let stop = Arc::clone(&stop);
///     std::thread::spawn(move || {
///         std::thread::sleep(Duration::from_millis(100));
///         stop.request();
///     })
/// };
/// // Serves the VMs of `config` for 100 ms.
/// let stats = serve(&config, &stop, ServeOptions { log_requests: false, on_stop: OnStop::Drain })?;
/// stopper.join().unwrap();
/// assert_eq!(stats.len(), 1, "pool A");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// If a pool's executor cannot be had, another mediator serves one of the regions, no
/// VM can be served, or a thread cannot be started.
pub fn serve(
    config: &Config,
    stop: &Stop,
    options: ServeOptions,
) -> Result<BTreeMap<PoolId, DispatcherStats>> {
    // Executors first: a pool that cannot get its GPU stops the start before any
    // region announces a session.
    let executors = config
        .pools
        .values()
        .map(|pool| Ok((pool, executor_for(pool)?)))
        .collect::<Result<Vec<_>>>()?;
    let session = Session {
        epoch: new_epoch(),
        heartbeat_interval_ms: u32::try_from(config.mediator.heartbeat_interval.as_millis())
            .unwrap_or(u32::MAX),
        region_size: config.region_size,
        geometry: config.geometry,
    };
    // Doorbells first: a VM attaches with its doorbell published in its slot.
    let control = &config.doorbell_control;
    let wanted: Vec<u32> =
        config.vms.iter().filter(|vm| vm.doorbell.is_some()).map(|vm| vm.id).collect();
    let holder = holder_id(control);
    let (bells, holder) = if wanted.is_empty() {
        (BTreeMap::new(), holder)
    } else {
        match hand_over(control, &wanted) {
            Ok(bells) => (bells, holder),
            Err(e) => {
                tracing::warn!(
                    "doorbells unavailable ({e}): VMs {wanted:?} are polled until `ivshmem-setup serve` answers (asked again every quarantine_retry_ms)"
                );
                (BTreeMap::new(), None)
            }
        }
    };
    let mut by_pool = attach_all(config, &session, bells)?;
    let quarantined = by_pool.values().flatten().filter(|port| port.is_quarantined()).count();
    tracing::info!(
        "=== GPU Mediation Daemon Started === (epoch {:#x}, {} VMs, {quarantined} quarantined)",
        session.epoch,
        config.vms.len()
    );
    // Wakes dispatchers sleeping on doorbells at shutdown.
    let stop_bell = Bell::local().context("create an eventfd")?;
    let mut threads = Vec::new();
    let mut pool_metrics = Vec::new();
    // Where doorbells handed over later go: each doorbell VM's dispatcher.
    let mut dispatchers = BTreeMap::new();
    for (pool, executor) in executors {
        let name = &pool.name;
        let vms = by_pool.remove(name).unwrap_or_default();
        let doorbell_vms: Vec<u32> =
            vms.iter().filter(|port| port.vm.doorbell.is_some()).map(|port| port.vm.id).collect();
        let new_bells = (!doorbell_vms.is_empty()).then(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            dispatchers.extend(doorbell_vms.into_iter().map(|id| (id, tx.clone())));
            rx
        });
        tracing::info!("Pool {name} Queue: Ready ({} VMs, {:?})", vms.len(), pool.policy);
        let metrics = Arc::new(PoolMetrics::new(
            *name,
            executor.describe(),
            vms.iter().map(|port| Arc::clone(&port.metrics)).collect(),
        ));
        pool_metrics.push(Arc::clone(&metrics));
        let dispatcher = Dispatcher::new(
            pool,
            vms,
            executor,
            &config.mediator,
            session,
            options.log_requests,
            &stop_bell,
            new_bells,
            metrics,
        )?;
        let flag = Arc::clone(&stop.flag);
        let thread = std::thread::Builder::new()
            .name(format!("pool-{name}"))
            .spawn(move || dispatcher.run(&flag, options.on_stop))
            .context("start a dispatcher thread")?;
        threads.push((*name, thread));
    }
    // Dropped at shutdown: the doorbell thread's wait ends at once.
    let (stop_holder_watch, stopped) = std::sync::mpsc::channel();
    let holder_watch = watch_holder(
        control.clone(),
        dispatchers,
        holder,
        config.mediator.quarantine_retry,
        stopped,
    )?;
    let mut supervisor = Supervisor::new(pool_metrics.clone(), &config.mediator);
    let metrics = Metrics { epoch: session.epoch, pools: pool_metrics };
    // A metrics endpoint is an aid, never a condition to serve: one that cannot be
    // bound is logged and the VMs are served without it.
    let _exporter =
        config.metrics_listen.and_then(|listen| match Exporter::start(listen, metrics) {
            Ok(exporter) => {
                tracing::info!("metrics on http://{listen}/metrics");
                Some(exporter)
            }
            Err(e) => {
                tracing::error!(
                    "metrics: cannot listen on {listen} ({e}); serving without metrics"
                );
                None
            }
        });
    // Regions attached (or quarantined), dispatchers running, metrics served.
    supervisor.ready();
    // The dispatchers keep their regions' heartbeats; this thread sleeps until the stop
    // or its next supervision tick (an idle daemon wakes about once a second) and tells
    // systemd how the dispatchers fare.
    while !stop.wait(supervisor.next_tick().saturating_duration_since(Instant::now())) {
        supervisor.tick(Instant::now());
    }
    drop(stop_holder_watch);
    Supervisor::stopping();
    if let Err(e) = stop_bell.ring() {
        tracing::error!(
            "waking the dispatchers failed ({e}); they stop when they next wake (at the latest their sleeping heartbeat)"
        );
    }
    tracing::info!(
        "shutting down: finishing jobs in hand{}",
        match options.on_stop {
            OnStop::Keep => "; queued requests stay in the rings for the next mediator",
            OnStop::Drain => "; answering queued requests with error 8 (shutting down)",
        }
    );
    if let Some(holder_watch) = holder_watch {
        let _ = holder_watch.join();
    }
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
