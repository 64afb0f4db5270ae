//! `doctor`: a pre-flight check of a host for the known ivshmem pitfalls, each finding
//! with its fix. Exit status 1 when something would break a VM.

use anyhow::Result;
use nix::sys::statfs::{HUGETLBFS_MAGIC, TMPFS_MAGIC};
use serde::Serialize;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use vgpu_config::{Backend, Config};
use vgpu_ring::{Access, Region};

/// Arguments of `doctor`.
#[derive(clap::Args)]
pub(crate) struct DoctorArgs {
    /// The configuration file (TOML, see docs/CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The user QEMU runs as (default: `user` in /etc/libvirt/qemu.conf, if set).
    #[arg(long, value_name = "USER")]
    qemu_user: Option<String>,
    /// The QEMU binary to ask for its devices.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Root of the host's /etc and /sys (for tests).
    #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
    host_root: PathBuf,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Severity {
    Ok,
    /// Works, but not as it should (slow, fragile, or not checkable here).
    Warn,
    /// A VM would not work.
    Fail,
}

#[derive(Debug, Serialize)]
struct Finding {
    check: &'static str,
    severity: Severity,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(
        &mut self,
        check: &'static str,
        severity: Severity,
        message: String,
        fix: Option<String>,
    ) {
        self.0.push(Finding { check, severity, message, fix });
    }

    fn ok(&mut self, check: &'static str, message: String) {
        self.add(check, Severity::Ok, message, None);
    }

    fn warn(&mut self, check: &'static str, message: String, fix: impl Into<String>) {
        self.add(check, Severity::Warn, message, Some(fix.into()));
    }

    fn fail(&mut self, check: &'static str, message: String, fix: impl Into<String>) {
        self.add(check, Severity::Fail, message, Some(fix.into()));
    }
}

/// The host's files, under `root` (`/` but in tests).
struct Host<'a> {
    root: &'a Path,
}

impl Host<'_> {
    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    fn read(&self, absolute: &str) -> Option<String> {
        std::fs::read_to_string(self.path(absolute)).ok()
    }

    /// The last `key=value` setting of `key` in an INI-style file and its drop-ins.
    fn setting(&self, file: &str, dropins: &str, key: &str) -> Option<String> {
        let mut files = vec![self.path(file)];
        if let Ok(dir) = std::fs::read_dir(self.path(dropins)) {
            let mut extra: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
            extra.sort();
            files.extend(extra);
        }
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|line| {
                        let (k, v) = line.trim().split_once('=')?;
                        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
                    })
                    .collect::<Vec<_>>()
            })
            .next_back()
    }
}

pub(crate) fn run(args: &DoctorArgs) -> Result<bool> {
    let config = Config::load(&args.config)?;
    let host = Host { root: &args.host_root };
    let mut findings = Findings::default();
    region_dir(&config, &host, &mut findings);
    regions(&config, args, &host, &mut findings);
    remove_ipc(&config, &host, &mut findings);
    confinement(&config, &host, &mut findings);
    qemu_devices(&config, &args.qemu, &mut findings);
    gpus(&config, &host, &mut findings);
    mediator(&config, &mut findings);
    let broken = findings.0.iter().any(|f| f.severity == Severity::Fail);
    if args.json {
        let _ = say!("{}\n", serde_json::to_string_pretty(&findings.0)?);
    } else {
        for f in &findings.0 {
            let mark = match f.severity {
                Severity::Ok => "ok  ",
                Severity::Warn => "WARN",
                Severity::Fail => "FAIL",
            };
            let _ = say!("{mark} {}: {}\n", f.check, f.message);
            if let Some(fix) = &f.fix {
                let _ = say!("     fix: {fix}\n");
            }
        }
        let (warn, fail) = findings.0.iter().fold((0, 0), |(w, f), x| match x.severity {
            Severity::Ok => (w, f),
            Severity::Warn => (w + 1, f),
            Severity::Fail => (w, f + 1),
        });
        let _ = say!("{fail} problems that would break a VM, {warn} warnings\n");
    }
    Ok(!broken)
}

/// The region directory: exists, is memory (tmpfs or hugetlbfs), has room.
fn region_dir(config: &Config, host: &Host<'_>, out: &mut Findings) {
    let dir = &config.region_dir;
    if !dir.is_dir() {
        out.fail(
            "region directory",
            format!("{} does not exist", dir.display()),
            format!(
                "create it (mkdir -m 2770 {0}; at every boot: a tmpfiles.d entry, see examples/vgpu-tmpfiles.conf)",
                dir.display()
            ),
        );
        return;
    }
    let fs = match nix::sys::statfs::statfs(dir) {
        Ok(fs) => fs,
        Err(e) => {
            out.fail(
                "region directory",
                format!("statfs {}: {e}", dir.display()),
                "check the path",
            );
            return;
        }
    };
    let kind = fs.filesystem_type();
    if kind == TMPFS_MAGIC {
        out.ok("region directory", format!("{} is on tmpfs", dir.display()));
    } else if kind == HUGETLBFS_MAGIC {
        out.ok("region directory", format!("{} is on hugetlbfs", dir.display()));
        hugepages(config, host, fs.optimal_transfer_size() as u64, out);
    } else {
        out.warn(
            "region directory",
            format!("{} is not on tmpfs or hugetlbfs: regions would be disk-backed", dir.display()),
            "use a directory under /dev/shm or a hugetlbfs mount",
        );
    }
    // Room: what the missing regions need, against what the file system has free.
    let missing: u64 = config
        .vms
        .iter()
        .map(|vm| {
            let have = std::fs::metadata(&vm.region).map_or(0, |m| m.blocks() * 512);
            config.region_size.saturating_sub(have)
        })
        .sum();
    match nix::sys::statvfs::statvfs(dir) {
        Ok(v) => {
            let free = v.blocks_available() * v.fragment_size();
            if free >= missing {
                out.ok(
                    "room",
                    format!(
                        "{} MiB free, {} MiB more needed",
                        free >> 20,
                        missing.div_ceil(1 << 20)
                    ),
                );
            } else {
                out.fail(
                    "room",
                    format!(
                        "{} has {} KiB free but the regions need {} KiB more",
                        dir.display(),
                        free >> 10,
                        missing.div_ceil(1024)
                    ),
                    "enlarge the file system (e.g. mount -o remount,size=... /dev/shm) or make regions smaller",
                );
            }
        }
        Err(e) => out.warn("room", format!("statvfs {}: {e}", dir.display()), "check the path"),
    }
}

/// Free huge pages for the regions on a hugetlbfs of page size `page`.
fn hugepages(config: &Config, host: &Host<'_>, page: u64, out: &mut Findings) {
    if page == 0 || !config.region_size.is_multiple_of(page) {
        out.fail(
            "hugepages",
            format!(
                "region size {} is not a multiple of the huge page size {page}",
                config.region_size
            ),
            "set [regions] size to a multiple of the huge page size",
        );
        return;
    }
    let free = host
        .read(&format!("/sys/kernel/mm/hugepages/hugepages-{}kB/free_hugepages", page >> 10))
        .and_then(|t| t.trim().parse::<u64>().ok());
    let needed: u64 =
        config.vms.iter().filter(|vm| !vm.region.exists()).map(|_| config.region_size / page).sum();
    match free {
        Some(free) if free >= needed => {
            out.ok("hugepages", format!("{free} free huge pages, {needed} needed"));
        }
        Some(free) => out.fail(
            "hugepages",
            format!("{free} free huge pages of {} KiB, the regions need {needed}", page >> 10),
            format!(
                "reserve more: echo N > /sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages",
                page >> 10
            ),
        ),
        None => out.warn(
            "hugepages",
            format!("no count of free {} KiB pages in sysfs", page >> 10),
            "check /sys/kernel/mm/hugepages",
        ),
    }
}

/// The user QEMU runs as: the argument, or libvirt's setting.
fn qemu_user(args: &DoctorArgs, host: &Host<'_>) -> Option<nix::unistd::User> {
    let name = args
        .qemu_user
        .clone()
        .or_else(|| host.setting("/etc/libvirt/qemu.conf", "/etc/libvirt/qemu.conf.d", "user"))?;
    nix::unistd::User::from_name(&name).ok().flatten()
}

/// Each region exists and the QEMU user (or the configured group) may read and write it.
fn regions(config: &Config, args: &DoctorArgs, host: &Host<'_>, out: &mut Findings) {
    let user = qemu_user(args, host);
    let group = config.group.as_deref().map(|name| (name, nix::unistd::Group::from_name(name)));
    if let Some((name, Ok(None) | Err(_))) = &group {
        out.fail(
            "group",
            format!("group {name:?} does not exist"),
            "create it or fix [regions] group",
        );
    }
    for vm in &config.vms {
        let check = "region file";
        let path = vm.region.display();
        let meta = match std::fs::metadata(&vm.region) {
            Ok(meta) => meta,
            Err(_) => {
                out.fail(
                    check,
                    format!("vm {}: {path} does not exist", vm.id),
                    format!("ivshmem-setup create --config {}", args.config.display()),
                );
                continue;
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if meta.len() != config.region_size {
            out.fail(
                check,
                format!(
                    "vm {}: {path} is {} bytes, the configuration says {}",
                    vm.id,
                    meta.len(),
                    config.region_size
                ),
                format!(
                    "ivshmem-setup create --config {} (with the VM stopped)",
                    args.config.display()
                ),
            );
            continue;
        }
        if let Some((name, Ok(Some(g)))) = &group
            && (meta.gid() != g.gid.as_raw() || mode & 0o060 != 0o060)
        {
            out.fail(
                check,
                format!("vm {}: {path} is mode {mode:o}, group {}; the group {name} cannot read and write it", vm.id, meta.gid()),
                format!("chgrp {name} {path} && chmod 0660 {path} (or ivshmem-setup create again)"),
            );
            continue;
        }
        if let Some(user) = &user {
            let in_group = meta.gid() == user.gid.as_raw()
                || nix::unistd::Group::from_gid(meta.gid().into())
                    .ok()
                    .flatten()
                    .is_some_and(|g| g.mem.contains(&user.name));
            let can = (meta.uid() == user.uid.as_raw() && mode & 0o600 == 0o600)
                || (in_group && mode & 0o060 == 0o060)
                || mode & 0o006 == 0o006
                || user.uid.is_root();
            if !can {
                out.fail(
                    check,
                    format!("vm {}: QEMU's user {} cannot read and write {path} (mode {mode:o})", vm.id, user.name),
                    "set [regions] group to a group of that user and run ivshmem-setup create again",
                );
                continue;
            }
        } else if group.is_none() && meta.uid() == 0 {
            out.warn(
                check,
                format!("vm {}: {path} belongs to root and no [regions] group is set", vm.id),
                "if QEMU does not run as root, set [regions] group to its group",
            );
            continue;
        }
        out.ok(check, format!("vm {}: {path}, mode {mode:o}", vm.id));
    }
}

/// logind's `RemoveIPC=yes` (the default) deletes a user's /dev/shm files when that
/// user's last session ends: fatal for regions owned by a regular user.
fn remove_ipc(config: &Config, host: &Host<'_>, out: &mut Findings) {
    let setting =
        host.setting("/etc/systemd/logind.conf", "/etc/systemd/logind.conf.d", "RemoveIPC");
    let removes = setting.as_deref().is_none_or(|v| matches!(v, "yes" | "true" | "1" | "on"));
    // logind spares system users (uid below 1000 on Debian-like systems).
    let regular: Vec<u32> = config
        .vms
        .iter()
        .filter_map(|vm| std::fs::metadata(&vm.region).ok())
        .map(|m| m.uid())
        .filter(|&uid| uid >= 1000)
        .collect();
    if removes && !regular.is_empty() {
        out.fail(
            "logind RemoveIPC",
            format!("RemoveIPC=yes and regions owned by uid {}: logind deletes them when that user logs out", regular[0]),
            "set RemoveIPC=no in /etc/systemd/logind.conf, or let root or a system user own the regions",
        );
    } else {
        out.ok(
            "logind RemoveIPC",
            format!(
                "RemoveIPC={}; regions owned by system users",
                setting.as_deref().unwrap_or("yes (default)")
            ),
        );
    }
}

/// AppArmor or SELinux confinement of QEMU that would deny the region directory.
fn confinement(config: &Config, host: &Host<'_>, out: &mut Findings) {
    let dir = config.region_dir.display().to_string();
    let apparmor =
        host.read("/sys/module/apparmor/parameters/enabled").is_some_and(|t| t.trim() == "Y");
    let abstraction = host.read("/etc/apparmor.d/abstractions/libvirt-qemu");
    if apparmor && let Some(text) = abstraction {
        let local =
            host.read("/etc/apparmor.d/local/abstractions/libvirt-qemu").unwrap_or_default();
        // A rule `PATH PERMS,` covers a region when PATH up to its first glob character
        // is a prefix of the region's path and PERMS has r and w.
        let prefixes: Vec<&str> = text
            .lines()
            .chain(local.lines())
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let (path, perms) = (words.next()?, words.next()?);
                (path.starts_with('/') && perms.contains('r') && perms.contains('w'))
                    .then(|| path.split(['*', '{', '[', '?']).next().unwrap_or(path))
            })
            .collect();
        let allowed = config.vms.iter().all(|vm| {
            let region = vm.region.to_string_lossy();
            prefixes.iter().any(|prefix| region.starts_with(prefix))
        });
        if allowed {
            out.ok("AppArmor", format!("libvirt's QEMU profile allows {dir}"));
        } else {
            out.fail(
                "AppArmor",
                format!("AppArmor confines libvirt's QEMU and no rule of its profile allows {dir}"),
                format!("add `{dir}/vgpu-vm* rw,` to /etc/apparmor.d/local/abstractions/libvirt-qemu and reload AppArmor"),
            );
        }
    } else {
        out.ok("AppArmor", "no AppArmor profile for libvirt's QEMU".to_owned());
    }
    if host.read("/sys/fs/selinux/enforce").is_some_and(|t| t.trim() == "1") {
        out.warn(
            "SELinux",
            format!("SELinux enforces: QEMU (svirt) may be denied {dir}"),
            format!("semanage fcontext -a -t svirt_tmpfs_t '{dir}(/.*)?' && restorecon -R {dir}"),
        );
    } else {
        out.ok("SELinux", "not enforcing".to_owned());
    }
}

/// The installed QEMU knows the devices the configuration needs.
fn qemu_devices(config: &Config, qemu: &Path, out: &mut Findings) {
    let output = match Command::new(qemu).args(["-device", "help"]).output() {
        Ok(output) => output,
        Err(e) => {
            out.warn(
                "QEMU",
                format!("{} cannot be run here ({e}); its devices are not checked", qemu.display()),
                "run doctor on the host where QEMU runs, or pass --qemu PATH",
            );
            return;
        }
    };
    let devices = String::from_utf8_lossy(&output.stdout);
    let mut wanted = vec!["ivshmem-plain"];
    if config.vms.iter().any(|vm| vm.doorbell.is_some()) {
        wanted.push("ivshmem-doorbell");
    }
    for device in wanted {
        if devices.contains(&format!("\"{device}\"")) {
            out.ok("QEMU", format!("{} has {device}", qemu.display()));
        } else {
            out.fail(
                "QEMU",
                format!("{} has no {device} device", qemu.display()),
                "install a QEMU built with ivshmem (Debian: qemu-system-x86)",
            );
        }
    }
}

/// The directories the dynamic linker searches for a library: the usual ones and those
/// listed in /etc/ld.so.conf and its drop-ins.
fn library_dirs(host: &Host<'_>) -> Vec<String> {
    let mut dirs: Vec<String> = [
        "/lib",
        "/usr/lib",
        "/lib64",
        "/usr/lib64",
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ]
    .map(str::to_owned)
    .into();
    let mut files = vec![host.path("/etc/ld.so.conf")];
    if let Ok(dropins) = std::fs::read_dir(host.path("/etc/ld.so.conf.d")) {
        files.extend(dropins.flatten().map(|e| e.path()));
    }
    for text in files.iter().filter_map(|f| std::fs::read_to_string(f).ok()) {
        dirs.extend(text.lines().map(str::trim).filter(|l| l.starts_with('/')).map(str::to_owned));
    }
    dirs
}

/// Each CUDA pool's GPU is there: its device node and the NVIDIA driver's library
/// (`libcuda.so.1`; the kernels ship as PTX, so nothing else is needed). A failure
/// where the pool may fall back to the CPU is a warning.
fn gpus(config: &Config, host: &Host<'_>, out: &mut Findings) {
    let check = "GPU";
    let library = library_dirs(host)
        .into_iter()
        .map(|dir| format!("{dir}/libcuda.so.1"))
        .find(|path| host.path(path).exists());
    for pool in config.pools.values() {
        let Backend::Cuda { device, fallback_to_cpu } = pool.backend else { continue };
        let node = format!("/dev/nvidia{device}");
        let (message, fix) = match &library {
            None => (
                format!(
                    "pool {}: backend cuda, but the NVIDIA driver's libcuda.so.1 is not in the library path",
                    pool.name
                ),
                "install the NVIDIA driver (its user-space libraries too)",
            ),
            Some(_) if !host.path(&node).exists() || !host.path("/dev/nvidiactl").exists() => (
                format!(
                    "pool {}: backend cuda (device {device}), but no {node} or /dev/nvidiactl",
                    pool.name
                ),
                "load the NVIDIA driver (nvidia-smi lists the GPUs it sees)",
            ),
            Some(library) => {
                out.ok(check, format!("pool {}: {node} and the driver's {library}", pool.name));
                continue;
            }
        };
        if fallback_to_cpu {
            let fix = format!("{fix} (until then the pool runs on the CPU: fallback = \"cpu\")");
            out.warn(check, message, fix);
        } else {
            let fix = format!(
                "{fix}, or set fallback = \"cpu\" (without it the mediator refuses to start)"
            );
            out.fail(check, message, fix);
        }
    }
}

/// A live mediator serves each region (its heartbeat is fresh), and the doorbell
/// holder's sockets exist.
fn mediator(config: &Config, out: &mut Findings) {
    for vm in &config.vms {
        if let Some(socket) = &vm.doorbell {
            if socket.exists() {
                out.ok("doorbell", format!("vm {}: {} held", vm.id, socket.display()));
            } else {
                out.fail(
                    "doorbell",
                    format!("vm {}: no doorbell socket {}", vm.id, socket.display()),
                    "start the holder before the VM (ivshmem-setup serve, examples/vgpu-doorbells.service)",
                );
            }
        }
        let check = "mediator";
        // A missing or unusable region is reported above.
        let Ok(region) = Region::open(&vm.region, Access::ReadOnly) else {
            continue;
        };
        let epoch = region.epoch();
        let beat = crate::inspect::heartbeat(&region);
        let age = beat.age.unwrap_or_default();
        if epoch == 0 {
            out.warn(
                check,
                format!("vm {}: no mediator has served this region yet", vm.id),
                "start vgpu-mediator (systemctl start vgpu-mediator)",
            );
        } else if beat.stale {
            out.fail(
                check,
                format!(
                    "vm {}: epoch {epoch:#x} (pid {}), but no heartbeat for {:.1} s",
                    vm.id,
                    region.mediator_pid(),
                    age.as_secs_f64()
                ),
                "the mediator died or hangs: systemctl status vgpu-mediator",
            );
        } else {
            out.ok(
                check,
                format!(
                    "vm {}: epoch {epoch:#x}, pid {}, heartbeat {} ms ago",
                    vm.id,
                    region.mediator_pid(),
                    age.as_millis()
                ),
            );
        }
    }
}
