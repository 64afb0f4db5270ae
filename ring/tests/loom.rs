//! Loom models of the ring algorithm (heap backend, loom atomics and cells).
//!
//! Run with `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p vgpu-ring
//! --release --test loom`; see docs/TESTING.md.
#![cfg(loom)]

use loom::thread;
use vgpu_ring::{PushError, heap_ring};

/// Push `values` one at a time, spinning while the ring is full.
fn push_all(tx: &mut vgpu_ring::Producer<vgpu_ring::HeapRing<u64>>, values: &[u64]) {
    for &v in values {
        let mut v = v;
        loop {
            match tx.push(v) {
                Ok(()) => break,
                Err(PushError::Full(back)) => {
                    v = back;
                    thread::yield_now();
                }
                Err(PushError::Poisoned(e)) => panic!("poisoned: {e}"),
            }
        }
    }
}

/// Pop `n` values, spinning while the ring is empty.
fn pop_n(rx: &mut vgpu_ring::Consumer<vgpu_ring::HeapRing<u64>>, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match rx.pop().expect("not poisoned") {
            Some(v) => out.push(v),
            None => thread::yield_now(),
        }
    }
    out
}

/// Messages arrive exactly once, in order, with the payload written before publication
/// (loom's cells flag any read of a slot that races with its write).
#[test]
fn no_loss_duplication_or_reordering() {
    loom::model(|| {
        let (mut tx, mut rx) = heap_ring::<u64>(2, 0);
        let producer = thread::spawn(move || push_all(&mut tx, &[1, 2, 3]));
        assert_eq!(pop_n(&mut rx, 3), vec![1, 2, 3]);
        producer.join().unwrap();
    });
}

/// A full ring refuses a push (backpressure) and gives the value back; after the
/// consumer frees a slot, the push succeeds and nothing is overwritten.
#[test]
fn full_ring_backpressure() {
    loom::model(|| {
        let (mut tx, mut rx) = heap_ring::<u64>(2, 0);
        tx.push(10).unwrap();
        tx.push(11).unwrap();
        assert_eq!(tx.push(12), Err(PushError::Full(12)));
        let consumer = thread::spawn(move || pop_n(&mut rx, 3));
        push_all(&mut tx, &[12]);
        assert_eq!(consumer.join().unwrap(), vec![10, 11, 12]);
    });
}

/// Indices that start just below `u32::MAX` wrap to 0 without losing or repeating
/// anything.
#[test]
fn index_wraps_past_u32_max() {
    loom::model(|| {
        let (mut tx, mut rx) = heap_ring::<u64>(2, u32::MAX - 1);
        let producer = thread::spawn(move || push_all(&mut tx, &[1, 2, 3, 4]));
        assert_eq!(pop_n(&mut rx, 4), vec![1, 2, 3, 4]);
        producer.join().unwrap();
    });
}

/// Staged entries are invisible until one publish makes the whole batch visible, and
/// the consumer's batched release hands back all slots at once.
#[test]
fn batched_publish_and_release() {
    loom::model(|| {
        let (mut tx, mut rx) = heap_ring::<u64>(4, 0);
        let producer = thread::spawn(move || {
            tx.stage(1).unwrap();
            tx.stage(2).unwrap();
            tx.stage(3).unwrap();
            tx.publish();
            // The second batch needs the consumer's release of the first.
            let mut pending = vec![4, 5];
            while let Some(&v) = pending.first() {
                match tx.stage(v) {
                    Ok(()) => {
                        pending.remove(0);
                    }
                    Err(PushError::Full(_)) => {
                        tx.publish();
                        thread::yield_now();
                    }
                    Err(PushError::Poisoned(e)) => panic!("poisoned: {e}"),
                }
            }
            tx.publish();
        });
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let before = seen.len();
            while let Some(v) = rx.take().unwrap() {
                seen.push(v);
            }
            // A batch is seen whole or not at all: never one or two of the first three.
            assert!(!(1..3).contains(&seen.len()), "saw a partial batch: {seen:?}");
            rx.release();
            if seen.len() == before {
                thread::yield_now();
            }
        }
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        producer.join().unwrap();
    });
}
