//! `vgpu-client`: the guest's command-line client, the successor of the original
//! `vm_client`.
#![forbid(unsafe_code)]

use anyhow::{Result, bail};
use clap::Parser;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vgpu_client::{Call, Client, ClientOptions, Completion, Wait};
use vgpu_ring::Opcode;

/// Send a GPU request to the host mediator and print its answer.
///
/// COMMAND is an operation (NOOP, ECHO, SLEEP, VECTOR_ADD, SAXPY, DOT, MATMUL) or any
/// other name, sent as a labelled NOOP (e.g. TEST_HIGH).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Region file (default: the ivshmem device's BAR 2 found in sysfs).
    #[arg(long, value_name = "PATH")]
    region: Option<PathBuf>,
    /// vgpu-stub register file (default: the device at 0000:00:06.0 if present, else the
    /// identity the host wrote into the region).
    #[arg(long, value_name = "PATH")]
    stub: Option<PathBuf>,
    /// sysfs root for device discovery.
    #[arg(long, value_name = "PATH", default_value = "/sys", hide = true)]
    sysfs: PathBuf,
    /// Seconds to wait for the response.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Wait for the slot if another client holds it.
    #[arg(long)]
    wait_slot: bool,
    /// Busy-poll while waiting (lowest latency).
    #[arg(long)]
    spin: bool,
    /// Print a JSON result instead of the console text.
    #[arg(long)]
    json: bool,
    /// Send the request this many times and print latency percentiles.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// With --count: keep this many requests in flight (pipelined) and print the
    /// throughput too (each latency then counts from the clock reading taken at the
    /// answer before its submission: one reading per answer).
    #[arg(long, default_value_t = 1)]
    depth: u32,
    /// With --depth: stage this many requests and publish them together (one index
    /// store, at most one doorbell) instead of each on its own.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// With --count: send the requests this many milliseconds apart (one at a time),
    /// the way to measure what an idle mediator costs the first request.
    #[arg(long, value_name = "MS")]
    interval_ms: Option<u64>,
    /// On the host: stand in for the VM's QEMU on its doorbell socket (the region is
    /// the one the socket sends unless --region is given) and ring the mediator's
    /// doorbell when it sleeps.
    #[arg(long, value_name = "PATH")]
    doorbell_socket: Option<PathBuf>,
    /// ECHO: bytes to send.
    #[arg(long, default_value_t = 64)]
    bytes: u32,
    /// SLEEP: microseconds.
    #[arg(long, default_value_t = 1000)]
    us: u32,
    /// VECTOR_ADD, SAXPY, DOT: vector length; MATMUL: columns of B.
    #[arg(long, default_value_t = 1024)]
    n: u32,
    /// SAXPY: the scalar.
    #[arg(long, default_value_t = 2.5, allow_negative_numbers = true)]
    a: f32,
    /// MATMUL: rows of A.
    #[arg(long, default_value_t = 16)]
    m: u32,
    /// MATMUL: columns of A, rows of B.
    #[arg(long, default_value_t = 16)]
    k: u32,
    /// The command.
    #[arg(default_value = "VECTOR_ADD")]
    command: String,
}

/// A request built from the command line, with the result a local computation expects.
struct Plan {
    op: Opcode,
    args: [u32; 3],
    input: Vec<u8>,
    output_len: u32,
    expected: Expected,
}

enum Expected {
    Nothing,
    Bytes(Vec<u8>),
    Floats { values: Vec<f32>, tolerance: f32 },
}

/// Deterministic inputs whose sums and products are exact in f32.
fn inputs(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32).map(|i| ((i.wrapping_mul(7919).wrapping_add(seed)) % 64) as f32 / 8.0).collect()
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn plan(cli: &Cli) -> Result<Plan> {
    let n = cli.n as usize;
    let op = Opcode::from_name(&cli.command).unwrap_or(Opcode::Noop);
    let exact = |values| Expected::Floats { values, tolerance: 0.0 };
    let plan = match op {
        Opcode::Noop => {
            Plan { op, args: [0; 3], input: Vec::new(), output_len: 0, expected: Expected::Nothing }
        }
        Opcode::Sleep => Plan {
            op,
            args: [cli.us, 0, 0],
            input: Vec::new(),
            output_len: 0,
            expected: Expected::Nothing,
        },
        Opcode::Echo => {
            let bytes: Vec<u8> = (0..cli.bytes).map(|i| (i % 251) as u8).collect();
            Plan {
                op,
                args: [0; 3],
                output_len: cli.bytes,
                expected: Expected::Bytes(bytes.clone()),
                input: bytes,
            }
        }
        Opcode::VectorAdd | Opcode::Saxpy | Opcode::Dot => {
            let (x, y) = (inputs(n, 1), inputs(n, 2));
            let (args, expected, out) = match op {
                Opcode::VectorAdd => {
                    ([cli.n, 0, 0], exact(x.iter().zip(&y).map(|(a, b)| a + b).collect()), n)
                }
                Opcode::Saxpy => (
                    [cli.n, cli.a.to_bits(), 0],
                    exact(x.iter().zip(&y).map(|(a, b)| cli.a * a + b).collect()),
                    n,
                ),
                _ => {
                    let sum: f64 =
                        x.iter().zip(&y).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                    (
                        [cli.n, 0, 0],
                        Expected::Floats { values: vec![sum as f32], tolerance: 1e-4 },
                        1,
                    )
                }
            };
            Plan {
                op,
                args,
                input: floats(&[x, y].concat()),
                output_len: u32::try_from(out * 4)?,
                expected,
            }
        }
        Opcode::Matmul => {
            let (m, k) = (cli.m as usize, cli.k as usize);
            let (a, b) = (inputs(m * k, 3), inputs(k * n, 4));
            let mut c = vec![0.0f64; m * n];
            for i in 0..m {
                for p in 0..k {
                    for j in 0..n {
                        c[i * n + j] += f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
                    }
                }
            }
            let values = c.into_iter().map(|v| v as f32).collect();
            Plan {
                op,
                args: [cli.m, cli.k, cli.n],
                input: floats(&[a, b].concat()),
                output_len: u32::try_from(m * n * 4)?,
                expected: Expected::Floats { values, tolerance: 1e-4 },
            }
        }
    };
    Ok(plan)
}

/// Compare the output with the local computation; `None` if it matches.
fn mismatch(expected: &Expected, output: &[u8]) -> Option<String> {
    match expected {
        Expected::Nothing => None,
        Expected::Bytes(want) => {
            (output != want.as_slice()).then(|| "echoed bytes differ".to_owned())
        }
        Expected::Floats { values, tolerance } => {
            let got: Vec<f32> =
                output.as_chunks::<4>().0.iter().map(|c| f32::from_le_bytes(*c)).collect();
            if got.len() != values.len() {
                return Some(format!("{} values returned, {} expected", got.len(), values.len()));
            }
            got.iter()
                .zip(values)
                .position(|(g, w)| (g - w).abs() > tolerance * w.abs().max(1.0))
                .map(|i| format!("element {i}: got {}, expected {}", got[i], values[i]))
        }
    }
}

#[derive(Serialize)]
struct JsonResult {
    command: String,
    status: u32,
    error: u32,
    response: String,
    vm_id: u32,
    pool: String,
    priority: u32,
    result_checked: bool,
    result_error: Option<String>,
    latency_ns: Vec<u64>,
}

/// Arena bytes the command needs (input and output together), computed with checked
/// arithmetic before anything is allocated; an error for a zero dimension or a size
/// that overflows.
fn arena_bytes(cli: &Cli, op: Opcode) -> Result<u64> {
    let dims: &[(&str, u32)] = match op {
        Opcode::Noop | Opcode::Sleep => return Ok(0),
        Opcode::Echo => return Ok(2 * u64::from(cli.bytes)),
        Opcode::VectorAdd | Opcode::Saxpy | Opcode::Dot => &[("--n", cli.n)],
        Opcode::Matmul => &[("--m", cli.m), ("--k", cli.k), ("--n", cli.n)],
    };
    if let Some((name, _)) = dims.iter().find(|(_, v)| *v == 0) {
        bail!("{name} must be positive");
    }
    let [m, k, n] = [cli.m, cli.k, cli.n].map(u64::from);
    let floats = match op {
        // Two input vectors and the output (one value for DOT).
        Opcode::VectorAdd | Opcode::Saxpy => n.checked_mul(3),
        Opcode::Dot => n.checked_mul(2).and_then(|x| x.checked_add(1)),
        // A (m×k), B (k×n) and C (m×n).
        _ => m
            .checked_mul(k)
            .and_then(|a| k.checked_mul(n).and_then(|b| a.checked_add(b)))
            .and_then(|ab| m.checked_mul(n).and_then(|c| ab.checked_add(c))),
    };
    floats
        .and_then(|f| f.checked_mul(4))
        .ok_or_else(|| anyhow::anyhow!("the operands' size overflows; use smaller dimensions"))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run(cli: &Cli) -> Result<bool> {
    if !cli.timeout.is_finite()
        || cli.timeout <= 0.0
        || cli.count == 0
        || cli.depth == 0
        || cli.batch == 0
    {
        bail!("--timeout, --count, --depth and --batch must be positive");
    }
    if cli.batch > cli.depth {
        bail!(
            "--batch {} is more than --depth {}: a batch is in flight at once",
            cli.batch,
            cli.depth
        );
    }
    let interval = match cli.interval_ms {
        Some(_) if cli.depth > 1 => {
            bail!("--interval-ms sends one request at a time: drop --depth")
        }
        Some(ms) if ms > 3_600_000 => bail!("--interval-ms {ms} is more than an hour"),
        Some(ms) => Some(Duration::from_millis(ms)),
        None => None,
    };
    let options = ClientOptions {
        region: cli.region.clone(),
        stub: cli.stub.clone(),
        sysfs_root: cli.sysfs.clone(),
        wait: if cli.spin { Wait::Spin } else { Wait::default() },
        wait_for_slot: cli.wait_slot,
        timeout: Duration::from_secs_f64(cli.timeout),
        doorbell_socket: cli.doorbell_socket.clone(),
    };
    let op = Opcode::from_name(&cli.command).unwrap_or(Opcode::Noop);
    let needed = arena_bytes(cli, op)?;
    let mut client = Client::attach(&options)?;
    if client.rings_were_reset() {
        eprintln!("notice: {}", vgpu_client::Notice::RingsReset);
    }
    let mut told = (false, false);
    client.on_notice(move |notice| {
        let first = match notice {
            vgpu_client::Notice::MediatorRestarted { .. } => !std::mem::replace(&mut told.0, true),
            vgpu_client::Notice::MediatorSilent(_) => !std::mem::replace(&mut told.1, true),
            vgpu_client::Notice::RingsReset => true,
        };
        if first {
            eprintln!("notice: {notice}");
        }
    });
    let arena = u64::from(client.slot().arena_size());
    if needed > arena {
        bail!(
            "{} needs {needed} bytes of arena for its operands and result; this slot's arena has {arena}",
            op.name()
        );
    }
    let ring = client.region().geometry().ring_entries;
    if cli.depth > ring || needed.saturating_mul(u64::from(cli.depth)) > arena {
        bail!(
            "--depth {} does not fit: the slot has {ring} ring entries and a {arena}-byte arena ({needed} bytes a request)",
            cli.depth
        );
    }
    let plan = plan(cli)?;
    let id = client.identity();
    let pool = id.pool;
    if !cli.json {
        println!("=== VM GPU Request Client ===");
        println!("vGPU Properties:");
        println!("  Pool ID:  {pool}");
        println!("  Priority: {} ({})", id.priority, id.priority.name());
        println!("  VM ID:    {}", id.vm_id);
        println!();
    }
    for warning in client.warnings() {
        eprintln!("warning: {warning}");
    }
    let call = Call {
        op: plan.op,
        label: &cli.command,
        args: plan.args,
        input: &plan.input,
        output_len: plan.output_len,
    };
    let mut latencies = Vec::with_capacity(cli.count as usize);
    let mut last: Option<Completion> = None;
    let mut in_flight = std::collections::VecDeque::new();
    let mut submitted = 0;
    let began = Instant::now();
    // Pipelined, the clock is read once per answer, and requests submitted after it are
    // timed from that reading (a second reading per request would cost a third of the
    // throughput measured here).
    let mut clock = began;
    // Up to --depth requests in flight, answers collected oldest first.
    while submitted < cli.count || !in_flight.is_empty() {
        // Room for a whole batch (or for the last, shorter one).
        let batch = cli.batch.min(cli.count - submitted) as usize;
        if submitted < cli.count && in_flight.len() + batch <= cli.depth as usize {
            if let Some(interval) = interval {
                // Request i leaves at i × interval (or at once if the previous was late).
                let due = began + interval * submitted;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let start = if cli.depth > 1 { clock } else { Instant::now() };
            if cli.batch == 1 {
                in_flight.push_back((client.submit(&call)?, start));
            } else {
                for _ in 0..batch {
                    in_flight.push_back((client.stage(&call)?, start));
                }
                client.flush();
            }
            if !cli.json && submitted == 0 {
                println!("Sent request: {pool}:{}:{}:{}", id.priority, id.vm_id, cli.command);
                println!("Waiting for response...");
            }
            submitted += batch as u32;
            continue;
        }
        let Some((ticket, start)) = in_flight.pop_front() else { break };
        let done = client.wait(ticket, options.timeout)?;
        clock = Instant::now();
        latencies.push((clock - start).as_nanos() as u64);
        let failed = !done.succeeded();
        last = Some(done);
        if failed {
            break;
        }
    }
    let elapsed = began.elapsed();
    let done = last.expect("count is positive");
    let problem = if done.succeeded() { mismatch(&plan.expected, &done.output) } else { None };
    let ok = done.succeeded() && problem.is_none();
    if cli.json {
        let result = JsonResult {
            command: cli.command.clone(),
            status: done.response.status,
            error: done.response.error,
            response: done.text(),
            vm_id: id.vm_id,
            pool: pool.to_string(),
            priority: u32::from(id.priority.get()),
            result_checked: !matches!(plan.expected, Expected::Nothing),
            result_error: problem,
            latency_ns: latencies,
        };
        println!("{}", serde_json::to_string(&result)?);
        return Ok(ok);
    }
    println!("Response: {}", done.text());
    if latencies.len() > 1 && cli.depth > 1 {
        let batches =
            if cli.batch > 1 { format!(" in batches of {}", cli.batch) } else { String::new() };
        println!(
            "{} requests at depth {}{batches}: {:.0} requests/s",
            latencies.len(),
            cli.depth,
            latencies.len() as f64 / elapsed.as_secs_f64()
        );
    }
    if latencies.len() > 1 {
        latencies.sort_unstable();
        println!(
            "{} round trips: min {} ns, median {} ns, p99 {} ns, max {} ns",
            latencies.len(),
            latencies[0],
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1]
        );
    }
    match (done.succeeded(), problem) {
        (true, None) => println!("✅ SUCCESS!"),
        (true, Some(p)) => println!("❌ ERROR: wrong result: {p}"),
        (false, _) => println!("❌ ERROR from daemon"),
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            ExitCode::FAILURE
        }
    }
}
