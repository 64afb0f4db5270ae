//! The ring backend over a mapped region.

use crate::hint;
use crate::layout::{REQ_HEAD_OFFSET, RESET_REQUEST_OFFSET, Request, Response, RingEntry};
use crate::region::{Region, RegionError, RingKind};
use crate::ring::{Consumer, Producer, RingBackend};
use crate::sync::Ordering;
use crate::sync::mapped::AtomicU32;
use core::marker::PhantomData;
use core::mem::size_of;
use std::sync::Arc;

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
    /// Ask for ownership of the line [`WRITE_AHEAD`] entries ahead of each write (see
    /// [`Producer::set_write_ahead`]).
    write_ahead: bool,
    _entry: PhantomData<E>,
}

/// How many entries ahead of the one it writes a producer that writes ahead asks for
/// ownership of that entry's line (`PREFETCHW`; see [`Producer::set_write_ahead`]).
const WRITE_AHEAD: u32 = 8;

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

impl<E: RingEntry> MappedRing<E> {
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
            // The host's responses: see `Producer::set_write_ahead`.
            write_ahead: kind == RingKind::Response && hint::has_prefetchw(),
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

    /// The publication word of slot `slot`.
    fn ready(&self, slot: u32) -> &AtomicU32 {
        assert!(slot < self.capacity, "slot {slot} outside the ring");
        // SAFETY: slot < capacity, and `entries` is the array of `capacity` entries
        // checked in `new`, kept alive by `self.region`.
        unsafe { ready_word::<E>(self.entries, slot) }
    }
}

impl<E: RingEntry> Producer<MappedRing<E>> {
    /// Whether each write asks ahead for ownership of the line of the entry 8 positions
    /// on (`PREFETCHW`, where the CPU has it; elsewhere this does nothing). Such a line
    /// was last read by the consumer, so a write to it waits until the consumer's copy
    /// is invalidated; asked for early, those waits overlap instead of filling the
    /// store buffer one after another. It pays where the consumer takes entries in
    /// bursts some way behind the producer, as the mediator does (on by default for
    /// the host's response ring; the client library turns it on for its requests),
    /// and costs where the consumer polls right behind every entry (measured:
    /// docs/PERFORMANCE.md). A hint only: it never faults, never changes memory and
    /// orders nothing.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vgpu_ring::{Geometry, PoolId, Priority, Region, Request, VmIdentity};
    /// let dir = tempfile::tempdir().unwrap();
    /// let geometry = Geometry { slot_count: 1, ring_entries: 8, arena_size: 4096 };
    /// let id = VmIdentity { vm_id: 3, pool: PoolId::new(b'A').unwrap(), priority: Priority::LOW };
    /// let region = Arc::new(Region::create(&dir.path().join("r"), 1 << 15, geometry, &[id.slot()], false)?);
    /// let mut guest = region.slot(0)?.guest_endpoints()?;
    /// guest.requests.set_write_ahead(true);
    /// for tag in 0..8 {
    ///     guest.requests.push(Request { tag, ..Request::default() }).unwrap();
    /// }
    /// let mut host = region.slot(0)?.host_endpoints()?;
    /// let tags: Vec<u32> = std::iter::from_fn(|| host.requests.take()).map(|r| r.tag).collect();
    /// assert_eq!(tags, [0, 1, 2, 3, 4, 5, 6, 7], "a hint: the entries are what was written");
    /// # Ok::<(), vgpu_ring::RegionError>(())
    /// ```
    pub fn set_write_ahead(&mut self, on: bool) {
        self.backend_mut().write_ahead = on && hint::has_prefetchw();
    }
}

/// The publication word of slot `slot` of the entry array at `entries`.
///
/// # Safety
///
/// `entries` is an entry array of `E` with more than `slot` entries, bounds- and
/// alignment-checked when its ring was built, and mapped for as long as `'a`.
unsafe fn ready_word<'a, E: RingEntry>(entries: *const u8, slot: u32) -> &'a AtomicU32 {
    // SAFETY: (caller) the entry lies in the array (entries are 64-byte aligned there),
    // and its word, 4-byte aligned at READY_OFFSET, inside it. Only ever accessed
    // atomically, by either side.
    unsafe { &*entries.add(slot as usize * size_of::<E>() + E::READY_OFFSET).cast() }
}

// SAFETY: the entry array was bounds- and alignment-checked in `new` for `capacity`
// entries, capacity comes from a validated geometry (a power of two) and never changes.
unsafe impl<E: RingEntry> RingBackend for MappedRing<E> {
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
    fn load_ready(&self, slot: u32, order: Ordering) -> u32 {
        self.ready(slot).load(order)
    }

    #[inline]
    fn store_ready(&self, slot: u32, value: u32, order: Ordering) {
        self.ready(slot).store(value, order);
    }

    #[inline]
    unsafe fn write(&self, slot: u32, entry: &E) {
        debug_assert!(slot < self.capacity);
        let bytes = entry.as_bytes();
        let word = E::READY_OFFSET..E::READY_OFFSET + 4;
        if self.write_ahead {
            let ahead = slot.wrapping_add(WRITE_AHEAD) & (self.capacity - 1);
            hint::prefetch_for_write(self.entries.wrapping_add(ahead as usize * size_of::<E>()));
        }
        // SAFETY: slot < capacity (caller), so the destination lies in the checked
        // entry array; the source is private memory. The publication word is left out:
        // the consumer may be loading it (atomically) right now, and `publish` stores
        // it afterwards.
        unsafe {
            let dst = self.entries.add(slot as usize * size_of::<E>());
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, word.start);
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr().add(word.end),
                dst.add(word.end),
                size_of::<E>() - word.end,
            );
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

/// A cheap, read-only view of one request ring for a host polling many rings: whether
/// the entry at a position is published (its publication word: the line the host reads
/// next anyway, so an idle VM costs one load per pass), and the slot's reset request
/// word for the rarer looks. Keeps the region mapped.
///
/// ```
/// use std::sync::Arc;
/// use vgpu_ring::{Geometry, PoolId, Priority, Region, Request, VmIdentity};
/// let dir = tempfile::tempdir().unwrap();
/// let geometry = Geometry { slot_count: 1, ring_entries: 8, arena_size: 4096 };
/// let id = VmIdentity { vm_id: 3, pool: PoolId::new(b'A').unwrap(), priority: Priority::LOW };
/// let region = Arc::new(Region::create(&dir.path().join("r"), 1 << 15, geometry, &[id.slot()], false)?);
/// let slot = region.slot(0)?;
/// let (mut guest, host) = (slot.guest_endpoints()?, slot.host_endpoints()?);
/// let watch = host.requests.backend().watch();
/// assert!(!watch.published(host.requests.position()));
/// guest.requests.push(Request::default()).unwrap();
/// assert!(watch.published(host.requests.position()), "the next request's word");
/// # Ok::<(), vgpu_ring::RegionError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RequestWatch {
    /// The request ring's producer index (`req_head`), which the slot's reset request
    /// word follows on the same line.
    head: *const AtomicU32,
    /// The request ring's first entry.
    entries: *const u8,
    /// Capacity − 1.
    mask: u32,
    _region: Arc<Region>,
}

// SAFETY: the pointers target atomics in a mapping kept alive by the Arc; they are only
// loaded atomically, so sharing or moving the watch across threads is sound.
unsafe impl Send for RequestWatch {}

impl RequestWatch {
    /// Whether the entry at `position` is published: its word holds `position + 1`
    /// (Relaxed: a hint only; [`Consumer::take`] loads the word with Acquire before
    /// it reads the entry).
    #[must_use]
    #[inline]
    pub fn published(&self, position: u32) -> bool {
        // SAFETY: the slot is masked below capacity, and `entries` is the request ring's
        // array of `capacity` entries, checked when the ring was built and kept alive by
        // `_region`.
        let word = unsafe { ready_word::<Request>(self.entries, position & self.mask) };
        word.load(Ordering::Relaxed) == position.wrapping_add(1)
    }

    /// The slot's reset request word (layout 1.1), on the same line as the request
    /// ring's producer index. Relaxed: a hint only;
    /// [`take_reset_request`](crate::take_reset_request) loads it with Acquire before
    /// the host acts on it.
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
    /// A [`RequestWatch`] on this request ring.
    #[must_use]
    pub fn watch(&self) -> RequestWatch {
        RequestWatch {
            head: self.head,
            entries: self.entries,
            mask: self.capacity - 1,
            _region: Arc::clone(&self.region),
        }
    }
}
