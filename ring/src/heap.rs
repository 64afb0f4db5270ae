//! A ring in private heap memory: the backend the loom models check, also usable as an
//! in-process SPSC queue.

use crate::ring::{Consumer, Producer, RingBackend};
use crate::sync::{Arc, AtomicU32, Ordering, UnsafeCell};
use crossbeam_utils::CachePadded;

struct Shared<E> {
    head: CachePadded<AtomicU32>,
    tail: CachePadded<AtomicU32>,
    slots: Box<[UnsafeCell<E>]>,
}

/// A [`RingBackend`] over heap memory, shared by its two endpoints.
pub struct HeapRing<E> {
    shared: Arc<Shared<E>>,
}

impl<E> core::fmt::Debug for HeapRing<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeapRing").field("capacity", &self.shared.slots.len()).finish()
    }
}

// SAFETY: the ring protocol hands each slot to exactly one endpoint at a time, and the
// indices are atomics, so moving an endpoint to another thread is sound when E is Send.
unsafe impl<E: Send> Send for HeapRing<E> {}

/// Create a heap ring of `capacity` entries (a power of two, at least 1) whose indices
/// start at `start` (tests use a start just below `u32::MAX` to cross the wrap).
///
/// ```
/// let (mut tx, mut rx) = vgpu_ring::heap_ring::<u64>(4, 0);
/// tx.push(7).unwrap();
/// assert_eq!(rx.pop().unwrap(), Some(7));
/// ```
///
/// # Panics
///
/// If `capacity` is not a power of two.
pub fn heap_ring<E: Copy + Default>(
    capacity: u32,
    start: u32,
) -> (Producer<HeapRing<E>>, Consumer<HeapRing<E>>) {
    assert!(capacity.is_power_of_two(), "ring capacity must be a power of two");
    let shared = Arc::new(Shared {
        head: CachePadded::new(AtomicU32::new(start)),
        tail: CachePadded::new(AtomicU32::new(start)),
        slots: (0..capacity).map(|_| UnsafeCell::new(E::default())).collect(),
    });
    let producer = Producer::new(HeapRing { shared: Arc::clone(&shared) });
    let consumer = Consumer::new(HeapRing { shared });
    (producer, consumer)
}

// SAFETY: `read`/`write` index a boxed slice of exactly `capacity` cells (bounds-checked
// by indexing), and capacity is a power of two fixed at construction.
unsafe impl<E: Copy> RingBackend for HeapRing<E> {
    type Entry = E;

    fn capacity(&self) -> u32 {
        // Fits: built from a u32 count.
        self.shared.slots.len() as u32
    }

    fn load_head(&self, order: Ordering) -> u32 {
        self.shared.head.load(order)
    }

    fn store_head(&self, value: u32, order: Ordering) {
        self.shared.head.store(value, order);
    }

    fn load_tail(&self, order: Ordering) -> u32 {
        self.shared.tail.load(order)
    }

    fn store_tail(&self, value: u32, order: Ordering) {
        self.shared.tail.store(value, order);
    }

    unsafe fn write(&self, slot: u32, entry: &E) {
        // SAFETY: the caller owns the slot (trait contract), so no other access to this
        // cell happens concurrently; the pointer comes from a live cell.
        self.shared.slots[slot as usize].with_mut(|p| unsafe { p.write(*entry) });
    }

    unsafe fn read(&self, slot: u32) -> E {
        // SAFETY: as in `write`: the caller owns the slot, which holds an initialised E.
        self.shared.slots[slot as usize].with(|p| unsafe { p.read() })
    }
}
