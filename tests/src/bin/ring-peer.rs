//! Child process for the cross-process tests and benchmarks:
//! `ring-peer consume|echo|echo-batched|vector-add REGION COUNT [CORE]` or
//! `ring-peer uds-echo SOCKET COUNT [CORE]`.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use vgpu_tests::{peer, pin_to_core};

/// How long a peer may live: a parent that failed (and so never sends what the peer
/// waits for) must not leave it spinning on a core.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

fn main() -> Result<()> {
    std::thread::spawn(|| {
        std::thread::sleep(DEADLINE);
        eprintln!("ring-peer: still running after {DEADLINE:?}; giving up");
        std::process::exit(2);
    });
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [role, path, count, rest @ ..] = args.as_slice() else {
        bail!("usage: ring-peer consume|echo|echo-batched|vector-add|uds-echo PATH COUNT [CORE]");
    };
    let path = PathBuf::from(path);
    let count: u64 = count.parse().context("COUNT")?;
    if let Some(core) = rest.first() {
        pin_to_core(core.parse().context("CORE")?)?;
    }
    match role.as_str() {
        "consume" => peer::consume(&path, count),
        "echo" => peer::echo(&path, count),
        "echo-batched" => peer::echo_batched(&path, count),
        "vector-add" => peer::vector_add(&path, count),
        "uds-echo" => peer::uds_echo(&path, count),
        other => bail!("unknown role {other}"),
    }
}
