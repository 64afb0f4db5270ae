//! Region layout v2: the byte-exact contract across the VM boundary.
//!
//! Every struct here is `#[repr(C)]` with explicit padding, derives zerocopy's traits
//! (the `IntoBytes` derive rejects hidden padding) and has its size and every field
//! offset pinned at compile time. `docs/LAYOUT.md` describes the same bytes for people
//! implementing a guest in another language; the two must change together.
//!
//! All multi-byte fields are little-endian (the only byte order this crate builds for).

use crate::identity::{PoolId, Priority};
use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `magic` of a formatted region: the ASCII bytes `VGPURING`, read as a little-endian u64.
pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"VGPURING");
/// Major layout version: a guest or host must refuse a region with another major.
pub const VERSION_MAJOR: u16 = 2;
/// Minor layout version: additions that older readers may ignore.
pub const VERSION_MINOR: u16 = 0;
/// Value of the header's `init` word once formatting is complete (ASCII `REDY`).
pub const INIT_READY: u32 = u32::from_le_bytes(*b"REDY");
/// Size of the header page and of each slot's control block.
pub const PAGE_SIZE: usize = 4096;
/// Size of one request or response entry: one cache line.
pub const ENTRY_SIZE: usize = 64;
/// Most VM slots one region can hold.
pub const MAX_SLOTS: u32 = 1024;
/// Fewest entries a ring may have.
pub const MIN_RING_ENTRIES: u32 = 2;
/// Most entries a ring may have.
pub const MAX_RING_ENTRIES: u32 = 1 << 16;
/// Length of the ASCII label carried by requests and responses.
pub const LABEL_LEN: usize = 20;
/// Byte offset of the request ring's producer index inside a slot control block.
pub const REQ_HEAD_OFFSET: usize = 128;
/// Byte offset of the request ring's consumer index inside a slot control block.
pub const REQ_TAIL_OFFSET: usize = 256;
/// Byte offset of the guest's reset request word inside a slot control block (on the
/// request ring producer's line: the host reads it with the index it polls anyway).
pub const RESET_REQUEST_OFFSET: usize = 132;
/// Byte offset of the host's reset-done word inside a slot control block (on the line
/// the host writes).
pub const RESET_DONE_OFFSET: usize = 260;
/// Byte offset of the host's `need_wakeup` flag inside a slot control block (layout
/// 1.2; on the line the host writes and the guest reads for free space anyway).
pub const NEED_WAKEUP_OFFSET: usize = 264;
/// Byte offset of the host's doorbell word inside a slot control block (layout 1.2).
pub const DOORBELL_OFFSET: usize = 268;
/// Byte offset of the response ring's producer index inside a slot control block.
pub const RESP_HEAD_OFFSET: usize = 384;
/// Byte offset of the response ring's consumer index inside a slot control block.
pub const RESP_TAIL_OFFSET: usize = 512;

/// The header page at offset 0 of every region.
///
/// Written by the formatter (`ivshmem-setup create`, and a mediator re-stamping it at
/// attach) except the mediator line (`epoch`, `heartbeat_ns`, `mediator_pid`,
/// `heartbeat_interval_ms`), which lives on its own cache line and is accessed
/// atomically.
///
/// ```
/// use zerocopy::FromBytes;
/// use vgpu_ring::layout::{PAGE_SIZE, REGION_MAGIC, RegionHeader, VERSION_MAJOR};
/// # use vgpu_ring::{Geometry, Region};
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("vm1");
/// # Region::create(&path, 1 << 16, Geometry { slot_count: 1, ring_entries: 16, arena_size: 4096 }, &[], false)?;
/// // The first page of a region file, as a C program would read it.
/// let bytes = std::fs::read(&path)?;
/// let header = RegionHeader::read_from_bytes(&bytes[..PAGE_SIZE]).expect("one page");
/// assert_eq!((header.magic, header.version_major), (REGION_MAGIC, VERSION_MAJOR));
/// assert_eq!((header.region_size, header.ring_entries, header.epoch), (1 << 16, 16, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RegionHeader {
    /// [`REGION_MAGIC`].
    pub magic: u64,
    /// [`VERSION_MAJOR`].
    pub version_major: u16,
    /// [`VERSION_MINOR`].
    pub version_minor: u16,
    /// [`INIT_READY`] once the formatter has written everything else; 0 before.
    pub init: u32,
    /// Size of the whole region in bytes (a power of two).
    pub region_size: u64,
    /// Number of VM slots.
    pub slot_count: u32,
    /// Entries per ring (a power of two).
    pub ring_entries: u32,
    /// Bytes per ring entry ([`ENTRY_SIZE`]).
    pub entry_size: u32,
    /// Bytes of each slot's control block ([`PAGE_SIZE`]).
    pub slot_control_size: u32,
    /// Bytes of each slot's data arena.
    pub arena_size: u32,
    /// Reserved, zero.
    pub reserved0: u32,
    /// Offset of slot 0 from the start of the region.
    pub slots_offset: u64,
    /// Distance between consecutive slots.
    pub slot_stride: u64,
    /// Reserved, zero.
    pub reserved1: [u8; 64],
    /// Mediator session epoch: a new non-zero value at each mediator start, 0 if none ran.
    pub epoch: u64,
    /// Mediator heartbeat: host `CLOCK_MONOTONIC` in nanoseconds, refreshed periodically.
    pub heartbeat_ns: u64,
    /// Process id of the mediator that wrote `epoch`.
    pub mediator_pid: u32,
    /// How often the mediator refreshes `heartbeat_ns`, in milliseconds.
    pub heartbeat_interval_ms: u32,
    /// Reserved, zero.
    pub reserved2: [u8; 104],
    /// Reserved (layout 1.0 called it a pending-work bitmap; nothing reads it: the
    /// mediator polls each slot's next request entry). A guest may write it.
    pub reserved_pending: [u64; (MAX_SLOTS / 64) as usize],
    /// Reserved, zero; pads the header to one page.
    pub reserved3: [u8; 3712],
}

const_assert_eq!(size_of::<RegionHeader>(), PAGE_SIZE);
const_assert_eq!(offset_of!(RegionHeader, magic), 0);
const_assert_eq!(offset_of!(RegionHeader, version_major), 8);
const_assert_eq!(offset_of!(RegionHeader, version_minor), 10);
const_assert_eq!(offset_of!(RegionHeader, init), 12);
const_assert_eq!(offset_of!(RegionHeader, region_size), 16);
const_assert_eq!(offset_of!(RegionHeader, slot_count), 24);
const_assert_eq!(offset_of!(RegionHeader, ring_entries), 28);
const_assert_eq!(offset_of!(RegionHeader, entry_size), 32);
const_assert_eq!(offset_of!(RegionHeader, slot_control_size), 36);
const_assert_eq!(offset_of!(RegionHeader, arena_size), 40);
const_assert_eq!(offset_of!(RegionHeader, reserved0), 44);
const_assert_eq!(offset_of!(RegionHeader, slots_offset), 48);
const_assert_eq!(offset_of!(RegionHeader, slot_stride), 56);
const_assert_eq!(offset_of!(RegionHeader, reserved1), 64);
const_assert_eq!(offset_of!(RegionHeader, epoch), 128);
const_assert_eq!(offset_of!(RegionHeader, heartbeat_ns), 136);
const_assert_eq!(offset_of!(RegionHeader, mediator_pid), 144);
const_assert_eq!(offset_of!(RegionHeader, heartbeat_interval_ms), 148);
const_assert_eq!(offset_of!(RegionHeader, reserved2), 152);
const_assert_eq!(offset_of!(RegionHeader, reserved_pending), 256);
const_assert_eq!(offset_of!(RegionHeader, reserved3), 384);

/// Identity of the VM that owns a slot, written by the host; the guest only reads it.
///
/// ```
/// use zerocopy::IntoBytes;
/// use vgpu_ring::{PoolId, Priority, SlotIdentity};
/// let id = SlotIdentity::new(100, PoolId::new(b'A').unwrap(), Priority::HIGH);
/// // Four little-endian words: vm id, pool byte, priority, flags.
/// assert_eq!(id.as_bytes(), [100, 0, 0, 0, b'A', 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SlotIdentity {
    /// VM id.
    pub vm_id: u32,
    /// Pool id: the pool's one-character name as an ASCII byte (`b'A'` = 0x41).
    pub pool: u32,
    /// Priority: 0 low, 1 medium, 2 high.
    pub priority: u32,
    /// Bit 0 ([`SlotIdentity::ASSIGNED`]) set once the host assigned this slot.
    pub flags: u32,
}

impl SlotIdentity {
    /// `flags` bit: the host has assigned this slot to a VM.
    pub const ASSIGNED: u32 = 1;

    /// An assigned identity.
    ///
    /// ```
    /// use vgpu_ring::{PoolId, Priority, SlotIdentity};
    /// let id = SlotIdentity::new(7, PoolId::new(b'A').unwrap(), Priority::HIGH);
    /// assert_eq!((id.pool_id(), id.priority_level()), (PoolId::new(b'A'), Some(Priority::HIGH)));
    /// ```
    #[must_use]
    pub const fn new(vm_id: u32, pool: PoolId, priority: Priority) -> Self {
        Self {
            vm_id,
            pool: pool.byte() as u32,
            priority: priority.get() as u32,
            flags: Self::ASSIGNED,
        }
    }

    /// The pool, if the word holds a valid one (a guest may have written anything).
    ///
    /// ```
    /// use vgpu_ring::{PoolId, SlotIdentity};
    /// let mut id = SlotIdentity::new(1, PoolId::new(b'A').unwrap(), vgpu_ring::Priority::LOW);
    /// assert_eq!(id.pool_id(), PoolId::new(b'A'));
    /// id.pool = 0x0a; // a newline: not a pool name
    /// assert_eq!(id.pool_id(), None);
    /// ```
    #[must_use]
    pub fn pool_id(&self) -> Option<PoolId> {
        PoolId::try_from(self.pool).ok()
    }

    /// The priority, if the word holds a valid one.
    ///
    /// ```
    /// use vgpu_ring::{PoolId, Priority, SlotIdentity};
    /// let mut id = SlotIdentity::new(1, PoolId::new(b'A').unwrap(), Priority::MEDIUM);
    /// assert_eq!(id.priority_level(), Some(Priority::MEDIUM));
    /// id.priority = 3;
    /// assert_eq!(id.priority_level(), None);
    /// ```
    #[must_use]
    pub fn priority_level(&self) -> Option<Priority> {
        Priority::try_from(self.priority).ok()
    }

    /// Whether the host assigned this slot.
    ///
    /// ```
    /// use vgpu_ring::{PoolId, Priority, SlotIdentity};
    /// assert!(SlotIdentity::new(1, PoolId::new(b'A').unwrap(), Priority::LOW).is_assigned());
    /// assert!(!SlotIdentity { vm_id: 0, pool: 0, priority: 0, flags: 0 }.is_assigned());
    /// ```
    #[must_use]
    pub const fn is_assigned(&self) -> bool {
        self.flags & Self::ASSIGNED != 0
    }
}

const_assert_eq!(size_of::<SlotIdentity>(), 16);
const_assert_eq!(offset_of!(SlotIdentity, vm_id), 0);
const_assert_eq!(offset_of!(SlotIdentity, pool), 4);
const_assert_eq!(offset_of!(SlotIdentity, priority), 8);
const_assert_eq!(offset_of!(SlotIdentity, flags), 12);

/// The first page of every slot: identity, host status and the four ring indices, each
/// index alone on a 128-byte line (two cache lines, against adjacent-line prefetching).
///
/// ```
/// use zerocopy::FromBytes;
/// use vgpu_ring::layout::{PAGE_SIZE, RegionHeader, SlotControl};
/// # use vgpu_ring::{Geometry, PoolId, Priority, Region, SlotIdentity};
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("vm7");
/// # let id = SlotIdentity::new(7, PoolId::new(b'B').unwrap(), Priority::HIGH);
/// # Region::create(&path, 1 << 16, Geometry { slot_count: 1, ring_entries: 16, arena_size: 4096 }, &[id], false)?;
/// # let bytes = std::fs::read(&path)?;
/// let header = RegionHeader::read_from_bytes(&bytes[..PAGE_SIZE]).expect("one page");
/// let at = header.slots_offset as usize;
/// let control = SlotControl::read_from_bytes(&bytes[at..at + PAGE_SIZE]).expect("one page");
/// assert_eq!((control.identity.vm_id, control.req_head, control.host_status), (7, 0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SlotControl {
    /// Host-written identity.
    pub identity: SlotIdentity,
    /// Host-written status bits: [`SlotControl::RESPONSE_POISONED`].
    pub host_status: u32,
    /// Process id of the attached client (informational, written by the client).
    pub client_pid: u32,
    /// Reserved, zero.
    pub reserved0: [u8; 104],
    /// Request ring producer index (guest writes, free-running u32).
    pub req_head: u32,
    /// Reset handshake (layout 1.1), guest-written: the guest stores `reset_done + 1`
    /// to ask the host to reset the slot's rings.
    pub reset_request: u32,
    /// Reserved, zero.
    pub pad_req_head: [u8; 120],
    /// Request ring consumer index (host writes).
    pub req_tail: u32,
    /// Reset handshake (layout 1.1), host-written: the last reset request the host
    /// carried out.
    pub reset_done: u32,
    /// Wake-up flag (layout 1.2), host-written: non-zero while the host is about to
    /// sleep and wants the doorbell rung after the next publication (see
    /// [`crate::wakeup_wanted`]).
    pub need_wakeup: u32,
    /// Doorbell (layout 1.2), host-written: [`SlotControl::DOORBELL_PRESENT`] set when the
    /// VM has a doorbell the host listens on, and in the low 31 bits the value the guest
    /// writes to ring it (`host_peer_id << 16 | vector`, ivshmem's Doorbell register).
    pub doorbell: u32,
    /// Reserved, zero.
    pub pad_req_tail: [u8; 112],
    /// Response ring producer index (host writes).
    pub resp_head: u32,
    /// Reserved, zero.
    pub pad_resp_head: [u8; 124],
    /// Response ring consumer index (guest writes).
    pub resp_tail: u32,
    /// Reserved, zero.
    pub pad_resp_tail: [u8; 124],
    /// Reserved, zero; pads the control block to one page.
    pub reserved1: [u8; 3456],
}

impl SlotControl {
    /// `host_status` bit: the host found the response ring's consumer index corrupt.
    /// (Bit 0 is reserved: layout 1 used it for a request ring whose indices the host
    /// found corrupt; a layout-2 consumer never reads the producer's index to be misled.)
    pub const RESPONSE_POISONED: u32 = 2;
    /// `doorbell` bit: the host listens on a doorbell for this VM.
    pub const DOORBELL_PRESENT: u32 = 1 << 31;
}

const_assert_eq!(size_of::<SlotControl>(), PAGE_SIZE);
const_assert_eq!(offset_of!(SlotControl, identity), 0);
const_assert_eq!(offset_of!(SlotControl, host_status), 16);
const_assert_eq!(offset_of!(SlotControl, client_pid), 20);
const_assert_eq!(offset_of!(SlotControl, reserved0), 24);
const_assert_eq!(offset_of!(SlotControl, req_head), REQ_HEAD_OFFSET);
const_assert_eq!(offset_of!(SlotControl, reset_request), RESET_REQUEST_OFFSET);
const_assert_eq!(offset_of!(SlotControl, req_tail), REQ_TAIL_OFFSET);
const_assert_eq!(offset_of!(SlotControl, reset_done), RESET_DONE_OFFSET);
const_assert_eq!(offset_of!(SlotControl, need_wakeup), NEED_WAKEUP_OFFSET);
const_assert_eq!(offset_of!(SlotControl, doorbell), DOORBELL_OFFSET);
const_assert_eq!(offset_of!(SlotControl, resp_head), RESP_HEAD_OFFSET);
const_assert_eq!(offset_of!(SlotControl, resp_tail), RESP_TAIL_OFFSET);
const_assert_eq!(offset_of!(SlotControl, reserved1), 640);

/// One request: guest to host, one cache line.
///
/// ```
/// use zerocopy::IntoBytes;
/// use vgpu_ring::{Opcode, Request, encode_label};
/// let request = Request {
///     tag: 1,
///     opcode: Opcode::VectorAdd as u16,
///     label: encode_label("VECTOR_ADD"),
///     in_len: 8,
///     out_offset: 64,
///     out_len: 4,
///     args: [1, 0, 0],
///     ..Request::default()
/// };
/// assert_eq!(request.as_bytes().len(), 64, "one cache line");
/// ```
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Request {
    /// Chosen by the guest; echoed in the response.
    pub tag: u32,
    /// An [`Opcode`](crate::Opcode) value.
    pub opcode: u16,
    /// Pool the guest believes it belongs to (ASCII byte).
    pub pool: u8,
    /// Priority the guest believes it has (0–2).
    pub priority: u8,
    /// VM id the guest believes it has.
    pub vm_id: u32,
    /// Command name, ASCII, NUL-padded (e.g. `VECTOR_ADD`, `TEST_HIGH`).
    pub label: [u8; LABEL_LEN],
    /// Input range in the slot's arena: offset.
    pub in_offset: u32,
    /// Input range in the slot's arena: length in bytes.
    pub in_len: u32,
    /// Output range in the slot's arena: offset.
    pub out_offset: u32,
    /// Output range in the slot's arena: capacity in bytes.
    pub out_len: u32,
    /// Operation arguments (see the opcode's documentation).
    pub args: [u32; 3],
    /// Publication word (layout 2): the producer stores the entry's ring position + 1
    /// here after the rest of the entry (Release); the consumer reads the entry only
    /// once this word equals its position + 1 (Acquire). See the ring module.
    pub ready: u32,
}

const_assert_eq!(size_of::<Request>(), ENTRY_SIZE);
const_assert_eq!(offset_of!(Request, tag), 0);
const_assert_eq!(offset_of!(Request, opcode), 4);
const_assert_eq!(offset_of!(Request, pool), 6);
const_assert_eq!(offset_of!(Request, priority), 7);
const_assert_eq!(offset_of!(Request, vm_id), 8);
const_assert_eq!(offset_of!(Request, label), 12);
const_assert_eq!(offset_of!(Request, in_offset), 32);
const_assert_eq!(offset_of!(Request, in_len), 36);
const_assert_eq!(offset_of!(Request, out_offset), 40);
const_assert_eq!(offset_of!(Request, out_len), 44);
const_assert_eq!(offset_of!(Request, args), 48);
const_assert_eq!(offset_of!(Request, ready), 60);

/// One response: host to guest, one cache line.
///
/// ```
/// use vgpu_ring::{Response, Status, decode_label, encode_label};
/// let response = Response { tag: 1, status: Status::Success as u32, label: encode_label("PING"), ..Response::default() };
/// assert_eq!((response.outcome(), decode_label(&response.label)), (Ok(0), "PING".to_owned()));
/// ```
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Response {
    /// The request's tag.
    pub tag: u32,
    /// A [`Status`](crate::Status) value: 1 success, 2 error (0 is never published).
    pub status: u32,
    /// An [`ErrorCode`](crate::ErrorCode) value; 0 on success.
    pub error: u32,
    /// Bytes written to the request's output range.
    pub out_len: u32,
    /// VM id of the slot, as the host knows it.
    pub vm_id: u32,
    /// Pool of the slot, as the host knows it (ASCII byte).
    pub pool: u8,
    /// Priority of the slot, as the host knows it.
    pub priority: u8,
    /// The request's opcode.
    pub opcode: u16,
    /// The request's label.
    pub label: [u8; LABEL_LEN],
    /// Publication word (layout 2), as [`Request::ready`].
    pub ready: u32,
    /// Nanoseconds the request waited in the pool's queue.
    pub queued_ns: u64,
    /// Nanoseconds the operation took to execute.
    pub exec_ns: u64,
}

const_assert_eq!(size_of::<Response>(), ENTRY_SIZE);
const_assert_eq!(offset_of!(Response, tag), 0);
const_assert_eq!(offset_of!(Response, status), 4);
const_assert_eq!(offset_of!(Response, error), 8);
const_assert_eq!(offset_of!(Response, out_len), 12);
const_assert_eq!(offset_of!(Response, vm_id), 16);
const_assert_eq!(offset_of!(Response, pool), 20);
const_assert_eq!(offset_of!(Response, priority), 21);
const_assert_eq!(offset_of!(Response, opcode), 22);
const_assert_eq!(offset_of!(Response, label), 24);
const_assert_eq!(offset_of!(Response, ready), 44);
const_assert_eq!(offset_of!(Response, queued_ns), 48);
const_assert_eq!(offset_of!(Response, exec_ns), 56);

/// An entry of the mapped rings: a 64-byte wire struct with a publication word.
///
/// ```
/// use vgpu_ring::{Request, Response, RingEntry};
/// // The last word of a request; in a response, the one before the timings.
/// assert_eq!((Request::READY_OFFSET, Response::READY_OFFSET), (60, 44));
/// ```
pub trait RingEntry: FromBytes + IntoBytes + Immutable + Copy {
    /// Byte offset of its `ready` word (a 4-byte aligned `u32`).
    const READY_OFFSET: usize;
}

impl RingEntry for Request {
    const READY_OFFSET: usize = offset_of!(Request, ready);
}

impl RingEntry for Response {
    const READY_OFFSET: usize = offset_of!(Response, ready);
}

/// Encode a label: ASCII, truncated to [`LABEL_LEN`] bytes, NUL-padded.
///
/// ```
/// use vgpu_ring::{encode_label, layout::LABEL_LEN};
/// let label = encode_label("TEST HIGH");
/// assert_eq!(&label[..9], b"TEST?HIGH");
/// assert_eq!(label[9..], [0; LABEL_LEN - 9]);
/// assert_eq!(encode_label(&"X".repeat(40)), [b'X'; LABEL_LEN], "truncated");
/// ```
#[must_use]
pub fn encode_label(text: &str) -> [u8; LABEL_LEN] {
    let mut label = [0u8; LABEL_LEN];
    for (dst, src) in label.iter_mut().zip(text.bytes()) {
        *dst = if src.is_ascii_graphic() { src } else { b'?' };
    }
    label
}

/// Decode a label received from a peer: bytes up to the first NUL; anything that is not
/// printable ASCII becomes `?`, so a hostile label cannot inject control characters into
/// logs.
///
/// ```
/// use vgpu_ring::{decode_label, layout::LABEL_LEN};
/// let mut label = [0; LABEL_LEN];
/// label[..6].copy_from_slice(b"OK\x1b[2J");
/// assert_eq!(decode_label(&label), "OK?[2J", "no escape sequence reaches a log");
/// ```
#[must_use]
pub fn decode_label(label: &[u8; LABEL_LEN]) -> String {
    label
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_are_sanitised() {
        assert_eq!(decode_label(&encode_label("VECTOR_ADD")), "VECTOR_ADD");
        let long = "A".repeat(40);
        assert_eq!(decode_label(&encode_label(&long)).len(), LABEL_LEN);
        let mut hostile = [0u8; LABEL_LEN];
        hostile[..4].copy_from_slice(b"a\nb\x1b");
        assert_eq!(decode_label(&hostile), "a?b?");
    }

    #[test]
    fn magic_reads_as_ascii() {
        assert_eq!(&REGION_MAGIC.to_le_bytes(), b"VGPURING");
        assert_eq!(&INIT_READY.to_le_bytes(), b"REDY");
    }
}
