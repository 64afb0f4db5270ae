//! The client's requests in flight, by tag: one table, each entry in one state.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use vgpu_ring::Response;

/// Hashes a tag as itself: tags are sequential, so they spread over the table without
/// the cost of SipHash on the request path.
#[derive(Default)]
struct TagHasher(u64);

impl std::hash::Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u32(&mut self, tag: u32) {
        self.0 = u64::from(tag);
    }
}

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

/// The requests in flight.
#[derive(Default)]
pub(crate) struct TagTable {
    entries: HashMap<u32, Entry, BuildHasherDefault<TagHasher>>,
    /// Entries in [`State::Answered`]: while 0, looking an answer up costs nothing.
    answered: usize,
}

impl TagTable {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn insert(&mut self, tag: u32, entry: Entry) {
        self.entries.insert(tag, entry);
    }

    /// Forget everything (after a ring reset).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.answered = 0;
    }

    /// A response for some tag other than the one awaited.
    pub(crate) fn deliver(&mut self, response: Response) -> Delivery {
        let Some(entry) = self.entries.get_mut(&response.tag) else { return Delivery::Dropped };
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
        let entry = self.entries.get_mut(&tag)?;
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
        if let Some(entry) = self.entries.get_mut(&tag) {
            if matches!(entry.state, State::Answered(_)) {
                self.answered -= 1;
            }
            entry.state = State::Abandoned;
        }
    }

    /// Take `tag` out of the table.
    pub(crate) fn remove(&mut self, tag: u32) -> Option<Entry> {
        let entry = self.entries.remove(&tag)?;
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
        let mut table = TagTable::default();
        table.insert(1, entry());
        table.insert(2, entry());
        let answer = |tag| Response { tag, ..Response::default() };
        assert!(matches!(table.deliver(answer(1)), Delivery::Kept));
        assert!(matches!(table.deliver(answer(1)), Delivery::Dropped), "a duplicate");
        assert!(matches!(table.deliver(answer(9)), Delivery::Dropped), "nobody waits");
        assert_eq!(table.take_answer(1).map(|r| r.tag), Some(1));
        assert_eq!(table.take_answer(1), None);
        table.abandon(2);
        assert!(matches!(table.deliver(answer(2)), Delivery::Abandoned(_)));
        assert_eq!(table.len(), 1);
        assert!(table.remove(1).is_some());
        assert_eq!(table.len(), 0);
    }
}
