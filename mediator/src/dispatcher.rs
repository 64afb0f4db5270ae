//! A pool's dispatcher: drains its VMs' request rings into the pool's queue,
//! continuously (also while a long job executes), runs short jobs inline, hands long ones
//! to the pool's executor thread one at a time, publishes the responses, keeps the
//! heartbeat of its VMs' regions, carries out ring resets and quarantines a VM whose
//! region becomes unusable (retrying it periodically).

use crate::executor::{CpuExecutor, Executed, Executor, ExecutorThread, Job};
use crate::log_limit::{Problem, suppressed_note};
use crate::metrics::PoolMetrics;
use crate::port::{Session, VmPort};
use crate::queue::PoolQueue;
use crate::validate::validate;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};
use vgpu_config::{MediatorConfig, PoolConfig};
use vgpu_doorbell::{Bell, BellWaiter};
use vgpu_ring::{
    ErrorCode, Opcode, PoolId, Priority, Request, RequestWatch, decode_label, layout::LABEL_LEN,
};

/// A request waiting in the pool's queue or executing.
struct Pending {
    vm: usize,
    /// The port's generation when the request was taken: an answer for an older
    /// generation (the VM was reset or quarantined meanwhile) is dropped.
    generation: u64,
    /// The request's position in its ring (released once it is answered).
    position: u32,
    /// What the answer echoes of the request: its tag, opcode and label (the rest of
    /// the request lives on in `job`, validated; a small item is cheap to queue).
    tag: u32,
    opcode: u16,
    label: [u8; LABEL_LEN],
    job: Job,
    arrived: Instant,
}

impl Pending {
    /// The request as far as its answer echoes it.
    fn echoed(&self) -> Request {
        Request { tag: self.tag, opcode: self.opcode, label: self.label, ..Request::default() }
    }
}

/// A request answered: by the executor thread, inline, or refused.
type Finished = Executed<Pending>;

/// What a dispatcher answered (reported at shutdown; read from its VMs' metrics).
///
/// ```
/// use vgpu_mediator::daemon::{ServeOptions, Stop, serve};
/// use vgpu_mediator::dispatcher::OnStop;
/// # let dir = tempfile::tempdir()?;
/// # let config = vgpu_config::Config::parse(&format!(
/// #     "[regions]\ndir = {:?}\nsize = \"4M\"\narena_size = \"1M\"\n[pools.A]\n[[vm]]\nid = 1\npool = \"A\"\npriority = 0\n",
/// #     dir.path()
/// # ))?;
/// # let vm = &config.vms[0];
/// # vgpu_ring::Region::create(&vm.region, config.region_size, config.geometry, &[vm.identity().slot()], false)?;
/// let stop = Stop::new()?;
/// stop.request(); // stop at once, once the regions are attached
/// let stats = serve(&config, &stop, ServeOptions { log_requests: false, on_stop: OnStop::Keep })?;
/// let pool_a = &stats[&vgpu_ring::PoolId::new(b'A').unwrap()];
/// assert_eq!((pool_a.succeeded, pool_a.failed), (0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct DispatcherStats {
    /// Requests answered with status 1.
    pub succeeded: u64,
    /// Requests answered with status 2.
    pub failed: u64,
}

/// What a dispatcher does with the requests still queued when it stops.
///
/// ```
/// use vgpu_mediator::daemon::ServeOptions;
/// use vgpu_mediator::dispatcher::OnStop;
/// // A restart (the default): queued requests wait in the rings for the next mediator.
/// let restart = ServeOptions { log_requests: true, on_stop: OnStop::Keep };
/// // The host stops for good: guests learn at once (error 8, shutting down).
/// let for_good = ServeOptions { log_requests: true, on_stop: OnStop::Drain };
/// assert_ne!(restart.on_stop, for_good.on_stop);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// Leave them in the rings, unanswered, for the next mediator (a restart).
    Keep,
    /// Answer them with [`ErrorCode::ShuttingDown`] (the host stops for good).
    Drain,
}

/// A VM's entry in the compact array a pass reads: a watch on an attached VM's request
/// ring, and where the last pass left it.
struct Watch {
    ring: Option<RequestWatch>,
    /// The position up to which the ring was drained: the next request's.
    next: u32,
    /// The last reset request carried out (so an idle pass touches no port state).
    reset_done: u32,
    /// Asleep: not scanned by passes; its `need_wakeup` flag is set and its doorbell
    /// wakes it.
    asleep: bool,
    /// Cold: a VM without a doorbell that published nothing for a while; each pass
    /// looks at a slice of the cold VMs rather than at all of them.
    cold: bool,
    /// The VM published work since the last quiet check.
    recent: bool,
}

impl Watch {
    fn of(port: &VmPort) -> Self {
        Self {
            ring: port.watch(),
            next: port.link.as_ref().map_or(0, |l| l.requests.position()),
            reset_done: port.link.as_ref().map_or(0, |l| l.reset_done),
            asleep: false,
            cold: false,
            recent: true,
        }
    }
}

/// The doorbells of a dispatcher's VMs and what it knows of their sleep.
struct Bells {
    waiter: BellWaiter,
    /// When a busy dispatcher next looks for rings of sleeping VMs.
    next_look: Instant,
    /// How many VMs are asleep.
    sleeping: usize,
    /// VMs that rang in the last wait, or are being put to sleep (reused: no allocation).
    rung: Vec<usize>,
}

/// How often a busy dispatcher looks for rings of its sleeping VMs: their first request
/// waits at most this long while the pool serves others (an idle pool sleeps in
/// `epoll_wait` and wakes at once).
const LOOK_FOR_RINGS: Duration = Duration::from_micros(50);
/// How many cold VMs a pass looks at (the pass after a nap looks at all): a cold VM's
/// first request waits at most `cold VMs / COLD_SLICE` passes more than a warm VM's,
/// and 255 idle VMs cost a pass 16 loads instead of 255.
const COLD_SLICE: usize = 16;
/// The token of the mediator's stop bell in a dispatcher's waiter.
const STOP_TOKEN: u64 = u64::MAX;

/// A pool's dispatcher.
pub(crate) struct Dispatcher {
    watches: Vec<Watch>,
    /// Indices of the watches a pass scans: attached VMs neither asleep nor cold.
    scan: Vec<usize>,
    /// Indices of the cold watches (attached, not asleep); a pass looks at
    /// [`COLD_SLICE`] of them in turn, from `cold_next`.
    cold: Vec<usize>,
    cold_next: usize,
    /// The next pass looks at every cold VM (set by a nap: a VM's first request after
    /// an idle period waits for no slice).
    all_cold: bool,
    /// How long a VM may publish nothing, while its pool serves others, before it
    /// leaves the scan of every pass (a doorbell VM to sleep, a polled one to the cold
    /// VMs).
    quiet_after: Duration,
    next_quiet_check: Instant,
    /// Present when any VM is configured with a doorbell (it may have none yet).
    bells: Option<Bells>,
    /// Doorbells handed over after the start (see `daemon::watch_holder`): for a VM
    /// that had none (the holder was late) or in place of its old one (a new holder).
    new_bells: Option<Receiver<Bell>>,
    vms: Vec<VmPort>,
    queue: PoolQueue<Pending>,
    inline: CpuExecutor,
    executor: ExecutorThread<Pending>,
    /// The VM whose job the executor runs, if any.
    busy: Option<usize>,
    /// Every compute job goes to the executor (a GPU pool), not only long ones.
    offload_compute: bool,
    /// Set when a response may have been parked; cleared by a flush that emptied all.
    maybe_parked: bool,
    /// The VMs with new requests in this pass (reused).
    ready: Vec<usize>,
    /// Short jobs may skip the queue (not in fair pools; see `accept`).
    fast_path: bool,
    /// Stands for the time of a fast-path NOOP in a pass that read no clock (its wait
    /// and execution are zero whatever the instant).
    timeless: Instant,
    /// VMs with answers staged in this pass, published at its end (one publication
    /// and one release per VM per pass, however many answers).
    unflushed: Vec<usize>,
    /// Set when a VM asked for a reset that could not be carried out yet.
    resets_pending: bool,
    quota: u32,
    idle_spin: Duration,
    max_idle_sleep: Duration,
    session: Session,
    heartbeat: Duration,
    /// The heartbeat's period while every VM sleeps on its doorbell
    /// ([`vgpu_config::sleeping_heartbeat`]).
    sleeping_heartbeat: Duration,
    /// When the regions' heartbeat was last stored (the next is due a `heartbeat`
    /// later, or a `sleeping_heartbeat` later while every VM sleeps).
    last_beat: Instant,
    quarantine_retry: Duration,
    next_retry: Instant,
    next_reset_scan: Instant,
    /// [`vgpu_ring::fault_count`] as last seen.
    faults_seen: u64,
    pool: PoolId,
    log_requests: bool,
    metrics: Arc<PoolMetrics>,
    /// Test hook (`VGPU_TEST_HOOK_HANG=1` in the environment): a request labelled
    /// `TEST_HANG` stops this dispatcher's passes until shutdown, as a hung dispatcher
    /// would (the watchdog test). Off in production: a guest cannot enable it.
    hang_hook: bool,
}

/// The label that hangs a dispatcher when the test hook is on.
const HANG_LABEL: &str = "TEST_HANG";

impl Dispatcher {
    /// A dispatcher for `pool` serving `vms` (attached or quarantined), with `executor`
    /// for long jobs.
    ///
    /// # Errors
    ///
    /// If the executor thread cannot be started.
    #[allow(clippy::too_many_arguments, reason = "each is a separate part of the pool")]
    pub(crate) fn new(
        pool: &PoolConfig,
        vms: Vec<VmPort>,
        executor: Box<dyn Executor>,
        settings: &MediatorConfig,
        session: Session,
        log_requests: bool,
        stop_bell: &Bell,
        new_bells: Option<Receiver<Bell>>,
        metrics: Arc<PoolMetrics>,
    ) -> std::io::Result<Self> {
        let now = Instant::now();
        let vms_len = vms.len();
        // An executor that takes every compute job (a GPU pool) polls for the next one as
        // long as the dispatcher spins; one that takes only long jobs sleeps between them.
        let offload_compute = executor.offloads_compute();
        let executor_spin = if offload_compute { settings.idle_spin } else { Duration::ZERO };
        // A waiter as soon as a VM is configured with a doorbell, even if it has none
        // yet: a late one is watched from the moment it arrives.
        let bells = if vms.iter().any(|port| port.vm.doorbell.is_some()) {
            let mut waiter = BellWaiter::new()?;
            waiter.watch(stop_bell, STOP_TOKEN)?;
            for (index, port) in vms.iter().enumerate() {
                if let Some(bell) = &port.bell {
                    waiter.watch(bell, index as u64)?;
                }
            }
            Some(Bells { waiter, next_look: now, sleeping: 0, rung: Vec::with_capacity(vms.len()) })
        } else {
            None
        };
        let mut dispatcher = Self {
            watches: vms.iter().map(Watch::of).collect(),
            scan: Vec::with_capacity(vms.len()),
            cold: Vec::with_capacity(vms.len()),
            cold_next: 0,
            all_cold: false,
            quiet_after: settings.idle_spin.max(Duration::from_micros(100)),
            next_quiet_check: now,
            bells,
            new_bells,
            queue: PoolQueue::with_weights(pool.policy, vms.iter().map(|p| p.vm.weight)),
            offload_compute,
            executor: ExecutorThread::spawn(pool.name, executor, executor_spin)?,
            vms,
            inline: CpuExecutor::default(),
            busy: None,
            maybe_parked: false,
            unflushed: Vec::with_capacity(vms_len),
            ready: Vec::with_capacity(vms_len),
            fast_path: pool.policy != vgpu_config::Policy::Fair,
            timeless: now,
            resets_pending: false,
            quota: settings.max_queued_per_vm,
            idle_spin: settings.idle_spin,
            max_idle_sleep: settings.max_idle_sleep,
            session,
            heartbeat: settings.heartbeat_interval,
            sleeping_heartbeat: vgpu_config::sleeping_heartbeat(settings.heartbeat_interval),
            last_beat: now,
            quarantine_retry: settings.quarantine_retry,
            next_retry: now + settings.quarantine_retry,
            next_reset_scan: now,
            faults_seen: vgpu_ring::fault_count(),
            pool: pool.name,
            log_requests,
            metrics,
            hang_hook: std::env::var_os("VGPU_TEST_HOOK_HANG").is_some_and(|v| v == "1"),
        };
        for index in 0..dispatcher.vms.len() {
            dispatcher.attached(index);
        }
        dispatcher.rebuild_scan();
        Ok(dispatcher)
    }

    /// Serve until `shutdown` is set, then finish the job in hand and, as `on_stop`
    /// says, leave the queued requests in the rings or answer them; returns the
    /// counters.
    pub(crate) fn run(mut self, shutdown: &AtomicBool, on_stop: OnStop) -> DispatcherStats {
        // When the last work was done; `None`: in a pass that did not read the clock
        // (the next idle check stands in for it).
        let mut last_work = Some(Instant::now());
        let mut passes: u64 = 0;
        let mut empty_passes: u32 = 0;
        while !shutdown.load(Ordering::Relaxed) {
            // The clock is read at most once per pass (lazily) and once after each
            // executed job: a clock read costs about 60 ns in a VM.
            let mut now = None;
            if vgpu_ring::fault_count() != self.faults_seen {
                self.quarantine_faulted();
            }
            let work = self.drain(&mut now)
                + self.poll_executor()
                + self.dispatch(&mut now)
                + self.flush_parked();
            self.flush_responses();
            if self.resets_pending {
                self.carry_out_resets(&mut now);
            }
            passes += 1;
            self.metrics.passes.set(passes);
            // Housekeeping (heartbeat, doorbells, retries) needs the clock: a pass that
            // read it anyway, or one pass in 64 (a pool busy with fast-path NOOPs reads
            // it in no pass; one read per 64 passes costs about a nanosecond a pass).
            if now.is_some() || passes.is_multiple_of(64) {
                self.housekeeping(*now.get_or_insert_with(Instant::now));
            }
            if work > 0 {
                last_work = now;
                empty_passes = 0;
                continue;
            }
            // Spinning passes are a few loads each; the clock (about 60 ns) is only
            // consulted every 64 of them.
            empty_passes = empty_passes.wrapping_add(1);
            if !empty_passes.is_multiple_of(64) {
                continue;
            }
            let now = Instant::now();
            self.housekeeping(now);
            let idle = now - *last_work.get_or_insert(now);
            if idle > self.idle_spin {
                // Back off in proportion to how long the pool has been idle: a request
                // after a short gap waits at most 1/64 of that gap, a long-idle pool
                // wakes only every `max_idle_sleep` (each wake-up costs tens of µs of
                // CPU in a VM).
                self.nap((idle / 64).clamp(Duration::from_micros(1), self.max_idle_sleep), now);
            }
        }
        self.stop(on_stop)
    }

    /// The heartbeat of the attached VMs' regions, a look at their reset words, and
    /// retries of quarantined VMs.
    fn housekeeping(&mut self, now: Instant) {
        if let Some(bells) = &mut self.bells
            && bells.sleeping > 0
            && now >= bells.next_look
        {
            bells.next_look = now + LOOK_FOR_RINGS;
            self.wait_for_rings(Duration::ZERO);
        }
        if now >= self.next_quiet_check {
            self.next_quiet_check = now + self.quiet_after;
            self.doze(false);
        }
        if now >= self.next_reset_scan {
            // Resets are rare and need no haste: one scan a millisecond keeps the
            // per-pass cost at one load per VM.
            self.next_reset_scan = now + Duration::from_millis(1);
            self.resets_pending |= self
                .watches
                .iter()
                .any(|w| w.ring.as_ref().is_some_and(|r| r.reset_request() != w.reset_done));
        }
        if let Some(new_bells) = &self.new_bells
            && let Ok(bell) = new_bells.try_recv()
        {
            self.add_bell(bell);
        }
        if now >= self.last_beat + self.heartbeat {
            self.last_beat = now;
            let beat = crate::daemon::monotonic_ns();
            for port in &self.vms {
                if let Some(link) = &port.link {
                    let _ = link.slot.region().store_heartbeat(beat);
                }
            }
        }
        if now >= self.next_retry {
            self.next_retry = now + self.quarantine_retry;
            for index in 0..self.vms.len() {
                if self.vms[index].is_quarantined() && self.busy != Some(index) {
                    self.vms[index].retry(&self.session);
                    self.attached(index);
                    self.renew_watch(index);
                }
            }
        }
    }

    /// A fresh watch of VM `index` after its link changed (awake: it is scanned).
    fn renew_watch(&mut self, index: usize) {
        if self.watches[index].asleep
            && let Some(bells) = &mut self.bells
        {
            bells.sleeping -= 1;
        }
        self.watches[index] = Watch::of(&self.vms[index]);
        self.rebuild_scan();
    }

    fn rebuild_scan(&mut self) {
        self.scan.clear();
        self.cold.clear();
        for (index, watch) in self.watches.iter().enumerate() {
            if watch.ring.is_some() && !watch.asleep {
                if watch.cold { &mut self.cold } else { &mut self.scan }.push(index);
            }
        }
    }

    /// The pool is idle: back off for `backoff` as a VM without a doorbell needs, or,
    /// when every VM is asleep and nothing is in hand, sleep until a doorbell rings or
    /// the sleeping heartbeat (or a quarantine retry) is due. A doorbell ends either
    /// sleep; the first pass after it beats if an awake heartbeat is due.
    fn nap(&mut self, backoff: Duration, now: Instant) {
        self.all_cold = true;
        if self.bells.is_none() {
            std::thread::sleep(backoff);
            return;
        }
        self.doze(true);
        let nothing_in_hand = self.busy.is_none()
            && self.queue.is_empty()
            && !self.maybe_parked
            && !self.resets_pending;
        let timeout = if self.scan.is_empty() && self.cold.is_empty() && nothing_in_hand {
            // Until the sleeping heartbeat is due, or a quarantine retry if a VM needs
            // one; the stop bell ends it at shutdown.
            let beat = self.last_beat + self.sleeping_heartbeat;
            let retry = self.vms.iter().any(VmPort::is_quarantined).then_some(self.next_retry);
            retry.map_or(beat, |r| r.min(beat)).saturating_duration_since(now)
        } else {
            backoff
        };
        self.wait_for_rings(timeout);
    }

    /// Take the VMs that published nothing since the last check out of the scan of
    /// every pass: a doorbell VM goes to sleep (also every awake one: `all`, the pool
    /// is idle), a polled one goes cold. The wake-up flag protocol: set each sleeper's
    /// flag, one SeqCst fence, then a last look at each ring; a VM with a request there
    /// stays awake (and its flag is cleared).
    fn doze(&mut self, all: bool) {
        let mut chilled = false;
        let mut sleepers = self.bells.as_mut().map(|bells| {
            bells.rung.clear();
            &mut bells.rung
        });
        for (index, watch) in self.watches.iter_mut().enumerate() {
            if !watch.asleep
                && (all || !watch.recent)
                && let Some(link) = &self.vms[index].link
            {
                if let Some(sleepers) = sleepers.as_mut()
                    && self.vms[index].bell.is_some()
                {
                    vgpu_ring::request_wakeup(&link.slot);
                    sleepers.push(index);
                } else if !watch.recent && !watch.cold {
                    watch.cold = true;
                    chilled = true;
                }
            }
            watch.recent = false;
        }
        let Some(bells) = self.bells.as_mut().filter(|bells| !bells.rung.is_empty()) else {
            if chilled {
                self.rebuild_scan();
            }
            return;
        };
        vgpu_ring::fence_before_rescan();
        for &index in &bells.rung {
            let watch = &mut self.watches[index];
            if watch.ring.as_ref().is_some_and(|ring| !ring.published(watch.next)) {
                watch.asleep = true;
                watch.cold = false;
                bells.sleeping += 1;
            } else if let Some(link) = &self.vms[index].link {
                // Published before it could see the flag: stays awake.
                vgpu_ring::cancel_wakeup(&link.slot);
            }
        }
        self.rebuild_scan();
    }

    /// Wait up to `timeout` for doorbells; wake the VMs that rang.
    fn wait_for_rings(&mut self, timeout: Duration) {
        let Some(bells) = &mut self.bells else { return };
        bells.rung.clear();
        match bells.waiter.wait(Some(timeout)) {
            Ok(tokens) => {
                bells.rung.extend(tokens.iter().filter(|&&t| t != STOP_TOKEN).map(|&t| t as usize))
            }
            Err(e) => {
                // Never expected (the epoll fd is ours); polling goes on.
                tracing::error!("Pool {}: waiting for doorbells failed: {e}", self.pool);
                std::thread::sleep(timeout);
                return;
            }
        }
        let mut woke = false;
        for i in 0..bells.rung.len() {
            let index = bells.rung[i];
            if let Some(bell) = &self.vms[index].bell {
                let _ = bell.drain();
            }
            woke |= wake(&mut self.watches[index], bells, &self.vms[index]);
        }
        if woke {
            self.rebuild_scan();
        }
    }

    /// Quarantine every VM whose region faulted (shrank under its mapping).
    fn quarantine_faulted(&mut self) {
        self.faults_seen = vgpu_ring::fault_count();
        for index in 0..self.vms.len() {
            let faulted =
                self.vms[index].link.as_ref().is_some_and(|link| link.slot.region().is_faulted());
            if faulted {
                self.quarantine(index, "the region file shrank under its mapping (SIGBUS caught)");
            }
        }
    }

    /// A VM's doorbell handed over after the start: watch it (in place of the VM's old
    /// one, if a new holder replaced it) and publish it in the VM's slot; the VM is
    /// slept on when idle from now on, as if it had it from the start. Taken at the
    /// dispatcher's next housekeeping: while every VM sleeps, at its next sleeping heartbeat.
    fn add_bell(&mut self, bell: Bell) {
        let Some(index) = self.vms.iter().position(|p| p.vm.id == bell.vm_id) else { return };
        let Some(bells) = &mut self.bells else { return };
        if let Some(old) = &self.vms[index].bell {
            // Watched since it was handed over; a failure leaves only a stale watch.
            let _ = bells.waiter.unwatch(old);
        }
        if let Err(e) = bells.waiter.watch(&bell, index as u64) {
            tracing::error!(
                "Pool {}: vm{}: cannot watch its doorbell ({e}); it is polled",
                self.pool,
                bell.vm_id
            );
            // Polled from now: no doorbell for the guest to ring, and awake.
            self.vms[index].bell = None;
            if let Some(link) = &self.vms[index].link {
                vgpu_ring::publish_doorbell(&link.slot, None);
            }
            if wake(&mut self.watches[index], bells, &self.vms[index]) {
                self.rebuild_scan();
            }
            return;
        }
        if let Some(link) = &self.vms[index].link {
            vgpu_ring::publish_doorbell(&link.slot, Some(bell.value));
        }
        let how = if self.vms[index].bell.is_some() {
            "replaced by the new holder's"
        } else {
            "received from the holder"
        };
        tracing::info!("Pool {}: vm{} doorbell {how}: slept on when idle", self.pool, bell.vm_id);
        self.vms[index].bell = Some(bell);
    }

    /// Tell the executor that VM `index`'s slot was attached, if it was.
    fn attached(&self, index: usize) {
        if let Some(link) = &self.vms[index].link {
            self.executor.attach(link.slot.clone());
        }
    }

    /// Quarantine VM `index` for `reason`: its slot is let go by the executor (after any
    /// job of it in hand) and its queued work dropped.
    fn quarantine(&mut self, index: usize, reason: &str) {
        if let Some(link) = &self.vms[index].link {
            self.executor.detach(link.slot.clone());
        }
        self.vms[index].quarantine(reason);
        self.forget(index);
    }

    /// Drop what the dispatcher holds of VM `index` after its link changed.
    fn forget(&mut self, index: usize) {
        self.queue.retain(|p| p.vm != index);
        for priority in vgpu_ring::Priority::ALL {
            self.metrics.set_queue_depth(priority, self.queue.len_at(priority));
        }
        self.renew_watch(index);
    }

    /// Drain every VM's request ring whose next request is published (its word, read
    /// through a compact array of watches), the warm VMs' in every pass and a slice of
    /// the cold VMs'; returns the number of requests taken. An idle warm VM costs one
    /// load of the line the dispatcher reads next anyway.
    fn drain(&mut self, now: &mut Option<Instant>) -> usize {
        // First the VMs with new requests, then their requests: a pass whose new
        // requests all share one priority may take the fast path (see `accept`).
        self.ready.clear();
        for &index in &self.scan {
            let Watch { ring: Some(ring), next, .. } = &self.watches[index] else { continue };
            if ring.published(*next) {
                self.ready.push(index);
            }
        }
        if !self.cold.is_empty() {
            self.look_at_cold();
        }
        let level = |index: usize| self.vms[index].identity.priority;
        let one_level = self.ready.iter().all(|&index| level(index) == level(self.ready[0]));
        let mut taken = 0;
        for k in 0..self.ready.len() {
            let index = self.ready[k];
            self.watches[index].recent = true;
            loop {
                let port = &mut self.vms[index];
                let parked = port.parked();
                let Some(link) = &mut port.link else { break };
                // A guest that does not read its responses gets no more requests
                // taken: its own request ring fills up, nobody else waits.
                if parked >= link.requests.capacity() as usize {
                    break;
                }
                let position = link.requests.position();
                let Some(req) = link.requests.take() else { break };
                taken += 1;
                self.accept(index, position, &req, one_level, now);
            }
            let port = &self.vms[index];
            self.maybe_parked |= port.parked() > 0;
            if let Some(link) = &port.link {
                // The next pass looks at the next request's word.
                self.watches[index].next = link.requests.position();
            }
        }
        taken
    }

    /// Look at the next [`COLD_SLICE`] cold VMs (every one after a nap); those that
    /// published are warm again and join this pass's ready VMs.
    fn look_at_cold(&mut self) {
        let looks = if self.all_cold { self.cold.len() } else { COLD_SLICE.min(self.cold.len()) };
        self.all_cold = false;
        let mut warmed = false;
        for _ in 0..looks {
            if self.cold_next >= self.cold.len() {
                self.cold_next = 0;
            }
            let index = self.cold[self.cold_next];
            self.cold_next += 1;
            let watch = &mut self.watches[index];
            if watch.ring.as_ref().is_some_and(|ring| ring.published(watch.next)) {
                watch.cold = false;
                self.ready.push(index);
                warmed = true;
            }
        }
        if warmed {
            // Within a pass the VMs go in index order, warm or cold.
            self.ready.sort_unstable();
            self.rebuild_scan();
        }
    }

    /// Validate a request just taken from VM `index`'s ring at `position` and queue
    /// it, or answer it with an error at once.
    ///
    /// The fast path: when every VM that published in this pass has the same priority
    /// (`one_level`), the queue is empty, the pool is free and the job is short, the
    /// job runs at once, without a queue insert and pop. The order is the queue's: the
    /// pass takes requests of one priority in arrival order (each VM's in ring order,
    /// VM after VM), which is the order the queue's FIFO would give them, and no other
    /// request is waiting; a long job makes the pool busy, and the requests after it
    /// queue as before. Fair pools always queue (their accounting follows each turn).
    fn accept(
        &mut self,
        index: usize,
        position: u32,
        req: &Request,
        one_level: bool,
        clock: &mut Option<Instant>,
    ) {
        let pool = self.pool;
        let port = &mut self.vms[index];
        let arena_size = self.session.geometry.arena_size;
        let verdict = validate(req, &port.identity, arena_size).and_then(|job| {
            if port.in_flight >= self.quota { Err(ErrorCode::QuotaExceeded) } else { Ok(job) }
        });
        match verdict {
            Ok(job) => {
                port.set_in_flight(port.in_flight + 1);
                let priority = port.identity.priority;
                let fast = one_level
                    && self.fast_path
                    && self.busy.is_none()
                    && self.queue.is_empty()
                    && !on_executor(&job, self.offload_compute);
                // A NOOP on the fast path neither waits nor takes time: it needs no
                // clock read (about 60 ns in a VM), and a pass of them reads none.
                let now = match *clock {
                    None if fast && job.op == Opcode::Noop => self.timeless,
                    _ => *clock.get_or_insert_with(Instant::now),
                };
                let pending = Pending {
                    vm: index,
                    generation: port.generation,
                    position,
                    tag: req.tag,
                    opcode: req.opcode,
                    label: req.label,
                    job,
                    arrived: now,
                };
                if self.log_requests {
                    tracing::info!(
                        "[QUEUE] Pool {pool}: Added priority={priority}, vm={}, count={}",
                        port.vm.id,
                        self.queue.len() + 1
                    );
                }
                if fast {
                    self.start(pending, priority, clock);
                } else {
                    self.queue.push(index, priority, now, pending);
                    self.metrics.set_queue_depth(priority, self.queue.len_at(priority));
                }
            }
            Err(code) => {
                let now = *clock.get_or_insert_with(Instant::now);
                if code == ErrorCode::IdentityMismatch
                    && let Some(n) = port.admit_log(Problem::IdentityClaim, now)
                {
                    tracing::warn!(
                        "Pool {pool}: vm{} claimed pool {:?} priority {} vm {}; configured pool {} priority {}: refused{}",
                        port.vm.id,
                        char::from(req.pool),
                        req.priority,
                        req.vm_id,
                        port.vm.pool,
                        port.vm.priority,
                        suppressed_note(n)
                    );
                }
                let response = port.answer(req, Err(code));
                self.respond(index, position, response);
            }
        }
    }

    /// Start jobs while the pool is free: short ones inline, a long one on the executor.
    fn dispatch(&mut self, clock: &mut Option<Instant>) -> usize {
        let mut started = 0;
        while self.busy.is_none() && !self.queue.is_empty() {
            // One clock read serves the aging policy and the start of execution.
            let now = *clock.get_or_insert_with(Instant::now);
            let Some(queued) = self.queue.pop(now) else { break };
            let pending = queued.item;
            started += 1;
            self.metrics.set_queue_depth(queued.priority, self.queue.len_at(queued.priority));
            self.start(pending, queued.priority, clock);
        }
        started
    }

    /// Start `pending` (of `priority`) now: inline if it is short, on the executor if
    /// it is long (or a compute job of a GPU pool).
    fn start(&mut self, pending: Pending, priority: Priority, clock: &mut Option<Instant>) {
        // An inline NOOP is not timed: without a clock read in this pass it starts
        // when it arrived (zero wait; only the fast path brings one here unread).
        let now = match *clock {
            None if pending.job.op == Opcode::Noop
                && !on_executor(&pending.job, self.offload_compute) =>
            {
                pending.arrived
            }
            _ => *clock.get_or_insert_with(Instant::now),
        };
        if self.hang_hook && decode_label(&pending.label) == HANG_LABEL {
            hang();
        }
        let port = &self.vms[pending.vm];
        let Some(link) = port.link.as_ref().filter(|_| port.generation == pending.generation)
        else {
            // Work of a VM reset or quarantined meanwhile: dropped, never run.
            self.queue.charge(pending.vm, priority, Duration::ZERO);
            return;
        };
        if self.log_requests {
            tracing::info!(
                "[PROCESS] Pool {}: Processing vm={}, priority={}, command={}",
                self.pool,
                port.vm.id,
                priority,
                decode_label(&pending.label)
            );
        }
        if on_executor(&pending.job, self.offload_compute) {
            let vm = pending.vm;
            let job = pending.job;
            match self.executor.submit(pending, job, link.slot.clone()) {
                Ok(()) => self.busy = Some(vm),
                Err(pending) => {
                    let result = Err(ErrorCode::ExecutorFailed);
                    self.finish(Finished {
                        item: pending,
                        result,
                        started: now,
                        exec: Duration::ZERO,
                    });
                }
            }
        } else {
            let result = self.inline.execute(&pending.job, &link.slot);
            // A NOOP takes no measurable time; anything else is timed, and its end
            // is the next job's start.
            let exec = if pending.job.op == Opcode::Noop {
                Duration::ZERO
            } else {
                let end = Instant::now();
                *clock = Some(end);
                end - now
            };
            self.finish(Finished { item: pending, result, started: now, exec });
        }
    }

    fn poll_executor(&mut self) -> usize {
        if self.busy.is_none() {
            return 0;
        }
        match self.executor.try_done() {
            Ok(finished) => {
                self.busy = None;
                self.finish(finished);
                1
            }
            Err(TryRecvError::Empty) => 0,
            Err(TryRecvError::Disconnected) => {
                tracing::error!("Pool {}: executor thread died", self.pool);
                self.busy = None;
                0
            }
        }
    }

    fn finish(&mut self, f: Finished) {
        let p = f.item;
        let port = &mut self.vms[p.vm];
        // Whatever became of it, the VM had its turn (fair pools account the time).
        self.queue.charge(p.vm, port.identity.priority, f.exec);
        if port.generation != p.generation {
            // The VM was reset or quarantined meanwhile: nobody waits for this answer.
            return;
        }
        port.set_in_flight(port.in_flight.saturating_sub(1));
        let mut response = port.answer(&p.echoed(), f.result);
        // A fast-path job starts when it arrived: no clock arithmetic for a zero wait.
        let queued = if f.started > p.arrived { f.started - p.arrived } else { Duration::ZERO };
        self.metrics.executed(p.opcode, queued, f.exec);
        response.queued_ns = queued.as_nanos() as u64;
        response.exec_ns = f.exec.as_nanos() as u64;
        self.respond(p.vm, p.position, response);
    }

    /// Log `response`, publish it to VM `index` and count it in the VM's metrics.
    fn respond(&mut self, index: usize, position: u32, response: vgpu_ring::Response) {
        let port = &mut self.vms[index];
        if self.log_requests {
            tracing::info!(
                "[RESPONSE] Sent to vm{}: {}",
                port.vm.id,
                vgpu_ring::response_text(&response)
            );
        }
        if port.publish(position, response) {
            self.unflushed.push(index);
        }
        port.metrics.answered(&response);
        self.maybe_parked |= port.parked() > 0;
    }

    /// Publish the answers staged in this pass, one publication per VM.
    fn flush_responses(&mut self) {
        for &index in &self.unflushed {
            self.vms[index].flush();
        }
        self.unflushed.clear();
    }

    /// Retry parked responses; returns how many went out.
    fn flush_parked(&mut self) -> usize {
        if !self.maybe_parked {
            return 0;
        }
        let sent = self.vms.iter_mut().map(VmPort::flush_parked).sum();
        self.maybe_parked = self.vms.iter().any(|port| port.parked() > 0);
        sent
    }

    /// Carry out the reset requests of VMs whose job is not on the executor.
    fn carry_out_resets(&mut self, clock: &mut Option<Instant>) {
        self.resets_pending = false;
        for index in 0..self.vms.len() {
            let Some(link) = &self.vms[index].link else { continue };
            let Some(ticket) = vgpu_ring::take_reset_request(&link.slot) else { continue };
            if self.busy == Some(index) {
                // Its job is in hand: reset once the answer is back.
                self.resets_pending = true;
                continue;
            }
            let now = *clock.get_or_insert_with(Instant::now);
            match self.vms[index].reset(ticket, now) {
                Ok(()) => self.forget(index),
                Err(e) => self.quarantine(index, &format!("ring reset failed: {e}")),
            }
        }
    }

    fn stop(mut self, on_stop: OnStop) -> DispatcherStats {
        if self.busy.is_some()
            && let Some(finished) = self.executor.wait_done()
        {
            self.busy = None;
            self.finish(finished);
        }
        if on_stop == OnStop::Drain {
            let waiting: Vec<Pending> = self.queue.drain().into_iter().map(|q| q.item).collect();
            let now = Instant::now();
            for pending in waiting {
                self.finish(Finished {
                    item: pending,
                    started: now,
                    result: Err(ErrorCode::ShuttingDown),
                    exec: Duration::ZERO,
                });
            }
        }
        self.flush_parked();
        self.flush_responses();
        let answered = |failed| self.metrics.vms.iter().map(|vm| vm.answered_with(failed)).sum();
        DispatcherStats { succeeded: answered(false), failed: answered(true) }
    }
}

/// Wake VM `port` if it sleeps on its doorbell: scanned again (after the caller rebuilds
/// the scan, which it must when this returns true), its wake-up flag cleared.
fn wake(watch: &mut Watch, bells: &mut Bells, port: &VmPort) -> bool {
    if !watch.asleep {
        return false;
    }
    watch.asleep = false;
    watch.recent = true;
    bells.sleeping -= 1;
    if let Some(link) = &port.link {
        vgpu_ring::cancel_wakeup(&link.slot);
    }
    true
}

/// Whether `job` goes to the executor thread rather than running inline: long jobs,
/// and every compute job of a pool whose executor takes them all (a GPU pool).
fn on_executor(job: &Job, offload_compute: bool) -> bool {
    job.is_long() || (offload_compute && job.is_compute())
}

/// The test hook's hang: the dispatcher thread stops making passes (the process stops
/// at its next SIGKILL; the test ends it so).
fn hang() -> ! {
    tracing::warn!("test hook: dispatcher hangs ({HANG_LABEL})");
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vgpu_ring::{Region, Slot};

    /// Records which slots its executor was told to attach and detach; a detach waits
    /// for the gate (an executor still busy with the slot).
    struct Recording(Arc<Mutex<Vec<(&'static str, u32)>>>, std::sync::mpsc::Receiver<()>);

    impl Executor for Recording {
        fn execute(&mut self, _job: &Job, _slot: &Slot) -> Result<u32, ErrorCode> {
            Ok(0)
        }

        fn attach(&mut self, slot: &Slot) {
            self.0.lock().unwrap().push(("attach", slot.index()));
        }

        fn detach(&mut self, slot: &Slot) {
            let _ = self.1.recv();
            self.0.lock().unwrap().push(("detach", slot.index()));
        }
    }

    /// A dispatcher of pool A over fresh regions in `dir`, one VM of each priority in
    /// `priorities` (ids from 1), with `executor`.
    fn dispatcher(
        dir: &std::path::Path,
        priorities: &[u8],
        executor: Box<dyn Executor>,
    ) -> Dispatcher {
        let vms: String = priorities
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[[vm]]\nid = {}\npool = \"A\"\npriority = {p}\n", i + 1))
            .collect();
        let config = vgpu_config::Config::parse(&format!(
            "[regions]\ndir = {dir:?}\nsize = \"4M\"\narena_size = \"1M\"\n[pools.A]\n{vms}"
        ))
        .unwrap();
        let session = Session {
            epoch: 7,
            heartbeat_interval_ms: 1000,
            region_size: config.region_size,
            geometry: config.geometry,
        };
        let ports: Vec<VmPort> = config
            .vms
            .iter()
            .map(|vm| {
                let slot = vm.identity().slot();
                Region::create(&vm.region, config.region_size, config.geometry, &[slot], false)
                    .unwrap();
                VmPort::attach(vm.clone(), &session, None).unwrap()
            })
            .collect();
        let pool = &config.pools[&ports[0].vm.pool];
        let metrics = Arc::new(PoolMetrics::new(
            pool.name,
            ("cpu", "cpu".to_owned()),
            ports.iter().map(|p| Arc::clone(&p.metrics)).collect(),
        ));
        Dispatcher::new(
            pool,
            ports,
            executor,
            &config.mediator,
            session,
            false,
            &Bell::local().unwrap(),
            None,
            metrics,
        )
        .unwrap()
    }

    /// A pass whose new requests all share one priority runs them at once (the queue's
    /// FIFO would give them the same order); one with several priorities queues them,
    /// so the queue orders them by priority as before.
    #[test]
    fn only_a_pass_of_one_priority_takes_the_fast_path() {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, gate) = std::sync::mpsc::channel();
        let executor = Box::new(Recording(Arc::new(Mutex::new(Vec::new())), gate));
        // vm1 and vm2 medium, vm3 high.
        let mut dispatcher = dispatcher(dir.path(), &[1, 1, 2], executor);
        let mut guests: Vec<_> = (0..3)
            .map(|i| dispatcher.vms[i].link.as_ref().unwrap().slot.guest_endpoints().unwrap())
            .collect();
        let noop = |vm: usize, tag: u32| Request {
            tag,
            opcode: Opcode::Noop as u16,
            pool: b'A',
            priority: [1, 1, 2][vm],
            vm_id: vm as u32 + 1,
            ..Request::default()
        };
        let mut pass = |dispatcher: &mut Dispatcher, vms: &[usize]| {
            for &vm in vms {
                guests[vm].requests.push(noop(vm, 7)).unwrap();
            }
            assert_eq!(dispatcher.drain(&mut None), vms.len());
            let queued = dispatcher.queue.len();
            dispatcher.dispatch(&mut None);
            dispatcher.flush_responses();
            for &vm in vms {
                assert_eq!(guests[vm].responses.pop().map(|r| r.tag), Some(7), "vm{}", vm + 1);
            }
            queued
        };
        assert_eq!(pass(&mut dispatcher, &[0, 1]), 0, "one priority: run at once");
        assert_eq!(pass(&mut dispatcher, &[0, 2]), 2, "two priorities: queued");
        assert_eq!(pass(&mut dispatcher, &[1]), 0, "one VM alone: run at once");
    }

    /// A polled VM that published nothing since the last quiet check goes cold: each
    /// pass looks at a slice of the cold VMs in turn, so a cold VM's request is taken
    /// within `cold VMs / COLD_SLICE` passes (rounded up), and in the first pass after
    /// a nap; a VM that publishes is warm again.
    #[test]
    fn cold_vms_are_looked_at_a_slice_a_pass_and_all_after_a_nap() {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, gate) = std::sync::mpsc::channel();
        let executor = Box::new(Recording(Arc::new(Mutex::new(Vec::new())), gate));
        let vms = 2 * COLD_SLICE + 9;
        let mut dispatcher = dispatcher(dir.path(), &vec![1; vms], executor);
        let mut guests: Vec<_> = (0..vms)
            .map(|i| dispatcher.vms[i].link.as_ref().unwrap().slot.guest_endpoints().unwrap())
            .collect();
        let mut publish = |vm: usize| {
            let request = Request {
                opcode: Opcode::Noop as u16,
                pool: b'A',
                priority: 1,
                vm_id: vm as u32 + 1,
                ..Request::default()
            };
            guests[vm].requests.push(request).unwrap();
        };
        let pass = |dispatcher: &mut Dispatcher| {
            let taken = dispatcher.drain(&mut None);
            dispatcher.flush_responses();
            taken
        };
        // Every VM starts warm, as if it had just published.
        dispatcher.doze(false);
        assert_eq!(dispatcher.scan.len(), vms);
        publish(0);
        assert_eq!(pass(&mut dispatcher), 1);
        dispatcher.doze(false);
        assert_eq!(dispatcher.scan, [0], "vm1 published: warm; the others went cold");
        assert_eq!(dispatcher.cold.len(), vms - 1);

        // The last cold VM: the third slice reaches it.
        publish(vms - 1);
        let passes = (1..=3).map(|_| pass(&mut dispatcher)).collect::<Vec<_>>();
        assert_eq!(passes, [0, 0, 1], "taken in pass ceil({} / {COLD_SLICE})", vms - 1);
        assert_eq!(dispatcher.scan, [0, vms - 1], "warm again");

        // After a nap every cold VM is looked at: the one the slices reach last too.
        dispatcher.doze(false);
        dispatcher.doze(false);
        assert!(dispatcher.scan.is_empty(), "both quiet since: cold");
        let last = dispatcher.cold[(dispatcher.cold_next + vms - 1) % vms];
        publish(last);
        dispatcher.nap(Duration::from_micros(1), Instant::now());
        assert_eq!(pass(&mut dispatcher), 1, "taken in the first pass after the nap");
        assert_eq!(dispatcher.scan, [last]);
    }

    /// The executor hears of every attach (at start and after a quarantine ends) and
    /// every quarantine, in that order: what the CUDA executor registers and
    /// unregisters its arenas on.
    #[test]
    fn the_executor_hears_of_attaches_and_quarantines() {
        let dir = tempfile::tempdir().unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let (open_gate, gate) = std::sync::mpsc::channel();
        let mut dispatcher =
            dispatcher(dir.path(), &[1], Box::new(Recording(Arc::clone(&heard), gate)));
        // Declared after the dispatcher, so a failed assertion lets the executor go before
        // the dispatcher joins it.
        let open_gate = open_gate;
        dispatcher.quarantine(0, "test");
        assert!(dispatcher.vms[0].is_quarantined());
        // Not retried while the executor holds the old mapping (and so its host lock):
        // never refused as "served by another mediator" (this one); retried once it is
        // let go.
        dispatcher.housekeeping(dispatcher.next_retry);
        assert_eq!(dispatcher.vms[0].quarantine_reason(), Some("test"));
        open_gate.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while dispatcher.vms[0].is_quarantined() && Instant::now() < deadline {
            dispatcher.housekeeping(dispatcher.next_retry);
            std::thread::yield_now();
        }
        assert_eq!(dispatcher.vms[0].quarantine_reason(), None, "retried and attached again");
        // The executor thread hears them in order; dropping the dispatcher joins it.
        drop(dispatcher);
        assert_eq!(*heard.lock().unwrap(), [("attach", 0), ("detach", 0), ("attach", 0)]);
    }
}
