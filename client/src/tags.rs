//! The client's requests in flight, by tag: a slab indexed by the tag's low bits, each
//! entry in one state.

use vgpu_ring::Response;

/// Bits of a tag that index the table; the bits above are the slot's generation, which
/// changes each time the slot is reused, so a stale tag (a duplicate answer, or one for
/// a previous client of the region) never matches a newer request.
const INDEX_BITS: u32 = 16;
/// Requests in flight at most (answers not yet taken included).
pub(crate) const MAX_IN_FLIGHT: usize = 1 << INDEX_BITS;

/// Where a request in flight stands.
#[derive(Debug)]
pub(crate) enum State {
    /// Submitted; its caller waits for it.
    Waiting,
    /// Its answer arrived while the caller waited for another one.
    Answered(Response),
    /// Its caller gave up (timeout); the answer, when it comes, only frees its buffers.
    Abandoned,
}

/// A request in flight.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The request's position in the request ring.
    pub(crate) position: u32,
    /// Its input range in the arena (offset, allocated length).
    pub(crate) input: (u32, u32),
    /// Its output range in the arena (offset, capacity asked for).
    pub(crate) output: (u32, u32),
    pub(crate) state: State,
}

/// What became of a response handed to [`TagTable::deliver`].
pub(crate) enum Delivery {
    /// Kept for its caller.
    Kept,
    /// Its request was abandoned: the entry is out of the table, to be retired.
    Abandoned(Entry),
    /// No request waits for it (a duplicate, or a previous client's answer): dropped.
    Dropped,
}

/// The entry of `tag` in `slots`, if it is in flight.
fn entry_of(slots: &mut [(u32, Option<Entry>)], tag: u32) -> Option<&mut Entry> {
    match slots.get_mut((tag & (MAX_IN_FLIGHT as u32 - 1)) as usize) {
        Some((held, entry)) if *held == tag => entry.as_mut(),
        _ => None,
    }
}

/// The requests in flight.
pub(crate) struct TagTable {
    /// Slot `i`: the tag it holds or will hand out next (index `i`), and its request.
    slots: Vec<(u32, Option<Entry>)>,
    /// Indices of empty slots, the last freed on top (its lines are warm).
    free: Vec<u32>,
    /// Slots in use.
    live: usize,
    /// The generation new slots start with.
    seed: u32,
    /// Entries in [`State::Answered`]: while 0, looking an answer up costs nothing.
    answered: usize,
}

impl TagTable {
    /// An empty table whose tags start at generation `seed` (different per client, so
    /// that answers a predecessor left behind are not taken for ours).
    pub(crate) fn new(seed: u32) -> Self {
        Self { slots: Vec::new(), free: Vec::new(), live: 0, seed, answered: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// The tag the next [`insert`](Self::insert) uses; `None` when the table is full.
    pub(crate) fn next_tag(&self) -> Option<u32> {
        match self.free.last() {
            Some(&index) => Some(self.slots[index as usize].0),
            None if self.slots.len() < MAX_IN_FLIGHT => {
                Some((self.seed << INDEX_BITS) | self.slots.len() as u32)
            }
            None => None,
        }
    }

    /// Put `entry` in flight under [`next_tag`](Self::next_tag)'s tag, which it returns
    /// (`None`, and nothing stored, when the table is full).
    pub(crate) fn insert(&mut self, entry: Entry) -> Option<u32> {
        let tag = self.next_tag()?;
        match self.free.pop() {
            Some(index) => self.slots[index as usize].1 = Some(entry),
            None => self.slots.push((tag, Some(entry))),
        }
        self.live += 1;
        Some(tag)
    }

    /// Forget everything (after a ring reset); no tag handed out before matches again.
    pub(crate) fn clear(&mut self) {
        for index in 0..self.slots.len() {
            if self.slots[index].1.is_some() {
                self.remove(self.slots[index].0);
            }
        }
    }

    /// A response for some tag other than the one awaited.
    pub(crate) fn deliver(&mut self, response: Response) -> Delivery {
        let Some(entry) = entry_of(&mut self.slots, response.tag) else { return Delivery::Dropped };
        match entry.state {
            State::Waiting => {
                entry.state = State::Answered(response);
                self.answered += 1;
                Delivery::Kept
            }
            // A duplicate of an answer already kept.
            State::Answered(_) => Delivery::Dropped,
            State::Abandoned => {
                self.remove(response.tag).map_or(Delivery::Dropped, Delivery::Abandoned)
            }
        }
    }

    /// The kept answer of `tag`, if it arrived earlier.
    pub(crate) fn take_answer(&mut self, tag: u32) -> Option<Response> {
        if self.answered == 0 {
            return None;
        }
        let entry = entry_of(&mut self.slots, tag)?;
        match std::mem::replace(&mut entry.state, State::Waiting) {
            State::Answered(response) => {
                self.answered -= 1;
                Some(response)
            }
            other => {
                entry.state = other;
                None
            }
        }
    }

    /// Its caller gave up on `tag`.
    pub(crate) fn abandon(&mut self, tag: u32) {
        if let Some(entry) = entry_of(&mut self.slots, tag) {
            if matches!(entry.state, State::Answered(_)) {
                self.answered -= 1;
            }
            entry.state = State::Abandoned;
        }
    }

    /// Take `tag` out of the table.
    pub(crate) fn remove(&mut self, tag: u32) -> Option<Entry> {
        let index = tag & (MAX_IN_FLIGHT as u32 - 1);
        let (held, slot) = self.slots.get_mut(index as usize)?;
        if *held != tag {
            return None;
        }
        let entry = slot.take()?;
        // The next request in this slot gets the next generation.
        *held = held.wrapping_add(1 << INDEX_BITS);
        self.free.push(index);
        self.live -= 1;
        if matches!(entry.state, State::Answered(_)) {
            self.answered -= 1;
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry { position: 0, input: (0, 0), output: (0, 0), state: State::Waiting }
    }

    #[test]
    fn each_answer_is_kept_once_and_strays_are_dropped() {
        let mut table = TagTable::new(7);
        let one = table.insert(entry()).unwrap();
        let two = table.insert(entry()).unwrap();
        let answer = |tag| Response { tag, ..Response::default() };
        assert!(matches!(table.deliver(answer(one)), Delivery::Kept));
        assert!(matches!(table.deliver(answer(one)), Delivery::Dropped), "a duplicate");
        assert!(matches!(table.deliver(answer(two ^ 0x8000)), Delivery::Dropped), "nobody waits");
        assert!(matches!(table.deliver(answer(u32::MAX)), Delivery::Dropped), "past the slab");
        assert_eq!(table.take_answer(one).map(|r| r.tag), Some(one));
        assert_eq!(table.take_answer(one), None);
        table.abandon(two);
        assert!(matches!(table.deliver(answer(two)), Delivery::Abandoned(_)));
        assert_eq!(table.len(), 1);
        assert!(table.remove(one).is_some());
        assert_eq!(table.len(), 0);
    }

    /// A slot is reused with a new generation: the old tag's answer (a duplicate from a
    /// restarted mediator) never matches the new request, nor do tags from before a
    /// reset; the table holds at most MAX_IN_FLIGHT.
    #[test]
    fn reused_slots_and_resets_change_the_tag() {
        let mut table = TagTable::new(7);
        let old = table.insert(entry()).unwrap();
        assert!(table.remove(old).is_some());
        let new = table.insert(entry()).unwrap();
        assert_ne!(old, new);
        assert_eq!(old & 0xffff, new & 0xffff, "the same slot, reused");
        assert!(matches!(
            table.deliver(Response { tag: old, ..Response::default() }),
            Delivery::Dropped
        ));
        assert_eq!(table.remove(old).map(|e| e.position), None);
        table.clear();
        assert_eq!(table.len(), 0);
        assert!(entry_of(&mut table.slots, new).is_none(), "forgotten at the reset");
        let after = table.insert(entry()).unwrap();
        assert_ne!(after, new);
        for _ in 1..MAX_IN_FLIGHT {
            table.insert(entry()).unwrap();
        }
        assert_eq!(table.len(), MAX_IN_FLIGHT);
        assert_eq!(table.next_tag(), None);
        assert!(table.insert(entry()).is_none());
    }
}
