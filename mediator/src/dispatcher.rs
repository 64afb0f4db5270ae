//! A pool's dispatcher: drains its VMs' request rings into the pool's queue,
//! continuously (also while a long job executes), runs short jobs inline, hands long ones
//! to the pool's executor thread one at a time, and publishes the responses.

use crate::executor::{Arena, CpuExecutor, Executor, Job};
use crate::queue::{Ordering as QueueOrdering, PoolQueue};
use crate::validate::validate;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vgpu_config::{MediatorConfig, PoolConfig, VmConfig};
use vgpu_ring::{
    ErrorCode, HeadWatch, HostEndpoints, Opcode, PushError, Region, Request, Response, SlotControl,
    SlotIdentity, Status, decode_label,
};

/// One VM attached to a pool.
pub struct VmPort {
    vm: VmConfig,
    identity: SlotIdentity,
    region: Arc<Region>,
    arena: Arena,
    host: HostEndpoints,
    /// Requests of this VM queued or executing.
    in_flight: u32,
    /// Responses that did not fit in the response ring, oldest first.
    parked: VecDeque<Response>,
    request_poisoned: bool,
    response_poisoned: bool,
}

impl VmPort {
    /// Attach to slot 0 of `region` for `vm`.
    ///
    /// # Errors
    ///
    /// If the region is read-only.
    pub fn new(vm: VmConfig, region: Arc<Region>) -> Result<Self, vgpu_ring::RegionError> {
        let host = vgpu_ring::host_endpoints(&region, 0)?;
        Ok(Self {
            identity: vm.identity(),
            arena: Arena::new(Arc::clone(&region), 0),
            vm,
            region,
            host,
            in_flight: 0,
            parked: VecDeque::new(),
            request_poisoned: false,
            response_poisoned: false,
        })
    }
}

impl VmPort {
    /// The response to request `tag` with `result` (output bytes or the error), carrying
    /// the slot's configured identity; timings are left at zero.
    fn response(
        &self,
        tag: u32,
        opcode: u16,
        label: [u8; vgpu_ring::layout::LABEL_LEN],
        result: Result<u32, ErrorCode>,
    ) -> Response {
        let (status, error, out_len) = match result {
            Ok(n) => (Status::Success, ErrorCode::None, n),
            Err(e) => (Status::Error, e, 0),
        };
        Response {
            tag,
            status: status as u32,
            error: error as u32,
            out_len,
            vm_id: self.identity.vm_id,
            pool: self.identity.pool as u8,
            priority: self.identity.priority as u8,
            opcode,
            label,
            ..Response::default()
        }
    }
}

/// A request waiting in the pool's queue or executing.
struct Pending {
    vm: usize,
    tag: u32,
    opcode: u16,
    label: [u8; vgpu_ring::layout::LABEL_LEN],
    job: Job,
    arrived: Instant,
}

struct Finished {
    pending: Pending,
    result: Result<u32, ErrorCode>,
    /// When execution started (the end of the request's wait in the queue).
    started: Instant,
    exec: Duration,
}

/// The pool's executor thread: runs one long job at a time.
struct ExecutorThread {
    jobs: Option<Sender<Pending>>,
    done: Receiver<Finished>,
    thread: Option<JoinHandle<()>>,
}

impl ExecutorThread {
    fn spawn(
        pool: char,
        arenas: Vec<Arena>,
        mut executor: Box<dyn Executor>,
    ) -> std::io::Result<Self> {
        let (jobs, job_rx) = channel::<Pending>();
        let (done_tx, done) = channel();
        let thread =
            std::thread::Builder::new().name(format!("pool-{pool}-exec")).spawn(move || {
                for pending in job_rx {
                    let started = Instant::now();
                    let result = executor.execute(&pending.job, &arenas[pending.vm]);
                    let exec = started.elapsed();
                    if done_tx.send(Finished { pending, result, started, exec }).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { jobs: Some(jobs), done, thread: Some(thread) })
    }
}

impl Drop for ExecutorThread {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counters a dispatcher keeps (reported at shutdown).
#[derive(Debug, Default, Clone, Copy)]
pub struct DispatcherStats {
    /// Requests answered with status 1.
    pub succeeded: u64,
    /// Requests answered with status 2.
    pub failed: u64,
}

/// A pool's dispatcher.
pub struct Dispatcher {
    /// Each VM's request-ring producer index and the value last drained up to.
    watches: Vec<(HeadWatch, u32)>,
    vms: Vec<VmPort>,
    queue: PoolQueue<Pending>,
    inline: CpuExecutor,
    executor: ExecutorThread,
    busy: bool,
    /// Every compute job goes to the executor (a GPU pool), not only long ones.
    offload_compute: bool,
    /// Set when a response may have been parked; cleared by a flush that emptied all.
    maybe_parked: bool,
    quota: u32,
    idle_spin: Duration,
    max_idle_sleep: Duration,
    report: Reporter,
}

impl Dispatcher {
    /// A dispatcher for `pool` serving `vms`, with `executor` for long jobs.
    ///
    /// # Errors
    ///
    /// If the executor thread cannot be started.
    pub fn new(
        pool: &PoolConfig,
        vms: Vec<VmPort>,
        executor: Box<dyn Executor>,
        settings: &MediatorConfig,
        log_requests: bool,
    ) -> std::io::Result<Self> {
        let arenas = vms.iter().map(|p| p.arena.clone()).collect();
        let offload_compute = executor.offloads_compute();
        let watches = vms
            .iter()
            .map(|p| {
                let watch = p.host.requests.backend().head_watch();
                // Differs from the index now, so the first pass drains every VM.
                let seen = !watch.load();
                (watch, seen)
            })
            .collect();
        Ok(Self {
            watches,
            queue: PoolQueue::new(QueueOrdering::from_policy(pool.policy, pool.aging_interval)),
            executor: ExecutorThread::spawn(pool.name, arenas, executor)?,
            vms,
            inline: CpuExecutor,
            busy: false,
            offload_compute,
            maybe_parked: false,
            quota: settings.max_queued_per_vm,
            idle_spin: settings.idle_spin,
            max_idle_sleep: settings.max_idle_sleep,
            report: Reporter { pool: pool.name, log_requests, stats: DispatcherStats::default() },
        })
    }

    /// Serve until `shutdown` is set, then finish the job in hand, answer queued
    /// requests with [`ErrorCode::ShuttingDown`] and return the counters. Requests
    /// still in the rings stay there for the next mediator.
    pub fn run(mut self, shutdown: &AtomicBool) -> DispatcherStats {
        let mut last_work = Instant::now();
        let mut empty_passes: u32 = 0;
        while !shutdown.load(Ordering::Relaxed) {
            // The clock is read at most once per pass (lazily) and once after each
            // executed job: a clock read costs about 60 ns in a VM.
            let mut now = None;
            let work = self.drain(&mut now)
                + self.poll_executor()
                + self.dispatch(&mut now)
                + self.flush_parked();
            if work > 0 {
                last_work = now.unwrap_or_else(Instant::now);
                empty_passes = 0;
                continue;
            }
            // Spinning passes are a few loads each; the clock (about 60 ns) is only
            // consulted every 64 of them.
            empty_passes = empty_passes.wrapping_add(1);
            if !empty_passes.is_multiple_of(64) {
                continue;
            }
            let idle = last_work.elapsed();
            if idle > self.idle_spin {
                // Back off in proportion to how long the pool has been idle: a request
                // after a short gap waits at most 1/64 of that gap, a long-idle pool
                // wakes only every `max_idle_sleep` (each wake-up costs tens of µs of
                // CPU in a VM).
                std::thread::sleep(
                    (idle / 64).clamp(Duration::from_micros(1), self.max_idle_sleep),
                );
            }
        }
        self.stop()
    }

    /// Drain every VM's request ring whose producer index moved since the last pass;
    /// returns the number of requests taken. An idle VM costs one load of its index
    /// line, from a compact array (not the VM's whole state).
    fn drain(&mut self, now: &mut Option<Instant>) -> usize {
        let mut taken = 0;
        for index in 0..self.watches.len() {
            let (watch, seen) = &mut self.watches[index];
            let head = watch.load();
            if head == *seen {
                continue;
            }
            let port = &mut self.vms[index];
            let mut emptied = port.request_poisoned;
            // A guest that does not read its responses gets no more requests taken:
            // its own request ring fills up, nobody else waits.
            while !emptied && port.parked.len() < port.host.responses.capacity() as usize {
                match port.host.requests.take() {
                    Ok(Some(req)) => {
                        taken += 1;
                        let now = *now.get_or_insert_with(Instant::now);
                        accept(
                            index,
                            port,
                            &mut self.queue,
                            &req,
                            now,
                            self.quota,
                            &mut self.report,
                        );
                    }
                    Ok(None) => emptied = true,
                    Err(e) => {
                        emptied = true;
                        port.request_poisoned = true;
                        tracing::warn!(
                            "Pool {}: vm{} request ring isolated: {e}",
                            self.report.pool,
                            port.vm.id
                        );
                        mark_status(port, SlotControl::REQUEST_POISONED);
                    }
                }
            }
            port.host.requests.release();
            self.maybe_parked |= !port.parked.is_empty();
            if emptied {
                // Everything up to `head` is taken; a later publish changes the index.
                *seen = head;
            }
        }
        taken
    }

    /// Start jobs while the pool is free: short ones inline, a long one on the executor.
    fn dispatch(&mut self, clock: &mut Option<Instant>) -> usize {
        let mut started = 0;
        while !self.busy && !self.queue.is_empty() {
            // One clock read serves the aging policy and the start of execution.
            let now = *clock.get_or_insert_with(Instant::now);
            let Some(queued) = self.queue.pop(now) else { break };
            let pending = queued.item;
            started += 1;
            if self.report.log_requests {
                tracing::info!(
                    "[PROCESS] Pool {}: Processing vm={}, priority={}, command={}",
                    self.report.pool,
                    self.vms[pending.vm].vm.id,
                    queued.priority,
                    decode_label(&pending.label)
                );
            }
            if pending.job.is_long() || (self.offload_compute && pending.job.is_compute()) {
                // The sender lives until the executor is dropped; a send fails only if
                // the executor thread died.
                let sent = match &self.executor.jobs {
                    Some(tx) => tx.send(pending).map_err(|e| e.0),
                    None => Err(pending),
                };
                match sent {
                    Ok(()) => self.busy = true,
                    Err(pending) => {
                        let result = Err(ErrorCode::ExecutorFailed);
                        self.finish(Finished {
                            pending,
                            result,
                            started: now,
                            exec: Duration::ZERO,
                        });
                    }
                }
            } else {
                let result = self.inline.execute(&pending.job, &self.vms[pending.vm].arena);
                // A NOOP takes no measurable time; anything else is timed, and its end
                // is the next job's start.
                let exec = if pending.job.op == Opcode::Noop {
                    Duration::ZERO
                } else {
                    let end = Instant::now();
                    *clock = Some(end);
                    end - now
                };
                self.finish(Finished { pending, result, started: now, exec });
            }
        }
        started
    }

    fn poll_executor(&mut self) -> usize {
        if !self.busy {
            return 0;
        }
        match self.executor.done.try_recv() {
            Ok(finished) => {
                self.busy = false;
                self.finish(finished);
                1
            }
            Err(TryRecvError::Empty) => 0,
            Err(TryRecvError::Disconnected) => {
                tracing::error!("Pool {}: executor thread died", self.report.pool);
                self.busy = false;
                0
            }
        }
    }

    fn finish(&mut self, f: Finished) {
        let p = f.pending;
        let port = &mut self.vms[p.vm];
        port.in_flight = port.in_flight.saturating_sub(1);
        let mut response = port.response(p.tag, p.opcode, p.label, f.result);
        response.queued_ns = f.started.saturating_duration_since(p.arrived).as_nanos() as u64;
        response.exec_ns = f.exec.as_nanos() as u64;
        self.report.respond(port, response);
        self.maybe_parked |= !port.parked.is_empty();
    }

    /// Retry parked responses; returns how many went out.
    fn flush_parked(&mut self) -> usize {
        if !self.maybe_parked {
            return 0;
        }
        let mut sent = 0;
        for port in &mut self.vms {
            while let Some(&r) = port.parked.front() {
                match port.host.responses.push(r) {
                    Ok(()) => {
                        port.parked.pop_front();
                        sent += 1;
                    }
                    Err(PushError::Full(_)) => break,
                    Err(PushError::Poisoned(e)) => {
                        isolate_responses(self.report.pool, port, &e);
                        break;
                    }
                }
            }
        }
        self.maybe_parked = self.vms.iter().any(|port| !port.parked.is_empty());
        sent
    }

    fn stop(mut self) -> DispatcherStats {
        if self.busy
            && let Ok(finished) = self.executor.done.recv()
        {
            self.busy = false;
            self.finish(finished);
        }
        let waiting: Vec<Pending> = self.queue.drain().map(|q| q.item).collect();
        let now = Instant::now();
        for pending in waiting {
            self.finish(Finished {
                pending,
                started: now,
                result: Err(ErrorCode::ShuttingDown),
                exec: Duration::ZERO,
            });
        }
        self.flush_parked();
        self.report.stats
    }
}

fn mark_status(port: &VmPort, bit: u32) {
    let status = port.region.host_status(0).unwrap_or(0);
    let _ = port.region.set_host_status(0, status | bit);
}

fn isolate_responses(pool: char, port: &mut VmPort, e: &vgpu_ring::RingError) {
    if !port.response_poisoned {
        port.response_poisoned = true;
        port.parked.clear();
        tracing::warn!("Pool {pool}: vm{} response ring isolated: {e}", port.vm.id);
        mark_status(port, SlotControl::RESPONSE_POISONED);
    }
}

/// Validate a request just taken from `port`'s ring and queue it, or answer it with
/// an error at once.
fn accept(
    index: usize,
    port: &mut VmPort,
    queue: &mut PoolQueue<Pending>,
    req: &Request,
    now: Instant,
    quota: u32,
    report: &mut Reporter,
) {
    let pool = report.pool;
    let arena_size = port.region.geometry().arena_size;
    let verdict = validate(req, &port.identity, arena_size).and_then(|job| {
        if port.in_flight >= quota { Err(ErrorCode::QuotaExceeded) } else { Ok(job) }
    });
    match verdict {
        Ok(job) => {
            port.in_flight += 1;
            let priority = port.identity.priority as u8;
            queue.push(
                priority,
                now,
                Pending {
                    vm: index,
                    tag: req.tag,
                    opcode: req.opcode,
                    label: req.label,
                    job,
                    arrived: now,
                },
            );
            if report.log_requests {
                tracing::info!(
                    "[QUEUE] Pool {pool}: Added priority={priority}, vm={}, count={}",
                    port.vm.id,
                    queue.len()
                );
            }
        }
        Err(code) => {
            if code == ErrorCode::IdentityMismatch {
                tracing::warn!(
                    "Pool {pool}: vm{} claimed pool {:?} priority {} vm {}; configured pool {} priority {}: refused",
                    port.vm.id,
                    char::from(req.pool),
                    req.priority,
                    req.vm_id,
                    port.vm.pool,
                    port.vm.priority
                );
            }
            let response = port.response(req.tag, req.opcode, req.label, Err(code));
            report.respond(port, response);
        }
    }
}

/// What every response of a pool shares: the pool's name for the logs, whether the
/// per-request lines are logged, and the counters.
struct Reporter {
    pool: char,
    log_requests: bool,
    stats: DispatcherStats,
}

impl Reporter {
    /// Count and log `response`, then publish it to `port`, parking it if the ring is
    /// full (order is kept).
    fn respond(&mut self, port: &mut VmPort, response: Response) {
        if response.status == Status::Success as u32 {
            self.stats.succeeded += 1;
        } else {
            self.stats.failed += 1;
        }
        if self.log_requests {
            tracing::info!(
                "[RESPONSE] Sent to vm{}: {}",
                port.vm.id,
                vgpu_ring::response_text(&response)
            );
        }
        if port.response_poisoned {
            return;
        }
        if !port.parked.is_empty() {
            port.parked.push_back(response);
            return;
        }
        match port.host.responses.push(response) {
            Ok(()) => {}
            Err(PushError::Full(r)) => port.parked.push_back(r),
            Err(PushError::Poisoned(e)) => isolate_responses(self.pool, port, &e),
        }
    }
}
