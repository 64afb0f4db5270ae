//! The ivshmem device's register BAR as a guest rings it: one 32-bit write of
//! `host_peer_id << 16 | vector` to the Doorbell register, no driver needed (the BAR
//! is the device's `resource0` file in sysfs).

use memmap2::{MmapOptions, MmapRaw};
use std::fs::OpenOptions;
use std::path::Path;

/// Byte offset of the Doorbell register in BAR 0 (QEMU's `docs/specs/ivshmem-spec.rst`).
pub const DOORBELL_REGISTER: usize = 12;

/// BAR 0 of an ivshmem device, mapped to ring its doorbell.
///
/// ```
/// use vgpu_ring::DoorbellRegister;
/// // A sysfs `resource0` file in a guest; any 256-byte file here.
/// let file = tempfile::NamedTempFile::new().unwrap();
/// file.as_file().set_len(256).unwrap();
/// let bell = DoorbellRegister::open(file.path())?;
/// bell.ring(0x0000_0001);
/// let bytes = std::fs::read(file.path()).unwrap();
/// assert_eq!(&bytes[12..16], &1u32.to_le_bytes());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct DoorbellRegister {
    map: MmapRaw,
}

impl DoorbellRegister {
    /// Map the register BAR at `path` (a device's `resource0`).
    ///
    /// # Errors
    ///
    /// If the file cannot be opened read-write or mapped, or is too short to hold the
    /// Doorbell register.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        if len < (DOORBELL_REGISTER + 4) as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: {len} bytes, too short for a doorbell register", path.display()),
            ));
        }
        let map = MmapOptions::new().len(DOORBELL_REGISTER + 4).map_raw(&file)?;
        Ok(Self { map })
    }

    /// Write `value` to the Doorbell register: the device signals the eventfd of peer
    /// `value >> 16`, vector `value & 0xffff`.
    pub fn ring(&self, value: u32) {
        // SAFETY: the mapping is at least DOORBELL_REGISTER + 4 bytes long (checked in
        // `open`), writable, page-aligned (so the register is 4-byte aligned) and lives
        // as long as `self`. A volatile write is one 32-bit store, as MMIO requires; no
        // Rust reference to the memory exists.
        unsafe {
            self.map.as_mut_ptr().add(DOORBELL_REGISTER).cast::<u32>().write_volatile(value);
        }
    }
}
