//! The quick-start demo: a guest and a host process exchanging requests over a real
//! region file through the project's rings.
//!
//! `cargo run --release --bin vgpu-demo`

use anyhow::{Context, Result, bail};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vgpu_ring::{Geometry, Region, SlotIdentity, guest_endpoints, spin_hint};
use vgpu_tests::peer::{echo, message};
use vgpu_tests::pin_to_core;
use vgpu_tests::stats::{Summary, latency_histogram};

const ROUND_TRIPS: u64 = 100_000;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Hidden role: the host side, started by the demo itself.
    if let [role, path, count] = args.as_slice()
        && role == "--host-echo"
    {
        pin_to_core(1)?;
        return echo(path.as_ref(), count.parse()?);
    }

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("vgpu-vm1");
    let geometry = Geometry::default();
    let region = Arc::new(Region::create(
        &path,
        geometry.min_region_size() as u64,
        geometry,
        &[SlotIdentity::new(1, b'A', 2)],
        false,
    )?);
    println!("=== vgpu ring demo ===");
    println!(
        "region {} ({} bytes, {} ring entries)",
        path.display(),
        region.size(),
        geometry.ring_entries
    );
    let mut host = Command::new(std::env::current_exe()?)
        .args(["--host-echo", path.to_str().context("utf-8 path")?, &ROUND_TRIPS.to_string()])
        .spawn()
        .context("start the host process")?;
    pin_to_core(0)?;
    let mut guest = guest_endpoints(&region, 0)?;
    let mut hist = latency_histogram();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..ROUND_TRIPS {
        let start = Instant::now();
        if guest.requests.push(message(i)).is_err() {
            bail!("request ring full");
        }
        let response = loop {
            if let Some(r) = guest.responses.pop()? {
                break r;
            }
            if Instant::now() > deadline {
                bail!("no response from the host process");
            }
            spin_hint();
        };
        if response.tag != i as u32 {
            bail!("response {} for request {i}", response.tag);
        }
        hist.record((start.elapsed().as_nanos() as u64).max(1))?;
    }
    if !host.wait()?.success() {
        bail!("host process failed");
    }
    println!("{ROUND_TRIPS} round trips guest -> host -> guest, none lost or reordered");
    println!("round trip: {}", Summary::of(&hist));
    println!("✅ SUCCESS!");
    Ok(())
}
