//! Finding the region (the ivshmem device's BAR 2) and the identity (the vgpu-stub
//! device's BAR 0, or the region's host-written slot).

use crate::ClientError;
use std::path::{Path, PathBuf};
use vgpu_ring::{Access, Region};

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
