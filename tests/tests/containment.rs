//! Fault containment: no guest, no region file and no second daemon takes the
//! mediator down for the other VMs (multi-process, real files and binaries).

use std::os::unix::fs::FileExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vgpu_client::{ClientError, Wait};
use vgpu_ring::layout::{PAGE_SIZE, RESP_TAIL_OFFSET};
use vgpu_ring::{Access, Region, Request, SlotIdentity};
use vgpu_tests::system::{System, vm, wait_for};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A guest that scribbles over its header page and identity words (keeping the region
/// mapped, as its BAR stays mapped) cannot stop a restart: the mediator re-stamps the
/// region from its configuration and serves that VM and the others.
#[test]
fn a_scribbled_header_and_identity_do_not_stop_a_restart() {
    let mut system =
        System::start(&[('A', ""), ('B', "")], &[vm(1, 'A', 2), vm(2, 'B', 0)], "").unwrap();
    let mapped = Arc::new(Region::open(&system.region(1), Access::ReadWrite).unwrap());
    let file = std::fs::OpenOptions::new().write(true).open(system.region(1)).unwrap();
    let garbage: Vec<u8> =
        (0..PAGE_SIZE as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    file.write_all_at(&garbage, 0).unwrap();
    file.write_all_at(&[0x5A; 16], PAGE_SIZE as u64).unwrap();
    assert!(Region::open(&system.region(1), Access::ReadOnly).is_err(), "header destroyed");
    assert!(system.stop().unwrap().success());
    system.start_mediator(&[]).unwrap();
    assert_eq!(
        mapped.slot(0).unwrap().identity(),
        SlotIdentity::new(1, vgpu_ring::PoolId::new(b'A').unwrap(), vgpu_ring::Priority::HIGH),
        "re-stamped"
    );
    for id in [1, 2] {
        let out = system.run_client(id, &["VECTOR_ADD", "--n", "256"]).unwrap();
        assert!(out.status.success(), "vm {id}: {}", stderr(&out));
    }
}

/// One of four regions truncated under load: the mediator survives the SIGBUS, the
/// other VMs see no error, the VM is quarantined (logged) and served again once its
/// region is recreated.
#[test]
fn a_truncated_region_quarantines_only_its_vm() {
    let system = System::start(
        &[('A', ""), ('B', "")],
        &[vm(1, 'A', 1), vm(2, 'A', 1), vm(3, 'B', 1), vm(4, 'B', 2)],
        "quarantine_retry_ms = 100",
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = [2, 3, 4]
        .into_iter()
        .map(|id| {
            let mut client = system.client(id, Wait::default()).unwrap();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut served, mut errors) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match client.vector_add(&[1.0; 64], &[2.0; 64]) {
                        Ok(sum) if sum == [3.0; 64] => served += 1,
                        Ok(sum) => errors.push(format!("wrong sum {:?}", &sum[..4])),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (served, errors)
            })
        })
        .collect();
    // VM 1 is busy too when its file shrinks; its client (in this process) must get
    // an error, not a crash.
    let mut victim = system.client(1, Wait::default()).unwrap();
    victim.noop("WARMUP").unwrap();
    std::fs::OpenOptions::new().write(true).open(system.region(1)).unwrap().set_len(4096).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let victim_error = loop {
        match victim.vector_add(&[1.0; 64], &[1.0; 64]) {
            Ok(_) => assert!(Instant::now() < deadline, "the victim kept being served"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(victim_error, ClientError::RegionLost | ClientError::MediatorDead(_)),
        "{victim_error}"
    );
    drop(victim);
    system.wait_lines("vm1 QUARANTINED", 1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for (vm_id, thread) in [2, 3, 4].into_iter().zip(load) {
        let (served, errors) = thread.join().unwrap();
        assert!(errors.is_empty(), "vm {vm_id}: {errors:?}");
        assert!(served > 0, "vm {vm_id} was not served");
    }
    // Recreated by the administrator: the mediator attaches it again by itself.
    recreate_and_expect_it_served(&system, 1, &["--force"]);
}

/// Create VM `vm`'s region (pool A, priority 1, the small test geometry) with
/// `ivshmem-setup create --path` and `extra` flags, and check the running mediator
/// attaches it by itself and serves the VM.
fn recreate_and_expect_it_served(system: &System, vm: u32, extra: &[&str]) {
    let out = std::process::Command::new(&system.binaries().setup)
        .args(["create", "--vm", &vm.to_string(), "--pool", "A", "--priority", "1"])
        .args(["--size", "256K", "--ring-entries", "64", "--arena-size", "128K"])
        .args(extra)
        .arg("--path")
        .arg(system.region(vm))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    system.wait_lines(&format!("vm{vm} region usable again"), 1).unwrap();
    let out = system.run_client(vm, &["VECTOR_ADD"]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A second mediator on the same configuration refuses to start, naming the region
/// and the running daemon's pid; the lock dies with its holder (SIGKILL included).
#[test]
fn one_mediator_per_region() {
    let mut system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    let first = system.mediator_pid().unwrap();
    let out = std::process::Command::new(&system.binaries().mediator)
        .arg("--config")
        .arg(system.config())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("vgpu-vm1") && err.contains(&format!("pid {first}")), "{err}");
    assert!(system.run_client(1, &["NOOP"]).unwrap().status.success(), "first one serves");
    system.kill_mediator().unwrap();
    // The dead daemon's pid and heartbeat are still in the header: no obstacle.
    system.start_mediator(&[]).unwrap();
    assert!(system.run_client(1, &["NOOP"]).unwrap().status.success());
}

/// A ring poisoned by its guest is recovered without restarting the daemon again: a
/// response-ring consumer index the mediator finds impossible when it attaches isolates
/// that ring; the next client resets it (saying so once) and is served, with
/// `host_status` clear. A restart also clears stale status bits.
#[test]
fn a_poisoned_slot_is_reset_by_the_client() {
    let mut system = System::start(&[('A', "")], &[vm(1, 'A', 1), vm(2, 'A', 1)], "").unwrap();
    let region = Arc::new(Region::open(&system.region(1), Access::ReadOnly).unwrap());
    let file = std::fs::OpenOptions::new().write(true).open(system.region(1)).unwrap();
    assert!(system.stop().unwrap().success());
    file.write_all_at(&1000u32.to_le_bytes(), (PAGE_SIZE + RESP_TAIL_OFFSET) as u64).unwrap();
    system.start_mediator(&[]).unwrap();
    wait_for("the mediator to isolate the ring", Duration::from_secs(20), || {
        region.slot(0).unwrap().host_status() != 0
    })
    .unwrap();
    let out = system.run_client(1, &["VECTOR_ADD"]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches("poisoned; reset").count(), 1, "{}", stderr(&out));
    assert_eq!(region.slot(0).unwrap().host_status(), 0);
    system.wait_lines("rings reset at the guest's request", 1).unwrap();
    assert!(system.run_client(2, &["NOOP"]).unwrap().status.success(), "vm 2 unaffected");

    assert!(system.stop().unwrap().success());
    file.write_all_at(&3u32.to_le_bytes(), (PAGE_SIZE + 16) as u64).unwrap();
    system.start_mediator(&[]).unwrap();
    assert_eq!(region.slot(0).unwrap().host_status(), 0, "a restart clears stale bits");
    assert!(system.run_client(1, &["NOOP"]).unwrap().status.success());
}

/// A guest sending bogus requests at full speed for 3 s leaves less than 3 KiB of log
/// (per-request lines off, as with `--quiet-requests`), and is answered every time.
#[test]
fn a_flooding_guest_cannot_flood_the_log() {
    let mut system = System::start(&[('A', "")], &[vm(1, 'A', 0), vm(2, 'A', 0)], "").unwrap();
    assert!(system.stop().unwrap().success());
    system.start_mediator(&["--quiet-requests"]).unwrap();
    let before = system.log().len();
    let region = Arc::new(Region::open(&system.region(1), Access::ReadWrite).unwrap());
    let mut guest = region.slot(0).unwrap().guest_endpoints().unwrap();
    let bogus =
        Request { tag: 1, opcode: 1, pool: b'A', priority: 2, vm_id: 1, ..Request::default() };
    let (mut sent, mut answered) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        while guest.requests.push(bogus).is_ok() {
            sent += 1;
        }
        while let Some(r) = guest.responses.pop() {
            assert_eq!(r.error, vgpu_ring::ErrorCode::IdentityMismatch as u32);
            answered += 1;
        }
    }
    let grown = system.log().len() - before;
    eprintln!("{sent} bogus requests in 3 s, {answered} answered, {grown} bytes of log");
    assert!(answered > 1000, "only {answered} answered");
    assert!(grown < 3 * 1024, "{grown} bytes of log:\n{}", &system.log()[before..]);
    assert!(system.run_client(2, &["NOOP"]).unwrap().status.success());
}

/// Sizes and counts at the edges of their types: a clear error and exit 1, no panic,
/// and nothing allocated first (a 3 GB vector would take seconds and memory).
#[test]
fn client_arguments_at_their_limits_fail_cleanly() {
    let system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["MATMUL", "--m", "65536", "--k", "65536", "--n", "1"], "bytes of arena"),
        (&["MATMUL", "--m", "4294967295"], "bytes of arena"),
        (&["MATMUL", "--m", "4294967295", "--k", "4294967295", "--n", "4294967295"], "overflows"),
        (&["MATMUL", "--k", "0"], "--k must be positive"),
        (&["VECTOR_ADD", "--n", "268435456"], "bytes of arena"),
        (&["VECTOR_ADD", "--n", "4294967295"], "bytes of arena"),
        (&["DOT", "--n", "0"], "--n must be positive"),
        (&["ECHO", "--bytes", "4294967295"], "bytes of arena"),
        (&["SLEEP", "--us", "4294967295"], "bad shape"),
        (&["NOOP", "--count", "0"], "must be positive"),
        (&["NOOP", "--count", "8", "--batch", "0"], "must be positive"),
        (&["NOOP", "--count", "8", "--depth", "4", "--batch", "8"], "is more than --depth"),
        (&["NOOP", "--timeout", "0"], "must be positive"),
    ];
    for (args, expected) in cases {
        let out = system.run_client(1, args).unwrap();
        let err = stderr(&out);
        let all = format!("{err}{}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {all}");
        assert!(!all.contains("panicked"), "{args:?}: {all}");
        assert!(all.contains(expected), "{args:?}: expected {expected:?} in {all}");
    }
}

/// A region missing at start quarantines its VM only: the mediator starts, serves the
/// others, and attaches the VM by itself once its region exists.
#[test]
fn a_region_missing_at_start_is_attached_when_it_appears() {
    let mut system =
        System::start(&[('A', "")], &[vm(1, 'A', 1), vm(2, 'A', 1)], "quarantine_retry_ms = 100")
            .unwrap();
    assert!(system.stop().unwrap().success());
    std::fs::remove_file(system.region(2)).unwrap();
    system.start_mediator_serving(&[], &[1]).unwrap();
    system.wait_lines("vm2 QUARANTINED", 1).unwrap();
    assert!(system.run_client(1, &["NOOP"]).unwrap().status.success(), "vm 1 served");
    recreate_and_expect_it_served(&system, 2, &[]);
    assert_eq!(system.lines("vm2 QUARANTINED").len(), 1, "logged once, not per retry");
}
