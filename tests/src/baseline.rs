//! The transports our mediator is compared with, measured the same way: the bare ring
//! ping-pong (the floor), a Unix domain socket ping-pong, and the original guide's file
//! protocol. Each runs against a peer process (the `ring-peer` binary) pinned to its own
//! core.

use crate::peer::{MESSAGE_SIZE, message};
use crate::stats::latency_histogram;
use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vgpu_client::{Client, ClientOptions, Wait};
use vgpu_ring::{
    Geometry, Region, Request, Response, ResponseConsumer, Slot, SlotIdentity, spin_hint,
};
use zerocopy::IntoBytes;

/// The peer process: the `ring-peer` binary and the core it is pinned to.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Path of `ring-peer`.
    pub exe: PathBuf,
    /// Core for the peer.
    pub core: usize,
}

/// Round trips to measure and to discard first.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// Discarded warm-up round trips.
    pub warmup: u64,
    /// Measured round trips.
    pub measured: u64,
}

impl Peer {
    /// Start the peer in `role` on `path` for `count` messages.
    ///
    /// # Errors
    ///
    /// If it cannot start.
    pub fn spawn(&self, role: &str, path: &Path, count: u64) -> Result<Child> {
        Command::new(&self.exe)
            .args([
                role,
                path.to_str().context("utf-8 path")?,
                &count.to_string(),
                &self.core.to_string(),
            ])
            .spawn()
            .context("spawn ring-peer")
    }
}

/// Wait for a peer and require success.
///
/// # Errors
///
/// If the peer failed.
pub fn finish(mut child: Child) -> Result<()> {
    let status = child.wait()?;
    if !status.success() {
        bail!("peer failed: {status}");
    }
    Ok(())
}

/// The next response, spinning until it comes.
fn next_response(responses: &mut ResponseConsumer) -> Response {
    loop {
        if let Some(r) = responses.pop() {
            return r;
        }
        spin_hint();
    }
}

/// A fresh one-slot region for a benchmark at `dir/name`, with an arena of
/// `arena_size` bytes (a multiple of 64).
///
/// # Errors
///
/// If it cannot be created.
pub fn bench_region(dir: &Path, name: &str, arena_size: u32) -> Result<Arc<Region>> {
    let geometry = Geometry { slot_count: 1, ring_entries: 256, arena_size };
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    Ok(Arc::new(Region::create(
        &path,
        geometry.min_region_size() as u64,
        geometry,
        &[SlotIdentity::new(1, vgpu_ring::PoolId::new(b'A').unwrap(), vgpu_ring::Priority::LOW)],
        false,
    )?))
}

/// Ping-pong through the request and response rings with a bare echo peer: the floor
/// under any mediator. Returns the round trips' histogram (ns).
///
/// # Errors
///
/// If the peer fails or answers out of order.
pub fn ring_round_trips(dir: &Path, peer: &Peer, counts: Counts) -> Result<Histogram<u64>> {
    let region = bench_region(dir, "floor-region", 4096)?;
    let total = counts.warmup + counts.measured;
    let child = peer.spawn("echo", region.path(), total)?;
    let mut guest = region.slot(0)?.guest_endpoints()?;
    let mut hist = latency_histogram();
    for i in 0..total {
        let start = Instant::now();
        if guest.requests.push(Request { tag: i as u32, ..message(i) }).is_err() {
            bail!("request ring unexpectedly full");
        }
        let response = next_response(&mut guest.responses);
        let ns = start.elapsed().as_nanos() as u64;
        if response.tag != i as u32 {
            bail!("response {} for request {i}", response.tag);
        }
        if i >= counts.warmup {
            hist.record(ns.max(1))?;
        }
    }
    finish(child)?;
    Ok(hist)
}

/// Pipelined requests over the bare rings, with no mediator: up to `depth` in flight,
/// each published on its own, answered by a peer that answers everything it finds with
/// one publication per pass (`ring-peer echo-batched`). The floor under the mediator's
/// pipelined throughput. Returns requests per second over `count` requests.
///
/// # Errors
///
/// If the peer fails or answers out of order.
pub fn ring_pipelined(dir: &Path, peer: &Peer, depth: u64, count: u64) -> Result<u64> {
    let region = bench_region(dir, "pipelined-region", 4096)?;
    let child = peer.spawn("echo-batched", region.path(), count)?;
    let rate = bare_guest_pipelined(&region.slot(0)?, depth, count)?;
    finish(child)?;
    Ok(rate)
}

/// A bare guest (the rings, no client library) pipelining `count` NOOPs on `slot`, up
/// to `depth` in flight, each published on its own and claiming the slot's identity;
/// whatever answers them (a bare peer or a mediator) must answer each, in order, with
/// success. Returns requests per second.
///
/// # Errors
///
/// If an answer is out of order or not a success.
pub fn bare_guest_pipelined(slot: &Slot, depth: u64, count: u64) -> Result<u64> {
    let id = slot.identity();
    let mut guest = slot.guest_endpoints()?;
    let (mut sent, mut answered) = (0u64, 0u64);
    let start = Instant::now();
    while answered < count {
        while sent < count && sent - answered < depth {
            let request = Request {
                tag: sent as u32,
                opcode: vgpu_ring::Opcode::Noop as u16,
                pool: id.pool as u8,
                priority: id.priority as u8,
                vm_id: id.vm_id,
                ..Request::default()
            };
            match guest.requests.push(request) {
                Ok(()) => sent += 1,
                Err(vgpu_ring::PushError::Full(_)) => break,
                Err(vgpu_ring::PushError::Poisoned(e)) => bail!(e),
            }
        }
        let response = next_response(&mut guest.responses);
        if response.tag != answered as u32 || response.status != 1 {
            bail!("answer {response:?} for request {answered}");
        }
        answered += 1;
    }
    Ok((count as f64 / start.elapsed().as_secs_f64()) as u64)
}

/// Our client library against the bare peer of [`ring_pipelined`] (which answers
/// until it is stopped): `run` drives the client; returns what it returns. With
/// [`ring_pipelined`] and [`bare_guest_pipelined`] against a mediator, it tells which
/// side costs what.
///
/// # Errors
///
/// If the client cannot attach, or `run` fails.
pub fn client_against_bare_peer(
    dir: &Path,
    peer: &Peer,
    run: impl FnOnce(&mut Client) -> Result<u64>,
) -> Result<u64> {
    let region = bench_region(dir, "client-region", 4096)?;
    // A session the client accepts (the peer writes no heartbeat; the run is short).
    region.begin_session(1, std::process::id(), 1000)?;
    let mut child = peer.spawn("echo-batched", region.path(), u64::MAX)?;
    let options = ClientOptions {
        region: Some(region.path().into()),
        wait: Wait::Spin,
        ..Default::default()
    };
    let rate = Client::attach(&options).map_err(anyhow::Error::from).and_then(|mut c| run(&mut c));
    child.kill()?;
    child.wait()?;
    rate
}

/// VECTOR_ADD of `n` floats with no mediator: the guest writes both operands into the
/// arena, pushes one request, waits for the answer and reads the sums back, against a
/// bare peer that copies the operands out, adds and writes the sums (`ring-peer
/// vector-add`). The same bytes cross between the cores as through the mediator, so this
/// is the floor under its VECTOR_ADD. Returns each of `runs` round trips, after as many
/// again discarded.
///
/// # Errors
///
/// If the peer fails, answers out of order or adds wrong.
pub fn vector_add_round_trips(
    dir: &Path,
    peer: &Peer,
    n: usize,
    runs: usize,
) -> Result<Vec<Duration>> {
    let bytes = u32::try_from(4 * n).context("vector too long")?;
    let region = bench_region(dir, "vector-add-region", 3 * bytes.next_multiple_of(64))?;
    let child = peer.spawn("vector-add", region.path(), 2 * runs as u64)?;
    let slot = region.slot(0)?;
    let mut guest = slot.guest_endpoints()?;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut sums = vec![0f32; n];
    let mut times = Vec::with_capacity(runs);
    for i in 0..2 * runs {
        let start = Instant::now();
        slot.arena_write(0, a.as_bytes())?;
        slot.arena_write(u64::from(bytes), b.as_bytes())?;
        let request = Request {
            tag: i as u32,
            opcode: vgpu_ring::Opcode::VectorAdd as u16,
            in_offset: 0,
            in_len: 2 * bytes,
            out_offset: 2 * bytes,
            out_len: bytes,
            args: [n as u32, 0, 0],
            ..Request::default()
        };
        if guest.requests.push(request).is_err() {
            bail!("request ring unexpectedly full");
        }
        let response = next_response(&mut guest.responses);
        slot.arena_read(u64::from(2 * bytes), sums.as_mut_bytes())?;
        let elapsed = start.elapsed();
        if response.tag != i as u32 {
            bail!("response {} for request {i}", response.tag);
        }
        if i == 0 && sums.iter().zip(a.iter().zip(&b)).any(|(s, (x, y))| *s != x + y) {
            bail!("the bare peer added wrong");
        }
        if i >= runs {
            times.push(elapsed);
        }
    }
    finish(child)?;
    Ok(times)
}

/// Ping-pong of [`MESSAGE_SIZE`]-byte messages over a Unix domain stream socket.
///
/// # Errors
///
/// On a socket error.
pub fn uds_round_trips(dir: &Path, peer: &Peer, counts: Counts) -> Result<Histogram<u64>> {
    let socket = dir.join("bench.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    let total = counts.warmup + counts.measured;
    let child = peer.spawn("uds-echo", &socket, total)?;
    let (mut stream, _) = listener.accept()?;
    let mut buf = [0u8; MESSAGE_SIZE];
    let mut hist = latency_histogram();
    for i in 0..total {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        let start = Instant::now();
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        let ns = start.elapsed().as_nanos() as u64;
        if u64::from_le_bytes(buf[..8].try_into()?) != i {
            bail!("socket echo out of order");
        }
        if i >= counts.warmup {
            hist.record(ns.max(1))?;
        }
    }
    finish(child)?;
    Ok(hist)
}

/// The original guide's transport: the guest writes `request.txt`, the daemon polls it
/// every 100 ms and writes `response.txt`, which the guest polls every second.
/// `count` round trips (each takes about a second).
///
/// # Errors
///
/// On a file error.
pub fn file_protocol_round_trips(dir: &Path, count: u64) -> Result<Histogram<u64>> {
    let request = dir.join("request.txt");
    let response = dir.join("response.txt");
    std::fs::write(&request, "")?;
    std::fs::write(&response, "0:Ready\n")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let daemon = {
        let (request, response, stop) = (request.clone(), response.clone(), Arc::clone(&stop));
        std::thread::spawn(move || -> Result<()> {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let line = std::fs::read_to_string(&request)?;
                if line.len() > 2 {
                    let command = line.trim().rsplit(':').next().unwrap_or_default().to_owned();
                    std::fs::write(&request, "")?;
                    std::fs::write(
                        &response,
                        format!("1:Pool A processed: {command} (prio=2, vm=1)\n"),
                    )?;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
    };
    let mut hist = latency_histogram();
    for i in 0..count {
        std::fs::write(&response, "0:Ready\n")?;
        let start = Instant::now();
        std::fs::write(&request, format!("A:2:1:NOOP{i}\n"))?;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if std::fs::read_to_string(&response)?.starts_with("1:") {
                break;
            }
        }
        hist.record(start.elapsed().as_nanos() as u64)?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    daemon.join().map_err(|_| anyhow::anyhow!("file daemon panicked"))??;
    Ok(hist)
}
