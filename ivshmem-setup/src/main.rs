//! `ivshmem-setup`: creates, formats and inspects vgpu regions and prints the QEMU and
//! libvirt configuration that exposes them to guests.
#![forbid(unsafe_code)]

/// Print to stdout like `print!`. A closed stdout (`... | head -2`) is no error: the
/// command goes on with its work and prints nothing more (see [`write_out`]).
macro_rules! say {
    ($($arg:tt)*) => { $crate::write_out(format_args!($($arg)*)) };
}

mod create;
mod doctor;
mod inspect;
mod qemu;
mod serve;
mod top;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Create, format and inspect vgpu shared-memory regions.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and format region files: one per VM of a config file, or one given by flags.
    Create(create::CreateArgs),
    /// Write a 4 KiB image of the vgpu-stub device's identity registers.
    Stub(create::StubArgs),
    /// Validate a region and print its header, mediator state and per-slot rings.
    Inspect(inspect::InspectArgs),
    /// Print the QEMU arguments that attach a VM's region (ivshmem-plain, or
    /// ivshmem-doorbell for a VM with a doorbell).
    QemuArgs(qemu::VmArgs),
    /// Print the libvirt `<shmem>` element for a VM's region.
    LibvirtXml(qemu::VmArgs),
    /// Hold the doorbell sockets and eventfds of the VMs that have one, for as long as
    /// their QEMUs run (a service of its own: mediators come and go).
    Serve(ConfigArg),
    /// Check the host for what would break a VM (region directory, room, modes,
    /// logind, AppArmor/SELinux, QEMU's devices, hugepages, a CUDA pool's GPU, a live
    /// mediator), each with its fix; exit status 1 when something would.
    Doctor(doctor::DoctorArgs),
    /// A live table of the VMs: pool, priority, state, in flight, requests/s, errors/s
    /// and queue wait (read-only; one snapshot when stdout is not a terminal).
    Top(top::TopArgs),
}

/// A `--config FILE` argument.
#[derive(clap::Args)]
struct ConfigArg {
    /// The configuration file (TOML, see docs/CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// Write to stdout; `false` once stdout is closed (or unwritable), which callers that
/// only print may ignore.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.flush()).is_ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Create(args) => create::run(&args),
        Command::Stub(args) => create::stub(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::QemuArgs(args) => qemu::qemu_args(&args),
        Command::LibvirtXml(args) => qemu::libvirt_xml(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Top(args) => top::run(&args),
        Command::Doctor(args) => match doctor::run(&args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivshmem-setup: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
