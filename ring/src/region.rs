//! Mapping a region (a backing file on the host, a PCI BAR file in a guest), formatting
//! and validating it, and its header (geometry, session epoch, heartbeat); a slot's
//! contents are reached through [`Slot`](crate::Slot).
//!
//! All mmap handling of the project lives here (the vgpu-stub's register window too:
//! [`read_registers`]). The mapping is a [`memmap2::MmapRaw`]:
//! other processes write the same bytes, so no `&`/`&mut` reference to mapped bytes is
//! ever created; they are reached through atomics and raw-pointer copies obtained from
//! one bounds- and alignment-checked function ([`Region::ptr_at`]).

use crate::layout::{
    ENTRY_SIZE, INIT_READY, MAX_RING_ENTRIES, MAX_SLOTS, MIN_RING_ENTRIES, PAGE_SIZE, REGION_MAGIC,
    REQ_HEAD_OFFSET, REQ_TAIL_OFFSET, RESP_HEAD_OFFSET, RESP_TAIL_OFFSET, RegionHeader,
    SlotControl, SlotIdentity, VERSION_MAJOR, VERSION_MINOR,
};
use crate::sigbus::Registration;
use crate::sync::Ordering;
use crate::sync::mapped::{AtomicU32, AtomicU64};
use core::mem::{align_of, offset_of, size_of};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// The shape of a region: how many slots, how big their rings and arenas are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Number of VM slots (1 for the default one-region-per-VM setup).
    pub slot_count: u32,
    /// Entries per ring, a power of two.
    pub ring_entries: u32,
    /// Bytes of each slot's data arena, a multiple of 64.
    pub arena_size: u32,
}

impl Default for Geometry {
    fn default() -> Self {
        Self { slot_count: 1, ring_entries: 256, arena_size: 1 << 20 }
    }
}

impl Geometry {
    /// Check the geometry's own constraints (the one place they are written).
    ///
    /// ```
    /// use vgpu_ring::{Geometry, GeometryError};
    /// assert!(Geometry::default().validate().is_ok());
    /// let odd = Geometry { ring_entries: 100, ..Geometry::default() };
    /// assert_eq!(odd.validate(), Err(GeometryError::RingEntries(100)));
    /// ```
    ///
    /// # Errors
    ///
    /// The [`GeometryError`] naming the violated constraint.
    pub fn validate(&self) -> Result<(), GeometryError> {
        if self.slot_count == 0 || self.slot_count > MAX_SLOTS {
            return Err(GeometryError::SlotCount(self.slot_count));
        }
        if !self.ring_entries.is_power_of_two()
            || !(MIN_RING_ENTRIES..=MAX_RING_ENTRIES).contains(&self.ring_entries)
        {
            return Err(GeometryError::RingEntries(self.ring_entries));
        }
        if self.arena_size == 0 || !self.arena_size.is_multiple_of(64) {
            return Err(GeometryError::ArenaSize(self.arena_size));
        }
        Ok(())
    }

    /// Offset of the request ring inside a slot.
    #[must_use]
    pub const fn request_ring_offset(&self) -> usize {
        PAGE_SIZE
    }

    /// Offset of the response ring inside a slot.
    #[must_use]
    pub const fn response_ring_offset(&self) -> usize {
        PAGE_SIZE + self.ring_entries as usize * ENTRY_SIZE
    }

    /// Offset of the data arena inside a slot.
    #[must_use]
    pub const fn arena_offset(&self) -> usize {
        PAGE_SIZE + 2 * self.ring_entries as usize * ENTRY_SIZE
    }

    /// Distance between consecutive slots (a multiple of the page size).
    #[must_use]
    pub const fn slot_stride(&self) -> usize {
        (self.arena_offset() + self.arena_size as usize).next_multiple_of(PAGE_SIZE)
    }

    /// Bytes the header and slots occupy.
    #[must_use]
    pub const fn required_size(&self) -> usize {
        PAGE_SIZE + self.slot_count as usize * self.slot_stride()
    }

    /// The smallest valid region size for this geometry (a power of two).
    #[must_use]
    pub const fn min_region_size(&self) -> usize {
        self.required_size().next_power_of_two()
    }

    /// Offset of slot `slot` from the start of the region.
    #[must_use]
    pub const fn slot_offset(&self, slot: u32) -> usize {
        PAGE_SIZE + slot as usize * self.slot_stride()
    }
}

/// A geometry that breaks one of the layout's constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum GeometryError {
    /// The slot count is not in `1..=MAX_SLOTS`.
    #[error("slot count {0} not in 1..={MAX_SLOTS}")]
    SlotCount(u32),
    /// The ring size is not a power of two in the allowed range.
    #[error("ring entries {0} not a power of two in {MIN_RING_ENTRIES}..={MAX_RING_ENTRIES}")]
    RingEntries(u32),
    /// The arena size is not a positive multiple of 64.
    #[error("arena size {0} not a positive multiple of 64")]
    ArenaSize(u32),
}

/// Why a region could not be created, opened or accessed.
#[derive(Debug, Error)]
pub enum RegionError {
    /// An operating-system call on the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file or requested size is smaller than the layout needs.
    #[error("region too small: {size} bytes, need at least {required}")]
    TooSmall {
        /// Bytes available.
        size: u64,
        /// Bytes needed.
        required: u64,
    },
    /// The region size is not a power of two (QEMU's ivshmem requires one).
    #[error("region size {0} is not a power of two")]
    NotPowerOfTwo(u64),
    /// The magic number is wrong: this is not a vgpu region.
    #[error("not a vgpu region (magic {0:#018x})")]
    BadMagic(u64),
    /// The layout's major version is not the one this build speaks.
    #[error(
        "region layout version {found_major}.{found_minor}, this build speaks {VERSION_MAJOR}.x"
    )]
    VersionMismatch {
        /// Major version in the header.
        found_major: u16,
        /// Minor version in the header.
        found_minor: u16,
    },
    /// The formatter has not finished (init word not set).
    #[error("region not initialized (formatting incomplete or never done)")]
    NotInitialized,
    /// The geometry breaks a constraint of the layout.
    #[error("bad geometry: {0}")]
    Geometry(#[from] GeometryError),
    /// The header or a range is inconsistent with the region's size or layout.
    #[error("bad geometry: {0}")]
    BadGeometry(String),
    /// The region's geometry differs from the one expected (e.g. the host's config).
    #[error("geometry mismatch: expected {expected:?}, region has {found:?}")]
    GeometryMismatch {
        /// The expected geometry.
        expected: Geometry,
        /// The region's geometry.
        found: Geometry,
    },
    /// A slot index beyond the region's slot count.
    #[error("slot {slot} out of range (region has {count})")]
    SlotOutOfRange {
        /// The slot asked for.
        slot: u32,
        /// Slots in the region.
        count: u32,
    },
    /// An arena range outside the slot's arena.
    #[error("arena range {offset}+{len} outside an arena of {size} bytes")]
    ArenaOutOfBounds {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Arena size.
        size: u32,
    },
    /// A write was attempted on a read-only mapping.
    #[error("region mapped read-only")]
    ReadOnly,
    /// The file already exists and overwriting was not requested.
    #[error("{0} already exists")]
    AlreadyExists(PathBuf),
    /// The path is not a regular file (a directory, a device, a socket...).
    #[error("{0} is not a regular file")]
    NotRegularFile(PathBuf),
    /// The file's size is not the one the host configured.
    #[error("{path} has {found} bytes, the configuration says {expected}")]
    WrongSize {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The configured size.
        expected: u64,
    },
    /// The filesystem cannot back every page of the region.
    #[error("{path}: no space: the region needs {needed} bytes, the filesystem has {free} free")]
    NoSpace {
        /// The file.
        path: PathBuf,
        /// Bytes the region needs.
        needed: u64,
        /// Bytes free on its filesystem.
        free: u64,
    },
    /// Another live mediator serves the region (it holds the region's host lock).
    #[error("{path} is served by another running mediator (pid {pid}, as recorded in the region)")]
    ServedElsewhere {
        /// The region.
        path: PathBuf,
        /// The other mediator's pid, as its header records it.
        pid: u32,
    },
}

/// How to map an existing region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write (host daemon, guest client).
    ReadWrite,
    /// Read only (inspection of a live region).
    ReadOnly,
}

/// The loaded values of one slot's four ring indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingIndices {
    /// Request ring producer index (guest).
    pub req_head: u32,
    /// Request ring consumer index (host).
    pub req_tail: u32,
    /// Response ring producer index (host).
    pub resp_head: u32,
    /// Response ring consumer index (guest).
    pub resp_tail: u32,
}

/// A mapped, validated region.
///
/// ```
/// use vgpu_ring::{Access, Geometry, Region};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("vm1");
/// let geometry = Geometry { slot_count: 1, ring_entries: 16, arena_size: 4096 };
/// Region::create(&path, 1 << 16, geometry, &[], false)?;
/// // A guest (or `ivshmem-setup inspect`) maps it and checks its header.
/// let region = Region::open(&path, Access::ReadOnly)?;
/// assert_eq!((region.geometry(), region.size(), region.epoch()), (geometry, 1 << 16, 0));
/// # Ok::<(), vgpu_ring::RegionError>(())
/// ```
#[derive(Debug)]
pub struct Region {
    /// The SIGBUS handler's entry for the mapping; declared first so that it is dropped
    /// (unregistered) before the mapping is unmapped.
    guard: Registration,
    map: MmapRaw,
    file: File,
    path: PathBuf,
    geometry: Geometry,
    writable: bool,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RegionError + '_ {
    move |source| RegionError::Io { path: path.to_owned(), source }
}

impl Region {
    /// Create the file at `path` (which must not exist unless `overwrite`), size it to
    /// `size` bytes and format it: header, geometry, the slots' identities (one per
    /// slot, unassigned if `identities` is shorter), zeroed rings; the init word last.
    ///
    /// ```
    /// use vgpu_ring::{Geometry, Region, SlotIdentity};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("vm1");
    /// let geometry = Geometry { slot_count: 1, ring_entries: 64, arena_size: 4096 };
    /// let id = SlotIdentity::new(1, vgpu_ring::PoolId::new(b'A').unwrap(), vgpu_ring::Priority::HIGH);
    /// let region = std::sync::Arc::new(Region::create(&path, 1 << 16, geometry, &[id], false)?);
    /// assert_eq!(region.slot(0)?.identity().vm_id, 1);
    /// # Ok::<(), vgpu_ring::RegionError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`RegionError::AlreadyExists`], [`RegionError::NotPowerOfTwo`],
    /// [`RegionError::TooSmall`], [`RegionError::BadGeometry`], [`RegionError::Io`].
    pub fn create(
        path: &Path,
        size: u64,
        geometry: Geometry,
        identities: &[SlotIdentity],
        overwrite: bool,
    ) -> Result<Self, RegionError> {
        geometry.validate()?;
        if !size.is_power_of_two() {
            return Err(RegionError::NotPowerOfTwo(size));
        }
        let required = geometry.required_size() as u64;
        if size < required {
            return Err(RegionError::TooSmall { size, required });
        }
        if identities.len() > geometry.slot_count as usize {
            return Err(RegionError::BadGeometry(format!(
                "{} identities for {} slots",
                identities.len(),
                geometry.slot_count
            )));
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if overwrite {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let file = options.open(path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => RegionError::AlreadyExists(path.to_owned()),
            _ => io_err(path)(e),
        })?;
        let formatted = reserve(&file, path, size)
            .and_then(|()| Self::map(file, path, size as usize, geometry, Access::ReadWrite))
            .and_then(|region| {
                for slot in 0..geometry.slot_count {
                    let offset = geometry.slot_offset(slot);
                    region.write_bytes(offset, SlotControl::new_zeroed().as_bytes())?;
                }
                region.stamp(identities)?;
                Ok(region)
            });
        if formatted.is_err() {
            // A region that could not be completed is not left behind.
            let _ = std::fs::remove_file(path);
        }
        formatted
    }

    /// Write every formatter-owned field from `geometry` and the mapping's size, and
    /// each slot's identity (unassigned past `identities`), the init word last. The
    /// mediator line, the rings and the arenas are left as they are.
    fn stamp(&self, identities: &[SlotIdentity]) -> Result<(), RegionError> {
        let geometry = self.geometry;
        let mut header: RegionHeader = self.read_value(0)?;
        header.magic = REGION_MAGIC;
        header.version_major = VERSION_MAJOR;
        header.version_minor = VERSION_MINOR;
        header.init = 0;
        header.region_size = self.map.len() as u64;
        header.slot_count = geometry.slot_count;
        header.ring_entries = geometry.ring_entries;
        header.entry_size = ENTRY_SIZE as u32;
        header.slot_control_size = PAGE_SIZE as u32;
        header.arena_size = geometry.arena_size;
        header.reserved0 = 0;
        header.slots_offset = PAGE_SIZE as u64;
        header.slot_stride = geometry.slot_stride() as u64;
        header.reserved1 = [0; 64];
        // The formatter-owned fields end where the mediator line starts.
        let formatter_part = offset_of!(RegionHeader, epoch);
        self.write_bytes(0, &header.as_bytes()[..formatter_part])?;
        for slot in 0..geometry.slot_count {
            let identity =
                identities.get(slot as usize).copied().unwrap_or_else(SlotIdentity::new_zeroed);
            self.write_bytes(geometry.slot_offset(slot), identity.as_bytes())?;
        }
        // SYNC(hardware): Release pairs with the Acquire load of `init` in `open`:
        // everything written above is visible to whoever sees INIT_READY. It guards an
        // opener in another process on another CPU racing with the formatter (weakly
        // ordered CPUs may show the init store before the geometry); the header lives
        // in mapped memory, which loom cannot model.
        self.atomic_u32(offset_of!(RegionHeader, init))?.store(INIT_READY, Ordering::Release);
        Ok(())
    }

    /// Attach to a region as its host: the configuration is the authority. Only what
    /// the host cannot fix from its configuration is refused (a missing or unreadable
    /// file, not a regular file, another size than `size`, another mediator holding
    /// the region's host lock); everything else a guest may have written over the
    /// header or the identities is overwritten from `geometry` and `identities`.
    ///
    /// The host lock is an open-file-description lock (`F_OFD_SETLK`) on byte 0 of the
    /// file, held while the returned region lives and released by the kernel when its
    /// holder dies; it does not interact with the `flock(2)` that clients take.
    ///
    /// ```
    /// use vgpu_ring::{Access, Geometry, Region, SlotIdentity};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("vm1");
    /// let geometry = Geometry { slot_count: 1, ring_entries: 64, arena_size: 4096 };
    /// let id = [SlotIdentity::new(1, vgpu_ring::PoolId::new(b'A').unwrap(), vgpu_ring::Priority::HIGH)];
    /// Region::create(&path, 1 << 16, geometry, &id, false)?;
    /// let host = Region::attach_host(&path, 1 << 16, geometry, &id)?;
    /// // A second host is refused while the first lives.
    /// assert!(Region::attach_host(&path, 1 << 16, geometry, &id).is_err());
    /// drop(host);
    /// Region::attach_host(&path, 1 << 16, geometry, &id)?;
    /// # Ok::<(), vgpu_ring::RegionError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`RegionError::Io`], [`RegionError::NotRegularFile`], [`RegionError::WrongSize`],
    /// [`RegionError::ServedElsewhere`], and the geometry errors of [`Geometry::validate`].
    pub fn attach_host(
        path: &Path,
        size: u64,
        geometry: Geometry,
        identities: &[SlotIdentity],
    ) -> Result<Self, RegionError> {
        geometry.validate()?;
        if !size.is_power_of_two() || size < geometry.required_size() as u64 {
            return Err(RegionError::BadGeometry(format!(
                "{size} bytes cannot hold the configured geometry"
            )));
        }
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err(path))?;
        let meta = file.metadata().map_err(io_err(path))?;
        if !meta.is_file() {
            return Err(RegionError::NotRegularFile(path.to_owned()));
        }
        if meta.len() != size {
            return Err(RegionError::WrongSize {
                path: path.to_owned(),
                found: meta.len(),
                expected: size,
            });
        }
        let region = Self::map(file, path, size as usize, geometry, Access::ReadWrite)?;
        region.lock_host()?;
        region.stamp(identities)?;
        Ok(region)
    }

    fn lock_host(&self) -> Result<(), RegionError> {
        let lock = nix::libc::flock {
            l_type: nix::libc::F_WRLCK as i16,
            l_whence: nix::libc::SEEK_SET as i16,
            l_start: 0,
            l_len: 1,
            l_pid: 0,
        };
        match nix::fcntl::fcntl(&self.file, nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)) {
            Ok(_) => Ok(()),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
                Err(RegionError::ServedElsewhere {
                    path: self.path.clone(),
                    pid: self.mediator_pid(),
                })
            }
            Err(e) => Err(io_err(&self.path)(e.into())),
        }
    }

    /// Map an existing region (a backing file or a PCI BAR `resource2` file) and
    /// validate its header and geometry.
    ///
    /// # Errors
    ///
    /// [`RegionError::Io`], [`RegionError::TooSmall`], [`RegionError::BadMagic`],
    /// [`RegionError::VersionMismatch`], [`RegionError::NotInitialized`],
    /// [`RegionError::NotPowerOfTwo`], [`RegionError::BadGeometry`].
    pub fn open(path: &Path, access: Access) -> Result<Self, RegionError> {
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::ReadWrite)
            .open(path)
            .map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len < PAGE_SIZE as u64 {
            return Err(RegionError::TooSmall { size: len, required: 2 * PAGE_SIZE as u64 });
        }
        let len = usize::try_from(len)
            .map_err(|_| RegionError::BadGeometry(format!("size {len} too large")))?;
        // Map the header page only as a placeholder geometry; replaced once validated.
        let placeholder = Geometry { slot_count: 0, ring_entries: 0, arena_size: 0 };
        let mut region = Self::map(file, path, len, placeholder, access)?;
        // SYNC(hardware): Acquire pairs with the formatter's Release store of INIT_READY.
        let init = region.atomic_u32(offset_of!(RegionHeader, init))?.load(Ordering::Acquire);
        let header: RegionHeader = region.read_value(0)?;
        let geometry = header.validate(init, len as u64)?;
        region.geometry = geometry;
        Ok(region)
    }

    /// [`open`](Self::open), then require the region to have `expected` geometry (the
    /// host's own configuration, which wins over what the header says).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), and [`RegionError::GeometryMismatch`].
    pub fn open_expecting(
        path: &Path,
        access: Access,
        expected: Geometry,
    ) -> Result<Self, RegionError> {
        let region = Self::open(path, access)?;
        if region.geometry != expected {
            return Err(RegionError::GeometryMismatch { expected, found: region.geometry });
        }
        Ok(region)
    }

    fn map(
        file: File,
        path: &Path,
        len: usize,
        geometry: Geometry,
        access: Access,
    ) -> Result<Self, RegionError> {
        let mut options = MmapOptions::new();
        options.len(len);
        let map = match access {
            Access::ReadWrite => options.map_raw(&file),
            Access::ReadOnly => options.map_raw_read_only(&file),
        }
        .map_err(io_err(path))?;
        Ok(Self {
            guard: Registration::new(map.as_mut_ptr(), map.len()),
            map,
            file,
            path: path.to_owned(),
            geometry,
            writable: access == Access::ReadWrite,
        })
    }

    /// The path the region was opened from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file behind the mapping (e.g. to lock it).
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The region's validated geometry.
    #[must_use]
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Size of the mapping in bytes.
    #[must_use]
    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// Whether the file shrank under the mapping: an access beyond its end raised
    /// `SIGBUS`, and the process's handler replaced the whole mapping by anonymous
    /// memory (see [`fault_count`](crate::fault_count)). The region's contents are
    /// meaningless from then on; drop it and attach again.
    #[must_use]
    pub fn is_faulted(&self) -> bool {
        self.guard.faulted()
    }

    /// Whether this mapping is covered by the SIGBUS handler (false only when the
    /// handler could not be installed or the process maps thousands of regions).
    #[must_use]
    pub fn is_protected(&self) -> bool {
        self.guard.protected()
    }

    /// Whether the mapping is writable.
    #[must_use]
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The one place where an offset becomes a typed pointer: checks that
    /// `offset..offset + size_of::<T>()` lies inside the mapping and that the address is
    /// aligned for `T`.
    pub(crate) fn ptr_at<T>(&self, offset: usize) -> Result<*mut T, RegionError> {
        self.byte_range(offset, size_of::<T>()).and_then(|p| {
            if p.align_offset(align_of::<T>()) == 0 {
                Ok(p.cast())
            } else {
                Err(RegionError::BadGeometry(format!("offset {offset} misaligned")))
            }
        })
    }

    /// A pointer to `len` bytes at `offset`, bounds-checked.
    pub(crate) fn byte_range(&self, offset: usize, len: usize) -> Result<*mut u8, RegionError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.map.len() => {
                // SAFETY: offset + len is within the mapping (checked above), so the
                // resulting pointer stays inside the same allocation.
                Ok(unsafe { self.map.as_mut_ptr().add(offset) })
            }
            _ => Err(RegionError::BadGeometry(format!(
                "range {offset}+{len} outside the {}-byte mapping",
                self.map.len()
            ))),
        }
    }

    pub(crate) fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, RegionError> {
        let p = self.ptr_at::<AtomicU32>(offset)?;
        // SAFETY: in bounds and aligned (ptr_at); the mapping lives as long as `self`;
        // the bytes are only ever accessed atomically or by raw copies, and any bit
        // pattern is a valid u32.
        Ok(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    pub(crate) fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, RegionError> {
        let p = self.ptr_at::<AtomicU64>(offset)?;
        // SAFETY: as in `atomic_u32`.
        Ok(unsafe { AtomicU64::from_ptr(p.cast()) })
    }

    /// Copy a `T` out of the mapping, once, into private memory.
    pub(crate) fn read_value<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> Result<T, RegionError> {
        let mut value = T::new_zeroed();
        let src = self.byte_range(offset, size_of::<T>())?;
        // SAFETY: src is valid for size_of::<T>() bytes (byte_range); the destination is
        // a private value of that size; any bytes are a valid T (FromBytes). The peer may
        // write concurrently: we copy whatever bytes are there and validate the copy.
        unsafe {
            core::ptr::copy_nonoverlapping(src, value.as_mut_bytes().as_mut_ptr(), size_of::<T>())
        };
        Ok(value)
    }

    /// Copy bytes into the mapping.
    pub(crate) fn write_bytes(&self, offset: usize, bytes: &[u8]) -> Result<(), RegionError> {
        if !self.writable {
            return Err(RegionError::ReadOnly);
        }
        let dst = self.byte_range(offset, bytes.len())?;
        crate::hint::prepare_write(dst, bytes.len());
        // SAFETY: dst is valid for bytes.len() bytes of a writable mapping (checked);
        // `bytes` is private memory and cannot overlap the mapping's shared bytes
        // through a reference, since none is ever made.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        Ok(())
    }

    /// Base offset of slot `slot`, checked against the slot count.
    pub(crate) fn check_slot(&self, slot: u32) -> Result<usize, RegionError> {
        if slot < self.geometry.slot_count {
            Ok(self.geometry.slot_offset(slot))
        } else {
            Err(RegionError::SlotOutOfRange { slot, count: self.geometry.slot_count })
        }
    }

    pub(crate) fn require_writable(&self) -> Result<(), RegionError> {
        if self.writable { Ok(()) } else { Err(RegionError::ReadOnly) }
    }

    /// The mediator session epoch (0: no mediator has attached since formatting).
    #[must_use]
    pub fn epoch(&self) -> u64 {
        // SYNC(hardware): Acquire pairs with the Release store in `begin_session`.
        self.header_u64(offset_of!(RegionHeader, epoch)).load(Ordering::Acquire)
    }

    /// The layout version (major, minor) in the header now: a mediator of another
    /// layout that attached after this region was opened has re-stamped it.
    ///
    /// ```
    /// use vgpu_ring::{Geometry, Region, layout};
    /// let dir = tempfile::tempdir().unwrap();
    /// let geometry = Geometry { slot_count: 1, ring_entries: 64, arena_size: 4096 };
    /// let region = Region::create(&dir.path().join("vm1"), 1 << 16, geometry, &[], false)?;
    /// assert_eq!(region.layout_version(), (layout::VERSION_MAJOR, layout::VERSION_MINOR));
    /// # Ok::<(), vgpu_ring::RegionError>(())
    /// ```
    #[must_use]
    pub fn layout_version(&self) -> (u16, u16) {
        // Major and minor are neighbouring u16s (offsets 8 and 10, asserted in
        // `layout`): one load reads both.
        let word = self.header_u32(offset_of!(RegionHeader, version_major)).load(Ordering::Relaxed);
        let [a, b, c, d] = word.to_ne_bytes();
        (u16::from_ne_bytes([a, b]), u16::from_ne_bytes([c, d]))
    }

    /// The layout version in the header now is the one this build speaks. A region is
    /// checked when it is opened; a mediator of another layout that attaches later
    /// re-stamps the header with its own version, and a client that attached before
    /// must stop rather than publish entries the new host reads another way (it looks
    /// while it waits).
    ///
    /// ```
    /// use vgpu_ring::{Geometry, Region};
    /// let dir = tempfile::tempdir().unwrap();
    /// let geometry = Geometry { slot_count: 1, ring_entries: 64, arena_size: 4096 };
    /// let region = Region::create(&dir.path().join("vm1"), 1 << 16, geometry, &[], false)?;
    /// region.check_layout_version()?;
    /// # Ok::<(), vgpu_ring::RegionError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`RegionError::VersionMismatch`].
    pub fn check_layout_version(&self) -> Result<(), RegionError> {
        match self.layout_version() {
            (VERSION_MAJOR, _) => Ok(()),
            (found_major, found_minor) => {
                Err(RegionError::VersionMismatch { found_major, found_minor })
            }
        }
    }

    /// The mediator's process id.
    #[must_use]
    pub fn mediator_pid(&self) -> u32 {
        self.header_u32(offset_of!(RegionHeader, mediator_pid)).load(Ordering::Relaxed)
    }

    /// The mediator's last heartbeat (host `CLOCK_MONOTONIC`, ns) and its interval (ms).
    #[must_use]
    pub fn heartbeat(&self) -> (u64, u32) {
        (
            self.header_u64(offset_of!(RegionHeader, heartbeat_ns)).load(Ordering::Relaxed),
            self.header_u32(offset_of!(RegionHeader, heartbeat_interval_ms))
                .load(Ordering::Relaxed),
        )
    }

    /// Announce a mediator session: its pid and heartbeat interval, then the epoch.
    ///
    /// # Errors
    ///
    /// [`RegionError::ReadOnly`].
    pub fn begin_session(
        &self,
        epoch: u64,
        pid: u32,
        heartbeat_interval_ms: u32,
    ) -> Result<(), RegionError> {
        self.require_writable()?;
        self.header_u32(offset_of!(RegionHeader, mediator_pid)).store(pid, Ordering::Relaxed);
        self.header_u32(offset_of!(RegionHeader, heartbeat_interval_ms))
            .store(heartbeat_interval_ms, Ordering::Relaxed);
        // SYNC(hardware): Release pairs with the Acquire load in `epoch()`: pid and
        // interval are visible to whoever sees the new epoch (a client sizes its
        // liveness check by the interval). Mapped memory: no loom model.
        self.header_u64(offset_of!(RegionHeader, epoch)).store(epoch, Ordering::Release);
        Ok(())
    }

    /// Store the mediator heartbeat.
    ///
    /// # Errors
    ///
    /// [`RegionError::ReadOnly`].
    pub fn store_heartbeat(&self, now_ns: u64) -> Result<(), RegionError> {
        self.require_writable()?;
        self.header_u64(offset_of!(RegionHeader, heartbeat_ns)).store(now_ns, Ordering::Relaxed);
        Ok(())
    }

    fn header_u64(&self, offset: usize) -> &AtomicU64 {
        // Header fields are inside the first page, which `open`/`create` checked exists.
        self.atomic_u64(offset).expect("header field inside the mapped header page")
    }

    fn header_u32(&self, offset: usize) -> &AtomicU32 {
        self.atomic_u32(offset).expect("header field inside the mapped header page")
    }

    /// Copy `out.len()` bytes at `offset` out of the mapping, once.
    pub(crate) fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<(), RegionError> {
        let src = self.byte_range(offset, out.len())?;
        // SAFETY: src is valid for out.len() bytes (checked); `out` is private memory.
        unsafe { core::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }
}

/// Map the first `len` bytes of a device register file (a PCI BAR's `resource0`, or an
/// image of it) read-only and load the 32-bit register at each of `offsets` with one
/// aligned volatile read, as MMIO needs.
pub(crate) fn read_registers<const N: usize>(
    file: &File,
    len: usize,
    offsets: [usize; N],
) -> io::Result<[u32; N]> {
    if offsets.iter().any(|&o| !o.is_multiple_of(4) || o.checked_add(4).is_none_or(|end| end > len))
    {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "register outside the window"));
    }
    let map = MmapOptions::new().len(len).map_raw_read_only(file)?;
    Ok(offsets.map(|offset| {
        // SAFETY: offset + 4 <= len (checked above); the mapping is page-aligned and
        // offset a multiple of 4, so the address is aligned for u32; the mapping lives
        // until the end of this function.
        unsafe { map.as_ptr().add(offset).cast::<u32>().read_volatile() }
    }))
}

impl RegionHeader {
    /// Check a private copy of a header against the layout and the mapping's size
    /// `len`, with `init` the init word loaded (with Acquire) before the copy was made;
    /// the geometry it describes if it is sound. The order of the checks is the one
    /// `docs/LAYOUT.md` gives a reader.
    ///
    /// ```
    /// use vgpu_ring::layout::RegionHeader;
    /// use vgpu_ring::{RegionError, layout::INIT_READY};
    /// use zerocopy::FromZeros;
    /// let header = RegionHeader::new_zeroed();
    /// assert!(matches!(header.validate(INIT_READY, 1 << 20), Err(RegionError::BadMagic(0))));
    /// ```
    ///
    /// # Errors
    ///
    /// [`RegionError::BadMagic`], [`RegionError::VersionMismatch`],
    /// [`RegionError::NotInitialized`], [`RegionError::Geometry`],
    /// [`RegionError::BadGeometry`], [`RegionError::NotPowerOfTwo`],
    /// [`RegionError::TooSmall`].
    pub fn validate(&self, init: u32, len: u64) -> Result<Geometry, RegionError> {
        if self.magic != REGION_MAGIC {
            return Err(RegionError::BadMagic(self.magic));
        }
        if self.version_major != VERSION_MAJOR {
            return Err(RegionError::VersionMismatch {
                found_major: self.version_major,
                found_minor: self.version_minor,
            });
        }
        if init != INIT_READY {
            return Err(RegionError::NotInitialized);
        }
        let geometry = Geometry {
            slot_count: self.slot_count,
            ring_entries: self.ring_entries,
            arena_size: self.arena_size,
        };
        geometry.validate()?;
        if self.region_size != len {
            return Err(RegionError::BadGeometry(format!(
                "header says {} bytes, the mapping has {len}",
                self.region_size
            )));
        }
        if !self.region_size.is_power_of_two() {
            return Err(RegionError::NotPowerOfTwo(self.region_size));
        }
        if geometry.required_size() as u64 > len {
            return Err(RegionError::TooSmall {
                size: len,
                required: geometry.required_size() as u64,
            });
        }
        if self.entry_size != ENTRY_SIZE as u32
            || self.slot_control_size != PAGE_SIZE as u32
            || self.slots_offset != PAGE_SIZE as u64
            || self.slot_stride != geometry.slot_stride() as u64
        {
            return Err(RegionError::BadGeometry(format!(
                "entry size {}, control size {}, slots offset {}, stride {} disagree with layout v{VERSION_MAJOR}",
                self.entry_size, self.slot_control_size, self.slots_offset, self.slot_stride
            )));
        }
        Ok(geometry)
    }
}

/// Reserve every page of a new region file, so that a full filesystem fails here, with
/// the sizes, and never later as a `SIGBUS` on first touch.
fn reserve(file: &File, path: &Path, size: u64) -> Result<(), RegionError> {
    let len = i64::try_from(size).map_err(|_| RegionError::TooSmall { size, required: size })?;
    match nix::fcntl::posix_fallocate(file, 0, len) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ENOSPC) => {
            let free = nix::sys::statvfs::fstatvfs(file)
                .map_or(0, |s| s.blocks_available().saturating_mul(s.fragment_size()));
            Err(RegionError::NoSpace { path: path.to_owned(), needed: size, free })
        }
        // Filesystems without fallocate (rare for tmpfs/hugetlbfs hosts): size it.
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => {
            file.set_len(size).map_err(io_err(path))
        }
        Err(e) => Err(io_err(path)(e.into())),
    }
}

/// Which ring of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RingKind {
    Request,
    Response,
}

impl RingKind {
    pub(crate) fn head_offset(self) -> usize {
        match self {
            Self::Request => REQ_HEAD_OFFSET,
            Self::Response => RESP_HEAD_OFFSET,
        }
    }

    pub(crate) fn tail_offset(self) -> usize {
        match self {
            Self::Request => REQ_TAIL_OFFSET,
            Self::Response => RESP_TAIL_OFFSET,
        }
    }

    pub(crate) fn entries_offset(self, geometry: &Geometry) -> usize {
        match self {
            Self::Request => geometry.request_ring_offset(),
            Self::Response => geometry.response_ring_offset(),
        }
    }
}
