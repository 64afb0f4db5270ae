//! One VM slot of a mapped region: the checked handle through which its identity, host
//! status, client pid, arena, ring endpoints and handshake words are reached.

use crate::layout::{
    REQ_HEAD_OFFSET, REQ_TAIL_OFFSET, RESP_HEAD_OFFSET, RESP_TAIL_OFFSET, Request, Response,
    SlotControl, SlotIdentity,
};
use crate::mapped::{GuestEndpoints, HostEndpoints, MappedRing};
use crate::region::{Region, RegionError, RingIndices, RingKind};
use crate::reset::{ControlBlock, ControlWord};
use crate::ring::{Consumer, Producer, RingBackend};
use crate::sync::Ordering;
use crate::sync::mapped::AtomicU32;
use core::mem::offset_of;
use std::sync::Arc;
use zerocopy::IntoBytes;

/// A slot of a region, checked once when made: every later access is in bounds.
///
/// ```
/// use std::sync::Arc;
/// use vgpu_ring::{Geometry, PoolId, Priority, Region, Request, VmIdentity};
/// let dir = tempfile::tempdir().unwrap();
/// let geometry = Geometry { slot_count: 1, ring_entries: 8, arena_size: 4096 };
/// let id = VmIdentity { vm_id: 3, pool: PoolId::new(b'A').unwrap(), priority: Priority::LOW };
/// let region = Arc::new(Region::create(&dir.path().join("r"), 1 << 15, geometry, &[id.slot()], false)?);
/// let slot = region.slot(0)?;
/// assert_eq!(VmIdentity::from_slot(&slot.identity()), Some(id));
/// slot.arena_write(64, b"operands")?;
/// let mut guest = slot.guest_endpoints()?;
/// let mut host = slot.host_endpoints()?;
/// guest.requests.push(Request { tag: 9, in_offset: 64, in_len: 8, ..Request::default() }).unwrap();
/// let request = host.requests.pop().unwrap();
/// let mut input = [0; 8];
/// slot.arena_read(u64::from(request.in_offset), &mut input)?;
/// assert_eq!(&input, b"operands");
/// # Ok::<(), vgpu_ring::RegionError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Slot {
    region: Arc<Region>,
    index: u32,
    /// Offset of the slot's control block in the region.
    base: usize,
}

impl Region {
    /// Slot `index` of this region.
    ///
    /// # Errors
    ///
    /// [`RegionError::SlotOutOfRange`].
    pub fn slot(self: &Arc<Self>, index: u32) -> Result<Slot, RegionError> {
        let base = self.check_slot(index)?;
        // Every control word lies inside the mapping (the geometry was validated
        // against its size); check them once so the accessors cannot fail later.
        for word in ControlWord::ALL {
            self.atomic_u32(base + word.offset())?;
        }
        self.atomic_u32(base + offset_of!(SlotControl, client_pid))?;
        Ok(Slot { region: Arc::clone(self), index, base })
    }
}

impl Slot {
    /// The region the slot belongs to.
    #[must_use]
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// The slot's index in its region.
    #[must_use]
    pub fn index(&self) -> u32 {
        self.index
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.region
            .atomic_u32(self.base + offset)
            .expect("control words are checked when the slot is made")
    }

    /// The word at `offset` of the control block, for a store: only on a writable
    /// mapping (a store into a read-only one would fault).
    fn writable_word(&self, offset: usize) -> Result<&AtomicU32, RegionError> {
        self.region.require_writable()?;
        Ok(self.word(offset))
    }

    /// The identity words (host-written; a guest may have changed them, so the host
    /// uses its own configuration instead).
    #[must_use]
    pub fn identity(&self) -> SlotIdentity {
        self.region
            .read_value(self.base)
            .expect("the control block is checked when the slot is made")
    }

    /// Write the identity words (host only).
    ///
    /// # Errors
    ///
    /// [`RegionError::ReadOnly`].
    pub fn set_identity(&self, identity: SlotIdentity) -> Result<(), RegionError> {
        self.region.write_bytes(self.base, identity.as_bytes())
    }

    /// The four ring indices (a snapshot, for inspection).
    #[must_use]
    pub fn ring_indices(&self) -> RingIndices {
        let load = |offset| self.word(offset).load(Ordering::Relaxed);
        RingIndices {
            req_head: load(REQ_HEAD_OFFSET),
            req_tail: load(REQ_TAIL_OFFSET),
            resp_head: load(RESP_HEAD_OFFSET),
            resp_tail: load(RESP_TAIL_OFFSET),
        }
    }

    /// The host status bits ([`SlotControl::RESPONSE_POISONED`]).
    #[must_use]
    pub fn host_status(&self) -> u32 {
        self.word(offset_of!(SlotControl, host_status)).load(Ordering::Relaxed)
    }

    /// Store the host status bits (host only).
    ///
    /// # Errors
    ///
    /// [`RegionError::ReadOnly`].
    pub fn set_host_status(&self, status: u32) -> Result<(), RegionError> {
        self.writable_word(offset_of!(SlotControl, host_status))?.store(status, Ordering::Relaxed);
        Ok(())
    }

    /// Set `bits` in the host status, keeping the others (host only).
    ///
    /// # Errors
    ///
    /// [`RegionError::ReadOnly`].
    pub fn mark_status(&self, bits: u32) -> Result<(), RegionError> {
        self.writable_word(offset_of!(SlotControl, host_status))?.fetch_or(bits, Ordering::Relaxed);
        Ok(())
    }

    /// The process id the attached client recorded (0 if none).
    #[must_use]
    pub fn client_pid(&self) -> u32 {
        self.word(offset_of!(SlotControl, client_pid)).load(Ordering::Relaxed)
    }

    /// Record the attached client's process id (0 when it detaches).
    ///
    /// # Errors
    ///
    /// [`RegionError::ReadOnly`].
    pub fn set_client_pid(&self, pid: u32) -> Result<(), RegionError> {
        self.writable_word(offset_of!(SlotControl, client_pid))?.store(pid, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes of the slot's data arena.
    #[must_use]
    pub fn arena_size(&self) -> u32 {
        self.region.geometry().arena_size
    }

    /// The region offset of arena bytes `offset..offset + len`, checked.
    fn arena_range(&self, offset: u64, len: usize) -> Result<usize, RegionError> {
        let size = self.arena_size();
        match offset.checked_add(len as u64) {
            Some(end) if end <= u64::from(size) => {
                Ok(self.base + self.region.geometry().arena_offset() + offset as usize)
            }
            _ => Err(RegionError::ArenaOutOfBounds { offset, len: len as u64, size }),
        }
    }

    /// Copy `bytes` into the arena at `offset`.
    ///
    /// # Errors
    ///
    /// [`RegionError::ArenaOutOfBounds`], [`RegionError::ReadOnly`].
    pub fn arena_write(&self, offset: u64, bytes: &[u8]) -> Result<(), RegionError> {
        self.region.write_bytes(self.arena_range(offset, bytes.len())?, bytes)
    }

    /// Copy `out.len()` bytes out of the arena at `offset`, once.
    ///
    /// # Errors
    ///
    /// [`RegionError::ArenaOutOfBounds`].
    pub fn arena_read(&self, offset: u64, out: &mut [u8]) -> Result<(), RegionError> {
        self.region.read_bytes(self.arena_range(offset, out.len())?, out)
    }

    /// A raw pointer to arena bytes `offset..offset + len` of a writable mapping, for
    /// code outside Rust that fills requests and reads answers in place (the C
    /// library's zero-copy buffers).
    ///
    /// Getting the pointer is safe; using it is not, and is the caller's business: it
    /// is valid while the region stays mapped (while this slot's [`Region`] lives), the
    /// bytes are shared memory the peer may read or write at any time (copy what you
    /// decide on; never make a Rust reference to them), and on the host a region file
    /// that shrinks makes an access fault (SIGBUS) that no guard catches.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("region");
    /// use vgpu_ring::{Access, Geometry, Region, VmIdentity, PoolId, Priority};
    /// # let id = VmIdentity { vm_id: 1, pool: PoolId::new(b'A').unwrap(), priority: Priority::LOW };
    /// # let g = Geometry { slot_count: 1, ring_entries: 8, arena_size: 4096 };
    /// # Region::create(&path, g.min_region_size() as u64, g, &[id.slot()], false).unwrap();
    /// let region = std::sync::Arc::new(Region::open(&path, Access::ReadWrite).unwrap());
    /// let slot = region.slot(0).unwrap();
    /// let p = slot.arena_ptr(64, 4).unwrap();
    /// assert!(!p.is_null());
    /// assert!(slot.arena_ptr(4090, 16).is_err(), "past the arena's end");
    /// ```
    ///
    /// # Errors
    ///
    /// [`RegionError::ArenaOutOfBounds`], [`RegionError::ReadOnly`].
    pub fn arena_ptr(&self, offset: u64, len: usize) -> Result<*mut u8, RegionError> {
        if !self.region.is_writable() {
            return Err(RegionError::ReadOnly);
        }
        self.region.byte_range(self.arena_range(offset, len)?, len)
    }

    /// Take the guest's ends of the slot's rings. Exactly one guest may hold them.
    ///
    /// # Errors
    ///
    /// [`RegionError::ReadOnly`].
    pub fn guest_endpoints(&self) -> Result<GuestEndpoints, RegionError> {
        Ok(GuestEndpoints {
            requests: Producer::new(MappedRing::new(&self.region, self.index, RingKind::Request)?),
            responses: Consumer::new(MappedRing::new(
                &self.region,
                self.index,
                RingKind::Response,
            )?),
        })
    }

    /// Take the host's ends of the slot's rings. Exactly one host thread may hold them.
    ///
    /// # Errors
    ///
    /// [`RegionError::ReadOnly`].
    pub fn host_endpoints(&self) -> Result<HostEndpoints, RegionError> {
        Ok(HostEndpoints {
            requests: Consumer::new(MappedRing::new(&self.region, self.index, RingKind::Request)?),
            responses: Producer::new(MappedRing::new(
                &self.region,
                self.index,
                RingKind::Response,
            )?),
        })
    }
}

impl ControlBlock for Slot {
    fn load(&self, word: ControlWord, order: Ordering) -> u32 {
        self.word(word.offset()).load(order)
    }

    /// Does nothing on a read-only mapping (storing there would fault).
    fn store(&self, word: ControlWord, value: u32, order: Ordering) {
        if let Ok(word) = self.writable_word(word.offset()) {
            word.store(value, order);
        }
    }

    /// Does nothing on a read-only mapping (storing there would fault).
    fn clear_publication_words(&self, order: Ordering) {
        let rings = (
            MappedRing::<Request>::new(&self.region, self.index, RingKind::Request),
            MappedRing::<Response>::new(&self.region, self.index, RingKind::Response),
        );
        let (Ok(requests), Ok(responses)) = rings else { return };
        for slot in 0..requests.capacity() {
            requests.store_ready(slot, 0, order);
            responses.store_ready(slot, 0, order);
        }
    }
}
