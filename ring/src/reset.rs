//! The ring reset handshake (layout 1.1), written once over a [`ControlBlock`]: the
//! mapped slot control block in production, [`HeapControl`] (loom atomics) in the models.
//!
//! A guest whose rings are poisoned (or that finds them in a state it cannot resume
//! from) asks the host to start them afresh:
//!
//! 1. guest: `t = load(reset_done, acquire) + 1; store(reset_request, t, release)`;
//! 2. host, at a point where it holds no request of the slot in hand: sees
//!    `load(reset_request, acquire) != reset_done`, drops the slot's queued and parked
//!    work, stores 0 into every entry's publication word (layout 2), the four ring
//!    indices and `host_status`, then `store(reset_done, t, release)`;
//! 3. guest: waits until `load(reset_done, acquire) == t`, then resumes from the
//!    (fresh) indices.
//!
//! The guest must not touch the rings between 1 and 3 (it holds the slot's lock, so no
//! other producer exists).

use crate::layout::{
    DOORBELL_OFFSET, NEED_WAKEUP_OFFSET, REQ_HEAD_OFFSET, REQ_TAIL_OFFSET, RESET_DONE_OFFSET,
    RESET_REQUEST_OFFSET, RESP_HEAD_OFFSET, RESP_TAIL_OFFSET, SlotControl,
};
use crate::sync::{AtomicU32, Ordering};
use core::mem::offset_of;

/// A 32-bit word of a slot control block that a handshake (reset, wake-up) touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlWord {
    /// Host status bits.
    HostStatus,
    /// Request ring producer index (guest).
    ReqHead,
    /// Guest's reset request.
    ResetRequest,
    /// Request ring consumer index (host).
    ReqTail,
    /// Host's reset acknowledgement.
    ResetDone,
    /// Host's wake-up flag (layout 1.2).
    NeedWakeup,
    /// Host's doorbell word (layout 1.2).
    Doorbell,
    /// Response ring producer index (host).
    RespHead,
    /// Response ring consumer index (guest).
    RespTail,
}

impl ControlWord {
    /// Every word, in control-block order (the declaration order).
    pub const ALL: [Self; 9] = [
        Self::HostStatus,
        Self::ReqHead,
        Self::ResetRequest,
        Self::ReqTail,
        Self::ResetDone,
        Self::NeedWakeup,
        Self::Doorbell,
        Self::RespHead,
        Self::RespTail,
    ];

    /// The word's byte offset in the control block.
    #[must_use]
    pub const fn offset(self) -> usize {
        match self {
            Self::ReqHead => REQ_HEAD_OFFSET,
            Self::ReqTail => REQ_TAIL_OFFSET,
            Self::RespHead => RESP_HEAD_OFFSET,
            Self::RespTail => RESP_TAIL_OFFSET,
            Self::HostStatus => offset_of!(SlotControl, host_status),
            Self::ResetRequest => RESET_REQUEST_OFFSET,
            Self::ResetDone => RESET_DONE_OFFSET,
            Self::NeedWakeup => NEED_WAKEUP_OFFSET,
            Self::Doorbell => DOORBELL_OFFSET,
        }
    }
}

/// Atomic access to the words of one slot control block.
pub trait ControlBlock {
    /// Load `word`.
    fn load(&self, word: ControlWord, order: Ordering) -> u32;
    /// Store `value` into `word`.
    fn store(&self, word: ControlWord, value: u32, order: Ordering);
    /// Zero the publication word of every entry of the slot's two rings (layout 2),
    /// with `order`: after a reset positions start at 0 again, and no word left from
    /// before may read as an entry published at one of them.
    fn clear_publication_words(&self, order: Ordering);
}

/// Guest: ask for a reset; returns the ticket to wait for with [`reset_completed`].
///
/// ```
/// use vgpu_ring::{ControlBlock, ControlWord, HeapControl, complete_reset, request_reset, reset_completed, take_reset_request};
/// let control = HeapControl::default();
/// let ticket = request_reset(&control);
/// assert!(!reset_completed(&control, ticket));
/// let asked = take_reset_request(&control).unwrap();
/// complete_reset(&control, asked);
/// assert!(reset_completed(&control, ticket));
/// ```
pub fn request_reset<C: ControlBlock>(control: &C) -> u32 {
    // Relaxed: only the value is needed. A guest that reset before already synchronised
    // with that acknowledgement in `reset_completed`, and a new client process is
    // ordered after the previous one by the slot's lock.
    let ticket = control.load(ControlWord::ResetDone, Ordering::Relaxed).wrapping_add(1);
    // SYNC: Release pairs with the host's Acquire load in `take_reset_request`: the
    // guest's last writes to the slot (indices, entries) happen before the host's fresh
    // ones.
    control.store(ControlWord::ResetRequest, ticket, Ordering::Release);
    ticket
}

/// Guest: whether the host has carried out reset `ticket`; once it has, the four ring
/// indices are fresh (all zero) for the guest's next loads.
pub fn reset_completed<C: ControlBlock>(control: &C, ticket: u32) -> bool {
    // SYNC: Acquire pairs with the Release store of `reset_done` in `complete_reset`:
    // the host's stores of the fresh indices are visible once the ticket is.
    control.load(ControlWord::ResetDone, Ordering::Acquire) == ticket
}

/// Host: the reset the guest asks for, if any (a request word that differs from the
/// last one carried out). The host owns `reset_done`, so any other value is a request;
/// a hostile guest can only make the host reset its own rings.
pub fn take_reset_request<C: ControlBlock>(control: &C) -> Option<u32> {
    // SYNC: Acquire pairs with the Release store in `request_reset`.
    let asked = control.load(ControlWord::ResetRequest, Ordering::Acquire);
    (asked != control.load(ControlWord::ResetDone, Ordering::Relaxed)).then_some(asked)
}

/// Host: carry out reset `ticket`: zero the entries' publication words, the four ring
/// indices and the host status, then acknowledge. The caller must hold nothing of the
/// slot's rings in hand and must build new ring endpoints afterwards.
pub fn complete_reset<C: ControlBlock>(control: &C, ticket: u32) {
    // Relaxed, as the indices: ordered before the guest's next loads by the Release
    // store of `reset_done` below.
    control.clear_publication_words(Ordering::Relaxed);
    for word in
        [ControlWord::ReqHead, ControlWord::ReqTail, ControlWord::RespHead, ControlWord::RespTail]
    {
        control.store(word, 0, Ordering::Relaxed);
    }
    control.store(ControlWord::HostStatus, 0, Ordering::Relaxed);
    // SYNC: Release pairs with the guest's Acquire load in `reset_completed`.
    control.store(ControlWord::ResetDone, ticket, Ordering::Release);
}

/// A control block in private memory (loom atomics under `cfg(loom)`), for models and
/// tests of the handshake.
#[derive(Debug)]
pub struct HeapControl {
    words: [AtomicU32; ControlWord::ALL.len()],
}

impl Default for HeapControl {
    fn default() -> Self {
        Self { words: core::array::from_fn(|_| AtomicU32::new(0)) }
    }
}

impl HeapControl {
    fn word(&self, word: ControlWord) -> &AtomicU32 {
        // One word per variant, in declaration order.
        &self.words[word as usize]
    }
}

impl ControlBlock for HeapControl {
    fn load(&self, word: ControlWord, order: Ordering) -> u32 {
        self.word(word).load(order)
    }

    fn store(&self, word: ControlWord, value: u32, order: Ordering) {
        self.word(word).store(value, order);
    }

    /// A control block alone has no rings: nothing to clear.
    fn clear_publication_words(&self, _order: Ordering) {}
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_reset_zeroes_the_indices_and_status_and_acknowledges() {
        let control = HeapControl::default();
        for word in ControlWord::ALL {
            control.store(word, 7, Ordering::Relaxed);
        }
        let ticket = request_reset(&control);
        assert_eq!(ticket, 8, "reset_done + 1");
        assert_eq!(take_reset_request(&control), Some(8));
        complete_reset(&control, 8);
        assert!(reset_completed(&control, ticket));
        for word in [
            ControlWord::ReqHead,
            ControlWord::ReqTail,
            ControlWord::RespHead,
            ControlWord::RespTail,
            ControlWord::HostStatus,
        ] {
            assert_eq!(control.load(word, Ordering::Relaxed), 0, "{word:?}");
        }
        assert_eq!(take_reset_request(&control), None, "carried out once");
    }

    #[test]
    fn any_request_word_other_than_the_last_done_is_a_request() {
        let control = HeapControl::default();
        assert_eq!(take_reset_request(&control), None);
        control.store(ControlWord::ResetRequest, 0xdead_beef, Ordering::Relaxed);
        assert_eq!(take_reset_request(&control), Some(0xdead_beef));
        // Tickets wrap.
        let control = HeapControl::default();
        control.store(ControlWord::ResetDone, u32::MAX, Ordering::Relaxed);
        assert_eq!(request_reset(&control), 0);
    }
}
