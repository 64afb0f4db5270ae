//! `top`: a live, read-only table of the configured VMs, refreshed once a second: from
//! the regions (state, requests in flight, requests/s) and, when `[metrics] listen` is
//! set, the mediator's metrics (errors/s, the pool's queue wait p50/p99). Plain ANSI
//! redraw, so it works over ssh; one snapshot when stdout is not a terminal.

use anyhow::Result;
use prometheus_parse::{Scrape, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vgpu_config::Config;
use vgpu_ring::{Access, Region, SlotControl};

/// Arguments of `top`.
#[derive(clap::Args)]
pub(crate) struct TopArgs {
    /// The configuration file (TOML, see docs/CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Stop after this many refreshes (default: until interrupted, or one snapshot when
    /// stdout is not a terminal).
    #[arg(long, value_name = "N")]
    count: Option<u32>,
}

/// What one look at a VM's region shows.
#[derive(Clone, Copy)]
struct RegionView {
    state: &'static str,
    in_flight: u32,
    /// Responses published so far (the response ring's producer index).
    answered: u32,
}

fn look(region: &std::path::Path) -> RegionView {
    let Ok(region) = Region::open(region, Access::ReadOnly).map(std::sync::Arc::new) else {
        return RegionView { state: "no region", in_flight: 0, answered: 0 };
    };
    let Ok(slot) = region.slot(0) else {
        return RegionView { state: "unusable", in_flight: 0, answered: 0 };
    };
    let rings = slot.ring_indices();
    let poisoned = slot.host_status() & SlotControl::RESPONSE_POISONED != 0;
    let state = if region.epoch() == 0 {
        "not served"
    } else if crate::inspect::heartbeat(&region).stale {
        "no mediator"
    } else if poisoned {
        "poisoned"
    } else {
        "served"
    };
    RegionView {
        state,
        in_flight: rings.req_head.wrapping_sub(rings.resp_head),
        answered: rings.resp_head,
    }
}

/// What the metrics endpoint says: error answers per VM, queue-wait buckets per pool.
#[derive(Default)]
struct MetricsView {
    errors: BTreeMap<String, f64>,
    quarantined: BTreeMap<String, bool>,
    /// Cumulative (upper bound in seconds, count) per pool.
    queue_wait: BTreeMap<String, Vec<(f64, f64)>>,
    /// The dispatcher's passes per pool.
    passes: BTreeMap<String, f64>,
}

fn scrape(url: &str) -> Option<MetricsView> {
    let text = ureq::get(url).call().ok()?.body_mut().read_to_string().ok()?;
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    let mut view = MetricsView::default();
    for sample in scrape.samples {
        let label = |name| sample.labels.get(name).unwrap_or_default().to_owned();
        match (sample.metric.as_str(), &sample.value) {
            ("vgpu_request_errors_total", Value::Counter(v) | Value::Untyped(v)) => {
                *view.errors.entry(label("vm")).or_default() += v;
            }
            ("vgpu_vm_state", Value::Gauge(v) | Value::Untyped(v))
                if sample.labels.get("state") == Some("quarantined") =>
            {
                view.quarantined.insert(label("vm"), *v > 0.0);
            }
            ("vgpu_dispatcher_passes_total", Value::Counter(v) | Value::Untyped(v)) => {
                view.passes.insert(label("pool"), *v);
            }
            ("vgpu_queue_wait_seconds", Value::Histogram(buckets)) => {
                let buckets = buckets.iter().map(|b| (b.less_than, b.count)).collect();
                view.queue_wait.insert(label("pool"), buckets);
            }
            _ => {}
        }
    }
    Some(view)
}

/// The `q` quantile of the observations between two cumulative histograms, linearly
/// interpolated within its bucket; `None` without observations.
fn quantile(now: &[(f64, f64)], before: Option<&Vec<(f64, f64)>>, q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = now
        .iter()
        .map(|&(le, n)| {
            let old = before.and_then(|b| b.iter().find(|(l, _)| *l == le)).map_or(0.0, |b| b.1);
            (le, n - old)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in &delta {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let span = n - lower.1;
            let within = if span > 0.0 { (rank - lower.1) / span } else { 1.0 };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, n);
    }
    None
}

fn seconds(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(s) if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

pub(crate) fn run(args: &TopArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let url = config.metrics_listen.map(|addr| format!("http://{addr}/metrics"));
    let terminal = std::io::stdout().is_terminal();
    let frames = args.count.unwrap_or(if terminal { u32::MAX } else { 1 });
    // Rates need two looks: the first frame comes after one second.
    let mut before: Vec<RegionView> = config.vms.iter().map(|vm| look(&vm.region)).collect();
    let mut metrics_before = url.as_deref().and_then(scrape);
    let mut then = Instant::now();
    for frame in 0..frames {
        std::thread::sleep(Duration::from_secs(1));
        let views: Vec<RegionView> = config.vms.iter().map(|vm| look(&vm.region)).collect();
        let metrics = url.as_deref().and_then(scrape);
        let elapsed = then.elapsed().as_secs_f64();
        then = Instant::now();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "vgpu top — {} VMs, {}{}",
            config.vms.len(),
            match (&url, &metrics) {
                (None, _) => "no [metrics] listen: errors and queue wait not shown".to_owned(),
                (Some(url), None) => format!("metrics at {url} not answering"),
                (Some(url), Some(_)) => format!("metrics from {url}"),
            },
            if terminal { " (Ctrl-C quits)" } else { "" }
        );
        let _ = writeln!(
            out,
            "{:>5} {:>4} {:>4} {:<12} {:>9} {:>10} {:>9} {:>9} {:>9}",
            "VM", "POOL", "PRIO", "STATE", "IN-FLIGHT", "REQ/S", "ERR/S", "WAIT p50", "WAIT p99"
        );
        let mut pool_rates: BTreeMap<String, f64> = BTreeMap::new();
        for (index, vm) in config.vms.iter().enumerate() {
            let (view, old) = (views[index], before[index]);
            let id = vm.id.to_string();
            let quarantined = metrics.as_ref().and_then(|m| m.quarantined.get(&id).copied());
            let state = if quarantined == Some(true) { "quarantined" } else { view.state };
            let rate = f64::from(view.answered.wrapping_sub(old.answered)) / elapsed;
            let errors = metrics.as_ref().and_then(|m| m.errors.get(&id)).map(|now| {
                let old = metrics_before.as_ref().and_then(|m| m.errors.get(&id)).unwrap_or(&0.0);
                format!("{:.0}", (now - old) / elapsed)
            });
            let pool = vm.pool.name().to_string();
            *pool_rates.entry(pool.clone()).or_default() += rate;
            let wait = |q| {
                let now = metrics.as_ref()?.queue_wait.get(&pool)?;
                quantile(now, metrics_before.as_ref().and_then(|m| m.queue_wait.get(&pool)), q)
            };
            let _ = writeln!(
                out,
                "{:>5} {:>4} {:>4} {:<12} {:>9} {:>10.0} {:>9} {:>9} {:>9}",
                vm.id,
                pool,
                vm.priority.get(),
                state,
                view.in_flight,
                rate,
                errors.as_deref().unwrap_or("-"),
                seconds(wait(0.5)),
                seconds(wait(0.99)),
            );
        }
        // Requests per pass well above 1: the dispatcher is the slower side, its VMs
        // run ahead of it.
        for (pool, rate) in &pool_rates {
            let passes = metrics.as_ref().and_then(|m| m.passes.get(pool)).map(|now| {
                let old = metrics_before.as_ref().and_then(|m| m.passes.get(pool));
                (now - old.unwrap_or(now)) / elapsed
            });
            let _ = match passes {
                Some(passes) if passes > 0.0 => writeln!(
                    out,
                    "pool {pool}: {rate:.0} requests/s, {passes:.0} passes/s, {:.2} requests per pass",
                    rate / passes
                ),
                _ => writeln!(out, "pool {pool}: {rate:.0} requests/s, passes not known"),
            };
        }
        if terminal {
            out.insert_str(0, "\x1b[2J\x1b[H");
        } else if frame + 1 < frames {
            out.push('\n');
        }
        if !say!("{out}") {
            return Ok(());
        }
        before = views;
        metrics_before = metrics;
    }
    Ok(())
}
