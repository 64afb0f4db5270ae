//! One VM as its pool's dispatcher sees it: the attached region and its ring endpoints,
//! the journal of answered requests, parked responses, quarantine and the VM's log
//! budget.
//!
//! **The request ring is the journal.** The request ring's consumer index is advanced
//! only over the prefix of requests whose responses are published: a mediator that dies
//! leaves every unanswered request in the ring, and the next one executes it.
//! Responses may be published out of order (an inline NOOP overtakes an executor job),
//! so each taken position is marked when its answer goes out and the index moves over
//! the marked prefix.

use crate::log_limit::{LogLimiter, Problem, suppressed_note};
use crate::metrics::{VmMetrics, VmState};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;
use vgpu_config::VmConfig;
use vgpu_doorbell::Bell;
use vgpu_ring::{
    ControlBlock, ControlWord, ErrorCode, Geometry, PushError, Region, RegionError, Request,
    RequestConsumer, RequestWatch, Response, ResponseProducer, Slot, SlotControl, VmIdentity,
};

/// What every region of one mediator session shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Session {
    /// The session epoch written into every region.
    pub(crate) epoch: u64,
    /// The heartbeat period written into every region, in milliseconds.
    pub(crate) heartbeat_interval_ms: u32,
    /// The configured region size.
    pub(crate) region_size: u64,
    /// The configured geometry.
    pub(crate) geometry: Geometry,
}

/// An attached VM's slot and rings.
pub(crate) struct Link {
    pub(crate) slot: Slot,
    pub(crate) requests: RequestConsumer,
    responses: ResponseProducer,
    /// Answered flags of the taken, unreleased request positions (by position modulo
    /// the ring size).
    answered: Box<[bool]>,
    /// Responses that did not fit in the response ring, oldest first, with the
    /// position of their request.
    parked: VecDeque<(u32, Response)>,
    /// Responses staged in the response ring and not yet published (see
    /// [`VmPort::flush`]).
    staged: bool,
    /// The last reset request carried out (host-owned, cached).
    pub(crate) reset_done: u32,
    response_poisoned: bool,
}

impl Link {
    /// Take the host's ends of `slot`'s rings, check the indices afresh and publish the
    /// result in `host_status` (clearing bits a previous session or a guest left there),
    /// and publish the doorbell (`Some(value)` when the host listens on one) with the
    /// wake-up flag clear.
    fn new(slot: Slot, doorbell: Option<u32>) -> Result<Self, RegionError> {
        let host = slot.host_endpoints()?;
        let response_poisoned = host.responses.poisoned().is_some();
        let status = if response_poisoned { SlotControl::RESPONSE_POISONED } else { 0 };
        slot.set_host_status(status)?;
        vgpu_ring::cancel_wakeup(&slot);
        vgpu_ring::publish_doorbell(&slot, doorbell);
        // The host owns `reset_done`; Relaxed: only this thread writes it.
        let reset_done = slot.load(ControlWord::ResetDone, Ordering::Relaxed);
        Ok(Self {
            answered: vec![false; host.requests.capacity() as usize].into_boxed_slice(),
            requests: host.requests,
            responses: host.responses,
            parked: VecDeque::new(),
            staged: false,
            reset_done,
            response_poisoned,
            slot,
        })
    }

    /// Stage `response` to the request at `position` in the response ring (published
    /// and its request released at the next [`flush`](Self::flush)).
    fn stage(&mut self, position: u32, response: Response) -> Result<(), PushError<Response>> {
        self.responses.stage(response)?;
        let mask = self.requests.capacity() - 1;
        self.answered[(position & mask) as usize] = true;
        self.staged = true;
        Ok(())
    }

    /// Publish the staged responses (their words, then the index), then release the
    /// answered prefix of the request ring with one index store: a request leaves the
    /// journal only once its answer is visible.
    fn flush(&mut self) {
        if !self.staged {
            return;
        }
        self.staged = false;
        self.responses.publish();
        let mask = self.requests.capacity() - 1;
        let mut upto = self.requests.released();
        while upto != self.requests.position() && self.answered[(upto & mask) as usize] {
            self.answered[(upto & mask) as usize] = false;
            upto = upto.wrapping_add(1);
        }
        self.requests.release_up_to(upto);
    }

    fn set_status_bit(&self, bit: u32) {
        // The region is writable (attached as host), so this cannot fail.
        let _ = self.slot.mark_status(bit);
    }
}

/// One VM of a pool.
pub(crate) struct VmPort {
    pub(crate) vm: VmConfig,
    pub(crate) identity: VmIdentity,
    /// `None` while the VM is quarantined.
    pub(crate) link: Option<Link>,
    /// Why the VM is quarantined (the last reason logged).
    quarantine: Option<String>,
    /// The mapping of the link a quarantine dropped, while someone (the executor,
    /// finishing with it) still holds it: its host lock is still taken, so the VM is
    /// not retried before it is gone.
    dropped: Weak<Region>,
    /// Changes whenever the link is replaced or reset: work of an older generation
    /// that comes back from the executor is dropped.
    pub(crate) generation: u64,
    /// Requests of this VM queued or executing.
    pub(crate) in_flight: u32,
    pub(crate) log: LogLimiter,
    /// The host end of the VM's doorbell, when the holder handed one over.
    pub(crate) bell: Option<Bell>,
    /// What the metrics report of the VM.
    pub(crate) metrics: Arc<VmMetrics>,
}

impl VmPort {
    /// Attach `vm`'s region for `session`, or quarantine the VM (logged once).
    ///
    /// # Errors
    ///
    /// [`RegionError::ServedElsewhere`] only: another mediator serves the region, which
    /// a starting daemon must not ignore. Every other problem quarantines the VM.
    pub(crate) fn attach(
        vm: VmConfig,
        session: &Session,
        bell: Option<Bell>,
    ) -> Result<Self, RegionError> {
        let mut port = Self {
            metrics: Arc::new(VmMetrics::new(vm.id)),
            bell,
            identity: vm.identity(),
            vm,
            link: None,
            quarantine: None,
            dropped: Weak::new(),
            generation: 0,
            in_flight: 0,
            log: LogLimiter::default(),
        };
        match port.try_attach(session) {
            Ok(()) => Ok(port),
            Err(e @ RegionError::ServedElsewhere { .. }) => Err(e),
            Err(e) => {
                port.quarantine(&e.to_string());
                Ok(port)
            }
        }
    }

    /// Attach (again) from the configuration: stamp the region, announce the session,
    /// take the rings.
    pub(crate) fn try_attach(&mut self, session: &Session) -> Result<(), RegionError> {
        let region = Arc::new(Region::attach_host(
            &self.vm.region,
            session.region_size,
            session.geometry,
            &[self.identity.slot()],
        )?);
        region.store_heartbeat(crate::daemon::monotonic_ns())?;
        region.begin_session(session.epoch, std::process::id(), session.heartbeat_interval_ms)?;
        let link = Link::new(region.slot(0)?, self.doorbell())?;
        if link.response_poisoned {
            tracing::warn!(
                "Pool {}: vm{} response ring holds an impossible consumer index; isolated until the guest resets it",
                self.vm.pool,
                self.vm.id
            );
        }
        if self.quarantine.take().is_some() {
            tracing::info!("Pool {}: vm{} region usable again: attached", self.vm.pool, self.vm.id);
        }
        self.link = Some(link);
        self.generation += 1;
        self.set_in_flight(0);
        self.note_state();
        Ok(())
    }

    /// Record a change of `in_flight`.
    #[inline]
    pub(crate) fn set_in_flight(&mut self, in_flight: u32) {
        self.in_flight = in_flight;
        self.metrics.in_flight.set(u64::from(in_flight));
    }

    /// Record the VM's state and parked responses after its link changed.
    fn note_state(&self) {
        let state = match &self.link {
            None => VmState::Quarantined,
            Some(link) if link.response_poisoned => VmState::Poisoned,
            Some(_) => VmState::Attached,
        };
        self.metrics.set_state(state);
        self.metrics.parked.set(self.parked() as u64);
    }

    /// Whether a log line about `problem` may be written now (see
    /// [`LogLimiter::admit`]); a suppressed one is counted.
    pub(crate) fn admit_log(&mut self, problem: Problem, now: Instant) -> Option<u64> {
        let admitted = self.log.admit(problem, now);
        if admitted.is_none() {
            self.metrics.suppressed_lines.add(1);
        }
        admitted
    }

    /// The value that rings the VM's doorbell, if the host listens on one.
    fn doorbell(&self) -> Option<u32> {
        self.bell.as_ref().map(|bell| bell.value)
    }

    /// Retry a quarantined VM (once the mapping it was quarantined with is let go);
    /// logs only a change of reason.
    pub(crate) fn retry(&mut self, session: &Session) {
        if self.dropped.strong_count() > 0 {
            return;
        }
        if let Err(e) = self.try_attach(session) {
            self.quarantine(&e.to_string());
        }
    }

    /// Stop serving the VM until its region is usable again; its queued work is
    /// dropped by the caller (see [`generation`](Self::generation)).
    pub(crate) fn quarantine(&mut self, reason: &str) {
        if let Some(link) = self.link.take() {
            self.dropped = Arc::downgrade(link.slot.region());
        }
        self.generation += 1;
        self.set_in_flight(0);
        self.note_state();
        if self.quarantine.as_deref() != Some(reason) {
            tracing::error!(
                "Pool {}: vm{} QUARANTINED: {reason}; the other VMs are served, retrying",
                self.vm.pool,
                self.vm.id
            );
            self.quarantine = Some(reason.to_owned());
        }
    }

    /// Whether the VM is quarantined.
    pub(crate) fn is_quarantined(&self) -> bool {
        self.link.is_none()
    }

    /// Why the VM is quarantined, if it is.
    pub(crate) fn quarantine_reason(&self) -> Option<&str> {
        self.link.is_none().then_some(self.quarantine.as_deref().unwrap_or("not attached"))
    }

    /// A watch on the request ring, if attached.
    pub(crate) fn watch(&self) -> Option<RequestWatch> {
        self.link.as_ref().map(|l| l.requests.backend().watch())
    }

    /// The answer to `request` with `result`, carrying the slot's configured identity.
    pub(crate) fn answer(&self, request: &Request, result: Result<u32, ErrorCode>) -> Response {
        Response::answer(request, &self.identity, result)
    }

    /// Stage the answer to the request at `position`, parking it if the response ring
    /// is full (order is kept); it is published, and the request released, at the next
    /// [`flush`](Self::flush). Returns whether the VM has staged answers to flush now and
    /// had none before.
    pub(crate) fn publish(&mut self, position: u32, response: Response) -> bool {
        let Some(link) = &mut self.link else { return false };
        if link.response_poisoned {
            return false;
        }
        let was_staged = link.staged;
        let parked = if link.parked.is_empty() {
            match link.stage(position, response) {
                Ok(()) => return !was_staged,
                Err(PushError::Full(r)) => r,
                Err(PushError::Poisoned(e)) => {
                    self.isolate_responses(&e);
                    return false;
                }
            }
        } else {
            response
        };
        link.parked.push_back((position, parked));
        self.metrics.parked.set(link.parked.len() as u64);
        false
    }

    /// Publish the staged answers and release their requests (see [`Link::flush`]).
    pub(crate) fn flush(&mut self) {
        if let Some(link) = &mut self.link {
            link.flush();
        }
    }

    /// Stage parked responses as room allows; returns how many went out.
    pub(crate) fn flush_parked(&mut self) -> usize {
        let Some(link) = &mut self.link else { return 0 };
        let mut sent = 0;
        while let Some(&(position, r)) = link.parked.front() {
            match link.stage(position, r) {
                Ok(()) => {
                    link.parked.pop_front();
                    sent += 1;
                }
                // Room comes when the guest takes what is published (below).
                Err(PushError::Full(_)) => break,
                Err(PushError::Poisoned(e)) => {
                    self.isolate_responses(&e);
                    return sent;
                }
            }
        }
        link.flush();
        self.metrics.parked.set(link.parked.len() as u64);
        sent
    }

    /// Responses waiting for room in the response ring.
    pub(crate) fn parked(&self) -> usize {
        self.link.as_ref().map_or(0, |l| l.parked.len())
    }

    fn isolate_responses(&mut self, e: &vgpu_ring::RingError) {
        let Some(link) = &mut self.link else { return };
        if link.response_poisoned {
            return;
        }
        link.response_poisoned = true;
        link.parked.clear();
        link.set_status_bit(SlotControl::RESPONSE_POISONED);
        self.note_state();
        if let Some(n) = self.admit_log(Problem::Poisoned, Instant::now()) {
            tracing::warn!(
                "Pool {}: vm{} response ring isolated: {e}{}",
                self.vm.pool,
                self.vm.id,
                suppressed_note(n)
            );
        }
    }

    /// Carry out the guest's reset request `ticket`: drop the VM's parked work (the
    /// caller drops its queued work), give the rings fresh indices, clear the status
    /// and acknowledge. The caller holds none of the VM's requests in hand.
    pub(crate) fn reset(&mut self, ticket: u32, now: Instant) -> Result<(), RegionError> {
        let Some(link) = self.link.take() else { return Ok(()) };
        let dropped = self.in_flight as usize + link.parked.len();
        let slot = link.slot.clone();
        // The old endpoints go before the indices change under them.
        drop(link);
        vgpu_ring::complete_reset(&slot, ticket);
        let link = Link::new(slot, self.doorbell())?;
        self.link = Some(link);
        self.generation += 1;
        self.set_in_flight(0);
        self.note_state();
        self.metrics.resets.add(1);
        if let Some(n) = self.admit_log(Problem::Reset, now) {
            tracing::warn!(
                "Pool {}: vm{} rings reset at the guest's request ({dropped} requests dropped){}",
                self.vm.pool,
                self.vm.id,
                suppressed_note(n)
            );
        }
        Ok(())
    }
}
