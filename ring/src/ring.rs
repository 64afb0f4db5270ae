//! The single-producer single-consumer ring algorithm, written once.
//!
//! The design follows [rtrb](https://docs.rs/rtrb) (free-running indices, each side
//! caching the other's index and reloading it only when the ring looks full or empty)
//! and virtio's used/avail rings (the peer is untrusted: every index loaded from the
//! peer is checked against the capacity before it is used, as virtio-queue's
//! `InvalidAvailRingIndex` check does).
//!
//! Positions are free-running `u32`s; an entry's slot is `position & (capacity - 1)`.
//! The producer owns `head` (next position to write), the consumer owns `tail` (next
//! position to read). Each side keeps its own index privately and only *stores* it to
//! shared memory; it loads only the peer's.
//!
//! An entry is published by its own **publication word** (layout 2): the producer
//! writes the entry, then stores `position + 1` into the slot's word (Release); the
//! consumer reads the slot at `tail` only once its word equals `tail + 1` (Acquire).
//! So a consumer polls the entry it will read next, one cache line, instead of the
//! producer's index on a line of its own: each request moves one line each way, not
//! two (LMAX's sequence per slot, FastForward's full/empty entries). A word from the
//! previous lap holds `position + 1 - capacity`, never the awaited value. The consumer
//! takes at most `capacity` entries before it releases: whatever the peer writes in the
//! words, it cannot make us read outside the ring or more than a ring's worth.
//!
//! The producer still stores its index after each publication (Relaxed): it is its own
//! record to resume from, and what an inspector shows. The consumer's index is how the
//! producer learns of free slots: a loaded consumer index that moved backwards or past
//! what was published poisons the producer, and every later operation returns
//! [`RingError`].
//!
//! Memory is reached through a [`RingBackend`]: mapped shared memory in production
//! ([`MappedRing`](crate::MappedRing)), loom-checked heap memory in the model tests
//! ([`HeapRing`](crate::HeapRing)).

use crate::sync::Ordering;
use thiserror::Error;

/// Memory a ring lives in: two indices and `capacity` entry slots.
///
/// # Safety
///
/// Implementors must make [`read`](Self::read) and [`write`](Self::write) memory-safe
/// for every `slot < capacity()`, and `capacity()` must be a constant power of two.
/// The index accessors must be atomic with the given ordering.
pub unsafe trait RingBackend {
    /// What one slot holds.
    type Entry: Copy;

    /// Number of slots: a power of two, constant for the backend's life.
    fn capacity(&self) -> u32;
    /// Load the producer index.
    fn load_head(&self, order: Ordering) -> u32;
    /// Store the producer index.
    fn store_head(&self, value: u32, order: Ordering);
    /// Load the consumer index.
    fn load_tail(&self, order: Ordering) -> u32;
    /// Store the consumer index.
    fn store_tail(&self, value: u32, order: Ordering);
    /// Load the publication word of slot `slot` (`slot < capacity()`).
    fn load_ready(&self, slot: u32, order: Ordering) -> u32;
    /// Store the publication word of slot `slot` (`slot < capacity()`).
    fn store_ready(&self, slot: u32, value: u32, order: Ordering);

    /// Copy `entry` into slot `slot`, all but the publication word.
    ///
    /// # Safety
    ///
    /// `slot < capacity()`, and by the ring protocol the caller (the producer) owns the
    /// slot: the consumer has released it and does not read it concurrently.
    unsafe fn write(&self, slot: u32, entry: &Self::Entry);

    /// Copy slot `slot` out, exactly once, into private memory.
    ///
    /// # Safety
    ///
    /// `slot < capacity()`, and by the ring protocol the caller (the consumer) owns the
    /// slot: the producer has published it and does not write it concurrently.
    unsafe fn read(&self, slot: u32) -> Self::Entry;
}

/// A ring endpoint found the peer's index corrupt and stopped using the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("ring poisoned: peer index {peer} is impossible (own index {own}, capacity {capacity})")]
pub struct RingError {
    /// The peer index that was loaded.
    pub peer: u32,
    /// This endpoint's own index at that moment.
    pub own: u32,
    /// The ring's capacity.
    pub capacity: u32,
}

/// Why a push did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PushError<T> {
    /// The ring is full; the entry is given back.
    #[error("ring full")]
    Full(T),
    /// The endpoint is poisoned.
    #[error(transparent)]
    Poisoned(RingError),
}

/// The producing end of a ring. `Send`, not `Sync`: one thread pushes.
///
/// ```
/// use vgpu_ring::PushError;
/// let (mut tx, mut rx) = vgpu_ring::heap_ring::<u32>(2, 0);
/// tx.push(1).unwrap();
/// // Batching: stage several entries, publish them together.
/// tx.stage(2).unwrap();
/// assert_eq!(tx.stage(3), Err(PushError::Full(3)), "the value comes back");
/// tx.publish();
/// assert_eq!((rx.pop(), rx.pop()), (Some(1), Some(2)));
/// ```
#[derive(Debug)]
pub struct Producer<B: RingBackend> {
    backend: B,
    /// Next position to write (staged entries included).
    head: u32,
    /// Last head stored to shared memory.
    published: u32,
    /// Last consumer index loaded (and validated).
    cached_tail: u32,
    poisoned: Option<RingError>,
}

impl<B: RingBackend> Producer<B> {
    /// Take the producing end of `backend`, resuming from the indices it holds.
    ///
    /// If they are inconsistent the endpoint starts poisoned (see [`Self::poisoned`]).
    pub fn new(backend: B) -> Self {
        // Our own index: nobody else stores it (a hostile peer may have, which the check
        // below catches).
        let mut head = backend.load_head(Ordering::Relaxed);
        // SYNC: pairs with the consumer's Release store of tail (see `Consumer::release`).
        let tail = backend.load_tail(Ordering::Acquire);
        let capacity = backend.capacity();
        let poisoned = (head.wrapping_sub(tail) > capacity).then_some(RingError {
            peer: tail,
            own: head,
            capacity,
        });
        if poisoned.is_none() {
            // A predecessor that died between publishing entries (their words) and
            // storing its index left the index behind: the words say how far it got.
            // Relaxed: our own words, as the index.
            while head.wrapping_sub(tail) < capacity
                && backend.load_ready(head & (capacity - 1), Ordering::Relaxed)
                    == head.wrapping_add(1)
            {
                head = head.wrapping_add(1);
            }
        }
        Self { backend, head, published: head, cached_tail: tail, poisoned }
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.backend.capacity()
    }

    /// The error that poisoned this endpoint, if any.
    pub fn poisoned(&self) -> Option<RingError> {
        self.poisoned
    }

    /// Entries staged by [`stage`](Self::stage) and not yet published.
    pub fn staged(&self) -> u32 {
        self.head.wrapping_sub(self.published)
    }

    /// The backend, e.g. to reach the memory around the ring.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The position the next staged entry takes.
    pub fn position(&self) -> u32 {
        self.head
    }

    /// The consumer's index as last loaded: every position before it has been handed
    /// back (reload it with [`free_slots`](Self::free_slots)).
    pub fn consumer_position(&self) -> u32 {
        self.cached_tail
    }

    /// The backend, to change how it writes (e.g. `MappedRing`'s write-ahead hint).
    pub(crate) fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Give the backend back (e.g. to attach a new producer to the same memory).
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// Free slots, reloading the consumer's index.
    ///
    /// # Errors
    ///
    /// [`RingError`] if the endpoint is or becomes poisoned.
    pub fn free_slots(&mut self) -> Result<u32, RingError> {
        self.refresh_tail()?;
        Ok(self.capacity() - self.head.wrapping_sub(self.cached_tail))
    }

    /// Write `entry` into the next slot without publishing it; call
    /// [`publish`](Self::publish) once after a batch.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] (the entry given back) if no slot is free,
    /// [`PushError::Poisoned`] if the endpoint is poisoned.
    #[inline]
    pub fn stage(&mut self, entry: B::Entry) -> Result<(), PushError<B::Entry>> {
        if let Some(e) = self.poisoned {
            return Err(PushError::Poisoned(e));
        }
        let capacity = self.capacity();
        if self.head.wrapping_sub(self.cached_tail) == capacity {
            self.refresh_tail().map_err(PushError::Poisoned)?;
            if self.head.wrapping_sub(self.cached_tail) == capacity {
                return Err(PushError::Full(entry));
            }
        }
        // SAFETY: the slot index is masked below capacity; positions in
        // [cached_tail, cached_tail + capacity) are ours, and head is in that range, so
        // the consumer has released this slot and will not read it until we publish.
        unsafe { self.backend.write(self.head & (capacity - 1), &entry) };
        self.head = self.head.wrapping_add(1);
        Ok(())
    }

    /// Make every staged entry visible to the consumer: each one's publication word,
    /// in order, then the index.
    #[inline]
    pub fn publish(&mut self) {
        if self.head != self.published && self.poisoned.is_none() {
            let mask = self.capacity() - 1;
            let mut position = self.published;
            while position != self.head {
                let next = position.wrapping_add(1);
                // SYNC: Release pairs with the consumer's Acquire load of the word in
                // `Consumer::take`: the entry written before is visible to its read.
                self.backend.store_ready(position & mask, next, Ordering::Release);
                position = next;
            }
            // Relaxed: the index publishes nothing (the words do); it is our record to
            // resume from.
            self.backend.store_head(self.head, Ordering::Relaxed);
            self.published = self.head;
        }
    }

    /// [`stage`](Self::stage) then [`publish`](Self::publish).
    ///
    /// # Errors
    ///
    /// As [`stage`](Self::stage).
    #[inline]
    pub fn push(&mut self, entry: B::Entry) -> Result<(), PushError<B::Entry>> {
        self.stage(entry)?;
        self.publish();
        Ok(())
    }

    fn refresh_tail(&mut self) -> Result<(), RingError> {
        if let Some(e) = self.poisoned {
            return Err(e);
        }
        // SYNC: Acquire pairs with the consumer's Release store of tail: its reads of the
        // slots it released happen before our next writes to them.
        let tail = self.backend.load_tail(Ordering::Acquire);
        // The consumer can only have moved forward, and not past what we published.
        let advanced = tail.wrapping_sub(self.cached_tail);
        if advanced > self.published.wrapping_sub(self.cached_tail) {
            let e = RingError { peer: tail, own: self.published, capacity: self.capacity() };
            self.poisoned = Some(e);
            return Err(e);
        }
        self.cached_tail = tail;
        Ok(())
    }
}

/// The consuming end of a ring. `Send`, not `Sync`: one thread pops.
///
/// ```
/// let (mut tx, mut rx) = vgpu_ring::heap_ring::<u32>(4, 0);
/// for v in [7, 8, 9] { tx.push(v).unwrap(); }
/// // Take a batch, then hand all its slots back with one index store.
/// let batch: Vec<u32> = std::iter::from_fn(|| rx.take()).collect();
/// rx.release();
/// assert_eq!(batch, [7, 8, 9]);
/// assert_eq!(tx.free_slots().unwrap(), 4);
/// ```
#[derive(Debug)]
pub struct Consumer<B: RingBackend> {
    backend: B,
    /// Next position to read (taken but unreleased entries included).
    tail: u32,
    /// Last tail stored to shared memory.
    released: u32,
}

impl<B: RingBackend> Consumer<B> {
    /// Take the consuming end of `backend`, resuming from its consumer index.
    ///
    /// The producer's index is not consulted: entries are published by their words,
    /// and whatever the peer stored there cannot make the consumer misread.
    pub fn new(backend: B) -> Self {
        // Relaxed: our own index (a predecessor's last store, or a fresh region's zero).
        let tail = backend.load_tail(Ordering::Relaxed);
        Self { backend, tail, released: tail }
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.backend.capacity()
    }

    /// The backend, e.g. to reach the memory around the ring.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Copy the next entry out, if its publication word says it is published, without
    /// releasing its slot; call [`release`](Self::release) once after a batch.
    #[inline]
    pub fn take(&mut self) -> Option<B::Entry> {
        // A ring's worth at most before a release, whatever the peer wrote in the words.
        if self.tail.wrapping_sub(self.released) >= self.capacity() {
            return None;
        }
        let slot = self.tail & (self.capacity() - 1);
        // SYNC: Acquire pairs with the producer's Release store of the word in
        // `Producer::publish`: the entry it wrote before is visible to the read below.
        if self.backend.load_ready(slot, Ordering::Acquire) != self.tail.wrapping_add(1) {
            return None;
        }
        // SAFETY: the slot index is masked below capacity; the word says the producer
        // published this position, and it cannot reuse the slot until we release it.
        let entry = unsafe { self.backend.read(slot) };
        self.tail = self.tail.wrapping_add(1);
        Some(entry)
    }

    /// Hand every taken slot back to the producer with one index store.
    #[inline]
    pub fn release(&mut self) {
        self.release_up_to(self.tail);
    }

    /// The position of the entry the next [`take`](Self::take) returns (the entries
    /// taken so far are at the positions before it).
    pub fn position(&self) -> u32 {
        self.tail
    }

    /// The position up to which slots have been handed back to the producer.
    pub fn released(&self) -> u32 {
        self.released
    }

    /// Hand the taken slots before position `upto` back to the producer with one index
    /// store, keeping later taken entries unreleased: a consumer that answers entries
    /// out of order releases only the answered prefix, so that a successor resuming
    /// from the shared index sees every unanswered entry again. Positions outside
    /// `released..=position()` are ignored.
    ///
    /// ```
    /// let (mut tx, mut rx) = vgpu_ring::heap_ring::<u32>(4, 0);
    /// for v in 0..3 { tx.push(v).unwrap(); }
    /// let first = rx.position();
    /// assert_eq!(rx.take(), Some(0));
    /// assert_eq!(rx.take(), Some(1));
    /// rx.release_up_to(first + 1); // only entry 0 is done with
    /// assert_eq!(tx.free_slots().unwrap(), 2);
    /// ```
    #[inline]
    pub fn release_up_to(&mut self, upto: u32) {
        let step = upto.wrapping_sub(self.released);
        if step == 0 || step > self.tail.wrapping_sub(self.released) {
            return;
        }
        // SYNC: Release pairs with the producer's Acquire load of tail
        // (`Producer::refresh_tail`): our reads of these slots happen before it
        // overwrites them.
        self.backend.store_tail(upto, Ordering::Release);
        self.released = upto;
    }

    /// Give the backend back (e.g. to attach a new consumer to the same memory).
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// [`take`](Self::take) then [`release`](Self::release).
    #[inline]
    pub fn pop(&mut self) -> Option<B::Entry> {
        let entry = self.take();
        self.release();
        entry
    }
}
