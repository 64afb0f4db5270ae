//! Finding the region and the identity, and every error path, without the mediator
//! (a test thread plays the mediator's part where one is needed).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use vgpu_client::discover::ivshmem_devices;
use vgpu_client::{Call, Client, ClientError, ClientOptions, IdentitySource, Wait};
use vgpu_ring::stub::StubRegisters;
use vgpu_ring::{Access, Geometry, PoolId, Priority, Region, Response, SlotIdentity};

const GEOMETRY: Geometry = Geometry { slot_count: 1, ring_entries: 16, arena_size: 1 << 16 };

/// The identity of VM `vm_id` in pool A with `priority`.
fn pool_a(vm_id: u32, priority: Priority) -> SlotIdentity {
    SlotIdentity::new(vm_id, PoolId::new(b'A').unwrap(), priority)
}

fn region(path: &Path, identity: SlotIdentity) -> Region {
    Region::create(path, 1 << 17, GEOMETRY, &[identity], false).unwrap()
}

/// A region whose mediator session has begun, with a heartbeat thread.
fn live_region(path: &Path, identity: SlotIdentity) -> (Arc<Region>, Arc<AtomicBool>) {
    let r = Arc::new(region(path, identity));
    r.begin_session(0x1234, 1, 10).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (beat, flag) = (Arc::clone(&r), Arc::clone(&stop));
    std::thread::spawn(move || {
        let mut n = 1;
        while !flag.load(Ordering::Relaxed) {
            beat.store_heartbeat(n).unwrap();
            n += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    (r, stop)
}

fn options(region: &Path) -> ClientOptions {
    ClientOptions {
        region: Some(region.to_owned()),
        sysfs_root: "/nonexistent".into(),
        ..ClientOptions::default()
    }
}

/// A fake sysfs tree with PCI devices: (address, vendor, device, resource2 content).
fn fake_sysfs(root: &Path, devices: &[(&str, &str, &str, Option<&Path>)]) {
    for (addr, vendor, device, bar) in devices {
        let dir = root.join("bus/pci/devices").join(addr);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(dir.join("device"), format!("{device}\n")).unwrap();
        if let Some(bar) = bar {
            std::os::unix::fs::symlink(bar, dir.join("resource2")).unwrap();
        }
    }
}

#[test]
fn discovery_on_a_fake_sysfs_tree() {
    let dir = tempfile::tempdir().unwrap();
    let vgpu = dir.path().join("vgpu-bar");
    let (_r, stop) = live_region(&vgpu, pool_a(3, Priority::MEDIUM));
    let other = dir.path().join("other-bar");
    std::fs::write(&other, vec![0u8; 1 << 16]).unwrap();

    // Zero ivshmem devices (one unrelated device).
    let none = dir.path().join("sys0");
    fake_sysfs(&none, &[("0000:00:02.0", "0x8086", "0x1234", None)]);
    assert!(ivshmem_devices(&none).is_empty());
    let err = Client::attach(&ClientOptions { sysfs_root: none, ..ClientOptions::default() })
        .unwrap_err();
    assert!(matches!(err, ClientError::NoDevice { .. }), "{err}");
    assert!(err.to_string().contains("no ivshmem device"));

    // One device: found and used.
    let one = dir.path().join("sys1");
    fake_sysfs(&one, &[("0000:00:05.0", "0x1af4", "0x1110", Some(&vgpu))]);
    assert_eq!(ivshmem_devices(&one).len(), 1);
    let client =
        Client::attach(&ClientOptions { sysfs_root: one, ..ClientOptions::default() }).unwrap();
    assert_eq!(client.identity().vm_id, 3);
    assert_eq!(client.identity_source(), IdentitySource::Region);
    drop(client);

    // Two devices, the first not a vgpu region: the one with the vgpu header is chosen.
    let two = dir.path().join("sys2");
    fake_sysfs(
        &two,
        &[
            ("0000:00:04.0", "0x1af4", "0x1110", Some(&other)),
            ("0000:00:07.0", "0x1af4", "0x1110", Some(&vgpu)),
        ],
    );
    assert_eq!(ivshmem_devices(&two).len(), 2);
    let client =
        Client::attach(&ClientOptions { sysfs_root: two.clone(), ..ClientOptions::default() })
            .unwrap();
    assert_eq!(client.region().path(), two.join("bus/pci/devices/0000:00:07.0/resource2"));
    drop(client);
    // An explicit choice wins.
    let err = Client::attach(&ClientOptions {
        region: Some(other.clone()),
        sysfs_root: two,
        ..ClientOptions::default()
    })
    .unwrap_err();
    assert!(matches!(err, ClientError::Region(vgpu_ring::RegionError::BadMagic(_))), "{err}");
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn identity_from_a_stub_image_and_disagreement_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let (_r, stop) = live_region(&path, pool_a(100, Priority::HIGH));
    let stub = dir.path().join("stub");
    std::fs::write(
        &stub,
        StubRegisters { pool: PoolId::new(b'A').unwrap(), priority: Priority::HIGH, vm_id: 100 }
            .to_image(),
    )
    .unwrap();
    let client =
        Client::attach(&ClientOptions { stub: Some(stub.clone()), ..options(&path) }).unwrap();
    assert_eq!(client.identity_source(), IdentitySource::Stub);
    assert!(client.identity_warning().is_none());
    drop(client);
    std::fs::write(
        &stub,
        StubRegisters { pool: PoolId::new(b'B').unwrap(), priority: Priority::LOW, vm_id: 100 }
            .to_image(),
    )
    .unwrap();
    let client =
        Client::attach(&ClientOptions { stub: Some(stub.clone()), ..options(&path) }).unwrap();
    let warning = client.identity_warning().unwrap();
    assert!(warning.contains("vgpu-stub says vm 100 pool B priority 0"), "{warning}");
    assert_eq!(client.identity().slot(), pool_a(100, Priority::HIGH), "the host's copy is used");
    drop(client);
    std::fs::write(&stub, b"short").unwrap();
    assert!(matches!(
        Client::attach(&ClientOptions { stub: Some(stub), ..options(&path) }),
        Err(ClientError::Stub(_))
    ));
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn every_attach_error_is_specific() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let r = region(&path, pool_a(1, Priority::LOW));
    // No mediator ever attached.
    assert!(matches!(Client::attach(&options(&path)), Err(ClientError::NoMediator)));
    r.begin_session(1, 1, 10).unwrap();
    drop(r);
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&7u16.to_le_bytes(), 8).unwrap();
    assert!(matches!(
        Client::attach(&options(&path)),
        Err(ClientError::Region(vgpu_ring::RegionError::VersionMismatch { .. }))
    ));
    file.write_all_at(b"NOTVGPU!", 0).unwrap();
    assert!(matches!(
        Client::attach(&options(&path)),
        Err(ClientError::Region(vgpu_ring::RegionError::BadMagic(_)))
    ));
    // A slot never assigned and no stub.
    let unassigned = dir.path().join("u");
    Region::create(&unassigned, 1 << 17, GEOMETRY, &[], false)
        .unwrap()
        .begin_session(1, 1, 10)
        .unwrap();
    assert!(matches!(Client::attach(&options(&unassigned)), Err(ClientError::NoIdentity)));
}

#[test]
fn one_client_per_slot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let (_r, stop) = live_region(&path, pool_a(1, Priority::LOW));
    let first = Client::attach(&options(&path)).unwrap();
    match Client::attach(&options(&path)) {
        Err(ClientError::SlotInUse { pid }) => assert_eq!(pid, std::process::id()),
        other => panic!("expected SlotInUse, got {other:?}"),
    }
    drop(first);
    Client::attach(&options(&path)).unwrap();
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn dead_mediator_restart_and_timeout_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    // A mediator that attached and then died: its heartbeat never moves. The call
    // waits out its own timeout, then names the silence; the silence is noticed once.
    let dead = dir.path().join("dead");
    let r = region(&dead, pool_a(1, Priority::LOW));
    r.begin_session(5, 1, 10).unwrap();
    let mut client = Client::attach(&options(&dead)).unwrap();
    let notices = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&notices);
    client.on_notice(move |n| sink.lock().unwrap().push(n));
    let t = client.submit(&Call::noop("X")).unwrap();
    assert!(matches!(client.wait(t, Duration::from_secs(1)), Err(ClientError::MediatorDead(_))));
    // A restart (new epoch) is no error: it is noticed, and calls go on.
    r.begin_session(6, 1, 10).unwrap();
    let t = client.submit(&Call::noop("X")).unwrap();
    assert!(matches!(
        client.wait(t, Duration::from_millis(600)),
        Err(ClientError::MediatorDead(_))
    ));
    let notices = notices.lock().unwrap().clone();
    assert!(matches!(notices[0], vgpu_client::Notice::MediatorSilent(_)), "{notices:?}");
    assert!(
        notices.contains(&vgpu_client::Notice::MediatorRestarted { old: 5, new: 6 }),
        "{notices:?}"
    );
    drop(client);

    // A live mediator that never answers: a timeout.
    let quiet = dir.path().join("quiet");
    let (_r, stop) = live_region(&quiet, pool_a(1, Priority::LOW));
    let mut client =
        Client::attach(&ClientOptions { wait: Wait::Spin, ..options(&quiet) }).unwrap();
    let t = client.submit(&Call::noop("X")).unwrap();
    assert!(matches!(client.wait(t, Duration::from_millis(100)), Err(ClientError::Timeout(_))));
    stop.store(true, Ordering::Relaxed);
}

/// A client that cannot ring the doorbell the host published for its VM says so (its
/// requests after an idle spell wait for the host's timed wake-up); a polled VM's
/// client has nothing to say.
#[test]
fn a_client_that_cannot_ring_a_published_doorbell_warns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm1");
    let (r, stop) = live_region(&path, pool_a(1, Priority::LOW));
    let polled = Client::attach(&options(&path)).unwrap();
    assert_eq!(polled.doorbell_warning(), None);
    drop(polled);
    vgpu_ring::publish_doorbell(&r.slot(0).unwrap(), Some(0x0001_0000));
    let client = Client::attach(&options(&path)).unwrap();
    assert!(!client.has_doorbell());
    let warning = client.doorbell_warning().expect("a warning");
    assert!(warning.contains("cannot ring it"), "{warning}");
    assert_eq!(client.warnings().collect::<Vec<_>>(), [warning]);
    stop.store(true, Ordering::Relaxed);
}

/// A mediator of another layout version takes the region over while a client waits (it
/// re-stamps the header with its version, then begins its session): the wait ends with
/// the version mismatch, not with a timeout a minute later, and so does the next one.
#[test]
fn a_mediator_of_another_layout_ends_the_wait() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm1");
    let (r, stop) = live_region(&path, pool_a(1, Priority::LOW));
    let mut client = Client::attach(&options(&path)).unwrap();
    let t = client.submit(&Call::noop("X")).unwrap();
    // Layout 3.1 at offset 8 (major, then minor), then a new epoch.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[3u16.to_ne_bytes(), 1u16.to_ne_bytes()].concat(), 8).unwrap();
    r.begin_session(0x5678, 1, 10).unwrap();
    let mismatch = |result| match result {
        Err(ClientError::Region(vgpu_ring::RegionError::VersionMismatch {
            found_major: 3,
            found_minor: 1,
        })) => {}
        other => panic!("expected the version mismatch, got {other:?}"),
    };
    mismatch(client.wait(t, Duration::from_secs(60)));
    let t = client.submit(&Call::noop("Y")).unwrap();
    mismatch(client.wait(t, Duration::from_secs(60)));
    stop.store(true, Ordering::Relaxed);
}

/// Waiting for the oldest of several answered requests takes its answer only: the later
/// answers stay in the response ring, each for its own wait, and an answer awaited out
/// of order takes those before it along (kept for their waits).
#[test]
fn a_wait_takes_answers_only_up_to_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let (r, stop) = live_region(&path, pool_a(1, Priority::LOW));
    let mut client = Client::attach(&ClientOptions { wait: Wait::Spin, ..options(&path) }).unwrap();
    let tickets: Vec<_> = (0..4).map(|_| client.submit(&Call::noop("W")).unwrap()).collect();
    let host_region = Arc::new(Region::open(&path, Access::ReadWrite).unwrap());
    let mut host = host_region.slot(0).unwrap().host_endpoints().unwrap();
    while let Some(req) = host.requests.pop() {
        host.responses.push(Response { tag: req.tag, status: 1, ..Response::default() }).unwrap();
    }
    let taken = || r.slot(0).unwrap().ring_indices().resp_tail;
    let mut tickets: Vec<_> = tickets.into_iter().map(Some).collect();
    let mut wait = |client: &mut Client, i: usize| {
        let ticket = tickets[i].take().unwrap();
        let tag = ticket.tag();
        assert_eq!(client.wait(ticket, Duration::from_secs(10)).unwrap().response.tag, tag);
    };
    wait(&mut client, 0);
    assert_eq!(taken(), 1, "only the awaited answer left the ring");
    wait(&mut client, 3);
    assert_eq!(taken(), 4, "the answers before it came along");
    wait(&mut client, 1);
    wait(&mut client, 2);
    assert_eq!(client.in_flight(), 0);
    stop.store(true, Ordering::Relaxed);
}

/// 1,000 requests pipelined against a bare host loop that answers in reverse batches:
/// every completion matches its ticket.
#[test]
fn pipelined_requests_complete_with_matching_tags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let (r, stop) = live_region(&path, pool_a(1, Priority::LOW));
    let host_region = Arc::new(Region::open(&path, Access::ReadWrite).unwrap());
    let host_stop = Arc::clone(&stop);
    let host = std::thread::spawn(move || {
        let mut host = host_region.slot(0).unwrap().host_endpoints().unwrap();
        let mut answered = 0;
        while !host_stop.load(Ordering::Relaxed) {
            let mut batch = Vec::new();
            while let Some(req) = host.requests.pop() {
                batch.push(req);
            }
            // Out of order on purpose.
            for req in batch.into_iter().rev() {
                let response = Response {
                    tag: req.tag,
                    status: 1,
                    vm_id: 1,
                    pool: b'A',
                    label: req.label,
                    ..Response::default()
                };
                while host.responses.push(response).is_err() {
                    std::thread::yield_now();
                }
                answered += 1;
            }
            std::thread::yield_now();
        }
        answered
    });
    let mut client = Client::attach(&options(&path)).unwrap();
    let mut completed = 0;
    let mut tickets = std::collections::VecDeque::new();
    for i in 0..1000 {
        let label = format!("P{i}");
        loop {
            match client.submit(&Call::noop(&label)) {
                Ok(t) => {
                    tickets.push_back((t, label));
                    break;
                }
                Err(ClientError::RingFull(_)) => {
                    let (t, label) = tickets.pop_front().unwrap();
                    let done = client.wait(t, Duration::from_secs(10)).unwrap();
                    assert_eq!(vgpu_ring::decode_label(&done.response.label), label);
                    completed += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    for (t, label) in tickets {
        let done = client.wait(t, Duration::from_secs(10)).unwrap();
        assert_eq!(vgpu_ring::decode_label(&done.response.label), label);
        completed += 1;
    }
    assert_eq!(completed, 1000);
    assert_eq!(client.in_flight(), 0);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(host.join().unwrap(), 1000);
    drop(r);
}

/// Staged requests stay invisible to the host (neither their words nor the producer
/// index are stored) until a flush, which publishes them all; waiting flushes by itself,
/// and a staged batch may fill the ring to its last slot.
#[test]
fn staged_requests_are_published_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let (r, stop) = live_region(&path, pool_a(1, Priority::LOW));
    let mut client = Client::attach(&options(&path)).unwrap();
    let head = || r.slot(0).unwrap().ring_indices().req_head;
    // What a host attaching now could take (it releases nothing: the next one sees the
    // same).
    let visible = || {
        let mut host = r.slot(0).unwrap().host_endpoints().unwrap();
        std::iter::from_fn(|| host.requests.take()).count()
    };
    let staged: Vec<_> = (0..3).map(|_| client.stage(&Call::noop("S")).unwrap()).collect();
    assert_eq!((head(), visible()), (0, 0), "nothing visible before the flush");
    client.flush();
    assert_eq!((head(), visible()), (3, 3), "all three with one flush");
    client.flush();
    assert_eq!(head(), 3, "a second flush publishes nothing");
    // The host answers everything it finds; the next batch is published by the wait.
    let host_region = Arc::new(Region::open(&path, Access::ReadWrite).unwrap());
    let host = std::thread::spawn(move || {
        let mut host = host_region.slot(0).unwrap().host_endpoints().unwrap();
        let mut answered = 0;
        while answered < GEOMETRY.ring_entries + 3 {
            while let Some(req) = host.requests.pop() {
                let response = Response { tag: req.tag, status: 1, ..Response::default() };
                while host.responses.push(response).is_err() {
                    std::thread::yield_now();
                }
                answered += 1;
            }
            host.requests.release();
            std::thread::yield_now();
        }
        answered
    });
    for ticket in staged {
        assert!(client.wait(ticket, Duration::from_secs(10)).unwrap().succeeded());
    }
    let batch: Vec<_> =
        (0..GEOMETRY.ring_entries).map(|_| client.stage(&Call::noop("B")).unwrap()).collect();
    assert!(matches!(client.stage(&Call::noop("B")), Err(ClientError::RingFull(_))));
    for ticket in batch {
        assert!(client.wait(ticket, Duration::from_secs(10)).unwrap().succeeded());
    }
    assert_eq!(host.join().unwrap(), GEOMETRY.ring_entries + 3);
    assert_eq!(client.in_flight(), 0);
    stop.store(true, Ordering::Relaxed);
}
