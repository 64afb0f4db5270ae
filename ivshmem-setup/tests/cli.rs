//! The real `ivshmem-setup` binary on temporary files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use vgpu_ring::stub::StubRegisters;
use vgpu_ring::{Access, Region};

fn setup(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ivshmem-setup")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = setup(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = setup(args);
    assert!(!out.status.success(), "{args:?} should fail");
    // 1: a refused operation, 2: a usage error (clap); never a panic (101) or a signal.
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{args:?}: {:?} is not a clean error exit",
        out.status
    );
    String::from_utf8(out.stderr).unwrap()
}

fn config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "[regions]\ndir = \"{}\"\nsize = \"2M\"\n{extra}\n[pools.A]\n[pools.B]\npolicy = \"aging\"\n\
         [[vm]]\nid = 1\npool = \"A\"\npriority = \"low\"\n[[vm]]\nid = 2\npool = \"B\"\npriority = 2\n",
        dir.display()
    );
    let path = dir.join("vgpu.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn create_from_config_then_inspect_shows_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let out = ok(&["create", "--config", cfg.to_str().unwrap(), "--with-stubs"]);
    assert!(out.contains("vm 1:") && out.contains("pool A  priority 0 (low)"), "{out}");
    assert!(out.contains("vm 2:") && out.contains("pool B  priority 2 (high)"), "{out}");
    let region = dir.path().join("vgpu-vm2");
    let mode = std::fs::metadata(&region).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    assert_eq!(std::fs::metadata(&region).unwrap().len(), 2 << 20);

    let text = ok(&["inspect", region.to_str().unwrap()]);
    assert!(text.contains("slot 0: vm 2 pool B priority 2 (high)"), "{text}");
    assert!(text.contains("mediator: never attached"), "{text}");
    let layout =
        format!("{}.{}", vgpu_ring::layout::VERSION_MAJOR, vgpu_ring::layout::VERSION_MINOR);
    assert!(text.contains(&format!("layout {layout}, initialized")), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--json", region.to_str().unwrap()])).unwrap();
    assert_eq!(json["layout"], layout);
    assert_eq!(json["slots"][0]["vm_id"], 2);
    assert_eq!(json["slots"][0]["pool"], "B");
    assert_eq!(json["slots"][0]["request_ring"]["used"], 0);
    assert_eq!(json["ring_entries"], 256);
    // A mediator's session (heartbeat every 100 ms): both of its beats are shown.
    vgpu_ring::Region::open(&region, vgpu_ring::Access::ReadWrite)
        .unwrap()
        .begin_session(7, 1, 100)
        .unwrap();
    let text = ok(&["inspect", region.to_str().unwrap()]);
    assert!(
        text.contains("(every 100 ms; every 500 ms while a pool's VMs all sleep on doorbells)"),
        "{text}"
    );

    let stub = std::fs::read(dir.path().join("vgpu-vm1.stub")).unwrap();
    assert_eq!(
        StubRegisters::parse(&stub).unwrap(),
        StubRegisters {
            pool: vgpu_ring::PoolId::new(b'A').unwrap(),
            priority: vgpu_ring::Priority::LOW,
            vm_id: 1
        }
    );
}

#[test]
fn create_single_region_by_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one");
    let p = path.to_str().unwrap();
    ok(&["create", "--path", p, "--vm", "9", "--pool", "C", "--priority", "high", "--size", "2M"]);
    let region = Arc::new(Region::open(&path, Access::ReadOnly).unwrap());
    assert_eq!(
        region.slot(0).unwrap().identity(),
        vgpu_ring::SlotIdentity::new(
            9,
            vgpu_ring::PoolId::new(b'C').unwrap(),
            vgpu_ring::Priority::HIGH
        )
    );
    drop(region); // a mapped region is in use and would be refused below
    let create = |extra: &[&str]| {
        let mut args = vec!["create", "--path", p, "--vm", "9", "--pool", "C"];
        args.extend_from_slice(extra);
        fails(&args)
    };
    assert!(create(&["--priority", "7"]).contains("priority"));
    assert!(create(&["--priority", "1", "--size", "3M"]).contains("not a power of two"));
    assert!(create(&["--priority", "1", "--size", "64K"]).contains("too small"));
}

#[test]
fn create_refuses_a_region_in_use_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let cfg = cfg.to_str().unwrap();
    ok(&["create", "--config", cfg]);
    // Recreating an unused region is fine.
    ok(&["create", "--config", cfg]);
    // This test process maps VM 1's region, as QEMU or the mediator would.
    let mapped = Arc::new(Region::open(&dir.path().join("vgpu-vm1"), Access::ReadWrite).unwrap());
    let err = fails(&["create", "--config", cfg]);
    assert!(err.contains("in use") && err.contains(&std::process::id().to_string()), "{err}");
    ok(&["create", "--config", cfg, "--force"]);
    drop(mapped);
}

#[test]
fn config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("pool = \"B\"", "pool = \"Z\"", "vm[1].pool: unknown pool"),
        ("id = 2", "id = 1", "vm[1].id: duplicate VM id 1"),
        ("priority = 2", "priority = 5", "vm[1].priority"),
        ("size = \"2M\"", "size = \"3M\"", "regions.size: 3145728 is not a power of two"),
        ("size = \"2M\"", "size = \"16K\"", "regions.size: 16384 bytes is too small"),
        ("size = \"2M\"", "size = \"2M\"\nshade = 3", "unknown field `shade`"),
    ];
    for (from, to, want) in cases {
        let cfg = config(dir.path(), "");
        let text = std::fs::read_to_string(&cfg).unwrap().replacen(from, to, 1);
        std::fs::write(&cfg, text).unwrap();
        let err = fails(&["create", "--config", cfg.to_str().unwrap()]);
        assert!(err.contains(want), "want {want:?} in {err}");
    }
    let missing = dir.path().join("missing-dir");
    let cfg = config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&dir.path().display().to_string(), missing.to_str().unwrap());
    std::fs::write(&cfg, text).unwrap();
    assert!(fails(&["create", "--config", cfg.to_str().unwrap()]).contains("regions.dir"));
    assert!(
        fails(&["create", "--config", "/nonexistent/vgpu.toml"]).contains("/nonexistent/vgpu.toml")
    );
}

#[test]
fn inspect_rejects_what_is_not_a_region() {
    let dir = tempfile::tempdir().unwrap();
    let random = dir.path().join("random");
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    std::fs::write(&random, bytes).unwrap();
    let err = fails(&["inspect", random.to_str().unwrap()]);
    assert!(err.contains("not a vgpu region"), "{err}");
    let short = dir.path().join("short");
    std::fs::write(&short, b"tiny").unwrap();
    assert!(fails(&["inspect", short.to_str().unwrap()]).contains("too small"));
    assert!(
        fails(&["inspect", dir.path().join("none").to_str().unwrap()]).contains("No such file")
    );
    // Another layout version.
    let cfg = config(dir.path(), "");
    ok(&["create", "--config", cfg.to_str().unwrap()]);
    let region = dir.path().join("vgpu-vm1");
    let mut bytes = std::fs::read(&region).unwrap();
    bytes[8] = 9;
    std::fs::write(&region, bytes).unwrap();
    assert!(fails(&["inspect", region.to_str().unwrap()]).contains("version 9.0"));
}

#[test]
fn stub_writes_the_register_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stub.bin");
    ok(&["stub", "--vm", "100", "--pool", "A", "--priority", "2", "--out", out.to_str().unwrap()]);
    let image = std::fs::read(&out).unwrap();
    assert_eq!(image.len(), 4096);
    assert_eq!(
        StubRegisters::parse(&image).unwrap(),
        StubRegisters {
            pool: vgpu_ring::PoolId::new(b'A').unwrap(),
            priority: vgpu_ring::Priority::HIGH,
            vm_id: 100
        }
    );
    assert!(
        fails(&["stub", "--vm", "1", "--pool", "AB", "--priority", "2", "--out", "/dev/null"])
            .contains("pool")
    );
}

#[test]
fn qemu_args_and_libvirt_xml_use_the_real_size() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let cfg = cfg.to_str().unwrap();
    let region = dir.path().join("vgpu-vm1");
    let args = ok(&["qemu-args", "--config", cfg, "--vm", "1"]);
    assert_eq!(
        args.trim(),
        format!(
            "-object memory-backend-file,id=vgpu-vm1,size=2M,share=on,mem-path={} -device ivshmem-plain,memdev=vgpu-vm1",
            region.display()
        )
    );
    // A region created with another size: the file's size wins.
    ok(&[
        "create",
        "--path",
        region.to_str().unwrap(),
        "--vm",
        "1",
        "--pool",
        "A",
        "--priority",
        "0",
        "--size",
        "8M",
    ]);
    assert!(ok(&["qemu-args", "--config", cfg, "--vm", "1"]).contains("size=8M"));
    let xml = setup(&["libvirt-xml", "--config", cfg, "--vm", "1"]);
    let stdout = String::from_utf8(xml.stdout).unwrap();
    assert!(stdout.contains("<shmem name='vgpu-vm1'>"), "{stdout}");
    assert!(
        stdout.contains("<model type='ivshmem-plain'/>")
            && stdout.contains("<size unit='M'>8</size>")
    );
    assert!(String::from_utf8(xml.stderr).unwrap().contains("libvirt maps /dev/shm/vgpu-vm1"));
    assert!(fails(&["qemu-args", "--config", cfg, "--vm", "77"]).contains("no VM with id 77"));
}

#[test]
fn doorbell_vms_get_the_doorbell_forms() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "doorbell = true");
    let cfg = cfg.to_str().unwrap();
    let socket = dir.path().join("vgpu-vm1.sock");
    let args = ok(&["qemu-args", "--config", cfg, "--vm", "1"]);
    assert_eq!(
        args.trim(),
        format!(
            "-chardev socket,path={},id=vgpu-vm1 -device ivshmem-doorbell,chardev=vgpu-vm1,vectors=1",
            socket.display()
        )
    );
    let xml =
        String::from_utf8(setup(&["libvirt-xml", "--config", cfg, "--vm", "1"]).stdout).unwrap();
    assert!(xml.contains("<model type='ivshmem-doorbell'/>"), "{xml}");
    assert!(xml.contains(&format!("<server path='{}'/>", socket.display())), "{xml}");
    assert!(xml.contains("<msi vectors='1' ioeventfd='on'/>"), "{xml}");
    // `serve` without a doorbell VM has nothing to hold.
    let plain = config(dir.path(), "");
    assert!(
        fails(&["serve", "--config", plain.to_str().unwrap()]).contains("no VM has a doorbell")
    );
}

/// QEMU's own argument parser accepts what `qemu-args` prints: QEMU starts with the
/// device, paused, and quits when told to on its monitor. The doorbell form connects to
/// the holder (`serve`), which must answer before QEMU creates the device.
#[test]
#[ignore = "needs qemu-system-x86_64 (scripts/test-all.sh runs it when installed)"]
fn qemu_accepts_the_printed_arguments() {
    let qemu = which("qemu-system-x86_64").expect("qemu-system-x86_64 on the PATH");
    for extra in ["", "doorbell = true"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), extra);
        ok(&["create", "--config", cfg.to_str().unwrap()]);
        let holder = (!extra.is_empty()).then(|| serve(&cfg, &dir.path().join("vgpu-vm1.sock")));
        let args = ok(&["qemu-args", "--config", cfg.to_str().unwrap(), "--vm", "1"]);
        let mut child = Command::new(&qemu)
            .args([
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-nodefaults",
                "-display",
                "none",
                "-S",
                "-monitor",
                "stdio",
            ])
            .args(args.split_whitespace())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"info pci\nquit\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "qemu refused {args}: {stderr}");
        assert!(
            stdout.contains("1af4") && stdout.contains("1110"),
            "no ivshmem device in {stdout}"
        );
        if let Some(mut holder) = holder {
            holder.kill().unwrap();
            holder.wait().unwrap();
        }
    }
}

/// `serve` sleeps until a connection or a signal (its thread does not wake over a
/// second of nothing; it polled a stop flag every 200 ms) and SIGTERM stops it cleanly.
#[test]
fn serve_sleeps_until_a_signal_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "doorbell = true");
    ok(&["create", "--config", cfg.to_str().unwrap()]);
    let mut holder = serve(&cfg, &dir.path().join("vgpu-vm1.sock"));
    let sleeps = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", holder.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .unwrap()
    };
    let before = sleeps();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let woke = sleeps() - before;
    assert!(woke <= 1, "the holder woke {woke} times in a second of nothing");
    let pid = nix::unistd::Pid::from_raw(holder.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = holder.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            holder.kill().unwrap();
            panic!("serve did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
}

/// Start `ivshmem-setup serve` for `cfg` and wait until it listens on `socket`.
#[allow(clippy::zombie_processes, reason = "the caller kills and waits for it")]
fn serve(cfg: &Path, socket: &Path) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_ivshmem-setup"))
        .args(["serve", "--config"])
        .arg(cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if socket.exists() {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("serve never bound {}", socket.display());
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
        .ok_or(())
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["create", "stub", "inspect", "qemu-args", "libvirt-xml", "serve"] {
        assert!(ok(&[sub, "--help"]).contains("Usage"), "{sub}");
    }
}

/// `inspect --watch` redraws the live view once a second until interrupted.
#[test]
fn inspect_watch_refreshes_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    ok(&["create", "--config", cfg.to_str().unwrap()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ivshmem-setup"))
        .args(["inspect", "--watch"])
        .arg(dir.path().join("vgpu-vm1"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read until two frames have been drawn (the watchdog is the read's own EOF if the
    // process died).
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("\x1b[2J\x1b[H").count() < 2 {
        use std::io::Read;
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "inspect --watch exited: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(seen.matches("slot 0: vm 1 pool A priority 0 (low)").count(), 2, "{seen}");
}

/// A filesystem too small for the regions: `create` fails at once, naming the bytes
/// needed and free, and leaves no file behind (no temporary, no half region, no SIGBUS).
#[test]
#[ignore = "needs root to mount a tmpfs (scripts/test-all.sh runs it as root)"]
fn create_on_a_full_tmpfs_fails_cleanly_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = mount_small_tmpfs(dir.path());
    let cfg = config(&mnt, "");
    let out = setup(&["create", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name()).collect();
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs 2097152 bytes") && err.contains("free"), "{err}");
    assert_eq!(left, ["vgpu.toml"], "left behind: {left:?}");
}

/// A 1 MiB tmpfs mounted at `DIR/shm` (needs root; the caller unmounts it).
fn mount_small_tmpfs(dir: &Path) -> PathBuf {
    let mnt = dir.join("shm");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1M", "tmpfs"])
        .arg(&mnt)
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(mounted, "could not mount a 1 MiB tmpfs (needs root)");
    mnt
}

/// `create ... | head -1`: the command goes on creating every region, quietly.
#[test]
fn a_closed_stdout_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    // A pipe whose reading end is closed before the command starts: every write to
    // stdout fails with EPIPE, as after `head` exits.
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end);
    let out = Command::new(env!("CARGO_BIN_EXE_ivshmem-setup"))
        .args(["create", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::from(write_end))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    for vm in [1, 2] {
        Region::open(&dir.path().join(format!("vgpu-vm{vm}")), Access::ReadOnly).unwrap();
    }
}

/// Two VMs whose regions are one file reached by two spellings are refused, with the
/// file and line.
#[test]
fn one_region_file_reached_through_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("alias")).unwrap();
    let cfg = config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg).unwrap()
        + &format!("region = \"{}/alias/vgpu-vm1\"\n", dir.path().display());
    std::fs::write(&cfg, text).unwrap();
    let err = fails(&["create", "--config", cfg.to_str().unwrap()]);
    assert!(
        err.contains("vgpu.toml:") && err.contains("is the same file as vm 1's region"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "printed once: {err}");
}

/// Numbers at the edges of their types: a clear refusal (exit 1, or 2 for what the
/// argument parser rejects), never a panic, and nothing left behind.
#[test]
fn arguments_at_their_limits_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let path = path.to_str().unwrap();
    let base = ["create", "--path", path, "--vm", "1", "--pool", "A", "--priority", "1"];
    let cases: &[(&[&str], &str)] = &[
        (&["--size", "0"], "power of two"),
        (&["--size", "18446744073709551615"], "power of two"),
        (&["--size", "18446744073709551616"], "not a size"),
        (&["--size", "16E"], "not a size"),
        (&["--ring-entries", "0"], "ring entries 0"),
        (&["--ring-entries", "4294967295"], "ring entries 4294967295"),
        (&["--arena-size", "0"], "arena size 0"),
        (&["--arena-size", "4294967296"], "--arena-size too large"),
        (&["--arena-size", "18446744073709551615"], "--arena-size too large"),
        (&["--vm", "4294967296"], "invalid value"),
    ];
    for (extra, expected) in cases {
        let mut args: Vec<&str> = base.to_vec();
        // A later --vm overrides nothing: clap refuses a repeated flag, so replace it.
        if extra[0] == "--vm" {
            args[4] = extra[1];
        } else {
            args.extend_from_slice(extra);
        }
        let err = fails(&args);
        assert!(err.contains(expected), "{extra:?}: expected {expected:?} in {err}");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "{extra:?} left a file");
    }
}

/// `doctor --json` on `cfg` with `extra` arguments: exit code and findings.
fn doctor(cfg: &Path, extra: &[&str]) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut args = vec!["doctor", "--json", "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = setup(&args);
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), findings)
}

/// The findings of `check` with `severity`.
fn with<'a>(
    findings: &'a [serde_json::Value],
    check: &str,
    severity: &str,
) -> Vec<&'a serde_json::Value> {
    findings.iter().filter(|f| f["check"] == check && f["severity"] == severity).collect()
}

/// A good setup passes (warnings allowed); a missing directory, a missing region, a
/// region the QEMU user cannot open, logind's RemoveIPC with user-owned regions and an
/// AppArmor profile without the directory each fail with a fix.
#[test]
fn doctor_passes_a_good_setup_and_explains_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let root = ["--host-root", host.path().to_str().unwrap()];
    let cfg = config(dir.path(), "");
    ok(&["create", "--config", cfg.to_str().unwrap()]);
    let (code, findings) = doctor(&cfg, &root);
    assert_eq!(code, Some(0), "{findings:#?}");
    assert!(findings.iter().all(|f| f["severity"] != "fail"), "{findings:#?}");
    assert_eq!(with(&findings, "region file", "fail").len(), 0);
    // Never served: a warning, not a failure.
    assert_eq!(with(&findings, "mediator", "warn").len(), 2, "{findings:#?}");

    // QEMU runs as nobody: it owns region 1 and may open it, not region 2 (0600, root's).
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid.as_raw();
    std::os::unix::fs::chown(dir.path().join("vgpu-vm1"), Some(nobody), None).unwrap();
    let region = dir.path().join("vgpu-vm2");
    std::fs::set_permissions(&region, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, findings) = doctor(&cfg, &[&root[..], &["--qemu-user", "nobody"]].concat());
    assert_eq!(code, Some(1));
    let bad = with(&findings, "region file", "fail");
    assert_eq!(bad.len(), 1, "{findings:#?}");
    assert!(bad[0]["message"].as_str().unwrap().contains("vm 2: QEMU's user nobody cannot"));
    assert!(bad[0]["fix"].as_str().unwrap().contains("[regions] group"));
    std::os::unix::fs::chown(dir.path().join("vgpu-vm1"), Some(0), None).unwrap();

    // A missing region.
    std::fs::remove_file(&region).unwrap();
    let (code, findings) = doctor(&cfg, &root);
    assert_eq!(code, Some(1));
    assert!(
        with(&findings, "region file", "fail")[0]["fix"]
            .as_str()
            .unwrap()
            .starts_with("ivshmem-setup create")
    );
    ok(&["create", "--config", cfg.to_str().unwrap()]);

    // logind removes a regular user's /dev/shm files at logout.
    std::os::unix::fs::chown(&region, Some(1000), None).unwrap();
    std::fs::create_dir_all(host.path().join("etc/systemd")).unwrap();
    std::fs::write(host.path().join("etc/systemd/logind.conf"), "[Login]\nRemoveIPC=yes\n")
        .unwrap();
    let (code, findings) = doctor(&cfg, &root);
    assert_eq!(code, Some(1));
    assert_eq!(with(&findings, "logind RemoveIPC", "fail").len(), 1, "{findings:#?}");
    std::fs::write(host.path().join("etc/systemd/logind.conf"), "[Login]\nRemoveIPC=no\n").unwrap();
    assert_eq!(doctor(&cfg, &root).0, Some(0));

    // AppArmor confines libvirt's QEMU: the directory needs a rule.
    std::fs::create_dir_all(host.path().join("sys/module/apparmor/parameters")).unwrap();
    std::fs::write(host.path().join("sys/module/apparmor/parameters/enabled"), "Y\n").unwrap();
    let abstractions = host.path().join("etc/apparmor.d/abstractions");
    std::fs::create_dir_all(&abstractions).unwrap();
    std::fs::write(abstractions.join("libvirt-qemu"), "  /dev/shm/spice.* rw,\n").unwrap();
    let (code, findings) = doctor(&cfg, &root);
    assert_eq!(code, Some(1));
    let denied = with(&findings, "AppArmor", "fail");
    assert!(denied[0]["fix"].as_str().unwrap().contains("local/abstractions/libvirt-qemu"));
    let local = host.path().join("etc/apparmor.d/local/abstractions");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("libvirt-qemu"), format!("{}/vgpu-vm* rw,\n", dir.path().display()))
        .unwrap();
    assert_eq!(doctor(&cfg, &root).0, Some(0));

    // A missing region directory.
    let gone = config(dir.path(), "").to_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&gone)
        .unwrap()
        .replace(&format!("dir = \"{}\"", dir.path().display()), "dir = \"/nonexistent/vgpu\"");
    std::fs::write(&gone, text).unwrap();
    let (code, findings) = doctor(Path::new(&gone), &root);
    assert_eq!(code, Some(1));
    assert!(
        with(&findings, "region directory", "fail")[0]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/vgpu does not exist")
    );
    // The text form says the same, with the fix.
    let out = setup(&["doctor", "--config", &gone, "--host-root", host.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL region directory: /nonexistent/vgpu does not exist"), "{text}");
    assert!(text.contains("     fix: create it"), "{text}");
}

/// A tmpfs too small for the regions: doctor says how much is missing.
#[test]
#[ignore = "needs root to mount a tmpfs (scripts/test-all.sh runs it as root)"]
fn doctor_finds_a_too_small_tmpfs() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = mount_small_tmpfs(dir.path());
    let cfg = config(&mnt, "");
    let (code, findings) = doctor(&cfg, &[]);
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(code, Some(1));
    let room = with(&findings, "room", "fail");
    assert!(
        room[0]["message"].as_str().unwrap().contains("the regions need 4096 KiB more"),
        "{room:?}"
    );
    assert_eq!(with(&findings, "region directory", "ok").len(), 1, "tmpfs: {findings:#?}");
}

/// A CUDA pool needs its GPU's device node and the NVIDIA driver's library: without
/// them doctor fails (a warning where the pool may fall back to the CPU), with them it
/// says where it found them.
#[test]
fn doctor_checks_a_cuda_pools_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let root = ["--host-root", host.path().to_str().unwrap()];
    let gpu = |fallback: &str| {
        let cfg =
            config(dir.path(), &format!("[pools.G]\nbackend = \"cuda\"\ndevice = 1\n{fallback}"));
        ok(&["create", "--config", cfg.to_str().unwrap()]);
        let (_, findings) = doctor(&cfg, &root);
        findings.into_iter().filter(|f| f["check"] == "GPU").collect::<Vec<_>>()
    };
    let found = gpu("");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["severity"], "fail");
    assert!(found[0]["message"].as_str().unwrap().contains("libcuda.so.1"), "{found:#?}");
    assert!(found[0]["fix"].as_str().unwrap().contains("fallback = \"cpu\""), "{found:#?}");
    assert_eq!(gpu("fallback = \"cpu\"")[0]["severity"], "warn");

    // The driver's library in a directory of ld.so.conf.d, but no device node yet.
    std::fs::create_dir_all(host.path().join("etc/ld.so.conf.d")).unwrap();
    std::fs::write(host.path().join("etc/ld.so.conf.d/nvidia.conf"), "/opt/nvidia/lib\n").unwrap();
    std::fs::create_dir_all(host.path().join("opt/nvidia/lib")).unwrap();
    std::fs::write(host.path().join("opt/nvidia/lib/libcuda.so.1"), b"").unwrap();
    let found = gpu("");
    assert_eq!(found[0]["severity"], "fail");
    assert!(found[0]["message"].as_str().unwrap().contains("no /dev/nvidia1"), "{found:#?}");
    std::fs::create_dir_all(host.path().join("dev")).unwrap();
    for node in ["nvidiactl", "nvidia1"] {
        std::fs::write(host.path().join("dev").join(node), b"").unwrap();
    }
    let found = gpu("");
    assert_eq!(found[0]["severity"], "ok", "{found:#?}");
    assert!(found[0]["message"].as_str().unwrap().contains("/opt/nvidia/lib/libcuda.so.1"));
}
