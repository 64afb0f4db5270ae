//! The `vgpu-mediator` command line, callable from other programs (the demo runs the
//! daemon this way in a child process of its own).

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use vgpu_config::Config;

/// Serve the guests' GPU requests: one dispatcher per pool, priority 2 > 1 > 0.
#[derive(Parser)]
#[command(name = "vgpu-mediator", version, about)]
struct Cli {
    /// The configuration file (TOML, see docs/CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Do not log the per-request [QUEUE]/[PROCESS]/[RESPONSE] lines (for benchmarks).
    #[arg(long)]
    quiet_requests: bool,
    /// Stop for good: answer queued requests with error 8 (shutting down) instead of
    /// leaving them in the rings for the next mediator (also `drain_on_stop = true`).
    #[arg(long)]
    drain: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: &Cli) -> Result<()> {
    let config = Config::load(&cli.config)?;
    let stop = crate::daemon::Stop::on_signals().context("install signal handlers")?;
    let on_stop = if cli.drain || config.mediator.drain_on_stop {
        crate::dispatcher::OnStop::Drain
    } else {
        crate::dispatcher::OnStop::Keep
    };
    let options = crate::daemon::ServeOptions { log_requests: !cli.quiet_requests, on_stop };
    let stats = crate::daemon::serve(&config, &stop, options)?;
    for (pool, s) in stats {
        tracing::info!("Pool {pool}: {} succeeded, {} failed", s.succeeded, s.failed);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Run the daemon with command-line `args` (the first is the program name) until
/// SIGINT or SIGTERM; exit status 0 after a clean stop, 1 on an error.
///
/// ```
/// use std::process::ExitCode;
/// // A configuration that cannot be read: a message on stderr and exit status 1.
/// let code = vgpu_mediator::cli::main_from(["vgpu-mediator", "--config", "/nonexistent/vgpu.toml"]);
/// assert_eq!(code, ExitCode::FAILURE);
/// ```
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.log_format);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr (a service manager's journal collects both streams).
            eprintln!("vgpu-mediator: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
