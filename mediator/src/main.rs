//! `vgpu-mediator --config FILE`: the host daemon.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    vgpu_mediator::cli::main_from(std::env::args_os())
}
