//! 64 VMs sending at once: nothing lost or duplicated, and the mediator's memory does
//! not grow after warm-up. `VGPU_LONG=1` runs 30 s instead of 3 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use vgpu_client::{Call, Wait};
use vgpu_tests::system::{System, Vm, vm};

#[test]
fn sixty_four_vms_lose_nothing_and_memory_is_flat() {
    let vms: Vec<Vm> =
        (1..=64).map(|i| vm(i, if i % 2 == 0 { 'A' } else { 'B' }, (i % 3) as u8)).collect();
    let mut system = System::start(&[('A', ""), ('B', "policy = \"aging\"")], &vms, "").unwrap();
    let duration = if std::env::var_os("VGPU_LONG").is_some() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(3)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = vms
        .iter()
        .map(|v| {
            let mut client = system
                .client(
                    v.id,
                    Wait::Adaptive {
                        spin: Duration::from_micros(20),
                        max_sleep: Duration::from_micros(200),
                    },
                )
                .unwrap();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut answered = 0u64;
                let payload: Vec<u8> = (0..64u8).collect();
                while !stop.load(Ordering::Relaxed) {
                    // Four in flight at a time, each echo checked.
                    let call = Call {
                        op: vgpu_ring::Opcode::Echo,
                        label: "ECHO",
                        args: [0; 3],
                        input: &payload,
                        output_len: 64,
                    };
                    let tickets: Vec<_> = (0..4).map(|_| client.submit(&call).unwrap()).collect();
                    for t in tickets {
                        let done = client.wait(t, Duration::from_secs(30)).unwrap();
                        assert!(done.succeeded());
                        assert_eq!(done.output, payload);
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(duration / 6);
    let rss_start = system.mediator_rss_kib().unwrap();
    std::thread::sleep(duration - duration / 6);
    stop.store(true, Ordering::Relaxed);
    let answered: u64 = senders.into_iter().map(|t| t.join().unwrap()).sum();
    let rss_end = system.mediator_rss_kib().unwrap();
    assert!(system.stop().unwrap().success());
    eprintln!(
        "64 VMs, {duration:?}: {answered} requests answered; mediator RSS {rss_start} KiB after warm-up, {rss_end} KiB at the end"
    );
    // The mediator's own count equals the clients': nothing lost, nothing duplicated.
    let log = system.log();
    let served: u64 = log
        .lines()
        .filter_map(|l| l.split("Pool ").nth(1))
        .filter_map(|l| {
            l.split(": ")
                .nth(1)?
                .strip_suffix(" succeeded, 0 failed")
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum();
    assert_eq!(served, answered, "mediator answered {served}, clients received {answered}");
    assert!(
        rss_end <= rss_start + rss_start / 10 + 1024,
        "RSS grew from {rss_start} to {rss_end} KiB"
    );
}
