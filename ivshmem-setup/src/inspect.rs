//! `inspect`: a read-only view of a (possibly live) region.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vgpu_ring::{Access, Priority, Region, SlotControl};

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub(crate) struct InspectArgs {
    /// The region file (or a PCI BAR resource file).
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Refresh in place once a second until interrupted.
    #[arg(long)]
    watch: bool,
}

#[derive(Serialize)]
struct Report {
    path: PathBuf,
    size: usize,
    /// The header's layout version, "major.minor".
    layout: String,
    initialized: bool,
    slot_count: u32,
    ring_entries: u32,
    arena_size: u32,
    mediator: Option<MediatorState>,
    slots: Vec<SlotReport>,
}

#[derive(Serialize)]
struct MediatorState {
    epoch: u64,
    pid: u32,
    heartbeat_age_ms: Option<f64>,
    heartbeat_interval_ms: u32,
    /// The heartbeat's period while a pool's VMs all sleep on their doorbells.
    sleeping_heartbeat_ms: u64,
}

#[derive(Serialize)]
struct SlotReport {
    slot: u32,
    assigned: bool,
    vm_id: u32,
    pool: String,
    priority: u32,
    client_pid: u32,
    /// The host isolated the slot's response ring (its consumer index was impossible).
    poisoned: bool,
    request_ring: RingReport,
    response_ring: RingReport,
}

#[derive(Serialize)]
struct RingReport {
    head: u32,
    tail: u32,
    used: u32,
}

/// The region's mediator heartbeat as seen from here (host `CLOCK_MONOTONIC`).
pub(crate) struct Heartbeat {
    /// How long ago the mediator last beat; `None` if it never did (or not in this boot).
    pub(crate) age: Option<Duration>,
    /// No beat for longer than a live mediator allows: three intervals and a second.
    pub(crate) stale: bool,
}

/// The heartbeat of `region`'s mediator.
pub(crate) fn heartbeat(region: &Region) -> Heartbeat {
    let (beat, interval_ms) = region.heartbeat();
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| Duration::from(t).as_nanos() as u64);
    // A beat from "the future" is not this boot's mediator (or is a guest's scribble).
    let age = (beat != 0 && now >= beat).then(|| Duration::from_nanos(now - beat));
    let limit = Duration::from_millis(u64::from(interval_ms)) * 3 + Duration::from_secs(1);
    Heartbeat { age, stale: age.is_none_or(|age| age > limit) }
}

fn report(region: &Arc<Region>) -> Result<Report> {
    let geometry = region.geometry();
    let epoch = region.epoch();
    let mediator = (epoch != 0).then(|| {
        let (_, interval_ms) = region.heartbeat();
        let sleeping = vgpu_config::sleeping_heartbeat(Duration::from_millis(interval_ms.into()));
        MediatorState {
            epoch,
            pid: region.mediator_pid(),
            heartbeat_age_ms: heartbeat(region).age.map(|age| age.as_secs_f64() * 1e3),
            heartbeat_interval_ms: interval_ms,
            sleeping_heartbeat_ms: sleeping.as_millis() as u64,
        }
    });
    let mut slots = Vec::new();
    for index in 0..geometry.slot_count {
        let slot = region.slot(index)?;
        let identity = slot.identity();
        let indices = slot.ring_indices();
        let status = slot.host_status();
        let pool = u8::try_from(identity.pool)
            .ok()
            .filter(u8::is_ascii_graphic)
            .map_or_else(|| format!("{:#x}", identity.pool), |b| char::from(b).to_string());
        slots.push(SlotReport {
            slot: index,
            assigned: identity.is_assigned(),
            vm_id: identity.vm_id,
            pool,
            priority: identity.priority,
            client_pid: slot.client_pid(),
            poisoned: status & SlotControl::RESPONSE_POISONED != 0,
            request_ring: RingReport {
                head: indices.req_head,
                tail: indices.req_tail,
                used: indices.req_head.wrapping_sub(indices.req_tail),
            },
            response_ring: RingReport {
                head: indices.resp_head,
                tail: indices.resp_tail,
                used: indices.resp_head.wrapping_sub(indices.resp_tail),
            },
        });
    }
    Ok(Report {
        path: region.path().to_owned(),
        size: region.size(),
        layout: {
            let (major, minor) = region.layout_version();
            format!("{major}.{minor}")
        },
        initialized: true,
        slot_count: geometry.slot_count,
        ring_entries: geometry.ring_entries,
        arena_size: geometry.arena_size,
        mediator,
        slots,
    })
}

fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "region {}: {} bytes, layout {}, initialized",
        r.path.display(),
        r.size,
        r.layout
    );
    let _ = writeln!(
        out,
        "geometry: {} slot(s), {} ring entries, {}-byte arena",
        r.slot_count, r.ring_entries, r.arena_size
    );
    match &r.mediator {
        None => out.push_str("mediator: never attached\n"),
        Some(m) => {
            let age = m.heartbeat_age_ms.map_or("none".to_owned(), |a| format!("{a:.0} ms ago"));
            let _ = writeln!(
                out,
                "mediator: epoch {:#x}, pid {}, heartbeat {age} (every {} ms; every {} ms while a pool's VMs all sleep on doorbells)",
                m.epoch, m.pid, m.heartbeat_interval_ms, m.sleeping_heartbeat_ms
            );
        }
    }
    for s in &r.slots {
        if !s.assigned {
            let _ = writeln!(out, "slot {}: unassigned", s.slot);
            continue;
        }
        let ring = |name: &str, g: &RingReport| {
            format!("{name} head {} tail {} used {}", g.head, g.tail, g.used)
        };
        let _ = writeln!(
            out,
            "slot {}: vm {} pool {} priority {} ({}), client pid {}{}\n  {}\n  {}",
            s.slot,
            s.vm_id,
            s.pool,
            s.priority,
            Priority::try_from(s.priority).map_or("invalid", Priority::name),
            s.client_pid,
            if s.poisoned { ", POISONED (responses)" } else { "" },
            ring("requests: ", &s.request_ring),
            ring("responses:", &s.response_ring)
        );
    }
    out
}

pub(crate) fn run(args: &InspectArgs) -> Result<()> {
    let region = Arc::new(
        Region::open(&args.path, Access::ReadOnly)
            .with_context(|| format!("{} is not a usable vgpu region", args.path.display()))?,
    );
    loop {
        let r = report(&region)?;
        let text = if args.json { serde_json::to_string_pretty(&r)? + "\n" } else { render(&r) };
        if args.watch {
            // Clear the screen and home the cursor, then redraw; stop quietly once
            // nobody reads.
            if !say!("\x1b[2J\x1b[H{text}") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        } else {
            let _ = say!("{text}");
            return Ok(());
        }
    }
}
