//! Hostile guests against the real mediator: garbage over a slot, a guest that stops
//! reading responses, a flood past the quota. Honest VMs must not notice.
//!
//! `VGPU_LONG=1` runs the garbage test for 20 s instead of 3 s.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vgpu_client::{Call, Wait};
use vgpu_ring::{
    Access, ErrorCode, Opcode, PushError, Region, Request, Response, Status, encode_label,
};
use vgpu_tests::system::{System, vm, wait_for};

fn long() -> bool {
    std::env::var_os("VGPU_LONG").is_some()
}

fn noop(tag: u32, vm_id: u32, priority: u8) -> Request {
    Request {
        tag,
        opcode: Opcode::Noop as u16,
        pool: b'A',
        priority,
        vm_id,
        label: encode_label("RAW"),
        ..Request::default()
    }
}

#[test]
fn random_bytes_over_a_slot_leave_honest_vms_and_other_regions_untouched() {
    let mut system = System::start(
        &[('A', ""), ('B', "")],
        &[vm(1, 'A', 0), vm(2, 'A', 1), vm(3, 'B', 1), vm(4, 'B', 0)],
        "",
    )
    .unwrap();
    let watched = std::fs::read(system.region(4)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let duration = if long() { Duration::from_secs(20) } else { Duration::from_secs(3) };

    let hostile = {
        let path = system.region(1);
        let stop = Arc::clone(&stop);
        // Slot 0's control page, its `req_tail`, its request ring.
        const SLOT: u64 = 4096;
        const REQ_TAIL: u64 = SLOT + vgpu_ring::layout::REQ_TAIL_OFFSET as u64;
        const REQUESTS: u64 = SLOT + 4096;
        const RING_ENTRIES: u32 = vgpu_tests::system::RegionSpec::SMALL.ring_entries;
        std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let len = file.metadata().unwrap().len();
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // One write in 16 publishes garbage as the host's next request: random
                // bytes, then the publication word the host awaits (its `req_tail` + 1),
                // so that garbage is taken and judged, not only left in the ring.
                if x.is_multiple_of(16) {
                    let mut tail = [0; 4];
                    file.read_exact_at(&mut tail, REQ_TAIL).unwrap();
                    let tail = u32::from_le_bytes(tail);
                    let entry = REQUESTS + u64::from(tail % RING_ENTRIES) * 64;
                    let junk: Vec<u8> = (0..60u64).map(|i| (x >> (i % 57)) as u8).collect();
                    file.write_all_at(&junk, entry).unwrap();
                    file.write_all_at(&tail.wrapping_add(1).to_le_bytes(), entry + 60).unwrap();
                    writes += 1;
                    continue;
                }
                // Mostly the slot's control page (identity, indices) and rings, sometimes
                // anywhere in the region, header included.
                let anywhere = x.is_multiple_of(4);
                let span = if anywhere { len } else { 4096 + 2 * 64 * 64 };
                let offset = (x >> 8) % (span - 8);
                let offset = if anywhere { offset } else { 4096 + offset };
                file.write_all_at(&x.to_le_bytes(), offset.min(len - 8)).unwrap();
                writes += 1;
            }
            writes
        })
    };
    let honest: Vec<_> = [2u32, 3]
        .into_iter()
        .map(|id| {
            let mut client = system.client(id, Wait::default()).unwrap();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut done = 0u64;
                let a: Vec<f32> = (0..256).map(|i| i as f32).collect();
                let b: Vec<f32> = (0..256).map(|i| (i * 3) as f32).collect();
                let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(
                        client.vector_add(&a, &b).unwrap(),
                        want,
                        "vm{id} got a wrong result"
                    );
                    done += 1;
                }
                done
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let writes = hostile.join().unwrap();
    let answered: Vec<u64> = honest.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!("hostile writes: {writes}; honest requests answered correctly: {answered:?}");
    assert!(answered.iter().all(|&n| n > 0));
    assert!(system.mediator_running(), "the mediator died");
    // The idle region changed only in the header's heartbeat (bytes 136..144).
    let after = std::fs::read(system.region(4)).unwrap();
    let changed: Vec<usize> = watched
        .iter()
        .zip(&after)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    assert!(
        changed.iter().all(|i| (136..144).contains(i)),
        "bytes outside the heartbeat changed: {:?}",
        &changed[..changed.len().min(8)]
    );
    let log = system.log();
    assert!(
        log.contains("vm1 claimed") || log.contains("vm1 response ring isolated"),
        "the hostile VM was neither refused nor isolated"
    );
    // The mediator still serves the honest VMs after the attack, and stops cleanly.
    assert!(system.run_client(3, &["VECTOR_ADD"]).unwrap().status.success());
    assert!(system.stop().unwrap().success());
}

#[test]
fn a_guest_that_stops_reading_responses_only_blocks_itself() {
    let system = System::start(&[('A', "")], &[vm(1, 'A', 0), vm(2, 'A', 0)], "").unwrap();
    let region = Arc::new(Region::open(&system.region(1), Access::ReadWrite).unwrap());
    let mut guest = region.slot(0).unwrap().guest_endpoints().unwrap();
    // The mediator answers into the response ring (64 entries) and releases those
    // requests; it parks 64 more answers, whose requests stay unreleased in the ring
    // (the journal), and then takes no more of this VM's requests.
    let total = 2 * 64;
    let deadline = Instant::now() + Duration::from_secs(20);
    for tag in 0..total {
        while let Err(e) = guest.requests.push(noop(tag, 1, 0)) {
            assert!(matches!(e, PushError::Full(_)), "{e}");
            assert!(Instant::now() < deadline, "the mediator stopped taking at {tag}");
            std::thread::yield_now();
        }
    }
    wait_for("the mediator to answer 64 requests", Duration::from_secs(20), || {
        let i = region.slot(0).unwrap().ring_indices();
        (i.req_tail, i.resp_head) == (64, 64)
    })
    .unwrap();
    // Another VM of the same pool is served meanwhile: the dispatcher kept passing
    // over this VM and released nothing it had not published.
    assert!(system.run_client(2, &["NOOP"]).unwrap().status.success());
    let i = region.slot(0).unwrap().ring_indices();
    assert_eq!((i.req_tail, i.resp_head), (64, 64), "released a request it had not answered");
    assert!(matches!(guest.requests.push(noop(total, 1, 0)), Err(PushError::Full(_))));
    let tag = total;
    // Reading now yields every answer, in order, none lost.
    let mut next = 0;
    wait_for("every parked answer", Duration::from_secs(20), || {
        while let Some(r) = guest.responses.pop() {
            assert_eq!((r.tag, r.status), (next, Status::Success as u32));
            next += 1;
        }
        next == tag
    })
    .unwrap();
}

#[test]
fn a_flood_past_the_quota_is_refused_and_others_are_served() {
    let system = System::start(
        &[('A', "")],
        &[vm(1, 'A', 1), vm(2, 'A', 1), vm(9, 'A', 2)],
        "max_queued_per_vm = 4",
    )
    .unwrap();
    let mut busy = system.client(9, Wait::default()).unwrap();
    let sleep = busy.submit(&Call::sleep(400_000)).unwrap();
    system.wait_lines("command=SLEEP", 1).unwrap();
    let region = Arc::new(Region::open(&system.region(1), Access::ReadWrite).unwrap());
    let mut guest = region.slot(0).unwrap().guest_endpoints().unwrap();
    for tag in 0..20 {
        guest.requests.push(noop(tag, 1, 1)).unwrap();
    }
    let mut answers: Vec<Response> = Vec::new();
    wait_for("20 answers", Duration::from_secs(20), || {
        while let Some(r) = guest.responses.pop() {
            answers.push(r);
        }
        answers.len() == 20
    })
    .unwrap();
    let refused = answers.iter().filter(|r| r.error == ErrorCode::QuotaExceeded as u32).count();
    let ok = answers.iter().filter(|r| r.status == Status::Success as u32).count();
    assert_eq!((ok, refused), (4, 16), "{answers:?}");
    assert!(system.run_client(2, &["NOOP"]).unwrap().status.success());
    assert!(busy.wait(sleep, Duration::from_secs(10)).unwrap().succeeded());
}
