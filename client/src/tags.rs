//! The client's requests in flight: a slab indexed by tag, each entry in one state.
//!
//! Tags are the client's to choose. Each new request takes the next tag whose slot
//! (`tag & mask`) is free, so a request kept in flight far longer than the rest only
//! makes the counter skip its slot, and an entry is found by one index and checked by
//! its whole 32-bit tag: an answer whose tag is not in flight (a duplicate from a
//! restarted mediator, an answer to a previous client of the slot) finds no entry, as
//! with a map. The slab doubles when three quarters of its slots are in flight.

use crate::Ticket;
use vgpu_ring::Response;

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
    /// Its tag (the slab's index is only the tag's low bits).
    pub(crate) tag: u32,
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
pub(crate) struct TagTable {
    /// A power of two long; the entry of tag `t`, if in flight, is at `t & mask`.
    slots: Vec<Option<Entry>>,
    /// The tag the next request takes, unless its slot is taken.
    next: u32,
    len: usize,
    /// Entries in [`State::Answered`]: while 0, looking an answer up costs nothing.
    answered: usize,
}

impl TagTable {
    /// Slots to begin with: enough for a pipelined client's usual depth.
    const INITIAL: usize = 64;

    /// An empty table whose first tag is `first`.
    pub(crate) fn new(first: u32) -> Self {
        Self { slots: empty_slots(Self::INITIAL), next: first, len: 0, answered: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The index of `tag`'s slot in slots of length `len` (a power of two).
    #[inline]
    fn index(len: usize, tag: u32) -> usize {
        tag as usize & (len - 1)
    }

    /// The tag the next [`insert`](Self::insert) takes: the next one whose slot is free.
    #[inline]
    pub(crate) fn next_tag(&mut self) -> u32 {
        // At most three quarters full, so the search for a free slot stays short even
        // when requests complete out of order.
        if self.len * 4 >= self.slots.len() * 3 {
            self.grow();
        }
        while self.slots[Self::index(self.slots.len(), self.next)].is_some() {
            self.next = self.next.wrapping_add(1);
        }
        self.next
    }

    /// Twice the slots.
    #[cold]
    fn grow(&mut self) {
        double(&mut self.slots, |entry| entry.tag);
    }

    /// Put `entry` in flight under its tag, which [`next_tag`](Self::next_tag) returned.
    #[inline]
    pub(crate) fn insert(&mut self, entry: Entry) {
        let i = Self::index(self.slots.len(), entry.tag);
        debug_assert!(entry.tag == self.next && self.slots[i].is_none());
        self.next = entry.tag.wrapping_add(1);
        self.slots[i] = Some(entry);
        self.len += 1;
    }

    /// Forget everything (after a ring reset). The tags go on from where they were, so
    /// the old ring's answers cannot be mistaken for new ones.
    pub(crate) fn clear(&mut self) {
        self.slots.iter_mut().for_each(|slot| *slot = None);
        self.len = 0;
        self.answered = 0;
    }

    /// The entry of `tag`, if it is in flight (a function of the slots alone, so the
    /// counters stay free to update while it is held).
    #[inline]
    fn get_mut(slots: &mut [Option<Entry>], tag: u32) -> Option<&mut Entry> {
        slots[Self::index(slots.len(), tag)].as_mut().filter(|entry| entry.tag == tag)
    }

    /// A response for some tag other than the one awaited.
    pub(crate) fn deliver(&mut self, response: Response) -> Delivery {
        let Some(entry) = Self::get_mut(&mut self.slots, response.tag) else {
            return Delivery::Dropped;
        };
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
    #[inline]
    pub(crate) fn take_answer(&mut self, tag: u32) -> Option<Response> {
        if self.answered == 0 {
            return None;
        }
        let entry = Self::get_mut(&mut self.slots, tag)?;
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
        if let Some(entry) = Self::get_mut(&mut self.slots, tag) {
            if matches!(entry.state, State::Answered(_)) {
                self.answered -= 1;
            }
            entry.state = State::Abandoned;
        }
    }

    /// Take `tag` out of the table.
    #[inline]
    pub(crate) fn remove(&mut self, tag: u32) -> Option<Entry> {
        let i = Self::index(self.slots.len(), tag);
        let entry = self.slots[i].take_if(|entry| entry.tag == tag)?;
        self.len -= 1;
        if matches!(entry.state, State::Answered(_)) {
            self.answered -= 1;
        }
        Some(entry)
    }
}

/// `len` empty slots.
fn empty_slots<T>(len: usize) -> Vec<Option<T>> {
    std::iter::repeat_with(|| None).take(len).collect()
}

/// Twice the slots of a slab indexed by tag (`tag` of each value): each value moves to
/// its tag's index in the larger slab (two values apart in the old one stay apart: their
/// tags differ in the low bits).
fn double<T>(slots: &mut Vec<Option<T>>, tag: impl Fn(&T) -> u32) {
    let larger = slots.len() * 2;
    for value in std::mem::replace(slots, empty_slots(larger)).into_iter().flatten() {
        let i = TagTable::index(larger, tag(&value));
        slots[i] = Some(value);
    }
}

/// Tickets kept by tag, for code that knows its requests by tag (the C and Python
/// bindings): a slab indexed by the tag's low bits, no hashing. A client gives the
/// requests it has in flight tags that differ in their low bits (its own table of them
/// is such a slab), so this one grows, on a collision, to at most the size of the
/// client's table.
///
/// ```
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
/// # let mut client = vgpu_client::Client::attach(&options)?;
/// use vgpu_client::{Call, Tickets};
/// let mut tickets = Tickets::default();
/// let tags: Vec<u32> = (0..100)
///     .map(|_| {
///         let ticket = client.submit(&Call::noop("PING"))?;
///         let tag = ticket.tag();
///         tickets.insert(ticket);
///         Ok(tag)
///     })
///     .collect::<Result<_, vgpu_client::ClientError>>()?;
/// for tag in tags {
///     let ticket = tickets.remove(tag).expect("in flight");
///     client.wait(ticket, std::time::Duration::from_secs(5))?;
/// }
/// assert!(tickets.remove(0).is_none());
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Tickets {
    /// Empty, or a power of two long; the ticket of tag `t` is at `t & (len - 1)`.
    slots: Vec<Option<Ticket>>,
}

impl Tickets {
    /// Keep `ticket` (of this client's requests: see the type's documentation).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let mut tickets = vgpu_client::Tickets::default();
    /// let ticket = client.submit(&vgpu_client::Call::noop("PING"))?;
    /// let tag = ticket.tag();
    /// tickets.insert(ticket);
    /// client.wait(tickets.remove(tag).unwrap(), std::time::Duration::from_secs(5))?;
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn insert(&mut self, ticket: Ticket) {
        if self.slots.is_empty() {
            self.slots = empty_slots(TagTable::INITIAL);
        }
        loop {
            let i = TagTable::index(self.slots.len(), ticket.tag);
            let slot = &mut self.slots[i];
            // A ticket of the same tag can only be one of another client's: replaced.
            if slot.as_ref().is_none_or(|kept| kept.tag == ticket.tag) {
                *slot = Some(ticket);
                return;
            }
            double(&mut self.slots, |ticket| ticket.tag);
        }
    }

    /// The ticket of request `tag`, taken out, if it is kept.
    ///
    /// ```
    /// let mut tickets = vgpu_client::Tickets::default();
    /// assert!(tickets.remove(7).is_none());
    /// ```
    pub fn remove(&mut self, tag: u32) -> Option<Ticket> {
        if self.slots.is_empty() {
            return None;
        }
        let i = TagTable::index(self.slots.len(), tag);
        self.slots[i].take_if(|ticket| ticket.tag == tag)
    }

    /// Forget every ticket (the client was closed).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let mut tickets = vgpu_client::Tickets::default();
    /// let ticket = client.submit(&vgpu_client::Call::noop("PING"))?;
    /// let tag = ticket.tag();
    /// tickets.insert(ticket);
    /// tickets.clear();
    /// assert!(tickets.remove(tag).is_none());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn clear(&mut self) {
        self.slots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn entry(tag: u32) -> Entry {
        Entry { tag, position: 0, input: (0, 0), output: (0, 0), state: State::Waiting }
    }

    fn answer(tag: u32) -> Response {
        Response { tag, ..Response::default() }
    }

    #[test]
    fn each_answer_is_kept_once_and_strays_are_dropped() {
        let mut table = TagTable::new(1);
        for expected in [1, 2] {
            let tag = table.next_tag();
            assert_eq!(tag, expected);
            table.insert(entry(tag));
        }
        assert!(matches!(table.deliver(answer(1)), Delivery::Kept));
        assert!(matches!(table.deliver(answer(1)), Delivery::Dropped), "a duplicate");
        assert!(matches!(table.deliver(answer(9)), Delivery::Dropped), "nobody waits");
        let alias = 1 + TagTable::INITIAL as u32;
        assert!(matches!(table.deliver(answer(alias)), Delivery::Dropped), "same slot, not ours");
        assert_eq!(table.take_answer(1).map(|r| r.tag), Some(1));
        assert_eq!(table.take_answer(1), None);
        table.abandon(2);
        assert!(matches!(table.deliver(answer(2)), Delivery::Abandoned(_)));
        assert_eq!(table.len(), 1);
        assert!(table.remove(alias).is_none(), "same slot, not ours");
        assert!(table.remove(1).is_some());
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_request_kept_long_makes_later_tags_skip_its_slot() {
        let mut table = TagTable::new(u32::MAX - 2);
        let kept = table.next_tag();
        table.insert(entry(kept));
        // Many requests come and go past the one kept; none lands in its slot.
        for _ in 0..5 * TagTable::INITIAL {
            let tag = table.next_tag();
            let index = |tag| TagTable::index(table.slots.len(), tag);
            assert_ne!(index(tag), index(kept));
            table.insert(entry(tag));
            assert!(table.remove(tag).is_some());
        }
        assert_eq!(table.slots.len(), TagTable::INITIAL, "no growth for one long request");
        assert!(table.remove(kept).is_some());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Submit,
        /// Complete the in-flight request at this index (modulo their number).
        Complete(usize),
        Deliver(usize),
        Abandon(usize),
        Stray(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Submit),
            3 => any::<usize>().prop_map(Op::Complete),
            2 => any::<usize>().prop_map(Op::Deliver),
            1 => any::<usize>().prop_map(Op::Abandon),
            1 => any::<u32>().prop_map(Op::Stray),
        ]
    }

    proptest! {
        /// The slab answers every question as a map from tag to state would: tags
        /// unique while in flight, answers kept once, strays and aliases dropped.
        #[test]
        fn behaves_as_a_map(first in any::<u32>(), ops in proptest::collection::vec(op(), 1..400)) {
            let mut table = TagTable::new(first);
            // The model: tag -> (answered, abandoned).
            let mut model: HashMap<u32, (bool, bool)> = HashMap::new();
            let mut tags: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Submit => {
                        let tag = table.next_tag();
                        prop_assert!(!model.contains_key(&tag), "tag {tag} reused in flight");
                        table.insert(entry(tag));
                        prop_assert!(table.len() * 4 <= table.slots.len() * 3, "a free slot is near");
                        model.insert(tag, (false, false));
                        tags.push(tag);
                    }
                    Op::Complete(i) | Op::Deliver(i) | Op::Abandon(i) if tags.is_empty() => {
                        let _ = i;
                    }
                    Op::Complete(i) => {
                        let tag = tags.swap_remove(i % tags.len());
                        let (answered, abandoned) = model.remove(&tag).unwrap();
                        prop_assert_eq!(table.take_answer(tag).is_some(), answered && !abandoned);
                        prop_assert!(table.remove(tag).is_some());
                    }
                    Op::Deliver(i) => {
                        let tag = tags[i % tags.len()];
                        let (answered, abandoned) = model[&tag];
                        let delivery = table.deliver(answer(tag));
                        match delivery {
                            Delivery::Kept => prop_assert!(!answered && !abandoned),
                            Delivery::Dropped => prop_assert!(answered && !abandoned),
                            Delivery::Abandoned(e) => {
                                prop_assert!(abandoned);
                                prop_assert_eq!(e.tag, tag);
                                model.remove(&tag);
                                tags.retain(|&t| t != tag);
                            }
                        }
                        if let Some(state) = model.get_mut(&tag) {
                            state.0 = true;
                        }
                    }
                    Op::Abandon(i) => {
                        let tag = tags[i % tags.len()];
                        table.abandon(tag);
                        model.get_mut(&tag).unwrap().1 = true;
                    }
                    Op::Stray(tag) => {
                        if !model.contains_key(&tag) {
                            prop_assert!(matches!(table.deliver(answer(tag)), Delivery::Dropped));
                            prop_assert!(table.take_answer(tag).is_none());
                        }
                    }
                }
                prop_assert_eq!(table.len(), model.len());
            }
        }

        /// Tickets of a client's tags are found by tag as in a map, and the slab never
        /// grows past the client's own table.
        #[test]
        fn tickets_follow_the_clients_tags(
            first in any::<u32>(),
            ops in proptest::collection::vec(any::<Option<usize>>(), 1..600),
        ) {
            let mut table = TagTable::new(first);
            let mut tickets = Tickets::default();
            let mut tags: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    // Submit.
                    None => {
                        let tag = table.next_tag();
                        table.insert(entry(tag));
                        tickets.insert(Ticket { tag });
                        tags.push(tag);
                    }
                    // Complete one in flight.
                    Some(i) if !tags.is_empty() => {
                        let tag = tags.swap_remove(i % tags.len());
                        prop_assert_eq!(tickets.remove(tag).map(|t| t.tag), Some(tag));
                        prop_assert!(tickets.remove(tag).is_none(), "once");
                        prop_assert!(table.remove(tag).is_some());
                    }
                    Some(_) => prop_assert!(tickets.remove(first).is_none()),
                }
                prop_assert!(tickets.slots.len() <= table.slots.len().max(TagTable::INITIAL));
            }
        }
    }
}
