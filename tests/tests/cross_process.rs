//! Two processes, each mapping the same region file itself, exchange messages through
//! the request ring; the child checks order and content of every one.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vgpu_ring::{Geometry, PushError, Region, SlotIdentity};
use vgpu_tests::peer::message;

const MESSAGES: u64 = 1_000_000;

#[test]
fn a_million_messages_arrive_in_order_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("region");
    let geometry = Geometry { slot_count: 1, ring_entries: 256, arena_size: 4096 };
    let region = Arc::new(
        Region::create(
            &path,
            1 << 16,
            geometry,
            &[SlotIdentity::new(
                1,
                vgpu_ring::PoolId::new(b'A').unwrap(),
                vgpu_ring::Priority::LOW,
            )],
            false,
        )
        .unwrap(),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ring-peer"))
        .args(["consume", path.to_str().unwrap(), &MESSAGES.to_string()])
        .spawn()
        .unwrap();
    let mut guest = region.slot(0).unwrap().guest_endpoints().unwrap();
    // Watchdog: a hung child fails the test instead of hanging it.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seq = 0;
    while seq < MESSAGES {
        match guest.requests.stage(message(seq)) {
            Ok(()) => seq += 1,
            Err(PushError::Full(_)) => {
                guest.requests.publish();
                assert!(Instant::now() < deadline, "consumer stalled at {seq}");
                assert!(child.try_wait().unwrap().is_none(), "consumer exited early at {seq}");
                std::thread::yield_now();
            }
            Err(PushError::Poisoned(e)) => panic!("{e}"),
        }
        if seq % 32 == 0 {
            guest.requests.publish();
        }
    }
    guest.requests.publish();
    let done = loop {
        if let Some(r) = guest.responses.pop() {
            break r;
        }
        assert!(Instant::now() < deadline, "no completion from the consumer");
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "consumer failed: {status}");
        }
        std::thread::yield_now();
    };
    assert_eq!(u64::from(done.tag), MESSAGES);
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_corrupted_message_is_reported_by_the_checker() {
    let mut m = message(5);
    vgpu_tests::peer::check_message(5, &m).unwrap();
    m.args[2] ^= 1;
    assert!(vgpu_tests::peer::check_message(5, &m).is_err());
    assert!(vgpu_tests::peer::check_message(6, &message(5)).is_err());
}
