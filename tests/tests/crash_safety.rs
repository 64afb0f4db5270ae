//! Crash safety: the request ring is the journal. A mediator killed (SIGKILL), stopped
//! (SIGSTOP) or shut down (SIGTERM) loses no request and delivers none twice to the
//! application (multi-process, real binaries).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vgpu_client::{Call, Client, Ticket, Wait};
use vgpu_ring::{Access, ErrorCode, Opcode, Region};
use vgpu_tests::system::{System, vm};

fn long() -> bool {
    std::env::var("VGPU_LONG").is_ok_and(|v| v == "1")
}

/// A small deterministic generator (xorshift), seeded per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a request must come back with.
enum Expect {
    Nothing,
    Bytes(Vec<u8>),
    Floats(Vec<f32>),
}

/// Submit one random request (NOOP, ECHO, VECTOR_ADD or SLEEP of 1–5 ms).
fn submit_one(client: &mut Client, rng: &mut Rng, serial: u32) -> (Ticket, Expect) {
    match rng.below(4) {
        0 => (client.submit(&Call::noop("NOOP")).unwrap(), Expect::Nothing),
        1 => {
            let bytes: Vec<u8> =
                (0..64 + rng.below(512) as u32).map(|i| (i ^ serial).to_le_bytes()[0]).collect();
            let call = Call {
                op: Opcode::Echo,
                label: "ECHO",
                args: [0; 3],
                input: &bytes,
                output_len: bytes.len() as u32,
            };
            (client.submit(&call).unwrap(), Expect::Bytes(bytes))
        }
        2 => {
            let n = 1 + rng.below(256) as usize;
            let a: Vec<f32> = (0..n).map(|i| (i as u32 ^ serial) as f32).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let sum = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            let input: Vec<u8> = a.iter().chain(&b).flat_map(|v| v.to_le_bytes()).collect();
            let call = Call {
                op: Opcode::VectorAdd,
                label: "VECTOR_ADD",
                args: [n as u32, 0, 0],
                input: &input,
                output_len: (n * 4) as u32,
            };
            (client.submit(&call).unwrap(), Expect::Floats(sum))
        }
        _ => {
            let us = 1000 + rng.below(4000) as u32;
            (client.submit(&Call::sleep(us)).unwrap(), Expect::Nothing)
        }
    }
}

/// Keep four requests in flight until `stop`, checking every answer; returns the
/// number submitted and answered, or the first problem.
fn pipeline(mut client: Client, seed: u64, stop: &AtomicBool) -> Result<(u64, u64), String> {
    let mut rng = Rng(seed);
    let mut in_flight: VecDeque<(Ticket, Expect)> = VecDeque::new();
    let (mut submitted, mut answered) = (0u64, 0u64);
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping && in_flight.len() < 4 {
            in_flight.push_back(submit_one(&mut client, &mut rng, submitted as u32));
            submitted += 1;
            continue;
        }
        let Some((ticket, expect)) = in_flight.pop_front() else { break };
        let done = client.wait(ticket, Duration::from_secs(60)).map_err(|e| e.to_string())?;
        if !done.succeeded() {
            return Err(format!("request failed: {}", done.text()));
        }
        let good = match expect {
            Expect::Nothing => done.output.is_empty(),
            Expect::Bytes(bytes) => done.output == bytes,
            Expect::Floats(values) => {
                let got: Vec<f32> = done
                    .output
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                got == values
            }
        };
        if !good {
            return Err(format!("wrong result for {}", done.text()));
        }
        answered += 1;
    }
    Ok((submitted, answered))
}

/// 4 VMs pipelining mixed requests while the mediator is SIGKILLed and restarted at
/// random moments (5 times; 20 with `VGPU_LONG=1`) and stopped once with SIGSTOP (1 s;
/// 3 s long): every request is answered exactly once to its caller, every result is
/// right, no client sees an error.
#[test]
fn kills_and_a_stop_lose_nothing_and_duplicate_nothing() {
    let (kills, frozen) = if long() { (20, 3) } else { (5, 1) };
    let mut system = System::start(
        &[('A', ""), ('B', "")],
        &[vm(1, 'A', 1), vm(2, 'A', 0), vm(3, 'B', 2), vm(4, 'B', 1)],
        "",
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (1..=4)
        .map(|id| {
            let client = system.client(id, Wait::default()).unwrap();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || pipeline(client, 0x9E37_79B9 * u64::from(id), &stop))
        })
        .collect();
    let mut rng = Rng(0x5EED);
    for kill in 0..kills {
        std::thread::sleep(Duration::from_millis(20 + rng.below(250)));
        system.kill_mediator().unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(100)));
        system.start_mediator(&[]).unwrap();
        if kill == kills / 2 {
            std::thread::sleep(Duration::from_millis(100));
            system.signal_mediator(nix::sys::signal::Signal::SIGSTOP).unwrap();
            std::thread::sleep(Duration::from_secs(frozen));
            system.signal_mediator(nix::sys::signal::Signal::SIGCONT).unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for (id, thread) in (1..=4).zip(clients) {
        let (submitted, answered) =
            thread.join().unwrap().unwrap_or_else(|e| panic!("vm {id}: {e}"));
        assert_eq!(submitted, answered, "vm {id}");
        total += answered;
    }
    eprintln!("{kills} kills and a {frozen} s stop: {total} requests, each answered once");
    assert!(system.stop().unwrap().success());
}

/// `vgpu-client --count N` succeeds with N answers while the mediator is killed and
/// restarted under it, saying once on stderr that it waits.
#[test]
fn the_cli_counts_through_restarts() {
    let mut system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    let child =
        system.client_command(1, &["SLEEP", "--us", "2000", "--count", "300"]).spawn().unwrap();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(150));
        system.kill_mediator().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        system.start_mediator(&[]).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("300 round trips"), "{stdout}");
    assert_eq!(stderr.matches("the mediator restarted").count(), 1, "{stderr}");
}

/// SIGTERM finishes the job in hand and answers it, but leaves the queued requests in
/// the ring: the next mediator answers them. With `--drain` they are answered with
/// error 8 instead.
#[test]
fn sigterm_leaves_queued_requests_for_the_next_mediator_unless_draining() {
    let mut system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    let region = Arc::new(Region::open(&system.region(1), Access::ReadOnly).unwrap());
    let mut client = system.client(1, Wait::default()).unwrap();
    for (drain, expected) in [(false, None), (true, Some(ErrorCode::ShuttingDown))] {
        if drain {
            assert!(system.stop().unwrap().success());
            system.start_mediator(&["--drain"]).unwrap();
        }
        let before = region.slot(0).unwrap().ring_indices().req_tail;
        let sleep = client.submit(&Call::sleep(500_000)).unwrap();
        let queued: Vec<_> =
            (0..3).map(|_| client.submit(&Call::noop("QUEUED")).unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while system.lines("command=SLEEP").len() < 1 + usize::from(drain) {
            assert!(Instant::now() < deadline, "the SLEEP never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(system.stop().unwrap().success());
        assert!(client.wait(sleep, Duration::from_secs(5)).unwrap().succeeded());
        let indices = region.slot(0).unwrap().ring_indices();
        match expected {
            None => {
                assert_eq!(indices.req_tail, before + 1, "only the answered SLEEP released");
                system.start_mediator(&[]).unwrap();
                for t in queued {
                    assert!(client.wait(t, Duration::from_secs(5)).unwrap().succeeded());
                }
            }
            Some(code) => {
                assert_eq!(indices.req_tail, before + 4, "every request answered");
                for t in queued {
                    let done = client.wait(t, Duration::from_secs(5)).unwrap();
                    assert_eq!(done.response.error, code as u32);
                }
                system.start_mediator(&[]).unwrap();
            }
        }
    }
}
