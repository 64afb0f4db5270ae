//! A real Linux guest under QEMU (TCG), attached with the arguments `ivshmem-setup
//! qemu-args` prints for a doorbell VM: the guest's `vgpu-client` finds the ivshmem
//! device in sysfs, maps BAR 2 (the region) and rings BAR 0 (the doorbell), and a
//! mediator that sleeps between requests serves it.
//!
//! The guest is a Debian kernel and an initramfs with busybox, a static `vgpu-client`
//! and `tests/guest/init`, built by `scripts/guest-image.sh`; `VGPU_GUEST_IMAGE` names
//! its directory. `scripts/test-all.sh` builds it and runs this test where QEMU is
//! installed, and says it skipped it where not.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vgpu_tests::system::{Binaries, Launcher, RegionSpec, System, vm};

/// The heartbeat is far longer than the guest's 2 s timeout: a request the doorbell did
/// not wake the mediator for times out.
const SLEEPY: &str = "heartbeat_interval_ms = 10000\nidle_spin_us = 100";

/// The steps `tests/guest/init` runs, in order.
const STEPS: [&str; 3] = ["first-request", "after-idle", "pipelined"];

/// Booting under TCG takes seconds on a quiet machine; a loaded one gets room.
const BOOT_AND_RUN: Duration = Duration::from_secs(300);

#[test]
#[ignore = "needs qemu-system-x86_64 and a guest image (scripts/guest-image.sh); \
            scripts/test-all.sh runs it where both are there"]
fn a_qemu_guest_is_served_through_its_doorbell_after_idle() {
    let image = PathBuf::from(
        std::env::var_os("VGPU_GUEST_IMAGE")
            .expect("VGPU_GUEST_IMAGE: the directory scripts/guest-image.sh builds"),
    );
    let mut system = System::start_with(
        Launcher::Binaries(Binaries::locate()),
        RegionSpec { doorbell: true, ..RegionSpec::SMALL },
        &[('A', "")],
        &[vm(1, 'A', 1)],
        SLEEPY,
    )
    .unwrap();
    let args = Command::new(&system.binaries().setup)
        .args(["qemu-args", "--config"])
        .arg(system.config())
        .args(["--vm", "1"])
        .output()
        .unwrap();
    assert!(args.status.success(), "{}", String::from_utf8_lossy(&args.stderr));
    let args = String::from_utf8(args.stdout).unwrap();
    assert!(args.contains("ivshmem-doorbell"), "{args}");

    let console = system.dir().join("console.log");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "256M", "-smp", "1", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initrd.gz"))
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + BOOT_AND_RUN;
    let status = loop {
        if let Some(status) = qemu.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            qemu.kill().unwrap();
            qemu.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    qemu.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let output = std::fs::read_to_string(&console).unwrap();
    let report =
        format!("QEMU {status:?}\n{stderr}\nconsole:\n{output}\nmediator:\n{}", system.log());
    assert!(status.is_some_and(|s| s.success()), "QEMU did not finish: {report}");

    for step in STEPS {
        assert!(output.contains(&format!("vgpu-guest: {step} exit 0")), "step {step}: {report}");
    }
    assert!(output.contains("vgpu-guest: done"), "{report}");
    assert!(output.contains("5 round trips: min"), "{report}");
    assert!(output.contains("200 round trips: min"), "{report}");
    for line in output.lines().filter(|l| l.contains("round trips")) {
        eprintln!("guest: {}", line.trim());
    }
    assert!(system.log().contains("doorbells of 1 VMs received"), "{report}");
    assert!(system.stop().unwrap().success());
}
