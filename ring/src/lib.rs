//! The shared-memory contract between guests and the host mediator.
//!
//! - [`layout`]: region layout v1, the byte-exact wire structs (see `docs/LAYOUT.md`).
//! - Values carried on the wire: [`Opcode`], [`Status`], [`ErrorCode`].
//! - The SPSC ring algorithm, written once ([`Producer`], [`Consumer`]) over a
//!   [`RingBackend`]: [`MappedRing`] in a mapped region, [`HeapRing`] in private memory
//!   (the backend the loom models check).
//! - [`Region`]: creating, formatting, mapping and validating a region file or PCI BAR;
//!   [`Slot`]: one VM's slot of it (identity, status, arena, ring endpoints).
//! - [`PoolId`], [`Priority`], [`VmIdentity`]: who a VM is, each validated once.
//! - The reset handshake ([`request_reset`], [`take_reset_request`], ...) and the
//!   SIGBUS protection of mappings ([`fault_count`], [`Region::is_faulted`]).
//!
//! This is the only crate of the project with `unsafe` code; every block states the
//! invariant it relies on.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

mod heap;
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

pub use heap::{HeapRing, heap_ring};
pub use identity::{PoolId, Priority, VmIdentity};
pub use layout::{Request, Response, SlotControl, SlotIdentity, decode_label, encode_label};
pub use mapped::{
    GuestEndpoints, HeadWatch, HostEndpoints, MappedRing, RequestConsumer, RequestProducer,
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
