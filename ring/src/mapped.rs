//! The ring backend over a mapped region.

use crate::layout::{REQ_HEAD_OFFSET, RESET_REQUEST_OFFSET, Request, Response};
use crate::region::{Region, RegionError, RingKind};
use crate::ring::{Consumer, Producer, RingBackend};
use crate::sync::Ordering;
use crate::sync::mapped::AtomicU32;
use core::marker::PhantomData;
use core::mem::size_of;
use std::sync::Arc;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A [`RingBackend`] over one ring of one slot of a mapped [`Region`].
///
/// Holds the region alive; the pointers were bounds- and alignment-checked when the
/// backend was built, and every entry is copied in or out exactly once.
pub struct MappedRing<E> {
    region: Arc<Region>,
    slot: u32,
    head: *const AtomicU32,
    tail: *const AtomicU32,
    entries: *mut u8,
    capacity: u32,
    _entry: PhantomData<E>,
}

impl<E> core::fmt::Debug for MappedRing<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MappedRing")
            .field("region", &self.region.path())
            .field("slot", &self.slot)
            .field("capacity", &self.capacity)
            .finish()
    }
}

// SAFETY: the raw pointers point into a mapping owned by the Arc'd region, which lives
// as long as this value; they are only used through atomics and copies, so moving the
// endpoint to another thread is sound.
unsafe impl<E: Send> Send for MappedRing<E> {}

impl<E: FromBytes + IntoBytes + Immutable + Copy> MappedRing<E> {
    pub(crate) fn new(
        region: &Arc<Region>,
        slot: u32,
        kind: RingKind,
    ) -> Result<Self, RegionError> {
        if !region.is_writable() {
            return Err(RegionError::ReadOnly);
        }
        let geometry = region.geometry();
        let base = region.check_slot(slot)?;
        let capacity = geometry.ring_entries;
        let entries_offset = base + kind.entries_offset(&geometry);
        // Check the whole entry array lies inside the mapping, and its alignment.
        let last = entries_offset + (capacity as usize - 1) * size_of::<E>();
        region.ptr_at::<E>(last)?;
        Ok(Self {
            head: region.atomic_u32(base + kind.head_offset())?,
            tail: region.atomic_u32(base + kind.tail_offset())?,
            entries: region.ptr_at::<E>(entries_offset)?.cast(),
            region: Arc::clone(region),
            slot,
            capacity,
            _entry: PhantomData,
        })
    }

    /// The region this ring lives in.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// The slot this ring belongs to.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    fn head(&self) -> &AtomicU32 {
        // SAFETY: checked in `new`, kept alive by `self.region`.
        unsafe { &*self.head }
    }

    fn tail(&self) -> &AtomicU32 {
        // SAFETY: checked in `new`, kept alive by `self.region`.
        unsafe { &*self.tail }
    }
}

// SAFETY: the entry array was bounds- and alignment-checked in `new` for `capacity`
// entries, capacity comes from a validated geometry (a power of two) and never changes.
unsafe impl<E: FromBytes + IntoBytes + Immutable + Copy> RingBackend for MappedRing<E> {
    type Entry = E;

    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn load_head(&self, order: Ordering) -> u32 {
        self.head().load(order)
    }

    fn store_head(&self, value: u32, order: Ordering) {
        self.head().store(value, order);
    }

    fn load_tail(&self, order: Ordering) -> u32 {
        self.tail().load(order)
    }

    fn store_tail(&self, value: u32, order: Ordering) {
        self.tail().store(value, order);
    }

    #[inline]
    unsafe fn write(&self, slot: u32, entry: &E) {
        debug_assert!(slot < self.capacity);
        // SAFETY: slot < capacity (caller), so the destination lies in the checked
        // entry array; the source is private memory.
        unsafe {
            let dst = self.entries.add(slot as usize * size_of::<E>());
            core::ptr::copy_nonoverlapping(entry.as_bytes().as_ptr(), dst, size_of::<E>());
        }
    }

    #[cfg(all(target_arch = "x86_64", not(miri)))]
    fn prefetch_read(&self, slot: u32) {
        if slot < self.capacity {
            let line = self.entries.wrapping_add(slot as usize * size_of::<E>());
            // SAFETY: PREFETCHT0 (SSE, on every x86-64 CPU) is a hint that neither faults
            // nor changes memory nor orders anything, whatever the address (this one is
            // inside the entry array).
            unsafe {
                core::arch::asm!(
                    "prefetcht0 [{0}]",
                    in(reg) line,
                    options(nostack, readonly, preserves_flags)
                );
            }
        }
    }

    #[inline]
    unsafe fn read(&self, slot: u32) -> E {
        debug_assert!(slot < self.capacity);
        let mut entry = E::new_zeroed();
        // SAFETY: slot < capacity (caller), so the source lies in the checked entry
        // array; the copy goes to private memory exactly once and any bytes are a valid
        // E (FromBytes), so a hostile peer writing concurrently yields garbage to
        // validate, never an invalid value or a second fetch.
        unsafe {
            let src = self.entries.add(slot as usize * size_of::<E>());
            core::ptr::copy_nonoverlapping(src, entry.as_mut_bytes().as_mut_ptr(), size_of::<E>());
        }
        entry
    }
}

/// The guest's end of a slot's request ring.
pub type RequestProducer = Producer<MappedRing<Request>>;
/// The host's end of a slot's request ring.
pub type RequestConsumer = Consumer<MappedRing<Request>>;
/// The host's end of a slot's response ring.
pub type ResponseProducer = Producer<MappedRing<Response>>;
/// The guest's end of a slot's response ring.
pub type ResponseConsumer = Consumer<MappedRing<Response>>;

/// The two ring endpoints a guest uses in one slot.
#[derive(Debug)]
pub struct GuestEndpoints {
    /// Pushes requests.
    pub requests: RequestProducer,
    /// Pops responses.
    pub responses: ResponseConsumer,
}

/// The two ring endpoints the host uses in one slot.
#[derive(Debug)]
pub struct HostEndpoints {
    /// Pops requests.
    pub requests: RequestConsumer,
    /// Pushes responses.
    pub responses: ResponseProducer,
}

/// A cheap, read-only view of one ring's producer index, for a host polling many
/// rings: loading it touches only the index's own cache line, so an idle VM costs one
/// load per pass. Keeps the region mapped.
#[derive(Debug, Clone)]
pub struct HeadWatch {
    /// The request ring's producer index (`req_head`); the slot's reset request word
    /// follows it on the same line. Two words, not two pointers: the host keeps one
    /// watch per VM in a compact array that every pass scans.
    head: *const AtomicU32,
    _region: Arc<Region>,
}

// SAFETY: the pointer targets an atomic in a mapping kept alive by the Arc; it is only
// loaded atomically, so sharing or moving the watch across threads is sound.
unsafe impl Send for HeadWatch {}

impl HeadWatch {
    /// The producer index now (Relaxed: a hint only; the consumer's own Acquire load
    /// orders the entries before they are read).
    #[must_use]
    #[inline]
    pub fn load(&self) -> u32 {
        // SAFETY: checked when the ring was built, kept alive by `_region`.
        unsafe { &*self.head }.load(Ordering::Relaxed)
    }

    /// The slot's reset request word (layout 1.1), on the same line as the request
    /// ring's producer index, so polling it costs no extra cache miss. Relaxed: a hint
    /// only; [`take_reset_request`](crate::take_reset_request) loads it with Acquire
    /// before the host acts on it.
    #[must_use]
    #[inline]
    pub fn reset_request(&self) -> u32 {
        const DISTANCE: usize = RESET_REQUEST_OFFSET - REQ_HEAD_OFFSET;
        // SAFETY: `head` is a request ring's `req_head` (only `MappedRing<Request>` makes
        // watches), and the reset request word lies DISTANCE bytes after it in the same
        // control block, which `Region::slot`/`MappedRing::new` checked to be mapped and
        // aligned; kept alive by `_region`.
        unsafe { &*self.head.byte_add(DISTANCE) }.load(Ordering::Relaxed)
    }
}

impl MappedRing<Request> {
    /// A [`HeadWatch`] on this request ring's producer index and its slot's reset
    /// request word.
    #[must_use]
    pub fn head_watch(&self) -> HeadWatch {
        HeadWatch { head: self.head, _region: Arc::clone(&self.region) }
    }
}
