//! The fair policy against the real mediator: weighted shares of a pool's executor time
//! within one priority, strict order between priorities.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use vgpu_client::{Call, Client, Wait};
use vgpu_tests::system::{System, vm, weighted_vm};

/// Keep `depth` SLEEPs of `us` µs queued until `stop`; returns the executor time the
/// answers report.
fn keep_busy(mut client: Client, us: u32, depth: usize, stop: &AtomicBool) -> Duration {
    let mut in_flight = VecDeque::new();
    let mut exec = Duration::ZERO;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping && in_flight.len() < depth {
            in_flight.push_back(client.submit(&Call::sleep(us)).unwrap());
            continue;
        }
        let Some(ticket) = in_flight.pop_front() else { break };
        let done = client.wait(ticket, Duration::from_secs(30)).unwrap();
        assert!(done.succeeded(), "{}", done.text());
        exec += Duration::from_nanos(done.response.exec_ns);
    }
    exec
}

/// Two VMs of one priority with weights 1 and 2, each keeping 8 SLEEPs of 5 ms queued
/// for 3 s: the executor time splits 1:2 within 10 %.
#[test]
fn executor_time_splits_by_weight() {
    let system = System::start(
        &[('A', "policy = \"fair\"")],
        &[weighted_vm(1, 'A', 1, 1), weighted_vm(2, 'A', 1, 2)],
        "",
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = [1, 2]
        .into_iter()
        .map(|id| {
            let client = system.client(id, Wait::default()).unwrap();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || keep_busy(client, 5_000, 8, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let times: Vec<Duration> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ratio = times[1].as_secs_f64() / times[0].as_secs_f64();
    eprintln!("executor time: weight 1 {:?}, weight 2 {:?}, ratio {ratio:.3}", times[0], times[1]);
    assert!((1.8..=2.2).contains(&ratio), "ratio {ratio:.3}");
}

/// In a fair pool a VM that starts late is served within a couple of jobs, not after
/// the other VM's backlog; a higher priority still goes first.
#[test]
fn a_late_vm_is_served_within_a_couple_of_jobs_and_priorities_preempt() {
    let system = System::start(
        &[('A', "policy = \"fair\"")],
        &[vm(1, 'A', 0), vm(2, 'A', 0), vm(3, 'A', 2)],
        "",
    )
    .unwrap();
    let mut busy = system.client(1, Wait::default()).unwrap();
    let backlog: Vec<_> = (0..8).map(|_| busy.submit(&Call::sleep(20_000)).unwrap()).collect();
    system.wait_lines("[PROCESS] Pool A: Processing vm=1", 2).unwrap();
    let mut late = system.client(2, Wait::default()).unwrap();
    let late_job = late.submit(&Call::sleep(1_000)).unwrap();
    system.wait_lines("Added priority=0, vm=2", 1).unwrap();
    let mut high = system.client(3, Wait::default()).unwrap();
    let high_job = high.submit(&Call::noop("HIGH")).unwrap();
    assert!(late.wait(late_job, Duration::from_secs(30)).unwrap().succeeded());
    assert!(high.wait(high_job, Duration::from_secs(30)).unwrap().succeeded());
    for t in backlog {
        assert!(busy.wait(t, Duration::from_secs(30)).unwrap().succeeded());
    }
    // The log in order: from vm 2's [QUEUE] line to its [PROCESS] line, at most two
    // of vm 1's jobs start (the one running and the next); vm 3 (high) goes before
    // every low-priority job queued when it arrived.
    let log = system.log();
    let lines: Vec<&str> = log.lines().collect();
    let queued = lines.iter().position(|l| l.contains("Added priority=0, vm=2")).unwrap();
    let served = lines.iter().position(|l| l.contains("Processing vm=2")).unwrap();
    let between = lines[queued..served].iter().filter(|l| l.contains("Processing vm=1")).count();
    assert!(
        between <= 2,
        "{between} of vm 1's jobs started first:\n{}",
        lines[queued..=served].join("\n")
    );
    let high_queued = lines.iter().position(|l| l.contains("vm=3, count=")).unwrap();
    let high_served = lines.iter().position(|l| l.contains("Processing vm=3")).unwrap();
    let before_high =
        lines[high_queued..high_served].iter().filter(|l| l.contains("[PROCESS]")).count();
    assert!(before_high <= 1, "{before_high} jobs started before the high-priority one");
}
