//! A pool's queue: priority 2 > 1 > 0, FIFO within a priority by arrival sequence, and
//! optionally aging.
//!
//! There are only three priorities, so the queue is three FIFO lists: insert and pop are
//! O(1) (a binary heap would be O(log n)). Within one list the head is the oldest entry,
//! which is also the most aged, so the best entry is always one of the three heads:
//! the one with the highest effective priority, ties going to the earliest arrival.

use std::collections::VecDeque;
use std::time::Instant;
use vgpu_config::Policy;
use vgpu_ring::Priority;

/// One waiting item with its bookkeeping.
#[derive(Debug, Clone)]
pub struct Queued<T> {
    /// Arrival sequence number (monotonic per pool, taken when first seen).
    pub seq: u64,
    /// Base priority.
    pub priority: Priority,
    /// When it was queued.
    pub arrived: Instant,
    /// The item.
    pub item: T,
}

/// A pool's priority queue.
#[derive(Debug)]
pub struct PoolQueue<T> {
    levels: [VecDeque<Queued<T>>; 3],
    next_seq: u64,
    policy: Policy,
}

impl<T> PoolQueue<T> {
    /// An empty queue ordered by `policy`.
    ///
    /// ```
    /// use std::time::Instant;
    /// use vgpu_config::Policy;
    /// use vgpu_mediator::queue::PoolQueue;
    /// use vgpu_ring::Priority;
    /// let mut queue = PoolQueue::new(Policy::Strict);
    /// let now = Instant::now();
    /// queue.push(Priority::LOW, now, "TEST_LOW");
    /// queue.push(Priority::HIGH, now, "TEST_HIGH");
    /// assert_eq!(queue.pop(now).unwrap().item, "TEST_HIGH");
    /// ```
    #[must_use]
    pub fn new(policy: Policy) -> Self {
        Self { levels: Default::default(), next_seq: 0, policy }
    }

    /// Number of waiting items.
    #[must_use]
    pub fn len(&self) -> usize {
        self.levels.iter().map(VecDeque::len).sum()
    }

    /// Whether nothing waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(VecDeque::is_empty)
    }

    /// Queue `item` with `priority`, arriving `now`; returns its sequence number.
    pub fn push(&mut self, priority: Priority, now: Instant, item: T) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.levels[priority.index()].push_back(Queued { seq, priority, arrived: now, item });
        seq
    }

    fn effective(&self, q: &Queued<T>, now: Instant) -> u64 {
        let base = u64::from(q.priority.get());
        match self.policy {
            Policy::Strict => base,
            Policy::Aging { interval } => {
                let waited = now.saturating_duration_since(q.arrived).as_nanos();
                let gained = waited / interval.as_nanos().max(1);
                let top = u64::from(Priority::HIGH.get());
                base.saturating_add(u64::try_from(gained).unwrap_or(u64::MAX)).min(top)
            }
        }
    }

    /// Remove and return the best item at time `now`.
    pub fn pop(&mut self, now: Instant) -> Option<Queued<T>> {
        let best = (0..3)
            .filter_map(|level| self.levels[level].front().map(|q| (level, q)))
            .max_by(|(_, a), (_, b)| {
                self.effective(a, now).cmp(&self.effective(b, now)).then(b.seq.cmp(&a.seq))
            })
            .map(|(level, _)| level)?;
        self.levels[best].pop_front()
    }

    /// Keep only the items for which `keep` is true (e.g. drop one VM's work when its
    /// rings are reset); order is unchanged.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for level in &mut self.levels {
            level.retain(|q| keep(&q.item));
        }
    }

    /// Remove every item (at shutdown), in no particular order.
    pub fn drain(&mut self) -> impl Iterator<Item = Queued<T>> + '_ {
        self.levels.iter_mut().flat_map(|level| level.drain(..))
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
    fn strict_orders_by_priority_then_arrival() {
        let now = Instant::now();
        let mut q = PoolQueue::new(Policy::Strict);
        q.push(P0, now, "low");
        q.push(P2, now, "high");
        q.push(P1, now, "medium");
        q.push(P2, now, "high2");
        let order: Vec<_> = std::iter::from_fn(|| q.pop(now)).map(|x| x.item).collect();
        assert_eq!(order, ["high", "high2", "medium", "low"]);
        assert!(q.is_empty());
    }

    #[test]
    fn aging_promotes_one_level_per_interval() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(100);
        let mut q = PoolQueue::new(Policy::Aging { interval });
        q.push(P0, t0, "old-low");
        q.push(P2, t0 + Duration::from_millis(150), "high");
        // At 150 ms the low one has gained one level (1) < 2: high goes first.
        assert_eq!(q.pop(t0 + Duration::from_millis(150)).unwrap().item, "high");
        q.push(P2, t0 + Duration::from_millis(200), "high-again");
        // At 200 ms it has gained two levels (2) and arrived earlier: it goes first.
        assert_eq!(q.pop(t0 + Duration::from_millis(200)).unwrap().item, "old-low");
        // The same queue under strict ordering would never have let it pass.
        let mut strict = PoolQueue::new(Policy::Strict);
        strict.push(P0, t0, "old-low");
        strict.push(P2, t0 + Duration::from_secs(60), "high");
        assert_eq!(strict.pop(t0 + Duration::from_secs(3600)).unwrap().item, "high");
    }

    proptest! {
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
                q.push(Priority::new(*priority).unwrap(), now, (i, *vm));
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
