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
        assert_eq!([rx.pop(), rx.pop(), rx.pop()].map(Result::unwrap), [Some(0), Some(1), Some(2)]);
        assert_eq!(rx.pop(), Ok(None));
    }

    #[test]
    fn a_full_ring_gives_the_value_back() {
        let (mut tx, mut rx) = heap_ring::<u64>(2, 0);
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        assert_eq!(tx.push(3), Err(PushError::Full(3)));
        assert_eq!(rx.pop(), Ok(Some(1)));
        tx.push(3).unwrap();
        assert_eq!((rx.pop(), rx.pop()), (Ok(Some(2)), Ok(Some(3))));
    }

    /// A heap ring that records the slots its consumer prefetches.
    struct Prefetching {
        ring: HeapRing<u64>,
        prefetched: std::cell::RefCell<Vec<u32>>,
    }

    // SAFETY: every method is the heap ring's, which keeps the contract.
    unsafe impl RingBackend for Prefetching {
        type Entry = u64;

        fn capacity(&self) -> u32 {
            self.ring.capacity()
        }

        fn load_head(&self, order: Ordering) -> u32 {
            self.ring.load_head(order)
        }

        fn store_head(&self, value: u32, order: Ordering) {
            self.ring.store_head(value, order);
        }

        fn load_tail(&self, order: Ordering) -> u32 {
            self.ring.load_tail(order)
        }

        fn store_tail(&self, value: u32, order: Ordering) {
            self.ring.store_tail(value, order);
        }

        unsafe fn write(&self, slot: u32, entry: &u64) {
            // SAFETY: the caller's contract is the heap ring's.
            unsafe { self.ring.write(slot, entry) }
        }

        unsafe fn read(&self, slot: u32) -> u64 {
            // SAFETY: as in `write`.
            unsafe { self.ring.read(slot) }
        }

        fn prefetch_read(&self, slot: u32) {
            self.prefetched.borrow_mut().push(slot);
        }
    }

    /// A consumer prefetches 8 entries past the one it takes, and only an entry the
    /// producer has published and the consumer not taken yet (its line is the
    /// consumer's to read), across the wrap.
    #[test]
    fn only_published_entries_are_prefetched() {
        let (mut tx, rx) = heap_ring::<u64>(16, 0);
        let backend = Prefetching { ring: rx.into_backend(), prefetched: Default::default() };
        let mut rx = crate::ring::Consumer::new(backend);
        let mut want = Vec::new();
        let mut head = 0u32;
        for batch in [12u32, 3, 16, 9, 12] {
            for v in 0..batch {
                tx.stage(u64::from(v)).unwrap();
            }
            tx.publish();
            head += batch;
            while rx.take().unwrap().is_some() {
                let next = rx.position() + 8;
                if next < head {
                    want.push(next % 16);
                }
            }
            rx.release();
        }
        assert_eq!(*rx.backend().prefetched.borrow(), want);
        assert!(!want.is_empty());
    }

    #[test]
    fn staged_entries_are_invisible_until_published() {
        let (mut tx, mut rx) = heap_ring::<u64>(4, 0);
        tx.stage(1).unwrap();
        tx.stage(2).unwrap();
        assert_eq!((tx.staged(), rx.available()), (2, Ok(0)));
        tx.publish();
        assert_eq!(rx.available(), Ok(2));
    }

    #[test]
    fn taken_slots_come_back_only_when_released() {
        let (mut tx, mut rx) = heap_ring::<u64>(2, 0);
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        assert_eq!(rx.take(), Ok(Some(1)));
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
            rx.take().unwrap();
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
            assert_eq!(rx.pop(), Ok(Some(v)));
        }
        assert!(rx.position() < 1 << 20, "wrapped");
    }

    #[test]
    fn an_impossible_producer_index_poisons_the_consumer_for_good() {
        let (_tx, mut rx) = heap_ring::<u64>(4, 0);
        rx.backend().shared.head.store(5, Ordering::Relaxed);
        let e = rx.pop().unwrap_err();
        assert_eq!((e.peer, e.capacity), (5, 4));
        rx.backend().shared.head.store(0, Ordering::Relaxed);
        assert_eq!(rx.pop(), Err(e), "stays poisoned");
        assert_eq!(rx.poisoned(), Some(e));
    }

    #[test]
    fn a_producer_index_moving_backwards_poisons() {
        let (mut tx, mut rx) = heap_ring::<u64>(4, 10);
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        assert_eq!(rx.available(), Ok(2));
        rx.backend().shared.head.store(11, Ordering::Relaxed);
        assert!(rx.available().is_err());
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
    fn endpoints_attached_to_inconsistent_indices_start_poisoned() {
        let (tx, rx) = heap_ring::<u64>(4, 0);
        tx.backend().shared.head.store(9, Ordering::Relaxed);
        assert!(Consumer::new(rx.into_backend()).poisoned().is_some());
        assert!(Producer::new(tx.into_backend()).poisoned().is_some());
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
            match rx.pop().unwrap() {
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
        };
        tx.push(request).unwrap();
        assert_eq!(rx.pop(), Ok(Some(request)));
        let (mut tx, mut rx) = heap_ring::<Response>(2, 0);
        let response = Response { tag: 7, status: 1, exec_ns: u64::MAX, ..Response::default() };
        tx.push(response).unwrap();
        assert_eq!(rx.pop(), Ok(Some(response)));
    }
}
