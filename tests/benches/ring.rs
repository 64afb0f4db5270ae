//! Ring transport benchmark: two processes pinned to different cores.
//!
//! - one-way throughput through a request ring, batched publish (messages/s);
//! - ping-pong round trip through a request ring and a response ring;
//! - the same ping-pong over a Unix domain stream socket (the baseline), same payload
//!   size (64 bytes) and pinning, in the same run; and the ratio.
//!
//! `cargo bench -p vgpu-tests --bench ring` (add `-- --quick` for a short run).

use anyhow::{Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};
use vgpu_ring::{PushError, spin_hint};
use vgpu_tests::baseline::{Counts, Peer, bench_region, finish, ring_round_trips, uds_round_trips};
use vgpu_tests::peer::message;
use vgpu_tests::pin_to_core;
use vgpu_tests::stats::Summary;

const PEER: &str = env!("CARGO_BIN_EXE_ring-peer");
const PARENT_CORE: usize = 0;
const CHILD_CORE: usize = 1;

fn peer() -> Peer {
    Peer { exe: PEER.into(), core: CHILD_CORE }
}

struct Params {
    throughput_messages: u64,
    throughput_runs: usize,
    round_trips: u64,
    warmup: u64,
}

/// Messages per second for one run of `count` messages, batched publish.
fn throughput_run(dir: &Path, count: u64) -> Result<f64> {
    let region = bench_region(dir, "throughput-region", 4096)?;
    let child = peer().spawn("consume", region.path(), count)?;
    let mut guest = region.slot(0)?.guest_endpoints()?;
    // Let the child map and pin before the clock starts.
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    let mut seq = 0;
    while seq < count {
        match guest.requests.stage(message(seq)) {
            Ok(()) => {
                seq += 1;
                if seq % 32 == 0 {
                    guest.requests.publish();
                }
            }
            Err(PushError::Full(_)) => {
                guest.requests.publish();
                spin_hint();
            }
            Err(PushError::Poisoned(e)) => bail!(e),
        }
    }
    guest.requests.publish();
    while guest.responses.pop().is_none() {
        spin_hint();
    }
    let elapsed = start.elapsed();
    finish(child)?;
    Ok(count as f64 / elapsed.as_secs_f64())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; without it (`cargo test --all-targets`) this is a
    // smoke run that only checks the benchmark works. `--quick` shortens a real run.
    let args: Vec<String> = std::env::args().collect();
    let p = if !args.iter().any(|a| a == "--bench") {
        Params { throughput_messages: 10_000, throughput_runs: 1, round_trips: 1_000, warmup: 100 }
    } else if args.iter().any(|a| a == "--quick") {
        Params {
            throughput_messages: 2_000_000,
            throughput_runs: 3,
            round_trips: 20_000,
            warmup: 2_000,
        }
    } else {
        Params {
            throughput_messages: 20_000_000,
            throughput_runs: 5,
            round_trips: 100_000,
            warmup: 10_000,
        }
    };
    pin_to_core(PARENT_CORE)?;
    let dir = tempfile::tempdir()?;
    let cores = vgpu_tests::online_cores();
    println!(
        "ring benchmark: parent on core {PARENT_CORE}, peer on core {}, {cores} cores",
        CHILD_CORE % cores
    );

    let mut rates: Vec<f64> = (0..p.throughput_runs)
        .map(|_| throughput_run(dir.path(), p.throughput_messages))
        .collect::<Result<_>>()?;
    let (lo, hi) =
        (rates.iter().copied().fold(f64::MAX, f64::min), rates.iter().copied().fold(0.0, f64::max));
    let rate = median(&mut rates);
    println!(
        "one-way throughput, batches of 32: median {:.1} M msgs/s over {} runs of {} (spread {:.1}-{:.1})",
        rate / 1e6,
        p.throughput_runs,
        p.throughput_messages,
        lo / 1e6,
        hi / 1e6
    );

    let counts = Counts { warmup: p.warmup, measured: p.round_trips };
    let ring = Summary::of(&ring_round_trips(dir.path(), &peer(), counts)?);
    println!("ring ping-pong round trip:   {ring}");
    let uds = Summary::of(&uds_round_trips(dir.path(), &peer(), counts)?);
    println!("unix socket round trip:      {uds}");
    println!(
        "ratio unix socket / ring: median {:.1}x, p99 {:.1}x",
        uds.p50 as f64 / ring.p50 as f64,
        uds.p99 as f64 / ring.p99 as f64
    );
    Ok(())
}
