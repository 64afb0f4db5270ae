//! Hostile-peer tests on the real (mapped) backend: a peer that writes garbage indices
//! and entries through its own mapping of the file.
#![cfg(not(loom))]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use vgpu_ring::layout::{
    ENTRY_SIZE, REQ_HEAD_OFFSET, REQ_TAIL_OFFSET, RESP_HEAD_OFFSET, RESP_TAIL_OFFSET,
};
use vgpu_ring::{Geometry, PushError, Region, Response, SlotIdentity};

const GEOMETRY: Geometry = Geometry { slot_count: 2, ring_entries: 8, arena_size: 4096 };

/// A small deterministic generator (xorshift64*), enough for garbage.
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn setup(dir: &Path) -> (Arc<Region>, File) {
    let path = dir.join("region");
    let ids = [
        SlotIdentity::new(1, vgpu_ring::PoolId::new(b'A').unwrap(), vgpu_ring::Priority::LOW),
        SlotIdentity::new(2, vgpu_ring::PoolId::new(b'A').unwrap(), vgpu_ring::Priority::MEDIUM),
    ];
    let region = Arc::new(Region::create(&path, 1 << 16, GEOMETRY, &ids, false).unwrap());
    // The hostile peer writes through its own file handle, not through our mapping.
    let peer = File::options().read(true).write(true).open(&path).unwrap();
    (region, peer)
}

fn write_u32(peer: &File, offset: usize, value: u32) {
    peer.write_all_at(&value.to_le_bytes(), offset as u64).unwrap();
}

fn snapshot(peer: &File, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    peer.read_exact_at(&mut bytes, 0).unwrap();
    bytes
}

#[test]
fn impossible_head_poisons_the_consumer_and_it_stays_poisoned() {
    let dir = tempfile::tempdir().unwrap();
    let (region, peer) = setup(dir.path());
    let mut host = region.slot(0).unwrap().host_endpoints().unwrap();
    let head_at = GEOMETRY.slot_offset(0) + REQ_HEAD_OFFSET;
    write_u32(&peer, head_at, 9); // capacity 8, tail 0
    let err = host.requests.pop().unwrap_err();
    assert_eq!((err.peer, err.own, err.capacity), (9, 0, 8));
    // Even a now-plausible index does not revive it.
    write_u32(&peer, head_at, 1);
    assert!(host.requests.pop().is_err());
    assert_eq!(host.requests.poisoned(), Some(err));
}

#[test]
fn head_moving_backwards_poisons_the_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let (region, peer) = setup(dir.path());
    let mut host = region.slot(0).unwrap().host_endpoints().unwrap();
    let head_at = GEOMETRY.slot_offset(0) + REQ_HEAD_OFFSET;
    write_u32(&peer, head_at, 4);
    assert_eq!(host.requests.available(), Ok(4));
    write_u32(&peer, head_at, 2);
    assert!(host.requests.available().is_err());
}

#[test]
fn garbage_indices_at_attach_start_poisoned() {
    let dir = tempfile::tempdir().unwrap();
    let (region, peer) = setup(dir.path());
    write_u32(&peer, GEOMETRY.slot_offset(1) + REQ_HEAD_OFFSET, 0xdead_beef);
    let mut host = region.slot(1).unwrap().host_endpoints().unwrap();
    assert!(host.requests.poisoned().is_some());
    assert!(host.requests.pop().is_err());
    // The other slot is unaffected.
    assert!(region.slot(0).unwrap().host_endpoints().unwrap().requests.poisoned().is_none());
}

/// Random indices and entry bytes at full speed: the consumer never panics, never hands
/// out more than `capacity` entries between two index loads, and once the head is
/// impossible it stops.
#[test]
fn random_garbage_never_yields_more_than_capacity_per_view() {
    let dir = tempfile::tempdir().unwrap();
    let (region, peer) = setup(dir.path());
    let mut rng = Garbage(0x9e37_79b9_7f4a_7c15);
    let slot = GEOMETRY.slot_offset(0);
    let entries_at = slot + GEOMETRY.request_ring_offset();
    let mut poisoned_runs = 0;
    for round in 0..2_000 {
        // Each round attaches afresh, as a restarted host would.
        let mut host = region.slot(0).unwrap().host_endpoints().unwrap();
        let mut junk = vec![0u8; 8 * ENTRY_SIZE];
        junk.iter_mut().for_each(|b| *b = rng.next() as u8);
        peer.write_all_at(&junk, entries_at as u64).unwrap();
        let head = match round % 3 {
            0 => rng.next() as u32,
            _ => (rng.next() % 12) as u32, // near the tail: sometimes valid
        };
        write_u32(&peer, slot + REQ_HEAD_OFFSET, head);
        let mut seen = 0;
        loop {
            match host.requests.pop() {
                Ok(Some(_)) => seen += 1,
                Ok(None) => break,
                Err(_) => {
                    poisoned_runs += 1;
                    break;
                }
            }
            assert!(seen <= 8, "more than capacity entries from one view");
        }
        // Reset our own index so the next attach starts from a known point.
        write_u32(&peer, slot + REQ_TAIL_OFFSET, 0);
        write_u32(&peer, slot + REQ_HEAD_OFFSET, 0);
    }
    assert!(poisoned_runs > 0, "garbage never detected");
}

/// A peer that sets a garbage response-ring consumer index cannot make the host write
/// anywhere but the response ring's own slots.
#[test]
fn garbage_tail_never_makes_the_producer_write_outside_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let (region, peer) = setup(dir.path());
    let len = region.size();
    let slot = GEOMETRY.slot_offset(0);
    let ring_start = slot + GEOMETRY.response_ring_offset();
    let ring_end = ring_start + 8 * ENTRY_SIZE;
    region.slot(0).unwrap().arena_write(0, &[0xa5; 4096]).unwrap();
    let mut rng = Garbage(42);
    let mut host = region.slot(0).unwrap().host_endpoints().unwrap();
    for _ in 0..2_000 {
        write_u32(&peer, slot + RESP_TAIL_OFFSET, rng.next() as u32);
        let before = snapshot(&peer, len);
        for tag in 0..10 {
            match host.responses.push(Response { tag, ..Response::default() }) {
                Ok(()) | Err(PushError::Full(_)) => {}
                Err(PushError::Poisoned(_)) => break,
            }
        }
        let after = snapshot(&peer, len);
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            let in_ring = (ring_start..ring_end).contains(&i);
            let is_head = (slot + RESP_HEAD_OFFSET..slot + RESP_HEAD_OFFSET + 4).contains(&i);
            assert!(a == b || in_ring || is_head, "byte {i} outside the response ring changed");
        }
        if host.responses.poisoned().is_some() {
            host = region.slot(0).unwrap().host_endpoints().unwrap();
        }
    }
    // The request ring and the arena are untouched.
    let mut arena = vec![0; 4096];
    region.slot(0).unwrap().arena_read(0, &mut arena).unwrap();
    assert!(arena.iter().all(|&b| b == 0xa5));
}
