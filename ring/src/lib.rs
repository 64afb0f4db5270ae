//! The shared-memory contract between guests and the host mediator.
//!
//! - [`layout`]: region layout v2, the byte-exact wire structs (see `docs/LAYOUT.md`).
//! - Values carried on the wire: [`Opcode`], [`Status`], [`ErrorCode`].
//! - The SPSC ring algorithm, written once ([`Producer`], [`Consumer`]) over a
//!   [`RingBackend`]: [`MappedRing`] in a mapped region, [`HeapRing`] in private memory
//!   (the backend the loom models check).
//! - [`Region`]: creating, formatting, mapping and validating a region file or PCI BAR;
//!   [`Slot`]: one VM's slot of it (identity, status, arena, ring endpoints).
//! - [`PoolId`], [`Priority`], [`VmIdentity`]: who a VM is, each validated once.
//! - The reset handshake ([`request_reset`], [`take_reset_request`], ...), the wake-up
//!   flag protocol of doorbells ([`wakeup_wanted`], [`request_wakeup`], ...) and the
//!   SIGBUS protection of mappings ([`fault_count`], [`Region::is_faulted`]).
//!
//! This is the only crate of the project with `unsafe` code; every block states the
//! invariant it relies on.
//!
//! A guest and a host talking through one region (two mappings of the same file, as
//! QEMU's BAR and the host daemon have):
//!
//! ```
//! use std::sync::Arc;
//! use vgpu_ring::{Access, Geometry, PoolId, Priority, Region, Request, Response, VmIdentity};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("vgpu-vm1");
//! let geometry = Geometry { slot_count: 1, ring_entries: 64, arena_size: 1 << 16 };
//! let vm = VmIdentity { vm_id: 1, pool: PoolId::new(b'A').unwrap(), priority: Priority::HIGH };
//! // The host creates the region from its configuration and takes the host's ends.
//! let host_region = Arc::new(Region::create(&path, 1 << 20, geometry, &[vm.slot()], false)?);
//! let mut host = host_region.slot(0)?.host_endpoints()?;
//! // The guest maps the same file, checks it, and takes the guest's ends.
//! let guest_region = Arc::new(Region::open(&path, Access::ReadWrite)?);
//! let slot = guest_region.slot(0)?;
//! let mut guest = slot.guest_endpoints()?;
//! let claim = VmIdentity::from_slot(&slot.identity()).unwrap();
//! guest.requests.push(Request { tag: 1, opcode: 1, vm_id: claim.vm_id, pool: claim.pool.byte(),
//!     priority: claim.priority.get(), ..Request::default() }).unwrap();
//! // The host copies the request out once, checks it, and answers.
//! let request = host.requests.pop().unwrap();
//! assert!(vm.claimed_by(&request));
//! host.responses.push(Response::answer(&request, &vm, Ok(0))).unwrap();
//! assert_eq!(guest.responses.pop().unwrap().outcome(), Ok(0));
//! # Ok::<(), vgpu_ring::RegionError>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

mod bar;
mod heap;
mod hint;
mod identity;
pub mod layout;
mod mapped;
mod protocol;
mod region;
mod reset;
mod ring;
mod sigbus;
mod slot;
pub mod stub;
mod sync;
mod wakeup;

pub use bar::{DOORBELL_REGISTER, DoorbellRegister};
pub use heap::{HeapRing, heap_ring};
pub use identity::{PoolId, Priority, VmIdentity};
pub use layout::{
    Request, Response, RingEntry, SlotControl, SlotIdentity, decode_label, encode_label,
};
pub use mapped::{
    GuestEndpoints, HostEndpoints, MappedRing, RequestConsumer, RequestProducer, RequestWatch,
    ResponseConsumer, ResponseProducer,
};
pub use protocol::{ErrorCode, OpShape, Opcode, Status, response_text};
pub use region::{Access, Geometry, GeometryError, Region, RegionError, RingIndices};
pub use reset::{
    ControlBlock, ControlWord, HeapControl, complete_reset, request_reset, reset_completed,
    take_reset_request,
};
pub use ring::{Consumer, Producer, PushError, RingBackend, RingError};
pub use sigbus::fault_count;
pub use slot::Slot;
pub use sync::spin_hint;
pub use wakeup::{
    cancel_wakeup, doorbell_published, fence_before_rescan, publish_doorbell, request_wakeup,
    wakeup_wanted,
};
