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
        match rx.pop() {
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

/// Staged entries stay invisible until a publish stores their words (in order: a
/// consumer may see a prefix of a batch, never a gap), and the consumer's batched
/// release hands back all slots at once.
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
            while let Some(v) = rx.take() {
                seen.push(v);
            }
            // In order, nothing skipped, whatever prefix of a batch was visible.
            assert_eq!(seen, (1..=seen.len() as u64).collect::<Vec<_>>());
            rx.release();
            if seen.len() == before {
                thread::yield_now();
            }
        }
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        producer.join().unwrap();
    });
}

/// The reset handshake. The guest's last writes to the slot (its indices, its ring
/// entries) happen before the host writes fresh ones, and the host's writes happen
/// before the guest's next reads: a loom cell stands for those guest-owned bytes, so
/// loom flags a race if either half of the handshake loses its ordering. The atomic
/// words themselves must read fresh after the acknowledgement too.
#[test]
fn reset_handshake_orders_both_sides() {
    use loom::cell::UnsafeCell;
    use std::sync::atomic::Ordering::Relaxed;
    use vgpu_ring::{ControlBlock, ControlWord, HeapControl};
    use vgpu_ring::{complete_reset, request_reset, reset_completed, take_reset_request};
    loom::model(|| {
        let control = std::sync::Arc::new(HeapControl::default());
        // Bytes of the slot the guest writes before it asks and reads after.
        let guest_bytes = std::sync::Arc::new(UnsafeCell::new(0u32));
        let indices = [
            ControlWord::ReqHead,
            ControlWord::ReqTail,
            ControlWord::RespHead,
            ControlWord::RespTail,
        ];
        let (host_control, host_bytes) =
            (std::sync::Arc::clone(&control), std::sync::Arc::clone(&guest_bytes));
        let host = thread::spawn(move || {
            loop {
                if let Some(ticket) = take_reset_request(&*host_control) {
                    // SAFETY (model): the handshake hands these bytes to the host.
                    host_bytes.with_mut(|p| unsafe { *p = 0 });
                    complete_reset(&*host_control, ticket);
                    return;
                }
                thread::yield_now();
            }
        });
        for word in indices.into_iter().chain([ControlWord::HostStatus]) {
            control.store(word, 5, Relaxed);
        }
        // SAFETY (model): the guest owns these bytes until it asks for the reset.
        guest_bytes.with_mut(|p| unsafe { *p = 5 });
        let ticket = request_reset(&*control);
        while !reset_completed(&*control, ticket) {
            thread::yield_now();
        }
        // SAFETY (model): the acknowledgement hands them back.
        assert_eq!(guest_bytes.with(|p| unsafe { *p }), 0);
        for word in indices.into_iter().chain([ControlWord::HostStatus]) {
            assert_eq!(control.load(word, Relaxed), 0, "{word:?}");
        }
        host.join().unwrap();
    });
}

/// Release after answer: a mediator that dies at any point (its endpoints dropped, a
/// new one attached to the shared indices) loses no request, and the client's filter
/// (answers only for tags in flight) delivers each answer exactly once.
#[test]
fn release_after_answer_survives_a_crash_at_every_point() {
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicBool, Ordering};
    use vgpu_ring::{Consumer, HeapRing, Producer};

    type Requests = Consumer<HeapRing<u64>>;
    type Responses = Producer<HeapRing<u64>>;

    /// One step of a mediator: take a request, publish its answer, release the
    /// answered prefix. Returns whether it did anything.
    fn step(requests: &mut Requests, responses: &mut Responses, held: &mut Option<u64>) -> bool {
        match held.take() {
            None => match requests.take() {
                Some(tag) => {
                    *held = Some(tag);
                    true
                }
                None => false,
            },
            Some(tag) => match responses.push(tag) {
                Ok(()) => {
                    // Answered: the prefix up to here may go back to the producer.
                    requests.release();
                    true
                }
                Err(PushError::Full(_)) => {
                    *held = Some(tag);
                    false
                }
                Err(PushError::Poisoned(e)) => panic!("poisoned: {e}"),
            },
        }
    }

    for crash_after in 0..=4 {
        loom::model(move || {
            let (mut req_tx, req_rx) = vgpu_ring::heap_ring::<u64>(2, 0);
            let (resp_tx, mut resp_rx) = vgpu_ring::heap_ring::<u64>(2, 0);
            let done = Arc::new(AtomicBool::new(false));
            let mediator_done = Arc::clone(&done);
            let mediator = thread::spawn(move || {
                let (mut requests, mut responses) = (req_rx, resp_tx);
                let mut held = None;
                let mut steps = 0;
                while steps < crash_after && !mediator_done.load(Ordering::Relaxed) {
                    if step(&mut requests, &mut responses, &mut held) {
                        steps += 1;
                    } else {
                        thread::yield_now();
                    }
                }
                // The crash: whatever was held is lost with the process; a new mediator
                // resumes from the shared indices.
                let mut requests = Consumer::new(requests.into_backend());
                let mut responses = Producer::new(responses.into_backend());
                let mut held = None;
                while !mediator_done.load(Ordering::Relaxed) {
                    if !step(&mut requests, &mut responses, &mut held) {
                        thread::yield_now();
                    }
                }
            });
            let mut in_flight = vec![1u64, 2];
            push_all(&mut req_tx, &in_flight.clone());
            let mut delivered = Vec::new();
            while !in_flight.is_empty() {
                match resp_rx.pop() {
                    Some(tag) => {
                        if let Some(i) = in_flight.iter().position(|&t| t == tag) {
                            in_flight.remove(i);
                            delivered.push(tag);
                        }
                    }
                    None => thread::yield_now(),
                }
            }
            delivered.sort_unstable();
            assert_eq!(delivered, [1, 2]);
            done.store(true, Ordering::Relaxed);
            mediator.join().unwrap();
        });
    }
}

/// A consumer attaching while its producer runs (a mediator starting against a guest
/// already pushing) resumes from its own index: the entries it sees published are fully
/// written (its Acquire load of each entry's publication word).
#[test]
fn consumer_attaches_while_the_producer_runs() {
    loom::model(|| {
        let (mut tx, rx) = heap_ring::<u64>(2, 0);
        let producer = thread::spawn(move || push_all(&mut tx, &[1, 2]));
        let mut rx = vgpu_ring::Consumer::new(rx.into_backend());
        assert_eq!(pop_n(&mut rx, 2), vec![1, 2]);
        producer.join().unwrap();
    });
}

/// A producer attaching while its consumer runs (a client starting on a slot whose
/// previous entries the mediator still reads) never overwrites a slot the consumer has
/// not finished reading (its Acquire load of the consumer index at attach).
#[test]
fn producer_attaches_while_the_consumer_runs() {
    loom::model(|| {
        let (mut tx, mut rx) = heap_ring::<u64>(2, 0);
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        let consumer = thread::spawn(move || pop_n(&mut rx, 3));
        let mut tx = vgpu_ring::Producer::new(tx.into_backend());
        push_all(&mut tx, &[3]);
        assert_eq!(consumer.join().unwrap(), vec![1, 2, 3]);
    });
}

/// The wake-up flag protocol: a host that found the ring empty and sleeps is woken by
/// the guest's doorbell, or its last scan sees the request (no lost wake-up). Either
/// fence removed allows the store-buffering outcome, and this model fails. A control
/// word stands for the guest's publication store (in the ring, the next entry's word:
/// the argument is the same for any store the guest makes before its fence).
#[test]
fn wakeup_flag_loses_no_wakeup() {
    use loom::sync::Arc;
    use std::sync::atomic::Ordering;
    use vgpu_ring::{
        ControlBlock, ControlWord, HeapControl, fence_before_rescan, publish_doorbell,
        request_wakeup, wakeup_wanted,
    };
    loom::model(|| {
        let control = Arc::new(HeapControl::default());
        publish_doorbell(&*control, Some(7));
        let guest = {
            let control = Arc::clone(&control);
            thread::spawn(move || {
                control.store(ControlWord::ReqHead, 1, Ordering::Release);
                wakeup_wanted(&*control)
            })
        };
        request_wakeup(&*control);
        fence_before_rescan();
        let seen = control.load(ControlWord::ReqHead, Ordering::Acquire);
        let rang = guest.join().unwrap();
        assert!(seen == 1 || rang == Some(7), "lost wake-up");
    });
}

/// Two requests with the host sleeping between them: it clears the flag after each
/// wake-up and scans; the doorbell is a counter (the eventfd) the host waits on. A lost
/// wake-up leaves the host waiting forever, which loom reports.
#[test]
fn wakeup_flag_over_two_rounds() {
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering;
    use vgpu_ring::{
        ControlBlock, ControlWord, HeapControl, cancel_wakeup, fence_before_rescan,
        publish_doorbell, request_wakeup, wakeup_wanted,
    };
    loom::model(|| {
        let control = Arc::new(HeapControl::default());
        let bell = Arc::new(AtomicU32::new(0));
        publish_doorbell(&*control, Some(0));
        let guest = {
            let (control, bell) = (Arc::clone(&control), Arc::clone(&bell));
            thread::spawn(move || {
                for head in 1..=2 {
                    control.store(ControlWord::ReqHead, head, Ordering::Release);
                    if wakeup_wanted(&*control).is_some() {
                        bell.fetch_add(1, Ordering::Release);
                    }
                }
            })
        };
        let (mut taken, mut rings_seen) = (0, 0);
        while taken < 2 {
            if control.load(ControlWord::ReqHead, Ordering::Acquire) > taken {
                taken += 1;
                continue;
            }
            request_wakeup(&*control);
            fence_before_rescan();
            if control.load(ControlWord::ReqHead, Ordering::Acquire) == taken {
                // Sleep until the doorbell rings.
                loop {
                    let rings = bell.load(Ordering::Acquire);
                    if rings != rings_seen {
                        rings_seen = rings;
                        break;
                    }
                    thread::yield_now();
                }
            }
            cancel_wakeup(&*control);
        }
        guest.join().unwrap();
    });
}
