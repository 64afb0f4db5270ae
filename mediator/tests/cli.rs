//! The `vgpu-mediator` binary refuses what it cannot serve, with a clear message and a
//! non-zero exit (the full behaviour is in vgpu-tests' system tests).

use std::process::Command;
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

#[test]
fn refuses_missing_regions_bad_config_and_mismatched_regions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (code, err) = mediator(&cfg);
    assert_eq!(code, 1);
    assert!(err.contains("vm 1: region") && err.contains("ivshmem-setup create"), "{err}");

    // A region whose identity differs from the config.
    let geometry = Geometry::default();
    Region::create(
        &dir.path().join("vgpu-vm1"),
        2 << 20,
        geometry,
        &[SlotIdentity::new(1, b'A', 2)],
        false,
    )
    .unwrap();
    let (code, err) = mediator(&cfg);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "holds identity vm 1 pool 'A' priority 2, but the config says vm 1 pool A priority 1"
        ),
        "{err}"
    );

    // A region with another geometry.
    let other = Geometry { ring_entries: 64, ..geometry };
    Region::create(
        &dir.path().join("vgpu-vm1"),
        2 << 20,
        other,
        &[SlotIdentity::new(1, b'A', 1)],
        true,
    )
    .unwrap();
    let (code, err) = mediator(&cfg);
    assert_eq!(code, 1);
    assert!(err.contains("geometry mismatch"), "{err}");

    std::fs::write(&cfg, "[pools.A]\nbogus = 1\n").unwrap();
    let (code, err) = mediator(&cfg);
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `bogus`"), "{err}");
    let (code, _) = mediator(&dir.path().join("missing.toml"));
    assert_eq!(code, 1);
}
