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

/// Where request `position`'s publication word lies in slot `slot`'s request ring.
fn request_word(slot: u32, position: u32) -> usize {
    let entry = (position % GEOMETRY.ring_entries) as usize * ENTRY_SIZE;
    GEOMETRY.slot_offset(slot) + GEOMETRY.request_ring_offset() + entry + 60
}

#[test]
fn a_head_index_publishes_nothing_only_each_entry_word_does() {
    let dir = tempfile::tempdir().unwrap();
    let (region, peer) = setup(dir.path());
    let mut host = region.slot(0).unwrap().host_endpoints().unwrap();
    // Any head at all, even an impossible one: a record only, nothing to take or poison.
    for head in [9, 4, 0xdead_beef] {
        write_u32(&peer, GEOMETRY.slot_offset(0) + REQ_HEAD_OFFSET, head);
        assert_eq!(host.requests.pop(), None);
    }
    // A word other than position + 1 is "not yet"; the awaited one publishes.
    write_u32(&peer, request_word(0, 0), 9);
    assert_eq!(host.requests.pop(), None);
    write_u32(&peer, request_word(0, 0), 1);
    assert_eq!(host.requests.pop().map(|r| r.ready), Some(1));
}

/// The host's end that can still find its peer impossible is the response producer: a
/// guest's garbage `resp_tail` at attach starts it poisoned, the other slot unaffected.
#[test]
fn a_garbage_response_tail_at_attach_starts_the_producer_poisoned() {
    let dir = tempfile::tempdir().unwrap();
    let (region, peer) = setup(dir.path());
    write_u32(&peer, GEOMETRY.slot_offset(1) + RESP_TAIL_OFFSET, 0xdead_beef);
    let mut host = region.slot(1).unwrap().host_endpoints().unwrap();
    assert!(host.responses.poisoned().is_some());
    assert!(matches!(host.responses.push(Response::default()), Err(PushError::Poisoned(_))));
    assert!(region.slot(0).unwrap().host_endpoints().unwrap().responses.poisoned().is_none());
}

/// Random indices, entry bytes and publication words at full speed: the consumer never
/// panics and never takes more than `capacity` entries before it releases.
#[test]
fn random_garbage_never_yields_more_than_a_ring_before_a_release() {
    let dir = tempfile::tempdir().unwrap();
    let (region, peer) = setup(dir.path());
    let mut rng = Garbage(0x9e37_79b9_7f4a_7c15);
    let slot = GEOMETRY.slot_offset(0);
    let entries_at = slot + GEOMETRY.request_ring_offset();
    let mut taken_runs = 0;
    for round in 0..2_000 {
        let mut junk = vec![0u8; 8 * ENTRY_SIZE];
        junk.iter_mut().for_each(|b| *b = rng.next() as u8);
        peer.write_all_at(&junk, entries_at as u64).unwrap();
        // Words awaited for a random run of positions from 0 (later ones overwrite
        // earlier slots, as a producer lapping its consumer would).
        for position in 0..(rng.next() % 12) as u32 {
            write_u32(&peer, request_word(0, position), position + 1);
        }
        let head = match round % 3 {
            0 => rng.next() as u32,
            _ => (rng.next() % 12) as u32, // near the tail: sometimes valid
        };
        write_u32(&peer, slot + REQ_HEAD_OFFSET, head);
        // Each round attaches afresh, as a restarted host would.
        let mut host = region.slot(0).unwrap().host_endpoints().unwrap();
        let mut seen = 0;
        while host.requests.take().is_some() {
            seen += 1;
            assert!(seen <= 8, "more than a ring's worth before a release");
        }
        taken_runs += usize::from(seen > 0);
        // Reset our own index so the next attach starts from a known point.
        write_u32(&peer, slot + REQ_TAIL_OFFSET, 0);
        write_u32(&peer, slot + REQ_HEAD_OFFSET, 0);
    }
    assert!(taken_runs > 0, "garbage words never matched a position");
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
