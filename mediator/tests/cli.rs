//! The `vgpu-mediator` binary refuses what it cannot serve, with a clear message and a
//! non-zero exit (the full behaviour is in vgpu-tests' system tests).

use std::process::Command;
use std::sync::Arc;
use vgpu_ring::{Geometry, Region, SlotIdentity};

fn mediator(config: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vgpu-mediator"))
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("vgpu.toml");
    let text = format!(
        "[regions]\ndir = \"{}\"\nsize = \"2M\"\n[pools.A]\n[[vm]]\nid = 1\npool = \"A\"\npriority = 1\n",
        dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// With no usable region at all (missing, wrong size, not a file) the daemon cannot
/// serve a single VM and says why for each; a bad config is refused naming the field.
#[test]
fn refuses_to_start_without_a_single_usable_region_or_with_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (code, err) = mediator(&cfg);
    assert_eq!(code, 1);
    assert!(err.contains("no VM can be served") && err.contains("vm 1:"), "{err}");
    assert!(err.contains("vgpu-vm1") && err.contains("ivshmem-setup create"), "{err}");

    // A region of another size than the config's: the host cannot fix that.
    Region::create(
        &dir.path().join("vgpu-vm1"),
        1 << 20,
        Geometry { ring_entries: 64, arena_size: 4096, ..Geometry::default() },
        &[SlotIdentity::new(1, vgpu_ring::PoolId::new(b'A').unwrap(), vgpu_ring::Priority::MEDIUM)],
        false,
    )
    .unwrap();
    let (code, err) = mediator(&cfg);
    assert_eq!(code, 1);
    assert!(err.contains("has 1048576 bytes, the configuration says 2097152"), "{err}");

    // A directory where the region should be.
    std::fs::remove_file(dir.path().join("vgpu-vm1")).unwrap();
    std::fs::create_dir(dir.path().join("vgpu-vm1")).unwrap();
    let (code, err) = mediator(&cfg);
    assert_eq!(code, 1);
    assert!(err.contains("vgpu-vm1"), "{err}");

    std::fs::write(&cfg, "[pools.A]\nbogus = 1\n").unwrap();
    let (code, err) = mediator(&cfg);
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `bogus`"), "{err}");
    let (code, _) = mediator(&dir.path().join("missing.toml"));
    assert_eq!(code, 1);
}

/// A pool configured for a CUDA device that cannot be used (device 4095: no machine
/// has it, so this runs the same with or without a GPU; or a build without the `cuda`
/// feature) stops the start with a message saying what to do.
#[test]
fn a_cuda_pool_without_a_usable_gpu_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[pools.A]", "[pools.A]\nbackend = \"cuda\"\ndevice = 4095");
    std::fs::write(&cfg, text).unwrap();
    Region::create(
        &dir.path().join("vgpu-vm1"),
        2 << 20,
        Geometry::default(),
        &[SlotIdentity::new(1, vgpu_ring::PoolId::new(b'A').unwrap(), vgpu_ring::Priority::MEDIUM)],
        false,
    )
    .unwrap();
    let (code, err) = mediator(&cfg);
    assert_eq!(code, 1);
    assert!(err.contains("pool A: backend = \"cuda\" (device 4095) but"), "{err}");
    assert!(err.contains("add fallback = \"cpu\""), "{err}");
    // No session was announced to the guests.
    let region =
        Arc::new(Region::open(&dir.path().join("vgpu-vm1"), vgpu_ring::Access::ReadOnly).unwrap());
    assert_eq!(region.epoch(), 0);
}
