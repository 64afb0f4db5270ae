//! The original guide's scenarios and the mediator's guarantees, with the real binaries
//! as separate processes on real region files.

use std::time::{Duration, Instant};
use vgpu_client::{Call, Wait};
use vgpu_ring::{ErrorCode, Opcode, Request, Status, encode_label};
use vgpu_tests::system::{System, vm, wait_for};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `[PROCESS]` lines' `vm=N` values for commands starting with `prefix`.
fn processed(system: &System, prefix: &str) -> Vec<u32> {
    system
        .lines("[PROCESS]")
        .iter()
        .filter(|l| l.contains(&format!("command={prefix}")))
        .filter_map(|l| l.split("vm=").nth(1)?.split(',').next()?.parse().ok())
        .collect()
}

/// The guide's priority test, made deterministic: the pool is kept busy by a SLEEP, so
/// the three requests are all queued before any runs.
#[test]
fn priority_scenario_processes_high_medium_low() {
    let mut system = System::start(
        &[('A', "")],
        &[vm(1, 'A', 0), vm(2, 'A', 2), vm(3, 'A', 1), vm(9, 'A', 0)],
        "",
    )
    .unwrap();
    let busy = system.client_command(9, &["SLEEP", "--us", "1500000"]).spawn().unwrap();
    system.wait_lines("command=SLEEP", 1).unwrap();
    let mut clients = Vec::new();
    for (vm, command) in [(1, "TEST_LOW"), (2, "TEST_HIGH"), (3, "TEST_MEDIUM")] {
        clients.push((vm, command, system.client_command(vm, &[command]).spawn().unwrap()));
        system.wait_lines("[QUEUE]", clients.len() + 1).unwrap();
    }
    assert!(processed(&system, "TEST_").is_empty(), "the SLEEP ended before all three were queued");
    for (vm, command, child) in clients {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "vm{vm}: {}", stdout(&out));
        let text = stdout(&out);
        assert!(
            text.contains(&format!("Response: 1:Pool A processed: {command} (prio=")),
            "{text}"
        );
        assert!(text.contains("✅ SUCCESS!"));
    }
    assert!(busy.wait_with_output().unwrap().status.success());
    assert_eq!(processed(&system, "TEST_"), [2, 3, 1]);
    assert!(system.stop().unwrap().success());
}

/// Pools are independent: both answered when submitting together, and pool B's round
/// trip is unaffected by a backlog of long jobs in pool A.
#[test]
fn pools_do_not_interfere() {
    let system =
        System::start(&[('A', ""), ('B', "")], &[vm(1, 'A', 1), vm(2, 'B', 1)], "").unwrap();
    let a = system.client_command(1, &["VECTOR_ADD"]).spawn().unwrap();
    let b = system.client_command(2, &["VECTOR_ADD"]).spawn().unwrap();
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());

    let mut pool_b = system.client(2, Wait::Spin).unwrap();
    let round_trips = |client: &mut vgpu_client::Client| -> Vec<Duration> {
        (0..200)
            .map(|_| {
                let start = Instant::now();
                client.noop("PING").unwrap();
                start.elapsed()
            })
            .collect()
    };
    let median = |mut v: Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (unloaded, _) = median(round_trips(&mut pool_b));
    // Flood pool A with 200 ms jobs, several queued.
    let mut pool_a = system.client(1, Wait::default()).unwrap();
    let mut sleeps: Vec<_> =
        (0..4).map(|_| pool_a.submit(&Call::sleep(200_000)).unwrap()).collect();
    system.wait_lines("command=SLEEP", 1).unwrap();
    let (loaded, worst) = median(round_trips(&mut pool_b));
    eprintln!(
        "pool B NOOP round trip: unloaded median {unloaded:?}, with pool A flooded median {loaded:?} (worst {worst:?})"
    );
    // The order of events, not a duration: all 200 of pool B's round trips completed
    // while pool A's first job was still running (not answered, the second not started),
    // so none of them waited behind pool A.
    let first = sleeps.remove(0);
    let first = match pool_a.try_complete(first).unwrap() {
        Ok(done) => {
            panic!("pool A's first SLEEP ended during pool B's round trips: {}", done.text())
        }
        Err(ticket) => ticket,
    };
    assert_eq!(processed(&system, "SLEEP").len(), 1, "pool A still on its first job");
    for t in std::iter::once(first).chain(sleeps) {
        assert!(pool_a.wait(t, Duration::from_secs(10)).unwrap().succeeded());
    }
}

/// Requests of equal priority from several VMs are processed in arrival order.
#[test]
fn fifo_within_one_priority() {
    let system = System::start(
        &[('A', "")],
        &[vm(1, 'A', 1), vm(2, 'A', 1), vm(3, 'A', 1), vm(9, 'A', 1)],
        "",
    )
    .unwrap();
    let mut clients: Vec<_> =
        [1, 2, 3].iter().map(|&v| system.client(v, Wait::default()).unwrap()).collect();
    let mut busy = system.client(9, Wait::default()).unwrap();
    let sleep = busy.submit(&Call::sleep(800_000)).unwrap();
    system.wait_lines("command=SLEEP", 1).unwrap();
    let mut tickets = Vec::new();
    let mut order = Vec::new();
    for i in 0..9 {
        let v = [2, 0, 1, 1, 2, 0, 0, 1, 2][i];
        let label = format!("F{i}");
        tickets.push((v, clients[v].submit(&Call::noop(&label)).unwrap()));
        order.push(v as u32 + 1);
        system.wait_lines("[QUEUE]", i + 2).unwrap();
    }
    assert!(processed(&system, "F").is_empty(), "the SLEEP ended before all were queued");
    for (v, t) in tickets {
        assert!(clients[v].wait(t, Duration::from_secs(10)).unwrap().succeeded());
    }
    assert!(busy.wait(sleep, Duration::from_secs(10)).unwrap().succeeded());
    let labels: Vec<String> = system
        .lines("[PROCESS]")
        .iter()
        .filter_map(|l| {
            l.split("command=").nth(1).filter(|c| c.starts_with('F')).map(str::to_owned)
        })
        .collect();
    assert_eq!(labels, (0..9).map(|i| format!("F{i}")).collect::<Vec<_>>());
    assert_eq!(processed(&system, "F"), order);
}

/// Under a sustained flood of priority-2 work, a priority-0 request overtakes the flood
/// in an aging pool and waits for the flood's end in a strict one.
#[test]
fn aging_lets_low_priority_through_strict_does_not() {
    let pools = [('A', "policy = \"strict\""), ('B', "policy = \"aging\"\naging_interval_ms = 30")];
    let system =
        System::start(&pools, &[vm(1, 'A', 2), vm(2, 'A', 0), vm(3, 'B', 2), vm(4, 'B', 0)], "")
            .unwrap();
    for (high, low) in [(1u32, 2u32), (3, 4)] {
        let mut flooder = system.client(high, Wait::default()).unwrap();
        let mut lowly = system.client(low, Wait::default()).unwrap();
        let job = Call {
            op: Opcode::Sleep,
            label: "FLOOD",
            args: [10_000, 0, 0],
            input: &[],
            output_len: 0,
        };
        // Keep 8 jobs in flight for 60 jobs (about 0.6 s of work): the queue never runs
        // dry even if this thread is descheduled for tens of milliseconds.
        let mut in_flight: std::collections::VecDeque<_> =
            (0..8).map(|_| flooder.submit(&job).unwrap()).collect();
        system.wait_lines(&format!("vm={high}, priority=2, command=FLOOD"), 1).unwrap();
        let low_ticket = lowly.submit(&Call::noop("LOWLY")).unwrap();
        let mut sent = 8;
        while let Some(t) = in_flight.pop_front() {
            assert!(flooder.wait(t, Duration::from_secs(10)).unwrap().succeeded());
            if sent < 60 {
                in_flight.push_back(flooder.submit(&job).unwrap());
                sent += 1;
            }
        }
        assert!(lowly.wait(low_ticket, Duration::from_secs(10)).unwrap().succeeded());
    }
    let process = system.lines("[PROCESS]");
    let position = |vm: u32, what: &str| -> Vec<usize> {
        process
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains(&format!("vm={vm},")) && l.contains(what))
            .map(|(i, _)| i)
            .collect()
    };
    let strict_low = position(2, "LOWLY")[0];
    let strict_last_flood = *position(1, "FLOOD").last().unwrap();
    assert!(strict_low > strict_last_flood, "strict: low priority must wait for the flood");
    let aging_low = position(4, "LOWLY")[0];
    let aging_floods_after = position(3, "FLOOD").iter().filter(|&&i| i > aging_low).count();
    assert!(
        aging_floods_after > 10,
        "aging: low priority ran before the flood ended ({aging_floods_after} flood jobs after it)"
    );
}

/// A guest cannot raise its own priority: a request claiming priority 2 from a slot
/// configured 0 is answered with an error and logged.
#[test]
fn a_false_priority_claim_is_refused() {
    let system = System::start(&[('A', "")], &[vm(5, 'A', 0)], "").unwrap();
    let region = std::sync::Arc::new(
        vgpu_ring::Region::open(&system.region(5), vgpu_ring::Access::ReadWrite).unwrap(),
    );
    let mut guest = region.slot(0).unwrap().guest_endpoints().unwrap();
    let claim = Request {
        tag: 77,
        opcode: Opcode::Noop as u16,
        pool: b'A',
        priority: 2,
        vm_id: 5,
        label: encode_label("TEST_HIGH"),
        ..Request::default()
    };
    guest.requests.push(claim).unwrap();
    let mut response = None;
    wait_for("the answer", Duration::from_secs(10), || {
        response = guest.responses.pop();
        response.is_some()
    })
    .unwrap();
    let response = response.unwrap();
    assert_eq!(
        (response.tag, response.status, response.error),
        (77, Status::Error as u32, ErrorCode::IdentityMismatch as u32)
    );
    assert_eq!(response.priority, 0, "the response carries the configured priority");
    system.wait_lines("claimed pool 'A' priority 2", 1).unwrap();
    assert!(system.lines("[PROCESS]").is_empty());
}

#[test]
fn sigterm_stops_the_mediator_cleanly() {
    let mut system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    let out = system.run_client(1, &["NOOP"]).unwrap();
    assert!(out.status.success());
    let status = system.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(system.log().contains("Pool A: 1 succeeded, 0 failed"), "{}", system.log());
}

/// Every operation through the real CLI: the client checks each result against its own
/// local computation and exits non-zero on a mismatch.
#[test]
fn every_operation_through_the_cli() {
    let system = System::start(&[('A', "")], &[vm(1, 'A', 2)], "").unwrap();
    let cases: [&[&str]; 9] = [
        &["NOOP"],
        &["ECHO", "--bytes", "1000"],
        &["SLEEP", "--us", "1000"],
        &["VECTOR_ADD", "--n", "4096"],
        &["SAXPY", "--n", "777", "--a", "-1.5"],
        &["DOT", "--n", "5000"],
        &["MATMUL", "--m", "17", "--k", "9", "--n", "13"],
        &["MATMUL", "--m", "64", "--k", "64", "--n", "64"],
        &["TEST_HIGH"],
    ];
    for args in cases {
        let out = system.run_client(1, args).unwrap();
        let text = stdout(&out);
        assert!(out.status.success(), "{args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("✅ SUCCESS!"), "{text}");
    }
    // A request the mediator refuses exits 1 with the error shown.
    let out = system.run_client(1, &["VECTOR_ADD", "--n", "200000"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    // Pipelined, one at a time and in batches (the last one shorter): every request is
    // answered and checked.
    for batch in ["1", "8"] {
        let args = ["VECTOR_ADD", "--n", "64", "--count", "100", "--depth", "32", "--batch", batch];
        let out = system.run_client(1, &args).unwrap();
        let text = stdout(&out);
        assert!(out.status.success(), "{args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("100 requests at depth 32"), "{text}");
    }
}

/// Killing a client mid-request leaves the mediator serving, and a new client on the
/// same region works (the stale answer is not mistaken for its own).
#[test]
fn a_crashed_client_does_not_disturb_the_mediator() {
    let mut system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    let mut victim = system.client_command(1, &["SLEEP", "--us", "300000"]).spawn().unwrap();
    system.wait_lines("command=SLEEP", 1).unwrap();
    victim.kill().unwrap();
    victim.wait().unwrap();
    let out = system.run_client(1, &["--wait-slot", "VECTOR_ADD"]).unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(system.mediator_running());
    assert!(system.stop().unwrap().success());
}

/// The client reads its identity from an image made by `ivshmem-setup stub`, and says
/// so when it disagrees with the host's copy (which the mediator enforces).
#[test]
fn client_identity_from_an_ivshmem_setup_stub_image() {
    let system = System::start(&[('A', "")], &[vm(100, 'A', 2)], "").unwrap();
    let stub = system.dir().join("stub.bin");
    let make = |priority: &str| {
        let out = std::process::Command::new(&system.binaries().setup)
            .args(["stub", "--vm", "100", "--pool", "A", "--priority", priority, "--out"])
            .arg(&stub)
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    make("2");
    let out = system.run_client(100, &["--stub", stub.to_str().unwrap(), "VECTOR_ADD"]).unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("  Pool ID:  A\n  Priority: 2 (high)\n  VM ID:    100\n"), "{text}");
    assert!(text.contains("Sent request: A:2:100:VECTOR_ADD"), "{text}");
    assert!(text.contains("Response: 1:Pool A processed: VECTOR_ADD (prio=2, vm=100)"), "{text}");
    make("0");
    let out = system.run_client(100, &["--stub", stub.to_str().unwrap(), "NOOP"]).unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("vgpu-stub says vm 100 pool A priority 0")
    );
}

/// A CUDA pool with `fallback = "cpu"` on a host without a usable GPU says so loudly and
/// serves on the CPU. (With a GPU and the `cuda` feature it would run on the GPU; this
/// test runs the default build.)
#[test]
fn a_cuda_pool_falls_back_to_the_cpu_when_configured() {
    let system =
        System::start(&[('G', "backend = \"cuda\"\nfallback = \"cpu\"")], &[vm(1, 'G', 1)], "")
            .unwrap();
    let out = system.run_client(1, &["VECTOR_ADD", "--n", "1000"]).unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(system.log().contains("FALLING BACK TO THE CPU"), "{}", system.log());
}

/// The library against the real mediator: every typed helper equals a straightforward
/// local computation, and 1,000 pipelined requests all complete with their own tags.
#[test]
fn library_helpers_and_pipelining_against_the_mediator() {
    let system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    let mut client = system.client(1, vgpu_client::Wait::default()).unwrap();
    let x: Vec<f32> = (0..3000).map(|i| (i % 97) as f32 * 0.25).collect();
    let y: Vec<f32> = (0..3000).map(|i| (i % 31) as f32 - 15.0).collect();
    let sum: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    assert_eq!(client.vector_add(&x, &y).unwrap(), sum);
    let axpy: Vec<f32> = x.iter().zip(&y).map(|(a, b)| 0.5 * a + b).collect();
    assert_eq!(client.saxpy(0.5, &x, &y).unwrap(), axpy);
    let dot: f64 = x.iter().zip(&y).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
    assert!((f64::from(client.dot(&x, &y).unwrap()) - dot).abs() <= 1e-4 * dot.abs().max(1.0));
    let (m, k, n) = (5usize, 7usize, 3usize);
    let a: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 4) as f32).collect();
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    assert_eq!(client.matmul(&a, &b, m as u32, k as u32, n as u32).unwrap(), c);
    let bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(client.echo(&bytes).unwrap(), bytes);
    client.sleep_us(100).unwrap();
    client.noop("TEST_PING").unwrap();
    // Errors come back as errors: a shape the arena cannot hold.
    assert!(matches!(
        client.vector_add(&vec![1.0; 20_000], &vec![1.0; 20_000]),
        Err(vgpu_client::ClientError::ArenaFull(_) | vgpu_client::ClientError::Failed(_))
    ));

    // 1,000 pipelined requests, up to the ring's capacity in flight.
    let labels: Vec<String> = (0..1000).map(|i| format!("PIPE{i}")).collect();
    let mut in_flight = std::collections::VecDeque::new();
    let mut completed = 0;
    for label in &labels {
        loop {
            match client.submit(&Call::noop(label)) {
                Ok(ticket) => {
                    in_flight.push_back((ticket, label));
                    break;
                }
                Err(vgpu_client::ClientError::RingFull(_)) => {
                    let (ticket, want) = in_flight.pop_front().unwrap();
                    let done = client.wait(ticket, Duration::from_secs(10)).unwrap();
                    assert_eq!(&vgpu_ring::decode_label(&done.response.label), want);
                    completed += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    for (ticket, want) in in_flight {
        let done = client.wait(ticket, Duration::from_secs(10)).unwrap();
        assert!(done.succeeded());
        assert_eq!(&vgpu_ring::decode_label(&done.response.label), want);
        completed += 1;
    }
    assert_eq!(completed, 1000);
    assert_eq!(client.in_flight(), 0);
}

/// A mediator restart is not an error: a request submitted while no mediator runs
/// stays in the ring and the next mediator answers it; the client is told once.
/// Zero-copy buffers: operands written into the arena in place, the answer read from
/// the output buffer; the `_into` helpers fill caller memory.
#[test]
fn arena_buffers_and_helpers_into_caller_memory() {
    use vgpu_client::ClientError;
    let system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    let mut client = system.client(1, vgpu_client::Wait::default()).unwrap();
    let input = client.alloc_buffer(100).unwrap();
    assert_eq!(input.len(), 100);
    let bytes: Vec<u8> = (0..100).collect();
    client.write_buffer(&input, 0, &bytes[..60]).unwrap();
    client.write_buffer(&input, 60, &bytes[60..]).unwrap();
    assert!(matches!(
        client.write_buffer(&input, 99, &[1, 2]),
        Err(ClientError::InvalidArgument(_))
    ));
    assert!(!client.buffer_ptr(&input).unwrap().is_null());
    let output = client.alloc_buffer(100).unwrap();
    let (out_offset, out_len) = (output.offset(), output.len());
    let ticket = client.submit_buffers(Opcode::Echo as u16, "ECHO", [0; 3], input, output).unwrap();
    let response = client.wait_response(ticket, Duration::from_secs(5)).unwrap();
    assert_eq!(response.outcome(), Ok(100));
    let mut echoed = vec![0; out_len as usize];
    client.slot().arena_read(u64::from(out_offset), &mut echoed).unwrap();
    assert_eq!(echoed, bytes);

    let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let mut out = vec![0f32; 1000];
    client.vector_add_into(&x, &x, &mut out).unwrap();
    assert_eq!(out, x.iter().map(|v| v * 2.0).collect::<Vec<_>>());
    client.saxpy_into(3.0, &x, &x, &mut out).unwrap();
    assert_eq!(out, x.iter().map(|v| v * 4.0).collect::<Vec<_>>());
    assert!(matches!(
        client.vector_add_into(&x, &x, &mut out[..10]),
        Err(ClientError::InvalidArgument(_))
    ));
    let mut c = vec![0f32; 4];
    client.matmul_into((&[1.0, 2.0, 3.0, 4.0], &[1.0, 0.0, 0.0, 1.0]), (2, 2, 2), &mut c).unwrap();
    assert_eq!(c, [1.0, 2.0, 3.0, 4.0]);
    let unused = client.alloc_buffer(64).unwrap();
    client.free_buffer(unused);
}

#[test]
fn a_client_rides_through_a_mediator_restart() {
    let mut system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    let mut client = system.client(1, vgpu_client::Wait::default()).unwrap();
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&notices);
    client.on_notice(move |n| sink.lock().unwrap().push(n));
    client.noop("BEFORE").unwrap();
    assert!(system.stop().unwrap().success());
    let ticket = client.submit(&vgpu_client::Call::noop("DURING")).unwrap();
    system.start_mediator(&[]).unwrap();
    let done = client.wait(ticket, std::time::Duration::from_secs(20)).unwrap();
    assert!(done.succeeded(), "{}", done.text());
    client.noop("AFTER").unwrap();
    assert_eq!(client.vector_add(&[1.0, 2.0], &[3.0, 4.0]).unwrap(), [4.0, 6.0]);
    let notices = notices.lock().unwrap();
    let restarts = notices
        .iter()
        .filter(|n| matches!(n, vgpu_client::Notice::MediatorRestarted { .. }))
        .count();
    assert_eq!(restarts, 1, "{notices:?}");
}
