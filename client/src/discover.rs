//! Finding the region (the ivshmem device's BAR 2) and the identity (the vgpu-stub
//! device's BAR 0, or the region's host-written slot).

use crate::ClientError;
use std::path::{Path, PathBuf};
use vgpu_doorbell::HostPeer;
use vgpu_ring::stub::StubRegisters;
use vgpu_ring::{Access, DoorbellRegister, Region, VmIdentity};

/// PCI vendor id of QEMU's ivshmem device (Red Hat, Inc.).
pub const IVSHMEM_VENDOR: &str = "0x1af4";
/// PCI device id of QEMU's ivshmem device.
pub const IVSHMEM_DEVICE: &str = "0x1110";
/// Where the original design put the vgpu-stub device.
pub const DEFAULT_STUB: &str = "/sys/bus/pci/devices/0000:00:06.0/resource0";

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// The `resource2` files of every ivshmem device under `sysfs_root`
/// (`<root>/bus/pci/devices/*`), sorted by PCI address.
///
/// ```
/// // A fake sysfs with one ivshmem device at 0000:00:05.0.
/// let sysfs = tempfile::tempdir()?;
/// let device = sysfs.path().join("bus/pci/devices/0000:00:05.0");
/// std::fs::create_dir_all(&device)?;
/// std::fs::write(device.join("vendor"), "0x1af4\n")?;
/// std::fs::write(device.join("device"), "0x1110\n")?;
/// let bars = vgpu_client::discover::ivshmem_devices(sysfs.path());
/// assert_eq!(bars, [device.join("resource2")]);
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use]
pub fn ivshmem_devices(sysfs_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sysfs_root.join("bus/pci/devices")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|dev| {
            read_trimmed(&dev.join("vendor")).as_deref() == Some(IVSHMEM_VENDOR)
                && read_trimmed(&dev.join("device")).as_deref() == Some(IVSHMEM_DEVICE)
        })
        .map(|dev| dev.join("resource2"))
        .collect();
    found.sort();
    found
}

/// The region to use: `explicit` if given, else the one ivshmem device under
/// `sysfs_root` whose BAR holds a vgpu region.
///
/// ```
/// use vgpu_client::{ClientError, discover::find_region};
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// // An explicit region file is used as it is.
/// let region = find_region(Some(sandbox.region()), "/sys".as_ref())?;
/// assert_eq!(region.geometry().slot_count, 1);
/// // No ivshmem device under an empty sysfs.
/// let empty = tempfile::tempdir()?;
/// assert!(matches!(find_region(None, empty.path()), Err(ClientError::NoDevice { .. })));
/// # Ok::<(), anyhow::Error>(())
/// ```
///
/// # Errors
///
/// [`ClientError::NoDevice`] if no ivshmem device holds a vgpu region,
/// [`ClientError::Region`] if the explicit region is unusable.
pub fn find_region(explicit: Option<&Path>, sysfs_root: &Path) -> Result<Region, ClientError> {
    if let Some(path) = explicit {
        return Region::open(path, Access::ReadWrite).map_err(ClientError::Region);
    }
    let devices = ivshmem_devices(sysfs_root);
    let mut reasons = Vec::new();
    for bar in &devices {
        match Region::open(bar, Access::ReadWrite) {
            Ok(region) => return Ok(region),
            Err(e) => reasons.push(format!("{}: {e}", bar.display())),
        }
    }
    Err(ClientError::NoDevice {
        searched: sysfs_root.join("bus/pci/devices"),
        details: if devices.is_empty() {
            "no ivshmem device (vendor 0x1af4, device 0x1110)".to_owned()
        } else {
            reasons.join("; ")
        },
    })
}

/// How a client rings the mediator's doorbell.
#[derive(Debug)]
pub(crate) enum Ringer {
    /// In a guest: the ivshmem-doorbell device's Doorbell register.
    Register(DoorbellRegister),
    /// On the host: standing in for the VM's QEMU on its doorbell socket.
    Peer(HostPeer),
}

impl Ringer {
    /// Ring with the value the host published. A failure only delays the request until
    /// the mediator's timed wake-up, so it is not reported.
    pub(crate) fn ring(&self, value: u32) {
        match self {
            Self::Register(register) => register.ring(value),
            Self::Peer(peer) => {
                let _ = peer.ring(value);
            }
        }
    }
}

/// The Doorbell register of the ivshmem device whose BAR 2 is `region` (its
/// `resource0` next to `resource2` in sysfs), if there is one the client may write.
pub(crate) fn doorbell_register(region: &Path) -> Option<DoorbellRegister> {
    if region.file_name()? != "resource2" {
        return None;
    }
    DoorbellRegister::open(&region.with_file_name("resource0")).ok()
}

/// Where the client's identity came from.
///
/// ```
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
/// # let mut client = vgpu_client::Client::attach(&options)?;
/// use vgpu_client::IdentitySource;
/// // No vgpu-stub device on this host: the identity is the one the host wrote in the slot.
/// assert_eq!(client.identity_source(), IdentitySource::Region);
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// The vgpu-stub device's registers.
    Stub,
    /// The host-written identity in the region's slot.
    Region,
}

/// The identity a client's requests carry, where it came from, and a warning when the
/// vgpu-stub device and the region disagree.
///
/// ```
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// # let region = std::sync::Arc::new(vgpu_ring::Region::open(sandbox.region(), vgpu_ring::Access::ReadOnly)?);
/// let resolved = vgpu_client::discover::resolve_identity(&region, None)?;
/// assert_eq!(resolved.identity.vm_id, 1);
/// assert_eq!(resolved.warning, None);
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedIdentity {
    /// The identity (the region's host-written copy whenever it is valid: it is what
    /// the mediator enforces).
    pub identity: VmIdentity,
    /// Where it came from.
    pub source: IdentitySource,
    /// Set when the stub says something else than the region.
    pub warning: Option<String>,
}

/// Resolve the identity from the vgpu-stub registers (`stub`, else
/// [`DEFAULT_STUB`] if it exists) and slot 0 of `region`.
///
/// ```
/// use std::sync::Arc;
/// use vgpu_client::discover::{find_region, resolve_identity};
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// let region = Arc::new(find_region(Some(sandbox.region()), "/sys".as_ref())?);
/// let resolved = resolve_identity(&region, None)?;
/// println!("{} (from the {:?})", resolved.identity, resolved.source);
/// # Ok::<(), anyhow::Error>(())
/// ```
///
/// # Errors
///
/// [`ClientError::Stub`] if the stub cannot be read, [`ClientError::NoIdentity`] if
/// neither the stub nor the region says who the VM is.
pub fn resolve_identity(
    region: &std::sync::Arc<Region>,
    stub: Option<&Path>,
) -> Result<ResolvedIdentity, ClientError> {
    // The host wrote it; a guest may have scribbled over it (then it is not valid).
    let host_copy = VmIdentity::from_slot(&region.slot(0)?.identity());
    let stub = match stub {
        Some(path) => Some(StubRegisters::read_file(path)?),
        None => {
            let default = Path::new(DEFAULT_STUB);
            default.exists().then(|| StubRegisters::read_file(default)).transpose()?
        }
    };
    let from_stub = stub.map(|s| VmIdentity { vm_id: s.vm_id, pool: s.pool, priority: s.priority });
    let (identity, source, warning) = match (from_stub, host_copy) {
        (Some(stub), Some(host)) => {
            let warning = (stub != host).then(|| {
                format!(
                    "vgpu-stub says {stub}, the region says {host}; using the region's (the mediator enforces it)"
                )
            });
            (host, IdentitySource::Stub, warning)
        }
        (Some(stub), None) => (stub, IdentitySource::Stub, None),
        (None, Some(host)) => (host, IdentitySource::Region, None),
        (None, None) => return Err(ClientError::NoIdentity),
    };
    Ok(ResolvedIdentity { identity, source, warning })
}
