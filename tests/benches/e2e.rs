//! End-to-end benchmark: client process → mediator process → client, side by side with
//! the alternatives, in one run. Busy sides are pinned: the client (this process) to
//! core 0, the mediator and the baseline peers to core 1.
//!
//! `cargo bench -p vgpu-tests --bench e2e` (`-- --quick` for a shorter run). Prints a
//! table and writes `results/e2e.json`.

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vgpu_client::{Call, Client, ClientError, Wait};
use vgpu_tests::baseline::{
    Counts, Peer, bare_guest_pipelined, client_against_bare_peer, file_protocol_round_trips,
    ring_pipelined, ring_round_trips, uds_round_trips, vector_add_round_trips,
};
use vgpu_tests::pin_to_core;
use vgpu_tests::stats::{Summary, latency_histogram};
use vgpu_tests::system::{Launcher, RegionSpec, System, Vm, vm};

const MEDIATOR_FLAG: &str = "--run-mediator";
/// Requests staged per flush in the batched throughput runs.
const BATCH: usize = 16;
const IOX_SERVER_FLAG: &str = "--run-iceoryx2-server";
/// The iceoryx2 payload: 64 bytes, as a ring entry.
type IoxMessage = [u64; 8];

/// The iceoryx2 request-response server: answers `count` requests, busy-polling.
fn iox_server(name: &str, count: u64) -> Result<()> {
    use iceoryx2::prelude::*;
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let service = node
        .service_builder(&name.try_into()?)
        .request_response::<IoxMessage, IoxMessage>()
        .open_or_create()?;
    let server = service.server_builder().create()?;
    let mut answered = 0;
    while answered < count {
        if let Some(request) = server.receive()? {
            let payload = *request.payload();
            request.send_copy(payload)?;
            answered += 1;
        }
    }
    Ok(())
}

/// Round trips through iceoryx2 request-response against [`iox_server`] in a process
/// pinned to the server core; both sides busy-poll.
fn iox_round_trips(counts: Counts) -> Result<Histogram<u64>> {
    use iceoryx2::prelude::*;
    let name = format!("vgpu/bench/{}", std::process::id());
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let service = node
        .service_builder(&name.as_str().try_into()?)
        .request_response::<IoxMessage, IoxMessage>()
        .open_or_create()?;
    let client = service.client_builder().create()?;
    let total = counts.warmup + counts.measured;
    let mut server = std::process::Command::new(std::env::current_exe()?)
        .args([IOX_SERVER_FLAG, &name, &total.to_string()])
        .spawn()?;
    // The server's port must exist before the first request is sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.dynamic_config().number_of_servers() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "iceoryx2 server did not start");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut hist = latency_histogram();
    for i in 0..total {
        let start = Instant::now();
        let pending = client.send_copy([i; 8])?;
        let response = loop {
            if let Some(r) = pending.receive()? {
                break r;
            }
        };
        let ns = start.elapsed().as_nanos() as u64;
        anyhow::ensure!(response.payload()[0] == i, "iceoryx2 answered out of order");
        if i >= counts.warmup {
            hist.record(ns.max(1))?;
        }
    }
    anyhow::ensure!(server.wait()?.success(), "iceoryx2 server failed");
    Ok(hist)
}
const CLIENT_CORE: usize = 0;
const SERVER_CORE: usize = 1;

struct Params {
    counts: Counts,
    file_round_trips: u64,
    throughput_for: Duration,
    idle_for: Duration,
    big_runs: usize,
}

fn launcher() -> Result<Launcher> {
    Ok(Launcher::SelfHosted { program: std::env::current_exe()?, flag: MEDIATOR_FLAG.to_owned() })
}

const BIG: RegionSpec =
    RegionSpec { size: "32M", ring_entries: 256, arena_size: "16M", doorbell: false };

/// A system as the defaults configure it (the test harness's own default is a fast
/// heartbeat, which would add 40 wake-ups a second to the idle cost).
fn start(regions: RegionSpec, vms: &[Vm]) -> Result<System> {
    System::start_with(launcher()?, regions, &[('A', "")], vms, DEFAULT_HEARTBEAT)
}

const DEFAULT_HEARTBEAT: &str = "heartbeat_interval_ms = 100";

fn noop_round_trips(client: &mut Client, counts: Counts) -> Result<Histogram<u64>> {
    let mut hist = latency_histogram();
    let call = Call::noop("NOOP");
    for i in 0..counts.warmup + counts.measured {
        let start = Instant::now();
        let ticket = client.submit(&call)?;
        client.wait(ticket, Duration::from_secs(10))?;
        if i >= counts.warmup {
            hist.record((start.elapsed().as_nanos() as u64).max(1))?;
        }
    }
    Ok(hist)
}

/// NOOPs per second from one client keeping up to `depth` in flight, refilled `batch` at
/// a time: with `batch` 1 each request is submitted (published) on its own, otherwise
/// `batch` requests are staged and published with one flush. The clock is read once per
/// 1,024 answers, so that the harness does not measure itself.
fn pipelined(client: &mut Client, depth: usize, batch: usize, duration: Duration) -> Result<u64> {
    let call = Call::noop("NOOP");
    let mut in_flight = VecDeque::with_capacity(depth);
    let start = Instant::now();
    let mut done = 0u64;
    while !done.is_multiple_of(1024) || start.elapsed() < duration {
        while in_flight.len() + batch <= depth {
            let submitted = if batch == 1 { client.submit(&call) } else { client.stage(&call) };
            match submitted {
                Ok(t) => in_flight.push_back(t),
                Err(ClientError::RingFull(_)) => break,
                Err(e) => return Err(e.into()),
            }
        }
        client.flush();
        if let Some(t) = in_flight.pop_front() {
            client.wait(t, Duration::from_secs(10))?;
            done += 1;
        }
    }
    for t in in_flight {
        client.wait(t, Duration::from_secs(10))?;
        done += 1;
    }
    Ok((done as f64 / start.elapsed().as_secs_f64()) as u64)
}

/// CPU seconds the process's threads have run, from the scheduler's own account in
/// nanoseconds (`/proc/PID/task/*/schedstat`); user + system time in 10 ms ticks
/// (`/proc/PID/stat`) where the kernel keeps no such account. Ticks are too coarse for
/// an idle process: one tick over 3 s reads as 0.33% of a core.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let scheduled: Option<u64> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .map(|task| {
            let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            schedstat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    if let Some(ns) = scheduled {
        return Ok(ns as f64 / 1e9);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> =
        stat.rsplit_once(')').context("stat format")?.1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// What an idle mediator costs, and how soon it answers after idle.
struct Idle {
    /// Fraction of a core.
    cpu: f64,
    /// Its threads' wake-ups (voluntary context switches) per second.
    wakeups: f64,
    /// Five requests, each after 1 s (or the idle time) of idle and 0, 2.1, ... 8.4 ms
    /// more, so that they fall at spread phases of a polled dispatcher's 10 ms naps.
    first: Vec<Duration>,
}

/// The mediator's CPU use and wake-ups while idle for `idle_for` (after the last
/// request's `idle_spin`, so that a doorbell mediator is asleep), then five requests
/// each after 1 s (or `idle_for`) of idle and a few ms more.
fn idle_cost(system: &System, client: &mut Client, idle_for: Duration) -> Result<Idle> {
    let pid = system.mediator_pid().context("mediator pid")?;
    let wakeups = || system.mediator_sleeps().values().sum::<u64>();
    std::thread::sleep(Duration::from_millis(100));
    let (cpu_before, wakeups_before) = (cpu_seconds(pid)?, wakeups());
    std::thread::sleep(idle_for);
    let cpu = (cpu_seconds(pid)? - cpu_before) / idle_for.as_secs_f64();
    let wakeups = wakeups().saturating_sub(wakeups_before) as f64 / idle_for.as_secs_f64();
    let mut first = Vec::new();
    for k in 0..5 {
        std::thread::sleep(Duration::from_secs(1).min(idle_for) + Duration::from_micros(2100) * k);
        let start = Instant::now();
        client.noop("WAKE")?;
        first.push(start.elapsed());
    }
    Ok(Idle { cpu, wakeups, first })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Plot the round-trip distributions (percentile against latency, log scale) to `path`.
fn plot(path: &std::path::Path, series: &[(&str, &Histogram<u64>)]) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let max =
        series.iter().map(|(_, h)| h.value_at_quantile(0.999)).max().unwrap_or(1) as f64 * 1.5;
    let min = series.iter().map(|(_, h)| h.min()).min().unwrap_or(1).max(1) as f64 / 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption("Round trip latency distribution (same run, pinned)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min..max).log_scale(), 0f64..100f64)?;
    chart.configure_mesh().x_desc("round trip (ns, log scale)").y_desc("percentile").draw()?;
    let colors = [RED, BLUE, GREEN, MAGENTA, BLACK];
    for ((name, hist), color) in series.iter().zip(colors) {
        let points: Vec<(f64, f64)> = (0..=999)
            .map(|i| {
                let q = f64::from(i) / 1000.0;
                (hist.value_at_quantile(q).max(1) as f64, q * 100.0)
            })
            .collect();
        chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?.label(*name).legend(
            move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)),
        );
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn row(name: &str, s: &Summary) -> String {
    format!("| {name} | {} | {} | {} | {} |", s.min, s.p50, s.p99, s.p999)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(MEDIATOR_FLAG) {
        pin_to_core(SERVER_CORE)?;
        let mut mediator_args = vec!["vgpu-mediator".to_owned(), "--quiet-requests".to_owned()];
        mediator_args.extend(args.into_iter().skip(2));
        let code = vgpu_mediator::cli::main_from(mediator_args);
        std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
    }
    if args.get(1).map(String::as_str) == Some(IOX_SERVER_FLAG) {
        pin_to_core(SERVER_CORE)?;
        let (name, count) = (args.get(2).context("service name")?, args.get(3).context("count")?);
        return iox_server(name, count.parse()?);
    }
    let bench = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let p = if !bench {
        // `cargo test --all-targets`: a smoke run that only checks everything works.
        Params {
            counts: Counts { warmup: 100, measured: 1_000 },
            file_round_trips: 1,
            throughput_for: Duration::from_millis(200),
            idle_for: Duration::from_millis(300),
            big_runs: 2,
        }
    } else if quick {
        Params {
            counts: Counts { warmup: 2_000, measured: 20_000 },
            file_round_trips: 2,
            throughput_for: Duration::from_secs(1),
            idle_for: Duration::from_secs(3),
            big_runs: 5,
        }
    } else {
        Params {
            counts: Counts { warmup: 10_000, measured: 100_000 },
            file_round_trips: 3,
            throughput_for: Duration::from_secs(3),
            idle_for: Duration::from_secs(10),
            big_runs: 20,
        }
    };
    pin_to_core(CLIENT_CORE)?;
    let dir = tempfile::tempdir()?;
    let peer = Peer { exe: env!("CARGO_BIN_EXE_ring-peer").into(), core: SERVER_CORE };

    // 1. Round trips, ours and the alternatives.
    let mut system = start(BIG, &[vm(1, 'A', 2)])?;
    let mut client = system.client(1, Wait::Spin)?;
    let ours_hist = noop_round_trips(&mut client, p.counts)?;
    let floor_hist = ring_round_trips(dir.path(), &peer, p.counts)?;
    let uds_hist = uds_round_trips(dir.path(), &peer, p.counts)?;
    let iox_hist = iox_round_trips(p.counts)?;
    let file = Summary::of(&file_protocol_round_trips(dir.path(), p.file_round_trips)?);
    let (ours, floor, uds, iox) = (
        Summary::of(&ours_hist),
        Summary::of(&floor_hist),
        Summary::of(&uds_hist),
        Summary::of(&iox_hist),
    );

    // 2. Throughput: one VM pipelined.
    let one_vm = pipelined(&mut client, 128, 1, p.throughput_for)?;
    let one_vm_batched = pipelined(&mut client, 128, BATCH, p.throughput_for)?;
    // Its floor: the bare rings, the same depth, each request published on its own; and
    // where the gap lies: our client against the bare peer, a bare guest against our
    // mediator (after the client below is gone).
    let ring_floor = ring_pipelined(dir.path(), &peer, 128, 50 * p.counts.measured)?;
    let client_vs_peer =
        client_against_bare_peer(dir.path(), &peer, |c| pipelined(c, 128, 1, p.throughput_for))?;

    // 5. Work: VECTOR_ADD through the mediator (the answer in a new vector) against the
    // same computation in-process (also into a new vector); then into a reused vector
    // against the same bytes moved over the bare ring and arena (its floor).
    let mut work = Vec::new();
    for n in [1_024usize, 1 << 20] {
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        let runs = if n > 1024 { p.big_runs } else { p.big_runs * 100 };
        let (mut via, mut direct, mut into) = (Vec::new(), Vec::new(), Vec::new());
        let mut reused = vec![0f32; n];
        for _ in 0..runs {
            let start = Instant::now();
            let sum = client.vector_add(&a, &b)?;
            via.push(start.elapsed());
            let start = Instant::now();
            let local = vgpu_mediator::executor::vector_add(&a, &b);
            direct.push(start.elapsed());
            let start = Instant::now();
            client.vector_add_into(&a, &b, &mut reused)?;
            into.push(start.elapsed());
            anyhow::ensure!(sum == local && reused == local, "VECTOR_ADD result differs");
        }
        let bare = vector_add_round_trips(dir.path(), &peer, n, runs)?;
        work.push((n, median(via), median(direct), median(into), median(bare)));
    }

    // 4. Idle cost and the first request after idle.
    let idle = idle_cost(&system, &mut client, p.idle_for)?;
    drop(client);
    let region =
        Arc::new(vgpu_ring::Region::open(&system.region(1), vgpu_ring::Access::ReadWrite)?);
    let guest_vs_mediator = bare_guest_pipelined(&region.slot(0)?, 128, 50 * p.counts.measured)?;
    drop(region);
    system.stop()?;

    // 2b. Eight VMs at once, each request published on its own, then in batches; each
    // VM pipelines as the one VM above does (128 in flight on a 256-entry ring).
    let vms: Vec<Vm> = (1..=8).map(|i| vm(i, 'A', 1)).collect();
    let eight = |batch: usize| -> Result<u64> {
        let mut system = start(RegionSpec { ring_entries: 256, ..RegionSpec::SMALL }, &vms)?;
        let threads: Vec<_> = (1..=8)
            .map(|i| {
                let mut c = system.client(i, Wait::Spin)?;
                let d = p.throughput_for;
                Ok(std::thread::spawn(move || -> Result<u64> {
                    pin_to_core(CLIENT_CORE)?;
                    pipelined(&mut c, 128, batch, d)
                }))
            })
            .collect::<Result<_>>()?;
        let total =
            threads.into_iter().map(|t| t.join().expect("sender thread")).sum::<Result<u64>>()?;
        system.stop()?;
        Ok(total)
    };
    let eight_vms = eight(1)?;
    let eight_vms_batched = eight(BATCH)?;

    // 3. Scale: 256 registered VMs, one active, against 1 VM (measured above on BIG;
    // measured again here on the same small geometry for a fair ratio).
    let mut one = start(RegionSpec::SMALL, &[vm(1, 'A', 1)])?;
    let scale_1 = Summary::of(&noop_round_trips(&mut one.client(1, Wait::Spin)?, p.counts)?);
    one.stop()?;
    let vms: Vec<Vm> = (1..=256).map(|i| vm(i, 'A', 1)).collect();
    let mut many = start(RegionSpec::SMALL, &vms)?;
    let scale_256 = Summary::of(&noop_round_trips(&mut many.client(77, Wait::Spin)?, p.counts)?);
    many.stop()?;

    // 6. Doorbells (the holder runs in this process, clients stand in for QEMU on the
    // sockets): the warm round trip, idle cost and first request after idle, and 256
    // doorbell VMs of which one is active.
    let bells = RegionSpec { doorbell: true, ..RegionSpec::SMALL };
    let mut system = start(bells, &[vm(1, 'A', 1)])?;
    let mut client = system.client(1, Wait::Spin)?;
    let bell_warm = Summary::of(&noop_round_trips(&mut client, p.counts)?);
    let bell_idle = idle_cost(&system, &mut client, p.idle_for)?;
    drop(client);
    system.stop()?;
    let mut many = start(bells, &vms)?;
    let bell_256 = Summary::of(&noop_round_trips(&mut many.client(77, Wait::Spin)?, p.counts)?);
    many.stop()?;

    // 7. Metrics on against off, alternating, on the same geometry; while on, a scraper
    // reads /metrics every 100 ms (Prometheus scrapes every 15 s by default).
    let mut metrics_off = latency_histogram();
    let mut metrics_on = latency_histogram();
    for _ in 0..2 {
        let mut off = start(RegionSpec::SMALL, &[vm(1, 'A', 1)])?;
        metrics_off.add(noop_round_trips(&mut off.client(1, Wait::Spin)?, p.counts)?)?;
        off.stop()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let toml = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"");
        let mut on = System::start_with(
            launcher()?,
            RegionSpec::SMALL,
            &[('A', "")],
            &[vm(1, 'A', 1)],
            &toml,
        )?;
        let url = format!("http://127.0.0.1:{port}/metrics");
        vgpu_tests::system::wait_for("the metrics endpoint", Duration::from_secs(10), || {
            ureq::get(&url).call().is_ok()
        })?;
        let scraping = Arc::new(AtomicBool::new(true));
        let scraper = {
            let scraping = Arc::clone(&scraping);
            std::thread::spawn(move || {
                while scraping.load(Ordering::Relaxed) {
                    ureq::get(&url).call().context("scrape /metrics")?;
                    std::thread::sleep(Duration::from_millis(100));
                }
                anyhow::Ok(())
            })
        };
        metrics_on.add(noop_round_trips(&mut on.client(1, Wait::Spin)?, p.counts)?)?;
        scraping.store(false, Ordering::Relaxed);
        scraper.join().expect("scraper")?;
        on.stop()?;
    }
    let (metrics_off, metrics_on) = (Summary::of(&metrics_off), Summary::of(&metrics_on));

    let ratio = |a: u64, b: u64| a as f64 / b as f64;
    let mut table = vec![
        "| round trip, ns | min | median | p99 | p99.9 |".to_owned(),
        "|---|---:|---:|---:|---:|".to_owned(),
        row("vgpu: client → mediator → client (NOOP)", &ours),
        row("raw floor: bare ring ping-pong", &floor),
        row("Unix domain socket ping-pong", &uds),
        row("iceoryx2 request-response (busy-polling)", &iox),
        row(&format!("original file protocol ({} round trips)", file.count), &file),
    ];
    table.push(String::new());
    table.push(format!(
        "ratios of our median: {:.2}x the floor, {:.3}x iceoryx2, {:.4}x the Unix socket, {:.6}x the file protocol; our p99 / our median: {:.2}",
        ratio(ours.p50, floor.p50),
        ratio(ours.p50, iox.p50),
        ratio(ours.p50, uds.p50),
        ratio(ours.p50, file.p50),
        ratio(ours.p99, ours.p50)
    ));
    table.push(format!(
        "ratios of our p99: {:.2}x the floor, {:.3}x iceoryx2, {:.4}x the Unix socket",
        ratio(ours.p99, floor.p99),
        ratio(ours.p99, iox.p99),
        ratio(ours.p99, uds.p99)
    ));
    table.push(format!(
        "throughput, pipelined NOOPs: one VM {one_vm} req/s; 8 VMs at once {eight_vms} req/s; the bare ring {ring_floor} req/s (one VM {:.2}x that floor; our client against the bare peer {client_vs_peer} req/s, a bare guest against our mediator {guest_vs_mediator} req/s)",
        ratio(one_vm, ring_floor)
    ));
    table.push(format!(
        "throughput, pipelined NOOPs staged {BATCH} at a time (one flush each): one VM {one_vm_batched} req/s; 8 VMs at once {eight_vms_batched} req/s"
    ));
    table.push(format!(
        "scale: median round trip {} ns with 1 VM, {} ns with 256 VMs registered (one active): ratio {:.2}",
        scale_1.p50,
        scale_256.p50,
        ratio(scale_256.p50, scale_1.p50)
    ));
    table.push(format!(
        "idle mediator: {:.2}% of a core over {:?}, {:.1} wake-ups/s; first request after 1 s idle: median {:?}, max {:?}",
        idle.cpu * 100.0,
        p.idle_for,
        idle.wakeups,
        median(idle.first.clone()),
        idle.first.iter().max().copied().unwrap_or_default()
    ));
    table.push(format!(
        "doorbells: warm median round trip {} ns ({:.2}x without); idle mediator {:.2}% of a core, {:.1} wake-ups/s; first request after 1 s idle: median {:?}, max {:?}; 256 doorbell VMs (one active): median {} ns, ratio {:.2} to 1 VM",
        bell_warm.p50,
        ratio(bell_warm.p50, scale_1.p50),
        bell_idle.cpu * 100.0,
        bell_idle.wakeups,
        median(bell_idle.first.clone()),
        bell_idle.first.iter().max().copied().unwrap_or_default(),
        bell_256.p50,
        ratio(bell_256.p50, scale_1.p50)
    ));
    table.push(format!(
        "metrics: median round trip {} ns on (scraped every 100 ms), {} ns off: ratio {:.2}; p99 {} ns on, {} ns off",
        metrics_on.p50,
        metrics_off.p50,
        ratio(metrics_on.p50, metrics_off.p50),
        metrics_on.p99,
        metrics_off.p99
    ));
    for (n, via, direct, into, bare) in &work {
        table.push(format!(
            "VECTOR_ADD of {n} floats: {via:?} through the mediator, {direct:?} computed in-process ({:.2}x; transport and copies: {:?}); into a reused vector {into:?}, {bare:?} over the bare ring and arena ({:.2}x that floor)",
            via.as_secs_f64() / direct.as_secs_f64(),
            via.saturating_sub(*direct),
            into.as_secs_f64() / bare.as_secs_f64()
        ));
    }
    println!("{}", table.join("\n"));

    let json = serde_json::json!({
        "round_trip_ns": {
            "vgpu": [ours.min, ours.p50, ours.p99, ours.p999],
            "ring_floor": [floor.min, floor.p50, floor.p99, floor.p999],
            "unix_socket": [uds.min, uds.p50, uds.p99, uds.p999],
            "iceoryx2": [iox.min, iox.p50, iox.p99, iox.p999],
            "file_protocol": [file.min, file.p50, file.p99, file.p999],
        },
        "throughput_rps": {
            "one_vm": one_vm,
            "eight_vms": eight_vms,
            "one_vm_batched": one_vm_batched,
            "eight_vms_batched": eight_vms_batched,
            "bare_ring": ring_floor,
            "client_vs_bare_peer": client_vs_peer,
            "bare_guest_vs_mediator": guest_vs_mediator,
        },
        "scale_median_ns": { "one_vm": scale_1.p50, "vms_256": scale_256.p50 },
        "idle_cpu_fraction": idle.cpu,
        "idle_wakeups_per_s": idle.wakeups,
        "first_after_idle_ns": idle.first.iter().map(|d| d.as_nanos() as u64).collect::<Vec<_>>(),
        "doorbell": {
            "warm_median_ns": bell_warm.p50,
            "idle_cpu_fraction": bell_idle.cpu,
            "idle_wakeups_per_s": bell_idle.wakeups,
            "first_after_idle_ns": bell_idle.first.iter().map(|d| d.as_nanos() as u64).collect::<Vec<_>>(),
            "vms_256_median_ns": bell_256.p50,
        },
        "metrics_median_ns": { "on": metrics_on.p50, "off": metrics_off.p50 },
        "vector_add_ns": work.iter().map(|(n, v, d, i, b)| serde_json::json!({"n": n, "mediator": v.as_nanos() as u64, "in_process": d.as_nanos() as u64, "mediator_reused_output": i.as_nanos() as u64, "bare_ring": b.as_nanos() as u64})).collect::<Vec<_>>(),
    });
    if bench {
        // The workspace's results folder, wherever cargo runs the benchmark from.
        let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
        std::fs::create_dir_all(&results)?;
        std::fs::write(results.join("e2e.json"), serde_json::to_string_pretty(&json)?)?;
        let series = [
            ("vgpu via the mediator", &ours_hist),
            ("raw ring floor", &floor_hist),
            ("iceoryx2 request-response", &iox_hist),
            ("Unix domain socket", &uds_hist),
        ];
        plot(&results.join("e2e-latency.svg"), &series)?;
        println!("wrote results/e2e.json and results/e2e-latency.svg");
    }
    Ok(())
}
