//! The vgpu-stub PCI device's MMIO registers (BAR 0), from which a guest reads the
//! identity the host administrator gave its VM (as in the original design).

use crate::identity::{PoolId, Priority};
use thiserror::Error;

/// Size of the register window.
pub const STUB_SIZE: usize = 4096;
/// Offset of the pool register: the pool's name as one ASCII byte, in a u32.
pub const STUB_POOL: usize = 0x008;
/// Offset of the priority register (0–2).
pub const STUB_PRIORITY: usize = 0x00C;
/// Offset of the VM id register.
pub const STUB_VM_ID: usize = 0x010;

/// The identity registers of a vgpu-stub device.
///
/// ```
/// use vgpu_ring::stub::StubRegisters;
/// use vgpu_ring::{PoolId, Priority};
/// let mut window = vec![0u8; 4096];
/// window[0x08] = b'B'; // pool
/// window[0x0c] = 1; // priority
/// window[0x10] = 42; // VM id
/// let regs = StubRegisters::parse(&window)?;
/// assert_eq!(regs, StubRegisters { pool: PoolId::new(b'B').unwrap(), priority: Priority::MEDIUM, vm_id: 42 });
/// # Ok::<(), vgpu_ring::stub::StubError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StubRegisters {
    /// Pool.
    pub pool: PoolId,
    /// Priority.
    pub priority: Priority,
    /// VM id.
    pub vm_id: u32,
}

/// Why register bytes are not a valid stub identity.
///
/// ```
/// use vgpu_ring::stub::{StubError, StubRegisters};
/// let mut window = vec![0u8; 4096];
/// window[0x08] = b'A';
/// window[0x0c] = 5;
/// assert_eq!(StubRegisters::parse(&window), Err(StubError::BadPriority(5)));
/// assert_eq!(StubRegisters::parse(&window[..8]), Err(StubError::TooShort(8)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StubError {
    /// Fewer bytes than the registers need.
    #[error("stub register window too short: {0} bytes, need at least {min}", min = STUB_VM_ID + 4)]
    TooShort(usize),
    /// The pool register is not an ASCII letter or digit.
    #[error("stub pool register {0:#x} is not an ASCII letter or digit")]
    BadPool(u32),
    /// The priority register is above 2.
    #[error("stub priority register {0} out of range 0..=2")]
    BadPriority(u32),
}

fn register(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]])
}

impl StubRegisters {
    /// The 4 KiB register window, as the device presents it.
    ///
    /// ```
    /// use vgpu_ring::stub::StubRegisters;
    /// use vgpu_ring::{PoolId, Priority};
    /// let regs = StubRegisters { pool: PoolId::new(b'A').unwrap(), priority: Priority::HIGH, vm_id: 100 };
    /// assert_eq!(StubRegisters::parse(&regs.to_image()), Ok(regs));
    /// ```
    #[must_use]
    pub fn to_image(&self) -> Vec<u8> {
        let mut image = vec![0; STUB_SIZE];
        image[STUB_POOL..STUB_POOL + 4].copy_from_slice(&u32::from(self.pool.byte()).to_le_bytes());
        image[STUB_PRIORITY..STUB_PRIORITY + 4]
            .copy_from_slice(&u32::from(self.priority.get()).to_le_bytes());
        image[STUB_VM_ID..STUB_VM_ID + 4].copy_from_slice(&self.vm_id.to_le_bytes());
        image
    }

    /// Read the registers from the window's bytes.
    ///
    /// ```
    /// use vgpu_ring::stub::{StubError, StubRegisters};
    /// // An all-zero window: pool register 0 is not a pool name.
    /// assert_eq!(StubRegisters::parse(&[0; 4096]), Err(StubError::BadPool(0)));
    /// ```
    ///
    /// # Errors
    ///
    /// [`StubError`] if the window is short or a register holds an invalid value.
    pub fn parse(bytes: &[u8]) -> Result<Self, StubError> {
        if bytes.len() < STUB_VM_ID + 4 {
            return Err(StubError::TooShort(bytes.len()));
        }
        let pool = PoolId::try_from(register(bytes, STUB_POOL)).map_err(StubError::BadPool)?;
        let priority =
            Priority::try_from(register(bytes, STUB_PRIORITY)).map_err(StubError::BadPriority)?;
        Ok(Self { pool, priority, vm_id: register(bytes, STUB_VM_ID) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_sit_at_the_original_offsets() {
        let pool = PoolId::new(b'B').unwrap();
        let image =
            StubRegisters { pool, priority: Priority::MEDIUM, vm_id: 0x0102_0304 }.to_image();
        assert_eq!(image.len(), 4096);
        assert_eq!(&image[8..12], &[b'B', 0, 0, 0]);
        assert_eq!(&image[12..16], &[1, 0, 0, 0]);
        assert_eq!(&image[16..20], &[4, 3, 2, 1]);
    }

    #[test]
    fn invalid_registers_are_refused() {
        let pool = PoolId::new(b'A').unwrap();
        let mut image = StubRegisters { pool, priority: Priority::LOW, vm_id: 1 }.to_image();
        image[12] = 3;
        assert_eq!(StubRegisters::parse(&image), Err(StubError::BadPriority(3)));
        image[12] = 0;
        image[8] = b'\n';
        assert_eq!(StubRegisters::parse(&image), Err(StubError::BadPool(10)));
        assert_eq!(StubRegisters::parse(&image[..10]), Err(StubError::TooShort(10)));
    }
}

impl StubRegisters {
    /// Read the registers from a vgpu-stub BAR 0 file (`/sys/bus/pci/devices/<BDF>/resource0`)
    /// or an image of it, as the original client did: map it read-only and load each
    /// register with one aligned 32-bit volatile read (what MMIO needs).
    ///
    /// ```
    /// use vgpu_ring::stub::StubRegisters;
    /// use vgpu_ring::{PoolId, Priority};
    /// let regs = StubRegisters { pool: PoolId::new(b'A').unwrap(), priority: Priority::HIGH, vm_id: 3 };
    /// // An image of the BAR (in a guest: /sys/bus/pci/devices/<BDF>/resource0).
    /// let dir = tempfile::tempdir()?;
    /// let bar = dir.path().join("resource0");
    /// std::fs::write(&bar, regs.to_image())?;
    /// assert_eq!(StubRegisters::read_file(&bar)?, regs);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`StubFileError`] naming the file.
    pub fn read_file(path: &std::path::Path) -> Result<Self, StubFileError> {
        let io = |source| StubFileError::Io { path: path.to_owned(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < (STUB_VM_ID + 4) as u64 {
            return Err(StubFileError::Invalid {
                path: path.to_owned(),
                source: StubError::TooShort(len as usize),
            });
        }
        let offsets = [STUB_POOL, STUB_PRIORITY, STUB_VM_ID];
        let values = crate::region::read_registers(&file, STUB_SIZE.min(len as usize), offsets)
            .map_err(io)?;
        let mut image = [0u8; STUB_VM_ID + 4];
        for (offset, value) in offsets.into_iter().zip(values) {
            image[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        }
        Self::parse(&image)
            .map_err(|source| StubFileError::Invalid { path: path.to_owned(), source })
    }
}

/// Why a stub register file could not be read.
///
/// ```
/// use vgpu_ring::stub::{StubFileError, StubRegisters};
/// let missing = StubRegisters::read_file("/nonexistent/resource0".as_ref());
/// assert!(matches!(missing, Err(StubFileError::Io { .. })));
/// ```
#[derive(Debug, Error)]
pub enum StubFileError {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The registers hold invalid values.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        source: StubError,
    },
}
