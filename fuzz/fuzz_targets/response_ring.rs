//! A guest's consumer of the response ring against an arbitrary (hostile) host: every
//! publication word and entry comes from the input. Never a panic, never more than the
//! ring's capacity between two releases, and every entry decodes (outcome, console
//! text) without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cell::Cell;
use std::sync::atomic::Ordering;
use vgpu_ring::{Consumer, Response, RingBackend};
use zerocopy::FromBytes;

const CAPACITY: u32 = 8;

/// A ring whose publication words are whatever the input says next.
struct HostileHost<'a> {
    words: Cell<&'a [u8]>,
    entries: &'a [u8],
    tail: Cell<u32>,
}

// SAFETY: `read` copies from the input slice with an index masked below CAPACITY
// (entries are taken modulo the slice length), `write` is never called (this is a
// consumer's backend), and CAPACITY is a constant power of two.
unsafe impl RingBackend for HostileHost<'_> {
    type Entry = Response;

    fn capacity(&self) -> u32 {
        CAPACITY
    }

    /// A consumer never consults the producer's index; whatever it holds.
    fn load_head(&self, _: Ordering) -> u32 {
        u32::MAX
    }

    fn store_head(&self, _: u32, _: Ordering) {}

    fn load_ready(&self, _: u32, _: Ordering) -> u32 {
        let words = self.words.get();
        match words.split_first_chunk::<4>() {
            Some((word, rest)) => {
                self.words.set(rest);
                u32::from_le_bytes(*word)
            }
            None => 0,
        }
    }

    fn store_ready(&self, _: u32, _: u32, _: Ordering) {}

    fn load_tail(&self, _: Ordering) -> u32 {
        self.tail.get()
    }

    fn store_tail(&self, value: u32, _: Ordering) {
        self.tail.set(value);
    }

    unsafe fn write(&self, _: u32, _: &Response) {}

    unsafe fn read(&self, slot: u32) -> Response {
        let at = (slot as usize * 64) % self.entries.len().max(1);
        let bytes = self.entries.get(at..at + 64).unwrap_or_default();
        Response::read_from_bytes(bytes).unwrap_or_default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((start, rest)) = data.split_first_chunk::<4>() else { return };
    let split = rest.len() / 2;
    let (words, entries) = rest.split_at(split);
    let host = HostileHost {
        words: Cell::new(words),
        entries,
        tail: Cell::new(u32::from_le_bytes(*start)),
    };
    let mut consumer = Consumer::new(host);
    let mut unreleased = 0;
    for round in 0..64 {
        while let Some(response) = consumer.take() {
            unreleased += 1;
            let _ = response.outcome();
            let text = vgpu_ring::response_text(&response);
            assert!(!text.contains('\n'), "a hostile label reached the console raw");
            assert!(unreleased <= CAPACITY, "more than a ring's worth before a release");
        }
        // Release after most rounds, not all: the bound holds across rounds too.
        if round % 3 != 0 {
            consumer.release();
            unreleased = 0;
        }
    }
});
