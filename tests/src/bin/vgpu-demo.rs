//! The quick start: a temporary configuration and regions for five VMs in two pools, the
//! real mediator in a process of its own, and the original guide's scenarios.
//!
//! `cargo run --release --bin vgpu-demo`

use anyhow::{Result, bail, ensure};
use std::time::{Duration, Instant};
use vgpu_client::{Call, Client, Ticket, Wait};
use vgpu_ring::Opcode;
use vgpu_tests::system::{Launcher, RegionSpec, System, vm};

/// First argument that makes this program run the mediator's command line.
const MEDIATOR_FLAG: &str = "--run-mediator";

fn print_properties(client: &Client) {
    let id = client.identity();
    println!("vGPU Properties:");
    println!("  Pool ID:  {}", id.pool);
    println!("  Priority: {} ({})", id.priority, id.priority.name());
    println!("  VM ID:    {}", id.vm_id);
}

fn priority_scenario(system: &System) -> Result<()> {
    println!("\n--- Priority scenario (pool A) ---");
    println!("Pool A is kept busy by a SLEEP from VM 9; then VM1 (priority 0) sends TEST_LOW,");
    println!("VM2 (priority 2) TEST_HIGH and VM3 (priority 1) TEST_MEDIUM, in that order.\n");
    let mut busy = system.client(9, Wait::default())?;
    let sleep = busy.submit(&Call::sleep(300_000))?;
    system.wait_lines("command=SLEEP", 1)?;
    let mut sent: Vec<(Client, Ticket)> = Vec::new();
    for (vm, command) in [(1, "TEST_LOW"), (2, "TEST_HIGH"), (3, "TEST_MEDIUM")] {
        let mut client = system.client(vm, Wait::default())?;
        let id = client.identity();
        let ticket = client.submit(&Call::noop(command))?;
        println!("Sent request: {}:{}:{}:{command}", id.pool, id.priority, id.vm_id);
        system.wait_lines("[QUEUE]", sent.len() + 2)?;
        sent.push((client, ticket));
    }
    for (mut client, ticket) in sent {
        let done = client.wait(ticket, Duration::from_secs(10))?;
        ensure!(done.succeeded(), "{}", done.text());
        println!("Response: {}", done.text());
    }
    ensure!(busy.wait(sleep, Duration::from_secs(10))?.succeeded(), "the SLEEP failed");
    println!("\n$ grep PROCESS mediator.log");
    let lines: Vec<String> =
        system.lines("[PROCESS]").into_iter().filter(|l| l.contains("TEST_")).collect();
    for line in &lines {
        println!("{line}");
    }
    let order: Vec<bool> =
        ["vm=2,", "vm=3,", "vm=1,"].iter().zip(&lines).map(|(vm, l)| l.contains(vm)).collect();
    ensure!(
        lines.len() == 3 && order.iter().all(|&ok| ok),
        "processing order is not high, medium, low"
    );
    println!("✅ processed by priority: vm=2 (high), vm=3 (medium), vm=1 (low)");
    Ok(())
}

fn median_round_trip(client: &mut Client, n: usize) -> Result<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        client.noop("PING")?;
        samples.push(start.elapsed());
    }
    samples.sort();
    Ok(samples[n / 2])
}

fn pool_separation(system: &System) -> Result<()> {
    println!("\n--- Pool separation (pools A and B) ---");
    let mut pool_a = system.client(1, Wait::default())?;
    let mut pool_b = system.client(10, Wait::Spin)?;
    let (a, b) = (pool_a.submit(&Call::noop("TEST_A"))?, pool_b.submit(&Call::noop("TEST_B"))?);
    println!("VM1 (pool A) and VM10 (pool B) submit at the same time:");
    println!("Response: {}", pool_a.wait(a, Duration::from_secs(10))?.text());
    println!("Response: {}", pool_b.wait(b, Duration::from_secs(10))?.text());
    let unloaded = median_round_trip(&mut pool_b, 2000)?;
    let mut flood: Vec<Ticket> =
        (0..3).map(|_| pool_a.submit(&Call::sleep(100_000))).collect::<Result<_, _>>()?;
    let loaded = median_round_trip(&mut pool_b, 2000)?;
    // The order of events shows it: all 2000 of pool B's round trips were done while
    // pool A's first SLEEP was still unanswered.
    let first = match pool_a.try_complete(flood.remove(0))? {
        Ok(_) => anyhow::bail!("pool B waited behind pool A"),
        Err(ticket) => ticket,
    };
    for t in std::iter::once(first).chain(flood) {
        pool_a.wait(t, Duration::from_secs(10))?;
    }
    println!(
        "Pool B round trip, median of 2000: {unloaded:?} with pool A idle, {loaded:?} while pool A runs 300 ms of SLEEP jobs"
    );
    println!("✅ pool A's backlog does not delay pool B");
    Ok(())
}

fn vector_add(system: &System) -> Result<()> {
    println!("\n--- VECTOR_ADD ---\n=== VM GPU Request Client ===");
    let mut client = system.client(2, Wait::default())?;
    print_properties(&client);
    let a: Vec<f32> = (0..1024).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..1024).map(|i| (2 * i) as f32).collect();
    let id = client.identity();
    println!("\nSent request: {}:{}:{}:VECTOR_ADD", id.pool, id.priority, id.vm_id);
    println!("Waiting for response...");
    let bytes: Vec<u8> = a.iter().chain(&b).flat_map(|v| v.to_le_bytes()).collect();
    let call = Call {
        op: Opcode::VectorAdd,
        label: "VECTOR_ADD",
        args: [1024, 0, 0],
        input: &bytes,
        output_len: 4096,
    };
    let done = client.call(&call)?;
    println!("Response: {}", done.text());
    let sum: Vec<f32> =
        done.output.as_chunks::<4>().0.iter().map(|c| f32::from_le_bytes(*c)).collect();
    ensure!(
        done.succeeded() && sum.iter().enumerate().all(|(i, &s)| s == (3 * i) as f32),
        "wrong VECTOR_ADD result"
    );
    println!("✅ SUCCESS! (1024 sums checked)");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(MEDIATOR_FLAG) {
        let mut mediator_args = vec!["vgpu-mediator".to_owned()];
        mediator_args.extend(args.into_iter().skip(2));
        let code = vgpu_mediator::cli::main_from(mediator_args);
        std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
    }
    println!("=== vgpu demo: GPU request mediation over shared memory ===");
    let launcher =
        Launcher::SelfHosted { program: std::env::current_exe()?, flag: MEDIATOR_FLAG.to_owned() };
    let vms = [vm(1, 'A', 0), vm(2, 'A', 2), vm(3, 'A', 1), vm(9, 'A', 0), vm(10, 'B', 1)];
    let mut system =
        System::start_with(launcher, RegionSpec::SMALL, &[('A', ""), ('B', "")], &vms, "")?;
    println!(
        "config and regions in {} (pools A and B, VMs 1, 2, 3, 9 in A, 10 in B)",
        system.dir().display()
    );
    println!("mediator started (pid {})", system.mediator_pid().unwrap_or(0));
    let result = priority_scenario(&system)
        .and_then(|()| pool_separation(&system))
        .and_then(|()| vector_add(&system));
    let status = system.stop()?;
    result?;
    if !status.success() {
        bail!("the mediator exited with {status}");
    }
    println!("\nmediator stopped cleanly; temporary files removed");
    println!("✅ SUCCESS!");
    Ok(())
}
