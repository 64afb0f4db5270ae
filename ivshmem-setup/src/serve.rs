//! `serve`: the doorbell holder of a configuration's doorbell VMs.

use crate::ConfigArg;
use anyhow::{Context, Result, bail};
use std::io::IsTerminal;
use std::os::unix::net::UnixStream;
use vgpu_config::Config;
use vgpu_doorbell::{DoorbellVm, Holder};

pub(crate) fn run(args: &ConfigArg) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(&args.config)?;
    let vms: Vec<DoorbellVm> = config
        .vms
        .iter()
        .filter_map(|vm| {
            vm.doorbell.as_ref().map(|socket| DoorbellVm {
                vm_id: vm.id,
                socket: socket.clone(),
                region: vm.region.clone(),
            })
        })
        .collect();
    if vms.is_empty() {
        bail!(
            "{}: no VM has a doorbell (set doorbell = true for a VM or in [regions])",
            args.config.display()
        );
    }
    // SIGINT and SIGTERM write to a self-pipe the holder polls with its sockets: it
    // sleeps until a connection or the signal.
    let (stop, on_signal) = UnixStream::pair().context("create a socket pair")?;
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(signal, on_signal.try_clone()?)
            .context("install signal handler")?;
    }
    let mut holder = Holder::bind(vms.clone(), &config.doorbell_control)?;
    tracing::info!(
        "holding doorbells of {} VMs ({}); mediators fetch them from {}",
        vms.len(),
        vms.iter().map(|vm| vm.socket.display().to_string()).collect::<Vec<_>>().join(", "),
        config.doorbell_control.display()
    );
    holder.serve(&stop)?;
    tracing::info!("stopped");
    Ok(())
}
