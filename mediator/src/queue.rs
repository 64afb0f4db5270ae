//! A pool's queue: priority 2 > 1 > 0, and within a priority one of three orders.
//!
//! - **strict** (the original guide's rule): FIFO by arrival sequence.
//! - **aging**: as strict, but a waiting request gains one level per aging interval,
//!   so low priority cannot starve.
//! - **fair**: strict between levels; within a level the next job comes from the VM
//!   that has received the least executor time relative to its weight (virtual
//!   runtime = executed time / weight, as CFS and weighted fair queuing do); a VM's
//!   own requests stay in arrival order.
//!
//! Strict and aging keep three FIFO lists: insert and pop are O(1) (a binary heap would
//! be O(log n)), because within one list the head is the oldest entry, which is also
//! the most aged, so the best entry is always one of the three heads.
//!
//! Fair keeps a FIFO per VM and, per level, a min-heap of the VMs that have work, keyed
//! by (virtual runtime, arrival of their oldest request): O(log VMs) per decision. A VM
//! leaves the heap while its job runs and is charged when it finishes
//! ([`PoolQueue::charge`]); a VM that was idle re-enters at the level's current
//! minimum virtual runtime, so idling earns no credit. Worked example: VMs A (weight 1)
//! and B (weight 2) of one priority each keep 5 ms jobs queued. A runs (A: 5), B runs
//! (B: 2.5), B runs (B: 5), A runs (A: 10), B runs (B: 7.5), B runs (B: 10), ...: of
//! every 15 ms of executor time, A gets 5 and B 10, a 1:2 split. C arriving later enters
//! at the current minimum (10), not at 0, so it does not take the executor over until it
//! has "caught up".

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};
use vgpu_config::Policy;
use vgpu_ring::Priority;

/// One waiting item with its bookkeeping.
///
/// ```
/// use std::time::Instant;
/// use vgpu_config::Policy;
/// use vgpu_mediator::queue::PoolQueue;
/// use vgpu_ring::Priority;
/// let mut queue = PoolQueue::new(Policy::Strict);
/// let now = Instant::now();
/// let seq = queue.push(3, Priority::MEDIUM, now, "TEST_MEDIUM");
/// let queued = queue.pop(now).unwrap();
/// assert_eq!((queued.seq, queued.vm, queued.priority, queued.item), (seq, 3, Priority::MEDIUM, "TEST_MEDIUM"));
/// ```
#[derive(Debug, Clone)]
pub struct Queued<T> {
    /// Arrival sequence number (monotonic per pool, taken when first seen).
    pub seq: u64,
    /// The VM it came from (the dispatcher's index).
    pub vm: usize,
    /// Base priority.
    pub priority: Priority,
    /// When it was queued.
    pub arrived: Instant,
    /// The item.
    pub item: T,
}

/// Where a VM of a fair pool stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Nothing queued.
    Idle,
    /// Work queued, the VM is in its level's heap.
    Ready,
    /// Its job was handed out and is not charged yet.
    Running,
}

/// A VM of a fair pool.
#[derive(Debug)]
struct FairVm<T> {
    queue: VecDeque<Queued<T>>,
    /// Executor time received, in ns scaled by [`FairShare::SCALE`] / weight.
    vruntime: u64,
    weight: u64,
    turn: Turn,
}

/// The fair policy's state.
#[derive(Debug)]
struct FairShare<T> {
    vms: Vec<FairVm<T>>,
    /// Per level: the VMs with work, least virtual runtime first (ties: oldest request).
    ready: [BinaryHeap<Reverse<(u64, u64, usize)>>; 3],
    /// Per level: the least virtual runtime among the VMs with work (monotone; a VM
    /// that was idle re-enters here).
    floor: [u64; 3],
}

impl<T> FairShare<T> {
    /// Virtual runtime units per nanosecond at weight 1 (keeps precision at weight > 1).
    const SCALE: u64 = 1024;
    /// Least executor time charged per job: a NOOP takes a few hundred ns of dispatcher
    /// time, so a flood of them is not free.
    const MIN_CHARGE: Duration = Duration::from_micros(1);

    fn vm(&mut self, vm: usize) -> &mut FairVm<T> {
        if vm >= self.vms.len() {
            self.vms.resize_with(vm + 1, || FairVm {
                queue: VecDeque::new(),
                vruntime: 0,
                weight: 1,
                turn: Turn::Idle,
            });
        }
        &mut self.vms[vm]
    }

    fn make_ready(&mut self, vm: usize, level: usize) {
        let floor = self.floor[level];
        let v = &mut self.vms[vm];
        let Some(head) = v.queue.front() else {
            v.turn = Turn::Idle;
            return;
        };
        v.vruntime = v.vruntime.max(floor);
        v.turn = Turn::Ready;
        self.ready[level].push(Reverse((v.vruntime, head.seq, vm)));
    }

    fn push(&mut self, queued: Queued<T>) {
        let (vm, level) = (queued.vm, queued.priority.index());
        let v = self.vm(vm);
        v.queue.push_back(queued);
        if v.turn == Turn::Idle {
            self.make_ready(vm, level);
        }
    }

    fn pop(&mut self) -> Option<Queued<T>> {
        for level in (0..3).rev() {
            while let Some(Reverse((vruntime, _, vm))) = self.ready[level].pop() {
                let v = &mut self.vms[vm];
                // An entry left behind by `retain` emptying the VM's queue.
                let Some(item) = v.queue.pop_front() else {
                    v.turn = Turn::Idle;
                    continue;
                };
                v.turn = Turn::Running;
                self.floor[level] = self.floor[level].max(vruntime);
                return Some(item);
            }
        }
        None
    }

    fn charge(&mut self, vm: usize, priority: Priority, exec: Duration) {
        let level = priority.index();
        let Some(v) = self.vms.get_mut(vm) else { return };
        let ns = u64::try_from(exec.max(Self::MIN_CHARGE).as_nanos()).unwrap_or(u64::MAX);
        v.vruntime = v.vruntime.saturating_add(ns.saturating_mul(Self::SCALE) / v.weight);
        // The level's minimum moves up with the least of the VM just charged and the
        // waiting ones (as CFS's min_vruntime): a VM entering later starts there.
        let waiting = self.ready[level].peek().map_or(u64::MAX, |Reverse((vr, _, _))| *vr);
        self.floor[level] = self.floor[level].max(v.vruntime.min(waiting));
        if v.turn == Turn::Running {
            self.make_ready(vm, level);
        }
    }
}

/// A pool's queue.
///
/// ```
/// use std::time::Instant;
/// use vgpu_config::Policy;
/// use vgpu_mediator::queue::PoolQueue;
/// use vgpu_ring::Priority;
/// // The original guide's scenario: low, high, medium arrive while the pool is busy.
/// let mut queue = PoolQueue::new(Policy::Strict);
/// let now = Instant::now();
/// queue.push(1, Priority::LOW, now, "vm=1");
/// queue.push(2, Priority::HIGH, now, "vm=2");
/// queue.push(3, Priority::MEDIUM, now, "vm=3");
/// let order: Vec<_> = std::iter::from_fn(|| queue.pop(now)).map(|q| q.item).collect();
/// assert_eq!(order, ["vm=2", "vm=3", "vm=1"]);
/// ```
#[derive(Debug)]
pub struct PoolQueue<T> {
    levels: [VecDeque<Queued<T>>; 3],
    /// Set for `policy = "fair"`; then `levels` stays empty.
    fair: Option<FairShare<T>>,
    /// Waiting items by priority.
    lens: [usize; 3],
    next_seq: u64,
    policy: Policy,
}

impl<T> PoolQueue<T> {
    /// An empty queue ordered by `policy` (every VM of weight 1).
    ///
    /// ```
    /// use std::time::Instant;
    /// use vgpu_config::Policy;
    /// use vgpu_mediator::queue::PoolQueue;
    /// use vgpu_ring::Priority;
    /// let mut queue = PoolQueue::new(Policy::Strict);
    /// let now = Instant::now();
    /// queue.push(0, Priority::LOW, now, "TEST_LOW");
    /// queue.push(1, Priority::HIGH, now, "TEST_HIGH");
    /// assert_eq!(queue.pop(now).unwrap().item, "TEST_HIGH");
    /// ```
    #[must_use]
    pub fn new(policy: Policy) -> Self {
        Self::with_weights(policy, [])
    }

    /// An empty queue ordered by `policy`, VM `i` having weight `weights[i]` (at least
    /// 1; VMs beyond the list have weight 1). Weights matter to the fair policy only.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use vgpu_config::Policy;
    /// use vgpu_mediator::queue::PoolQueue;
    /// use vgpu_ring::Priority;
    /// let mut queue = PoolQueue::with_weights(Policy::Fair, [1, 2]);
    /// let now = Instant::now();
    /// for _ in 0..6 {
    ///     queue.push(0, Priority::LOW, now, "A");
    ///     queue.push(1, Priority::LOW, now, "B");
    /// }
    /// let mut order = String::new();
    /// while let Some(job) = queue.pop(now) {
    ///     order.push_str(job.item);
    ///     queue.charge(job.vm, job.priority, Duration::from_millis(5));
    /// }
    /// assert_eq!(&order[..6], "ABBABB", "B has twice A's share");
    /// ```
    #[must_use]
    pub fn with_weights(policy: Policy, weights: impl IntoIterator<Item = u32>) -> Self {
        let fair = (policy == Policy::Fair).then(|| {
            let mut fair = FairShare { vms: Vec::new(), ready: Default::default(), floor: [0; 3] };
            for (vm, weight) in weights.into_iter().enumerate() {
                fair.vm(vm).weight = u64::from(weight.max(1));
            }
            fair
        });
        Self { levels: Default::default(), fair, lens: [0; 3], next_seq: 0, policy }
    }

    /// Number of waiting items.
    ///
    /// ```
    /// use std::time::Instant;
    /// use vgpu_config::Policy;
    /// use vgpu_mediator::queue::PoolQueue;
    /// use vgpu_ring::Priority;
    /// let mut queue = PoolQueue::new(Policy::Strict);
    /// let now = Instant::now();
    /// queue.push(0, Priority::LOW, now, ());
    /// queue.push(1, Priority::HIGH, now, ());
    /// assert_eq!(queue.len(), 2);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Number of waiting items of `priority` (their own priority, before any aging).
    ///
    /// ```
    /// use std::time::Instant;
    /// use vgpu_config::Policy;
    /// use vgpu_mediator::queue::PoolQueue;
    /// use vgpu_ring::Priority;
    /// let mut queue = PoolQueue::new(Policy::Strict);
    /// let now = Instant::now();
    /// queue.push(0, Priority::LOW, now, ());
    /// queue.push(1, Priority::HIGH, now, ());
    /// assert_eq!((queue.len_at(Priority::LOW), queue.len_at(Priority::MEDIUM)), (1, 0));
    /// ```
    #[must_use]
    pub fn len_at(&self, priority: Priority) -> usize {
        self.lens[priority.index()]
    }

    /// Whether nothing waits.
    ///
    /// ```
    /// use std::time::Instant;
    /// use vgpu_config::Policy;
    /// use vgpu_mediator::queue::PoolQueue;
    /// use vgpu_ring::Priority;
    /// let mut queue = PoolQueue::new(Policy::Strict);
    /// let now = Instant::now();
    /// assert!(queue.is_empty());
    /// queue.push(0, Priority::LOW, now, ());
    /// assert!(!queue.is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue `item` of VM `vm` with `priority`, arriving `now`; returns its sequence
    /// number.
    ///
    /// ```
    /// use std::time::Instant;
    /// use vgpu_config::Policy;
    /// use vgpu_mediator::queue::PoolQueue;
    /// use vgpu_ring::Priority;
    /// let mut queue = PoolQueue::new(Policy::Strict);
    /// let now = Instant::now();
    /// let first = queue.push(0, Priority::LOW, now, "a");
    /// let second = queue.push(0, Priority::LOW, now, "b");
    /// assert!(second > first, "arrival order");
    /// ```
    pub fn push(&mut self, vm: usize, priority: Priority, now: Instant, item: T) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.lens[priority.index()] += 1;
        let queued = Queued { seq, vm, priority, arrived: now, item };
        match &mut self.fair {
            Some(fair) => fair.push(queued),
            None => self.levels[priority.index()].push_back(queued),
        }
        seq
    }

    fn effective(&self, q: &Queued<T>, now: Instant) -> u64 {
        let base = u64::from(q.priority.get());
        match self.policy {
            Policy::Strict | Policy::Fair => base,
            Policy::Aging { interval } => {
                let waited = now.saturating_duration_since(q.arrived).as_nanos();
                let gained = waited / interval.as_nanos().max(1);
                let top = u64::from(Priority::HIGH.get());
                base.saturating_add(u64::try_from(gained).unwrap_or(u64::MAX)).min(top)
            }
        }
    }

    /// Remove and return the best item at time `now`. In a fair pool, every item popped
    /// must be [`charge`](Self::charge)d once it has run (or been dropped), or its VM
    /// gets no further turn.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use vgpu_config::Policy;
    /// use vgpu_mediator::queue::PoolQueue;
    /// use vgpu_ring::Priority;
    /// // Aging: a low request that waited two intervals runs before a newer high one.
    /// let mut queue = PoolQueue::new(Policy::Aging { interval: Duration::from_millis(10) });
    /// let start = Instant::now();
    /// queue.push(0, Priority::LOW, start, "old low");
    /// queue.push(1, Priority::HIGH, start + Duration::from_millis(20), "new high");
    /// assert_eq!(queue.pop(start + Duration::from_millis(20)).unwrap().item, "old low");
    /// ```
    pub fn pop(&mut self, now: Instant) -> Option<Queued<T>> {
        let popped = match &mut self.fair {
            Some(fair) => fair.pop(),
            None => {
                let best = (0..3)
                    .filter_map(|level| self.levels[level].front().map(|q| (level, q)))
                    .max_by(|(_, a), (_, b)| {
                        self.effective(a, now).cmp(&self.effective(b, now)).then(b.seq.cmp(&a.seq))
                    })
                    .map(|(level, _)| level)?;
                self.levels[best].pop_front()
            }
        };
        if let Some(q) = &popped {
            self.lens[q.priority.index()] -= 1;
        }
        popped
    }

    /// Account `exec` of executor time to VM `vm` (of `priority`), whose item popped
    /// last has finished; a no-op unless the pool is fair.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use vgpu_config::Policy;
    /// use vgpu_mediator::queue::PoolQueue;
    /// use vgpu_ring::Priority;
    /// let mut queue = PoolQueue::new(Policy::Fair);
    /// let now = Instant::now();
    /// queue.push(0, Priority::LOW, now, "vm 0, long");
    /// queue.push(0, Priority::LOW, now, "vm 0, next");
    /// queue.push(1, Priority::LOW, now, "vm 1");
    /// let job = queue.pop(now).unwrap();
    /// queue.charge(job.vm, job.priority, Duration::from_millis(50)); // it ran 50 ms
    /// assert_eq!(queue.pop(now).unwrap().item, "vm 1", "vm 1 has had less time");
    /// ```
    pub fn charge(&mut self, vm: usize, priority: Priority, exec: Duration) {
        if let Some(fair) = &mut self.fair {
            fair.charge(vm, priority, exec);
        }
    }

    /// Keep only the items for which `keep` is true (e.g. drop one VM's work when its
    /// rings are reset); order is unchanged.
    ///
    /// ```
    /// use std::time::Instant;
    /// use vgpu_config::Policy;
    /// use vgpu_mediator::queue::PoolQueue;
    /// use vgpu_ring::Priority;
    /// let mut queue = PoolQueue::new(Policy::Strict);
    /// let now = Instant::now();
    /// queue.push(0, Priority::LOW, now, (0, "vm 0's"));
    /// queue.push(1, Priority::LOW, now, (1, "vm 1's"));
    /// queue.retain(|&(vm, _)| vm != 0); // vm 0 reset its rings
    /// assert_eq!(queue.len(), 1);
    /// assert_eq!(queue.pop(now).unwrap().item.1, "vm 1's");
    /// ```
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let queues: Vec<&mut VecDeque<Queued<T>>> = match &mut self.fair {
            Some(fair) => fair.vms.iter_mut().map(|v| &mut v.queue).collect(),
            None => self.levels.iter_mut().collect(),
        };
        let mut lens = [0; 3];
        for queue in queues {
            queue.retain(|q| keep(&q.item));
            queue.iter().for_each(|q| lens[q.priority.index()] += 1);
        }
        self.lens = lens;
    }

    /// Remove every item (at shutdown), in no particular order.
    ///
    /// ```
    /// use std::time::Instant;
    /// use vgpu_config::Policy;
    /// use vgpu_mediator::queue::PoolQueue;
    /// use vgpu_ring::Priority;
    /// let mut queue = PoolQueue::new(Policy::Strict);
    /// let now = Instant::now();
    /// queue.push(0, Priority::LOW, now, "a");
    /// queue.push(1, Priority::HIGH, now, "b");
    /// let mut left: Vec<_> = queue.drain().into_iter().map(|q| q.item).collect();
    /// left.sort();
    /// assert_eq!(left, ["a", "b"]);
    /// assert!(queue.is_empty());
    /// ```
    pub fn drain(&mut self) -> Vec<Queued<T>> {
        self.lens = [0; 3];
        match &mut self.fair {
            Some(fair) => {
                fair.ready.iter_mut().for_each(BinaryHeap::clear);
                fair.vms
                    .iter_mut()
                    .flat_map(|v| {
                        v.turn = Turn::Idle;
                        v.queue.drain(..)
                    })
                    .collect()
            }
            None => self.levels.iter_mut().flat_map(|level| level.drain(..)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const P0: Priority = Priority::LOW;
    const P1: Priority = Priority::MEDIUM;
    const P2: Priority = Priority::HIGH;

    #[test]
    fn lengths_by_priority_follow_push_pop_retain_and_drain() {
        for policy in [Policy::Strict, Policy::Fair] {
            let now = Instant::now();
            let mut q = PoolQueue::new(policy);
            for (vm, priority) in [(0, P0), (1, P2), (0, P2), (1, P1)] {
                q.push(vm, priority, now, vm);
            }
            assert_eq!([P0, P1, P2].map(|p| q.len_at(p)), [1, 1, 2]);
            let first = q.pop(now).unwrap();
            assert_eq!(first.priority, P2);
            q.charge(first.vm, first.priority, Duration::ZERO);
            assert_eq!([P0, P1, P2].map(|p| q.len_at(p)), [1, 1, 1]);
            q.retain(|&vm| vm != 1);
            assert_eq!([P0, P1, P2].map(|p| q.len_at(p)), [1, 0, usize::from(first.vm == 1)]);
            assert_eq!(q.len(), 1 + usize::from(first.vm == 1));
            q.drain();
            assert_eq!([P0, P1, P2].map(|p| q.len_at(p)), [0, 0, 0]);
            assert!(q.is_empty());
        }
    }

    #[test]
    fn strict_orders_by_priority_then_arrival() {
        let now = Instant::now();
        let mut q = PoolQueue::new(Policy::Strict);
        q.push(0, P0, now, "low");
        q.push(0, P2, now, "high");
        q.push(0, P1, now, "medium");
        q.push(0, P2, now, "high2");
        let order: Vec<_> = std::iter::from_fn(|| q.pop(now)).map(|x| x.item).collect();
        assert_eq!(order, ["high", "high2", "medium", "low"]);
        assert!(q.is_empty());
    }

    #[test]
    fn aging_promotes_one_level_per_interval() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(100);
        let mut q = PoolQueue::new(Policy::Aging { interval });
        q.push(0, P0, t0, "old-low");
        q.push(0, P2, t0 + Duration::from_millis(150), "high");
        // At 150 ms the low one has gained one level (1) < 2: high goes first.
        assert_eq!(q.pop(t0 + Duration::from_millis(150)).unwrap().item, "high");
        q.push(0, P2, t0 + Duration::from_millis(200), "high-again");
        // At 200 ms it has gained two levels (2) and arrived earlier: it goes first.
        assert_eq!(q.pop(t0 + Duration::from_millis(200)).unwrap().item, "old-low");
        // The same queue under strict ordering would never have let it pass.
        let mut strict = PoolQueue::new(Policy::Strict);
        strict.push(0, P0, t0, "old-low");
        strict.push(0, P2, t0 + Duration::from_secs(60), "high");
        assert_eq!(strict.pop(t0 + Duration::from_secs(3600)).unwrap().item, "high");
    }

    /// Pop and run everything, charging `exec` per job; returns the VMs in run order.
    fn run_all(q: &mut PoolQueue<&'static str>, now: Instant, exec: Duration) -> Vec<usize> {
        let mut order = Vec::new();
        while let Some(job) = q.pop(now) {
            order.push(job.vm);
            q.charge(job.vm, job.priority, exec);
        }
        order
    }

    #[test]
    fn fair_splits_a_level_by_weight() {
        let now = Instant::now();
        let mut q = PoolQueue::with_weights(Policy::Fair, [1, 3]);
        for _ in 0..40 {
            q.push(0, P1, now, "a");
            q.push(1, P1, now, "b");
        }
        // While both have work, B runs three jobs for each of A's.
        let order = run_all(&mut q, now, Duration::from_millis(5));
        let first = &order[..40];
        let b = first.iter().filter(|&&vm| vm == 1).count();
        assert_eq!(b, 30, "{first:?}");
        assert_eq!(order.len(), 80, "nothing lost");
    }

    #[test]
    fn fair_lets_a_late_vm_in_at_once_without_credit_for_idling() {
        let now = Instant::now();
        let mut q = PoolQueue::with_weights(Policy::Fair, [1, 1]);
        for _ in 0..8 {
            q.push(0, P0, now, "a");
        }
        for _ in 0..5 {
            let job = q.pop(now).unwrap();
            q.charge(job.vm, job.priority, Duration::from_millis(20));
        }
        // B arrives after A ran 100 ms: served within a couple of jobs, then the two
        // alternate (B got no credit for the time it was idle).
        q.push(1, P0, now, "b");
        q.push(1, P0, now, "b");
        let order = run_all(&mut q, now, Duration::from_millis(20));
        assert_eq!(order, [0, 1, 0, 1, 0], "{order:?}");
    }

    #[test]
    fn fair_is_still_strict_between_priorities_and_fifo_within_a_vm() {
        let now = Instant::now();
        let mut q = PoolQueue::with_weights(Policy::Fair, [1, 1, 1]);
        q.push(0, P0, now, "low-1");
        q.push(1, P2, now, "high-1");
        q.push(0, P0, now, "low-2");
        q.push(2, P1, now, "medium");
        q.push(1, P2, now, "high-2");
        let mut order = Vec::new();
        while let Some(job) = q.pop(now) {
            order.push(job.item);
            q.charge(job.vm, job.priority, Duration::from_millis(1));
        }
        assert_eq!(order, ["high-1", "high-2", "medium", "low-1", "low-2"]);
    }

    #[test]
    fn fair_retain_drops_one_vm_and_the_other_goes_on() {
        let now = Instant::now();
        let mut q = PoolQueue::with_weights(Policy::Fair, [1, 1]);
        for i in 0..3 {
            q.push(0, P1, now, if i == 0 { "a0" } else { "a" });
            q.push(1, P1, now, "b");
        }
        q.retain(|item| *item != "b");
        assert_eq!(q.len(), 3);
        let order = run_all(&mut q, now, Duration::from_millis(1));
        assert_eq!(order, [0, 0, 0]);
        q.push(1, P1, now, "b");
        assert_eq!(run_all(&mut q, now, Duration::from_millis(1)), [1]);
        assert!(q.is_empty());
    }

    proptest! {
        /// Fair pools lose and duplicate nothing, keep each VM's requests in arrival
        /// order, and serve a higher level first whatever the virtual runtimes.
        #[test]
        fn fair_pops_everything_once_in_per_vm_order(
            ops in prop::collection::vec((0usize..4, any::<bool>(), 0u64..5_000), 1..200)
        ) {
            let now = Instant::now();
            let mut q = PoolQueue::with_weights(Policy::Fair, [1, 2, 3, 1]);
            let mut popped: Vec<(usize, u8, usize)> = Vec::new();
            // Priorities waiting when each pop happened: the pop must take the highest.
            let mut waiting = [0usize; 3];
            let mut wrong_level = 0;
            let mut take = |q: &mut PoolQueue<(usize, u8)>, exec: u64, waiting: &mut [usize; 3]| {
                if let Some(job) = q.pop(now) {
                    let level = job.priority.index();
                    if waiting[level + 1..].iter().any(|&n| n > 0) {
                        wrong_level += 1;
                    }
                    waiting[level] -= 1;
                    popped.push((job.vm, job.priority.get(), job.item.0));
                    q.charge(job.vm, job.priority, Duration::from_micros(exec));
                }
            };
            for (i, (vm, pop_now, exec)) in ops.iter().enumerate() {
                // A VM has one priority (its configured one); VMs 0 and 3 share one.
                let priority = (*vm % 3) as u8;
                q.push(*vm, Priority::new(priority).unwrap(), now, (i, priority));
                waiting[usize::from(priority)] += 1;
                if *pop_now {
                    take(&mut q, *exec, &mut waiting);
                }
            }
            while !q.is_empty() {
                take(&mut q, 1_000, &mut waiting);
            }
            prop_assert_eq!(wrong_level, 0);
            prop_assert_eq!(popped.len(), ops.len());
            let mut seen: Vec<usize> = popped.iter().map(|p| p.2).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..ops.len()).collect::<Vec<_>>());
            for vm in 0..4 {
                let mine: Vec<usize> = popped.iter().filter(|p| p.0 == vm).map(|p| p.2).collect();
                prop_assert!(mine.windows(2).all(|w| w[0] < w[1]), "vm {} out of order", vm);
            }
        }

        /// For any interleaving of inserts from several VMs with priorities 0–2, pops
        /// come out by priority, then by arrival.
        #[test]
        fn pops_are_sorted_by_priority_then_arrival(
            ops in prop::collection::vec((0u8..3, 0u32..8, any::<bool>()), 1..200)
        ) {
            let now = Instant::now();
            let mut q = PoolQueue::new(Policy::Strict);
            let mut popped = Vec::new();
            for (i, (priority, vm, pop_now)) in ops.iter().enumerate() {
                q.push(0, Priority::new(*priority).unwrap(), now, (i, *vm));
                if *pop_now {
                    // A pop mid-stream returns the best of what is queued so far.
                    let got = q.pop(now).unwrap();
                    popped.push(got);
                }
            }
            while let Some(x) = q.pop(now) {
                popped.push(x);
            }
            prop_assert_eq!(popped.len(), ops.len());
            // Check against a straightforward model: a sorted list.
            let mut model: Vec<(u8, u64)> = Vec::new();
            let mut expected = Vec::new();
            for (seq, (priority, _, pop_now)) in ops.iter().enumerate() {
                model.push((*priority, seq as u64));
                if *pop_now {
                    model.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                    expected.push(model.remove(0));
                }
            }
            model.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            expected.extend(model);
            let got: Vec<(u8, u64)> = popped.iter().map(|q| (q.priority.get(), q.seq)).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
