//! Doorbells end to end: a mediator whose VMs have doorbells sleeps in `epoll_wait` when
//! idle, and each request after idle wakes it (clients stand in for QEMU on the VMs'
//! doorbell sockets, held by `ivshmem-setup serve`).
//!
//! The heartbeat is 5 s, so a lost wake-up would leave a request waiting past the
//! client's 2 s timeout: the tests count answers, the latencies are printed, not
//! asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};
use vgpu_client::{Call, Wait};
use vgpu_ring::{Access, Region};
use vgpu_tests::system::{Binaries, Launcher, RegionSpec, System, vm, wait_for};

const SLEEPY: &str = "heartbeat_interval_ms = 5000\nidle_spin_us = 100";

fn doorbell_system(vms: &[vgpu_tests::system::Vm]) -> System {
    doorbell_system_with(vms, "")
}

/// A doorbell system whose mediator settings add `extra` to [`SLEEPY`].
fn doorbell_system_with(vms: &[vgpu_tests::system::Vm], extra: &str) -> System {
    doorbell_system_settings(vms, &format!("{SLEEPY}\n{extra}"))
}

/// A doorbell system (pool A) whose mediator has `settings`.
fn doorbell_system_settings(vms: &[vgpu_tests::system::Vm], settings: &str) -> System {
    System::start_with(
        Launcher::Binaries(Binaries::locate()),
        RegionSpec { doorbell: true, ..RegionSpec::SMALL },
        &[('A', "")],
        vms,
        settings,
    )
    .unwrap()
}

/// A client of VM 1 on its doorbell sends `n` requests, each once the mediator sleeps
/// on that doorbell (its wake-up request is in the slot): each must be answered within
/// 2 s, which only a doorbell the mediator watches can do against the 5 s heartbeat.
/// Then the system stops cleanly.
fn answered_while_asleep(mut system: System, n: usize) {
    let mut client = system.client(1, Wait::default()).unwrap();
    assert!(client.has_doorbell());
    let region = Arc::new(Region::open(&system.region(1), Access::ReadWrite).unwrap());
    let slot = region.slot(0).unwrap();
    for _ in 0..n {
        wait_for("the mediator asleep on the doorbell", Duration::from_secs(10), || {
            vgpu_ring::wakeup_wanted(&slot).is_some()
        })
        .unwrap();
        let ticket = client.submit(&Call::noop("ASLEEP")).unwrap();
        let done = client.wait(ticket, Duration::from_secs(2)).expect("woken, not timed out");
        assert!(done.succeeded(), "{}", done.text());
    }
    drop(client);
    assert!(system.stop().unwrap().success());
}

fn rounds() -> usize {
    if std::env::var_os("VGPU_LONG").is_some() { 40 } else { 6 }
}

/// Requests 300 ms apart, each into a sleeping mediator: every one is answered, and
/// after a mediator restart (the holder and the client's connection stay) too.
#[test]
fn requests_300_ms_apart_wake_a_sleeping_mediator() {
    let mut system = doorbell_system(&[vm(1, 'A', 1), vm(2, 'A', 0)]);
    assert!(system.log().contains("doorbells of 2 VMs received"), "{}", system.log());
    let mut client = system.client(1, Wait::default()).unwrap();
    assert!(client.has_doorbell());
    let send_after_idle = |client: &mut vgpu_client::Client, n: usize| {
        let mut latencies = Vec::with_capacity(n);
        for _ in 0..n {
            std::thread::sleep(Duration::from_millis(300));
            let start = Instant::now();
            let ticket = client.submit(&Call::noop("AFTER_IDLE")).unwrap();
            let done = client.wait(ticket, Duration::from_secs(2)).expect("woken, not timed out");
            assert!(done.succeeded(), "{}", done.text());
            latencies.push(start.elapsed());
        }
        latencies.sort_unstable();
        latencies
    };
    let latencies = send_after_idle(&mut client, rounds());
    eprintln!(
        "{} requests 300 ms apart into a sleeping mediator: median {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    // A new mediator fetches the same doorbells from the holder.
    assert!(system.stop().unwrap().success());
    system.start_mediator(&[]).unwrap();
    let latencies = send_after_idle(&mut client, 2);
    eprintln!("after a mediator restart: {latencies:?}");
    drop(client);
    assert!(system.stop().unwrap().success());
}

/// An idle doorbell mediator sleeps, at the production heartbeat (every 100 ms): over
/// 2 s its dispatcher wakes only for the sleeping heartbeat (every 500 ms: 4 times; it
/// woke for every beat, 20 times), its doorbell thread (a look for a new holder every
/// 2 s) at most once or twice, and the control thread once a second (its supervision
/// tick); none polls a stop flag. The heartbeat still changes well within the ten
/// intervals after which a guest calls the mediator silent. SIGTERM still stops it
/// cleanly.
#[test]
fn an_idle_doorbell_mediator_sleeps() {
    let mut system = doorbell_system_settings(
        &[vm(1, 'A', 1)],
        "heartbeat_interval_ms = 100\nidle_spin_us = 100",
    );
    let region = Arc::new(Region::open(&system.region(1), Access::ReadWrite).unwrap());
    let slot = region.slot(0).unwrap();
    wait_for("the mediator asleep on the doorbell", Duration::from_secs(10), || {
        vgpu_ring::wakeup_wanted(&slot).is_some()
    })
    .unwrap();
    // Every thread started (the doorbell thread is the last), so none is missing from
    // the first count.
    wait_for("the doorbell thread", Duration::from_secs(10), || {
        system.mediator_sleeps().contains_key("doorbells")
    })
    .unwrap();
    let before = system.mediator_sleeps();
    // Watch the heartbeat as a guest would: the longest time it stood still.
    let (mut beat, mut changed, mut longest) =
        (region.heartbeat().0, Instant::now(), Duration::ZERO);
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
        let now = region.heartbeat().0;
        if now != beat {
            longest = longest.max(changed.elapsed());
            (beat, changed) = (now, Instant::now());
        }
    }
    longest = longest.max(changed.elapsed());
    let after = system.mediator_sleeps();
    let woke = |thread: &str| after.get(thread).unwrap_or(&0) - before.get(thread).unwrap_or(&0);
    eprintln!(
        "wake-ups over 2 s idle: {after:?} minus {before:?}; heartbeat still for {longest:?} at most"
    );
    assert!(woke("pool-A") <= 6, "the dispatcher woke {} times", woke("pool-A"));
    assert!(woke("doorbells") <= 3, "the doorbell thread woke {} times", woke("doorbells"));
    assert!(woke("vgpu-mediator") <= 4, "the control thread woke {} times", woke("vgpu-mediator"));
    assert!(longest < Duration::from_secs(1), "the heartbeat stood still for {longest:?}");
    assert!(system.stop().unwrap().success());
}

/// A holder started after the mediator: the mediator asks it again (every
/// `quarantine_retry_ms`), publishes the VM's doorbell and sleeps on it from then; the
/// VM's requests wake it.
#[test]
fn a_holder_started_after_the_mediator_is_found() {
    let mut system = doorbell_system_with(&[vm(1, 'A', 1)], "quarantine_retry_ms = 200");
    assert!(system.stop().unwrap().success());
    system.stop_holder();
    system.start_mediator(&[]).unwrap();
    assert!(system.log().contains("doorbells unavailable"), "{}", system.log());
    let region = Arc::new(Region::open(&system.region(1), Access::ReadWrite).unwrap());
    let slot = region.slot(0).unwrap();
    assert_eq!(vgpu_ring::wakeup_wanted(&slot), None, "polled: no doorbell published");
    system.start_holder().unwrap();
    wait_for("the late doorbell", Duration::from_secs(10), || {
        system.log().contains("vm1 doorbell received from the holder")
    })
    .unwrap();
    answered_while_asleep(system, 3);
}

/// A holder restarted while the mediator runs (its QEMUs restart with it: their
/// doorbells are new eventfds): the mediator notices the new holder, watches the VM's
/// new doorbell in place of the old one, and a request from the new QEMU wakes it.
#[test]
fn a_restarted_holder_is_noticed() {
    let mut system = doorbell_system_with(&[vm(1, 'A', 1)], "quarantine_retry_ms = 200");
    let mut old_qemu = system.client(1, Wait::default()).unwrap();
    let ticket = old_qemu.submit(&Call::noop("OLD_HOLDER")).unwrap();
    assert!(old_qemu.wait(ticket, Duration::from_secs(2)).unwrap().succeeded());
    drop(old_qemu);
    system.stop_holder();
    system.start_holder().unwrap();
    wait_for("the new holder's doorbell", Duration::from_secs(10), || {
        system.log().contains("vm1 doorbell replaced by the new holder's")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", system.log()));
    answered_while_asleep(system, 3);
}

/// `vgpu-client --interval-ms` on the doorbell socket: every request answered, the
/// percentiles printed.
#[test]
fn the_cli_measures_idle_cost_through_the_doorbell() {
    let system = doorbell_system(&[vm(1, 'A', 1)]);
    let out = system
        .run_client(1, &["NOOP", "--count", "4", "--interval-ms", "300", "--timeout", "2"])
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("4 round trips: min"), "{stdout}");
    eprintln!("{}", stdout.lines().find(|l| l.contains("round trips")).unwrap_or_default());
    // While a peer (the VM's QEMU) is connected, a client asking for the same socket
    // is refused with a clear error.
    let first = vgpu_doorbell::HostPeer::connect(&system.doorbell_socket(1)).unwrap();
    let out = system.run_client(1, &["NOOP", "--timeout", "2"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("doorbell socket"));
    drop(first);
}
