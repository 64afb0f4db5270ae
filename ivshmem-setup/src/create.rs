//! `create` and `stub`.

use anyhow::{Context, Result, bail};
use std::fs::Permissions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use vgpu_config::{Config, parse_size};
use vgpu_ring::stub::StubRegisters;
use vgpu_ring::{Geometry, PoolId, Priority, Region, VmIdentity};

/// Arguments of `create`.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["config", "path"]))]
pub(crate) struct CreateArgs {
    /// Create one region per VM of this configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Create one region at this path (with --vm, --pool, --priority).
    #[arg(long, value_name = "PATH", requires_all = ["vm", "pool", "priority"])]
    path: Option<PathBuf>,
    /// VM id (with --path).
    #[arg(long)]
    vm: Option<u32>,
    /// Pool name, one ASCII letter or digit (with --path).
    #[arg(long)]
    pool: Option<PoolId>,
    /// Priority: 0|1|2 or low|medium|high (with --path).
    #[arg(long)]
    priority: Option<Priority>,
    /// Region size, a power of two (with --path).
    #[arg(long, value_parser = parse_size_arg, default_value_t = vgpu_config::DEFAULT_REGION_SIZE)]
    size: u64,
    /// Entries per ring (with --path).
    #[arg(long, default_value_t = Geometry::default().ring_entries)]
    ring_entries: u32,
    /// Arena size (with --path).
    #[arg(long, value_parser = parse_size_arg, default_value_t = u64::from(Geometry::default().arena_size))]
    arena_size: u64,
    /// Unix group to own the region files (mode 0660).
    #[arg(long)]
    group: Option<String>,
    /// Recreate a region even if a process (QEMU, the mediator, a client) maps it.
    #[arg(long)]
    force: bool,
    /// Also write each VM's vgpu-stub register image next to its region (`<region>.stub`).
    #[arg(long)]
    with_stubs: bool,
}

/// Arguments of `stub`.
#[derive(clap::Args)]
pub(crate) struct StubArgs {
    /// VM id.
    #[arg(long)]
    vm: u32,
    /// Pool name, one ASCII letter or digit.
    #[arg(long)]
    pool: PoolId,
    /// Priority: 0|1|2 or low|medium|high.
    #[arg(long)]
    priority: Priority,
    /// Output file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).ok_or_else(|| format!("{text:?} is not a size (e.g. 4M, 65536)"))
}

struct Plan {
    path: PathBuf,
    size: u64,
    geometry: Geometry,
    identity: VmIdentity,
}

pub(crate) fn run(args: &CreateArgs) -> Result<()> {
    let (plans, group) = match &args.config {
        Some(file) => {
            let config = Config::load(file)?;
            config.check_region_dir()?;
            let plans = config
                .vms
                .iter()
                .map(|vm| Plan {
                    path: vm.region.clone(),
                    size: config.region_size,
                    geometry: config.geometry,
                    identity: vm.identity(),
                })
                .collect();
            (plans, args.group.clone().or(config.group.clone()))
        }
        None => {
            let (Some(path), Some(vm), Some(pool), Some(priority)) =
                (&args.path, args.vm, args.pool, args.priority)
            else {
                bail!("--path needs --vm, --pool and --priority");
            };
            let arena_size = u32::try_from(args.arena_size).context("--arena-size too large")?;
            let plan = Plan {
                path: path.clone(),
                size: args.size,
                geometry: Geometry { slot_count: 1, ring_entries: args.ring_entries, arena_size },
                identity: VmIdentity { vm_id: vm, pool, priority },
            };
            (vec![plan], args.group.clone())
        }
    };
    let gid = group.as_deref().map(group_id).transpose()?;
    // Check every target first, so that a refusal leaves nothing half-done.
    for plan in &plans {
        plan.geometry.validate().with_context(|| plan.path.display().to_string())?;
        if !args.force {
            let users = processes_mapping(&plan.path)?;
            if !users.is_empty() {
                bail!(
                    "{} is in use (mapped by pid {}); stop its VM/mediator/client or pass --force",
                    plan.path.display(),
                    users.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
    for plan in &plans {
        create_one(plan, gid)?;
        let id = plan.identity;
        let _ = say!(
            "vm {}: {}  pool {}  priority {} ({})  {} bytes, {} ring entries, {}-byte arena\n",
            id.vm_id,
            plan.path.display(),
            id.pool,
            id.priority,
            id.priority.name(),
            plan.size,
            plan.geometry.ring_entries,
            plan.geometry.arena_size
        );
        if args.with_stubs {
            let stub_path = stub_path(&plan.path);
            write_stub(&stub_path, &id)?;
            let _ = say!("      stub registers: {}\n", stub_path.display());
        }
    }
    Ok(())
}

fn create_one(plan: &Plan, gid: Option<nix::unistd::Gid>) -> Result<()> {
    // Write a fresh file next to the target and rename it over, so a reader never sees a
    // half-formatted region at the final path; the temporary file goes on any failure.
    let tmp = plan.path.with_extension("vgpu-tmp");
    let _ = std::fs::remove_file(&tmp);
    let made = (|| -> Result<()> {
        // Every page is reserved: a full filesystem fails here, never as a SIGBUS later.
        Region::create(&tmp, plan.size, plan.geometry, &[plan.identity.slot()], false)?;
        std::fs::set_permissions(&tmp, Permissions::from_mode(0o660))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        if let Some(gid) = gid {
            nix::unistd::chown(&tmp, None, Some(gid))
                .with_context(|| format!("chown {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, &plan.path)
            .with_context(|| format!("rename to {}", plan.path.display()))
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made.with_context(|| format!("create {}", plan.path.display()))
}

fn group_id(name: &str) -> Result<nix::unistd::Gid> {
    match nix::unistd::Group::from_name(name)? {
        Some(group) => Ok(group.gid),
        None => bail!("group {name:?} does not exist"),
    }
}

/// Where `create --with-stubs` puts a VM's stub image.
pub(crate) fn stub_path(region: &Path) -> PathBuf {
    let mut name = region.as_os_str().to_owned();
    name.push(".stub");
    PathBuf::from(name)
}

fn write_stub(path: &Path, id: &VmIdentity) -> Result<()> {
    let image = StubRegisters { pool: id.pool, priority: id.priority, vm_id: id.vm_id }.to_image();
    std::fs::write(path, image).with_context(|| format!("write {}", path.display()))
}

pub(crate) fn stub(args: &StubArgs) -> Result<()> {
    write_stub(
        &args.out,
        &VmIdentity { vm_id: args.vm, pool: args.pool, priority: args.priority },
    )?;
    let _ = say!(
        "wrote vgpu-stub registers to {}: pool {} priority {} vm {}\n",
        args.out.display(),
        args.pool,
        args.priority,
        args.vm
    );
    Ok(())
}

/// Process ids whose memory maps `path` (by device and inode), from `/proc/*/maps`.
/// Empty when the file does not exist.
pub(crate) fn processes_mapping(path: &Path) -> Result<Vec<u32>> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    let dev = format!(
        "{:02x}:{:02x}",
        nix::sys::stat::major(meta.dev()),
        nix::sys::stat::minor(meta.dev())
    );
    let inode = meta.ino().to_string();
    let me = std::process::id();
    let mut users = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Processes can exit or be unreadable (other users): skip those.
        let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) else { continue };
        let maps_it = maps.lines().any(|line| {
            let mut fields = line.split_ascii_whitespace().skip(3);
            fields.next() == Some(dev.as_str()) && fields.next() == Some(inode.as_str())
        });
        if maps_it && pid != me {
            users.push(pid);
        }
    }
    Ok(users)
}
