//! A ring in private heap memory: the backend the loom models check, also usable as an
//! in-process SPSC queue.

use crate::ring::{Consumer, Producer, RingBackend};
use crate::sync::{Arc, AtomicU32, Ordering, UnsafeCell};
use crossbeam_utils::CachePadded;

struct Shared<E> {
    head: CachePadded<AtomicU32>,
    tail: CachePadded<AtomicU32>,
    slots: Box<[UnsafeCell<E>]>,
    /// The slots' publication words (a wire entry carries its own; a heap entry may be
    /// any `Copy` value, so they live beside the slots).
    ready: Box<[AtomicU32]>,
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
/// assert_eq!(rx.pop(), Some(7));
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
        // `start` is no position's awaited word in the first lap (those are start + 1
        // to start + capacity), as zero is none in a fresh region's.
        ready: (0..capacity).map(|_| AtomicU32::new(start)).collect(),
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

    fn load_ready(&self, slot: u32, order: Ordering) -> u32 {
        self.shared.ready[slot as usize].load(order)
    }

    fn store_ready(&self, slot: u32, value: u32, order: Ordering) {
        self.shared.ready[slot as usize].store(value, order);
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

/// The ring algorithm over the heap backend: what Miri checks for undefined behaviour
/// (`cargo +nightly miri test -p vgpu-ring --lib`, under Tree Borrows).
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::PushError;

    /// Iterations, scaled down under Miri (which runs a thousand times slower).
    const N: u64 = if cfg!(miri) { 200 } else { 100_000 };

    #[test]
    fn push_then_pop_in_order() {
        let (mut tx, mut rx) = heap_ring::<u64>(4, 0);
        for v in 0..3 {
            tx.push(v).unwrap();
        }
        assert_eq!([rx.pop(), rx.pop(), rx.pop()], [Some(0), Some(1), Some(2)]);
        assert_eq!(rx.pop(), None);
    }

    #[test]
    fn a_full_ring_gives_the_value_back() {
        let (mut tx, mut rx) = heap_ring::<u64>(2, 0);
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        assert_eq!(tx.push(3), Err(PushError::Full(3)));
        assert_eq!(rx.pop(), Some(1));
        tx.push(3).unwrap();
        assert_eq!((rx.pop(), rx.pop()), (Some(2), Some(3)));
    }

    #[test]
    fn staged_entries_are_invisible_until_published() {
        let (mut tx, mut rx) = heap_ring::<u64>(4, 0);
        tx.stage(1).unwrap();
        tx.stage(2).unwrap();
        assert_eq!((tx.staged(), rx.take()), (2, None));
        tx.publish();
        assert_eq!((tx.staged(), rx.take(), rx.take()), (0, Some(1), Some(2)));
    }

    #[test]
    fn taken_slots_come_back_only_when_released() {
        let (mut tx, mut rx) = heap_ring::<u64>(2, 0);
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        assert_eq!(rx.take(), Some(1));
        assert_eq!(tx.free_slots(), Ok(0));
        rx.release();
        assert_eq!(tx.free_slots(), Ok(1));
    }

    #[test]
    fn release_up_to_hands_back_only_the_answered_prefix() {
        let (mut tx, mut rx) = heap_ring::<u64>(4, 0);
        for v in 0..4 {
            tx.push(v).unwrap();
        }
        let first = rx.position();
        for _ in 0..3 {
            rx.take();
        }
        rx.release_up_to(first.wrapping_add(2));
        assert_eq!((rx.released(), tx.free_slots()), (2, Ok(2)));
        // Outside released..=position: ignored.
        rx.release_up_to(first.wrapping_add(9));
        rx.release_up_to(first);
        assert_eq!(rx.released(), 2);
    }

    #[test]
    fn indices_wrap_past_u32_max() {
        let (mut tx, mut rx) = heap_ring::<u64>(4, u32::MAX - 2);
        for v in 0..N {
            tx.push(v).unwrap();
            assert_eq!(rx.pop(), Some(v));
        }
        assert!(rx.position() < 1 << 20, "wrapped");
    }

    #[test]
    fn only_the_awaited_word_publishes_an_entry() {
        let (mut tx, mut rx) = heap_ring::<u64>(4, 0);
        let shared = Arc::clone(&tx.backend().shared);
        let word = |slot: usize| &shared.ready[slot];
        // The producer's index is a record only: moving it publishes nothing.
        tx.backend().shared.head.store(3, Ordering::Relaxed);
        assert_eq!(rx.take(), None);
        // Any word but position + 1 (here: a stale lap's, or a future one) is "not yet".
        for stale in [0, 4, 5, u32::MAX] {
            word(0).store(stale, Ordering::Relaxed);
            assert_eq!(rx.take(), None, "word {stale}");
        }
        tx.backend().shared.head.store(0, Ordering::Relaxed);
        tx.push(7).unwrap();
        assert_eq!(rx.take(), Some(7));
    }

    #[test]
    fn words_cannot_hand_over_more_than_a_ring_before_a_release() {
        let (tx, mut rx) = heap_ring::<u64>(2, 0);
        // A hostile producer marks positions 0, 1 and 2 published (slots 0, 1, 0).
        let word =
            |slot: usize, value| tx.backend().shared.ready[slot].store(value, Ordering::Relaxed);
        word(0, 1);
        word(1, 2);
        assert!(rx.take().is_some() && rx.take().is_some());
        word(0, 3);
        assert_eq!(rx.take(), None, "two taken, none released: the ring's worth");
        rx.release();
        assert!(rx.take().is_some());
    }

    #[test]
    fn an_impossible_consumer_index_poisons_the_producer() {
        let (mut tx, _rx) = heap_ring::<u64>(2, 0);
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        // The consumer claims to have released more than was published.
        tx.backend().shared.tail.store(3, Ordering::Relaxed);
        assert!(matches!(tx.push(3), Err(PushError::Poisoned(_))));
        assert!(tx.poisoned().is_some());
    }

    #[test]
    fn a_producer_attached_to_inconsistent_indices_starts_poisoned() {
        let (tx, _rx) = heap_ring::<u64>(4, 0);
        tx.backend().shared.head.store(9, Ordering::Relaxed);
        assert!(Producer::new(tx.into_backend()).poisoned().is_some());
    }

    /// A producer that died between publishing entries (their words) and storing its
    /// index: its successor resumes after them, not over them.
    #[test]
    fn a_producer_resumes_after_entries_its_index_missed() {
        let (mut tx, mut rx) = heap_ring::<u64>(4, 5);
        for v in [1, 2, 3] {
            tx.push(v).unwrap();
        }
        assert_eq!(rx.pop(), Some(1));
        tx.backend().shared.head.store(6, Ordering::Relaxed);
        let mut tx = Producer::new(tx.into_backend());
        assert_eq!(tx.position(), 8, "positions 6 and 7 are published");
        tx.push(4).unwrap();
        assert_eq!([rx.pop(), rx.pop(), rx.pop(), rx.pop()], [Some(2), Some(3), Some(4), None]);
    }

    #[test]
    fn two_threads_pass_every_value_once_in_order() {
        let (mut tx, mut rx) = heap_ring::<u64>(8, 0);
        let producer = std::thread::spawn(move || {
            for v in 0..N {
                let mut v = v;
                while let Err(PushError::Full(back)) = tx.push(v) {
                    v = back;
                    std::thread::yield_now();
                }
            }
        });
        let mut next = 0;
        while next < N {
            match rx.pop() {
                Some(v) => {
                    assert_eq!(v, next);
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
    }

    #[test]
    fn wire_structs_travel_through_the_ring_byte_for_byte() {
        use crate::layout::{Request, Response, encode_label};
        let (mut tx, mut rx) = heap_ring::<Request>(2, 0);
        let request = Request {
            tag: 7,
            opcode: 4,
            pool: b'A',
            priority: 2,
            vm_id: 9,
            label: encode_label("VECTOR_ADD"),
            in_offset: 64,
            in_len: 32,
            out_offset: 128,
            out_len: 16,
            args: [4, 0, 0],
            ready: 0,
        };
        tx.push(request).unwrap();
        assert_eq!(rx.pop(), Some(request));
        let (mut tx, mut rx) = heap_ring::<Response>(2, 0);
        let response = Response { tag: 7, status: 1, exec_ns: u64::MAX, ..Response::default() };
        tx.push(response).unwrap();
        assert_eq!(rx.pop(), Some(response));
    }
}
