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

/// The C examples of the header, with the item each documents (a function or a type),
/// in the order they appear: the fenced `c` blocks of its doc comments.
fn header_examples(header: &str) -> Vec<(String, String)> {
    let mut examples = Vec::new();
    let mut found: Vec<String> = Vec::new();
    let mut block: Option<Vec<&str>> = None;
    for line in header.lines() {
        let text = line.trim_start();
        let doc = text.strip_prefix("* ").or_else(|| text.strip_prefix('*'));
        if let Some(code) = &mut block {
            match doc {
                Some("```") => found.push(block.take().unwrap_or_default().join("\n")),
                Some(content) => code.push(content),
                None => panic!("a C example in the header is not closed: {line:?}"),
            }
        } else if doc == Some("```c") {
            block = Some(Vec::new());
        } else if !found.is_empty() && doc.is_none() && !text.is_empty() && !text.starts_with("/*")
        {
            let name = declared(text).unwrap_or_else(|| panic!("what does {line:?} declare?"));
            examples.extend(found.drain(..).map(|code| (name.clone(), code)));
        }
    }
    examples
}

/// The function (`vgpu_…`) or type (`typedef struct …`) a header line declares.
fn declared(line: &str) -> Option<String> {
    let start = match line.strip_prefix("typedef struct ") {
        Some(rest) => rest,
        None => &line[line.find("vgpu_")?..],
    };
    let name: String =
        start.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some(name)
}

/// Every C example in the header (so in the C API's documentation) is compiled, with
/// warnings as errors, and run against the real mediator: each in a function of its
/// own that provides `region` (the region file) and, unless the example opens its own,
/// an open `client`. Every function and every struct of the API has one.
#[test]
fn every_c_example_in_the_header_runs() {
    let header = std::fs::read_to_string(workspace().join("include/vgpu_client.h")).unwrap();
    let examples = header_examples(&header);
    let mut api: Vec<String> = header
        .lines()
        .filter(|line| line.starts_with("typedef struct ") && line.ends_with('{'))
        .chain(header.lines().filter(|line| !line.starts_with(' ') && line.contains("vgpu_")))
        .filter(|line| {
            !line.starts_with("#") && !line.starts_with("/*") && line.contains(['(', '{'])
        })
        .filter_map(declared)
        .collect();
    api.sort();
    api.dedup();
    assert!(api.len() >= 24, "{api:?}");
    for item in &api {
        assert!(examples.iter().any(|(name, _)| name == item), "{item} has no C example");
    }
    let mut source = String::from(
        "#include <assert.h>\n#include <stdint.h>\n#include <stdio.h>\n#include <stdlib.h>\n\
         #include <string.h>\n#include \"vgpu_client.h\"\n\n\
         static VgpuClient *open_client(const char *region) {\n\
         \x20   VgpuOptions options = {0};\n    options.region = region;\n    VgpuClient *client;\n\
         \x20   if (vgpu_open(&options, &client) != VGPU_OK) {\n\
         \x20       fprintf(stderr, \"vgpu_open: %s\\n\", vgpu_last_error(NULL));\n        exit(2);\n    }\n\
         \x20   return client;\n}\n",
    );
    for (i, (name, code)) in examples.iter().enumerate() {
        let own = code.contains("vgpu_open(");
        source += &format!(
            "\n/* {name} */\nstatic void example_{i}(const char *region) {{\n    (void)region;\n"
        );
        if !own {
            source += "    VgpuClient *client = open_client(region);\n";
        }
        source += &format!("    {{\n{code}\n    }}\n");
        if !own {
            source += "    vgpu_close(client);\n";
        }
        source += "}\n";
    }
    source += "\nint main(int argc, char **argv) {\n    if (argc != 2) return 2;\n";
    for (i, (name, _)) in examples.iter().enumerate() {
        source += &format!("    example_{i}(argv[1]);\n    puts(\"ok {name}\");\n");
    }
    source += "    return 0;\n}\n";
    let dir = tempfile::tempdir().unwrap();
    let (file, exe) = (dir.path().join("examples.c"), dir.path().join("examples"));
    std::fs::write(&file, &source).unwrap();
    build(
        "cc",
        &file,
        &exe,
        &dir.path().join("prefix"),
        &["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"],
    );
    let mut system = System::start(&[('A', "")], &[vm(1, 'A', 1)], "").unwrap();
    let out = Command::new(&exe).arg(system.region(1)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let ran: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("ok ")).collect();
    let names: Vec<&str> = examples.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(ran, names, "{stdout}");
    assert!(system.log().contains("command=TEST_HIGH"), "{}", system.log());
    assert!(system.stop().unwrap().success());
}
