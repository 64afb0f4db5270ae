//! The wake-up flag protocol (layout 1.2), written once over a [`ControlBlock`]: a host
//! dispatcher that found no work sleeps on the VM's doorbell, and a guest rings the
//! doorbell only when the host asked for it, so a busy side never pays for a
//! notification (io_uring's `IORING_SQ_NEED_WAKEUP`, vhost's `vhost_enable_notify`).
//!
//! Host, about to sleep ([`request_wakeup`] on each slot, then [`fence_before_rescan`]):
//!
//! 1. `store(need_wakeup, 1, relaxed)` for every slot it will sleep on;
//! 2. `fence(seq_cst)`;
//! 3. load the publication word of every such slot's next request (layout 2): work
//!    there → [`cancel_wakeup`] and serve; otherwise sleep until a doorbell rings (or a
//!    timeout), then [`cancel_wakeup`] and scan.
//!
//! Guest, after publishing requests ([`wakeup_wanted`]):
//!
//! 1. the ring's publication: each entry's word (release), then `req_head`;
//! 2. `load(doorbell, relaxed)`: no doorbell → nothing more (the host polls the slot);
//! 3. `fence(seq_cst)`;
//! 4. `load(need_wakeup, relaxed)`: non-zero → write the `doorbell` value to the device.
//!
//! The two fences order each side's store before its load in one total order, so at
//! least one side sees the other's store: the host sees the request, or the guest sees
//! the flag and rings. With either fence missing both may read the old values (the
//! store-buffering outcome) and the request waits for the host's timeout. The flag is
//! host-written and only advisory: a guest that writes it, or rings without reason, only
//! wakes the dispatcher of its own pool, which then finds nothing.

use crate::layout::SlotControl;
use crate::reset::{ControlBlock, ControlWord};
use crate::sync::{Ordering, fence};

/// Guest, after publishing requests: the value to write to the doorbell if the host is
/// (about to be) asleep, `None` if it is awake or the VM has no doorbell.
///
/// ```
/// use vgpu_ring::{ControlBlock, ControlWord, HeapControl, SlotControl, cancel_wakeup,
///     fence_before_rescan, publish_doorbell, request_wakeup, wakeup_wanted};
/// use std::sync::atomic::Ordering;
/// let control = HeapControl::default();
/// publish_doorbell(&control, Some(0x0000_0000));  // host peer 0, vector 0
/// assert_eq!(wakeup_wanted(&control), None, "the host is awake");
/// request_wakeup(&control);
/// fence_before_rescan();
/// // The host found nothing and sleeps; the guest publishes and must ring.
/// control.store(ControlWord::ReqHead, 1, Ordering::Relaxed);
/// assert_eq!(wakeup_wanted(&control), Some(0));
/// cancel_wakeup(&control);
/// assert_eq!(wakeup_wanted(&control), None);
/// ```
pub fn wakeup_wanted<C: ControlBlock>(control: &C) -> Option<u32> {
    // Relaxed: the host published the doorbell before it ever set the flag; a VM
    // without one (an `ivshmem-plain` device) is polled, and its guest pays no fence.
    let bell = control.load(ControlWord::Doorbell, Ordering::Relaxed);
    if bell & SlotControl::DOORBELL_PRESENT == 0 {
        return None;
    }
    // SYNC: SeqCst fence pairs with the host's fence in `fence_before_rescan`: the
    // guest's publication stores and the host's `need_wakeup` store are ordered before
    // the loads that follow them, so the host sees the request or the guest sees the
    // flag.
    fence(Ordering::SeqCst);
    (control.load(ControlWord::NeedWakeup, Ordering::Relaxed) != 0)
        .then_some(bell & !SlotControl::DOORBELL_PRESENT)
}

/// Guest: whether the host has published a doorbell for this VM, that is, sleeps on
/// it when idle. A guest that cannot ring it (no access to the device's Doorbell
/// register) is then served only at the host's timed wake-ups after an idle spell.
///
/// ```
/// use vgpu_ring::{HeapControl, doorbell_published, publish_doorbell};
/// let control = HeapControl::default();
/// assert!(!doorbell_published(&control), "polled");
/// publish_doorbell(&control, Some(0x0001_0000)); // host peer 1, vector 0
/// assert!(doorbell_published(&control));
/// ```
pub fn doorbell_published<C: ControlBlock>(control: &C) -> bool {
    // Relaxed: advisory (it only decides whether a client warns).
    control.load(ControlWord::Doorbell, Ordering::Relaxed) & SlotControl::DOORBELL_PRESENT != 0
}

/// Host: ask the guest to ring the doorbell after its next publication. Follow the
/// calls for every slot the host sleeps on with one [`fence_before_rescan`] and a last
/// look at their request rings.
pub fn request_wakeup<C: ControlBlock>(control: &C) {
    // Relaxed: ordered before the rescan by the fence in `fence_before_rescan`.
    control.store(ControlWord::NeedWakeup, 1, Ordering::Relaxed);
}

/// Host: the fence between [`request_wakeup`] and the last scan before sleeping.
pub fn fence_before_rescan() {
    // SYNC: SeqCst fence pairs with the guest's fence in `wakeup_wanted` (see there).
    fence(Ordering::SeqCst);
}

/// Host: the guest need not ring any more (the host is awake and scans the slot).
pub fn cancel_wakeup<C: ControlBlock>(control: &C) {
    // Relaxed: a guest that still sees the flag rings once for nothing.
    control.store(ControlWord::NeedWakeup, 0, Ordering::Relaxed);
}

/// Host: publish whether the VM has a doorbell the host listens on, and the value that
/// rings it; `None` clears it (the host polls the slot instead).
pub fn publish_doorbell<C: ControlBlock>(control: &C, value: Option<u32>) {
    let word =
        value.map_or(0, |v| (v & !SlotControl::DOORBELL_PRESENT) | SlotControl::DOORBELL_PRESENT);
    // Relaxed: the guest reads it only after seeing `need_wakeup`, which the host sets
    // later in program order; a stale 0 costs a missed ring, bounded by the host's
    // sleep timeout, and only at the first sleep after an attach.
    control.store(ControlWord::Doorbell, word, Ordering::Relaxed);
}
