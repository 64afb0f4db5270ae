//! `include/vgpu_client.h` is what cbindgen generates from the crate today.
//! `VGPU_BLESS=1 cargo test -p vgpu-client-ffi --test header` rewrites it.

use std::path::Path;

#[test]
fn header_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen parses the crate")
        .write(&mut generated);
    let header = crate_dir.join("../include/vgpu_client.h");
    if std::env::var_os("VGPU_BLESS").is_some() {
        std::fs::write(&header, &generated).unwrap();
    }
    let checked_in = std::fs::read(&header).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/vgpu_client.h is stale: run VGPU_BLESS=1 cargo test -p vgpu-client-ffi --test header"
    );
}
