//! The client's requests in flight, by tag: one table, each entry in one state.
//!
//! A client numbers its requests with consecutive tags (from a per-process start), so
//! the tags in flight are nearly always one short run: the table is a window indexed by
//! `tag - first`, and finding a tag is a subtraction and a comparison with the full 32
//! bits (an answer whose tag is not in flight, such as one a crashed predecessor left
//! in the ring, still matches nothing). A request kept in flight far longer than those
//! after it (never waited for, or awaited last of thousands) leaves the window's front
//! for a map, so the window's length stays bounded by [`WINDOW`].

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use vgpu_ring::Response;

/// Most tags the window spans; beyond, its oldest entries move to the map.
const WINDOW: usize = 4096;

/// Hashes a tag as itself (for the map of the few entries that left the window).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Submitted; its caller waits for it.
    Waiting,
    /// Its answer arrived while the caller waited for another one (it waits in the
    /// table's answers, so that an entry stays a few words to move).
    Answered,
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
    /// The entries of tags `first..first + window.len()` (`None`: not in flight). Its
    /// front is always an entry, never `None`.
    window: VecDeque<Option<Entry>>,
    /// The tag of the window's front.
    first: u32,
    /// Entries that left the window's front, or came out of order (not by this
    /// client's numbering; kept correct all the same).
    apart: HashMap<u32, Entry, BuildHasherDefault<TagHasher>>,
    /// The answers of the entries in [`State::Answered`]: while empty, looking an
    /// answer up costs nothing.
    answers: HashMap<u32, Response, BuildHasherDefault<TagHasher>>,
    /// Entries in flight.
    len: usize,
}

impl TagTable {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, tag: u32, entry: Entry) {
        if self.window.is_empty() {
            self.first = tag;
        }
        if tag.wrapping_sub(self.first) as usize == self.window.len() {
            self.window.push_back(Some(entry));
            if self.window.len() > WINDOW
                && let Some(Some(oldest)) = self.window.pop_front()
            {
                self.apart.insert(self.first, oldest);
                self.first = self.first.wrapping_add(1);
                self.trim();
            }
        } else if let Some(old) = self.apart.insert(tag, entry) {
            // A tag reused while in flight (after 2³² requests): the old entry goes.
            self.forget(tag, &old);
            return;
        }
        self.len += 1;
    }

    /// Drop the window's leading `None`s.
    fn trim(&mut self) {
        while let Some(None) = self.window.front() {
            self.window.pop_front();
            self.first = self.first.wrapping_add(1);
        }
    }

    /// Drop the answer kept for `tag`'s `entry`, which leaves the table.
    fn forget(&mut self, tag: u32, entry: &Entry) {
        if entry.state == State::Answered {
            self.answers.remove(&tag);
        }
    }

    fn get_mut(&mut self, tag: u32) -> Option<&mut Entry> {
        if let Some(Some(entry)) = self.window.get_mut(tag.wrapping_sub(self.first) as usize) {
            Some(entry)
        } else if self.apart.is_empty() {
            None
        } else {
            self.apart.get_mut(&tag)
        }
    }

    /// Forget everything (after a ring reset).
    pub(crate) fn clear(&mut self) {
        self.window.clear();
        self.apart.clear();
        self.answers.clear();
        self.len = 0;
    }

    /// A response for some tag other than the one awaited.
    pub(crate) fn deliver(&mut self, response: Response) -> Delivery {
        let Some(entry) = self.get_mut(response.tag) else { return Delivery::Dropped };
        match entry.state {
            State::Waiting => {
                entry.state = State::Answered;
                self.answers.insert(response.tag, response);
                Delivery::Kept
            }
            // A duplicate of an answer already kept.
            State::Answered => Delivery::Dropped,
            State::Abandoned => {
                self.remove(response.tag).map_or(Delivery::Dropped, Delivery::Abandoned)
            }
        }
    }

    /// The kept answer of `tag`, if it arrived earlier.
    pub(crate) fn take_answer(&mut self, tag: u32) -> Option<Response> {
        if self.answers.is_empty() {
            return None;
        }
        let entry = self.get_mut(tag)?;
        if entry.state != State::Answered {
            return None;
        }
        entry.state = State::Waiting;
        self.answers.remove(&tag)
    }

    /// Its caller gave up on `tag`.
    pub(crate) fn abandon(&mut self, tag: u32) {
        let Some(entry) = self.get_mut(tag) else { return };
        let was_answered = entry.state == State::Answered;
        entry.state = State::Abandoned;
        if was_answered {
            self.answers.remove(&tag);
        }
    }

    /// Take `tag` out of the table.
    pub(crate) fn remove(&mut self, tag: u32) -> Option<Entry> {
        let at = tag.wrapping_sub(self.first) as usize;
        let entry = if at == 0 && !self.window.is_empty() {
            // The oldest (requests answered in order): off the front.
            let entry = self.window.pop_front().flatten()?;
            self.first = self.first.wrapping_add(1);
            self.trim();
            entry
        } else if let Some(slot @ Some(_)) = self.window.get_mut(at) {
            slot.take()?
        } else {
            self.apart.remove(&tag)?
        };
        self.forget(tag, &entry);
        self.len -= 1;
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> Entry {
        Entry { position: 0, input: (0, 0), output: (0, 0), state: State::Waiting }
    }

    fn at(position: u32) -> Entry {
        Entry { position, ..entry() }
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

    #[test]
    fn a_request_kept_far_longer_than_the_rest_leaves_the_window_and_is_still_found() {
        let mut table = TagTable::default();
        // Tags wrap around 2³² on the way.
        let first = u32::MAX - 9;
        table.insert(first, at(7));
        for i in 1..=3 * WINDOW as u32 {
            let tag = first.wrapping_add(i);
            table.insert(tag, at(i));
            assert_eq!(table.remove(tag).map(|e| e.position), Some(i));
            assert!(table.window.len() <= WINDOW, "the window stays bounded");
        }
        assert_eq!(table.len(), 1);
        assert!(table.window.is_empty() && table.apart.len() == 1, "it went to the map");
        let answer = Response { tag: first, out_len: 5, ..Response::default() };
        assert!(matches!(table.deliver(answer), Delivery::Kept));
        assert_eq!(table.take_answer(first).map(|r| r.out_len), Some(5));
        assert_eq!(table.remove(first).map(|e| e.position), Some(7));
        assert_eq!(table.len(), 0);
        // The window starts over at the next tag.
        table.insert(first.wrapping_add(1), at(1));
        assert_eq!(table.window.len(), 1);
    }

    #[test]
    fn tags_out_of_the_clients_order_are_found_too() {
        let mut table = TagTable::default();
        table.insert(10, at(10));
        table.insert(20, at(20));
        table.insert(11, at(11));
        table.insert(12, at(12));
        for tag in [20, 11, 10, 12] {
            assert_eq!(table.remove(tag).map(|e| e.position), Some(tag));
        }
        assert_eq!(table.len(), 0);
        assert!(table.remove(10).is_none());
    }

    /// What the model holds for a tag in flight.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Model {
        Waiting,
        Answered(u32),
        Abandoned,
    }

    proptest! {
        /// The window behaves as a map from tag to entry: against a `HashMap` model,
        /// under any mix of sends (consecutive tags from any start, so across 2³²),
        /// answers (in flight or stray, duplicates included), waits, give-ups and
        /// removals.
        #[test]
        fn the_window_behaves_as_a_map(
            start in any::<u32>(),
            ops in prop::collection::vec((0u8..6, any::<u16>(), any::<u32>()), 1..400),
        ) {
            let mut table = TagTable::default();
            let mut model: HashMap<u32, Model> = HashMap::new();
            let mut next = start;
            for (op, pick, value) in ops {
                // Mostly a tag in flight, sometimes one that is not.
                let live: Vec<u32> = model.keys().copied().collect();
                let tag = if live.is_empty() || pick % 8 == 0 {
                    start.wrapping_add(u32::from(pick))
                } else {
                    live[usize::from(pick) % live.len()]
                };
                match op {
                    0 | 1 => {
                        table.insert(next, at(next));
                        model.insert(next, Model::Waiting);
                        next = next.wrapping_add(1);
                    }
                    2 => {
                        let got = table.deliver(Response { tag, out_len: value, ..Response::default() });
                        match model.get(&tag).copied() {
                            None | Some(Model::Answered(_)) => prop_assert!(matches!(got, Delivery::Dropped)),
                            Some(Model::Waiting) => {
                                prop_assert!(matches!(got, Delivery::Kept));
                                model.insert(tag, Model::Answered(value));
                            }
                            Some(Model::Abandoned) => {
                                prop_assert!(matches!(got, Delivery::Abandoned(e) if e.position == tag));
                                model.remove(&tag);
                            }
                        }
                    }
                    3 => {
                        let got = table.take_answer(tag).map(|r| r.out_len);
                        match model.get(&tag).copied() {
                            Some(Model::Answered(v)) => {
                                prop_assert_eq!(got, Some(v));
                                model.insert(tag, Model::Waiting);
                            }
                            _ => prop_assert_eq!(got, None),
                        }
                    }
                    4 => {
                        table.abandon(tag);
                        if let Some(state) = model.get_mut(&tag) {
                            *state = Model::Abandoned;
                        }
                    }
                    _ => {
                        let got = table.remove(tag).map(|e| e.position);
                        prop_assert_eq!(got, model.remove(&tag).map(|_| tag));
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert!(table.window.front().is_none_or(Option::is_some), "front is an entry");
            }
        }
    }
}
