//! The C library: `scripts/install-c-library.sh` installs it with its pkg-config file,
//! the C example is built with the system C compiler from `pkg-config --cflags --libs
//! vgpu-client` and run against the real mediator, and the header compiles as C++.

use std::path::{Path, PathBuf};
use std::process::Command;
use vgpu_tests::system::{Binaries, System, vm};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Install the library built next to the binaries into `prefix`; the pkg-config path.
fn install(prefix: &Path) -> PathBuf {
    let libdir = Binaries::locate().client.parent().unwrap().to_path_buf();
    assert!(
        libdir.join("libvgpuclient.so").is_file(),
        "libvgpuclient.so not built in {}: run `cargo build --workspace`",
        libdir.display()
    );
    let out = Command::new(workspace().join("scripts/install-c-library.sh"))
        .arg(prefix)
        .arg(&libdir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    prefix.join("lib/pkgconfig")
}

/// `pkg-config --cflags --libs vgpu-client` against the installed file, split.
fn flags(pkgconfig: &Path) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(["--cflags", "--libs", "vgpu-client"])
        .env("PKG_CONFIG_PATH", pkgconfig)
        .output()
        .expect("pkg-config is installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().split_whitespace().map(str::to_owned).collect()
}

/// Compile `source` with `compiler` and the library's flags into `exe`.
fn build(compiler: &str, source: &Path, exe: &Path, prefix: &Path, extra: &[&str]) {
    let pkgconfig = install(prefix);
    let out = Command::new(compiler)
        .args(extra)
        .arg(source)
        .args(flags(&pkgconfig))
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
        .arg("-o")
        .arg(exe)
        .output()
        .unwrap_or_else(|e| panic!("{compiler}: {e}"));
    assert!(out.status.success(), "{compiler} failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_c_example_runs_against_the_mediator() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("vgpu_example");
    let source = workspace().join("examples/c/vgpu_example.c");
    build(
        "cc",
        &source,
        &exe,
        &dir.path().join("prefix"),
        &["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"],
    );
    let mut system = System::start(&[('A', "")], &[vm(3, 'A', 2)], "").unwrap();
    let out = Command::new(&exe).arg(system.region(3)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "vm 3, pool A, priority 2",
        "warnings: none",
        "helpers: vector_add, saxpy, dot, matmul, echo, sleep_us, noop ok",
        "zero-copy: VECTOR_ADD of 256 floats in place",
        "pipelining: 8 requests in flight, all answered",
        "batch: 8 requests staged, one flush, all answered",
        "null pointer: invalid argument (a: null pointer or too long)",
        "foreign buffer refused: buffer is not a buffer of this client (or was used)",
        "refused request: status 2, request failed: bad shape",
        "done",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    assert!(system.log().contains("command=FROM_C"), "{}", system.log());
    // Without a mediator serving the region: a clear error and exit 1, no crash.
    assert!(system.stop().unwrap().success());
    let out = Command::new(&exe).arg("/nonexistent/region").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vgpu_open: the region cannot be used"));
}

#[test]
fn the_header_compiles_and_links_as_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("smoke");
    let source = workspace().join("examples/c/smoke.cpp");
    build("c++", &source, &exe, &dir.path().join("prefix"), &["-std=c++17", "-Wall", "-Werror"]);
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// The static library links too (with the system libraries pkg-config lists).
#[test]
fn the_static_library_links() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix");
    let pkgconfig = install(&prefix);
    let out = Command::new("pkg-config")
        .args(["--static", "--cflags", "--libs", "vgpu-client"])
        .env("PKG_CONFIG_PATH", &pkgconfig)
        .output()
        .unwrap();
    let mut flags: Vec<String> =
        String::from_utf8(out.stdout).unwrap().split_whitespace().map(str::to_owned).collect();
    // Prefer the archive over the shared library.
    flags.retain(|f| f != "-lvgpuclient");
    let exe = dir.path().join("smoke-static");
    let out = Command::new("c++")
        .arg(workspace().join("examples/c/smoke.cpp"))
        .arg(prefix.join("lib/libvgpuclient.a"))
        .args(&flags)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(Command::new(&exe).output().unwrap().status.success());
}
