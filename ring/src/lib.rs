//! The shared-memory contract between guests and the host mediator.
//!
//! - [`layout`]: region layout v1, the byte-exact wire structs (see `docs/LAYOUT.md`).
//! - Values carried on the wire: [`Opcode`], [`Status`], [`ErrorCode`].
//! - The SPSC ring algorithm, written once ([`Producer`], [`Consumer`]) over a
//!   [`RingBackend`]: [`MappedRing`] in a mapped region, [`HeapRing`] in private memory
//!   (the backend the loom models check).
//! - [`Region`]: creating, formatting, mapping and validating a region file or PCI BAR.
//!
//! This is the only crate of the project with `unsafe` code; every block states the
//! invariant it relies on.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

mod heap;
pub mod layout;
mod mapped;
mod protocol;
mod region;
mod reset;
mod ring;
mod sigbus;
pub mod stub;
mod sync;

pub use heap::{HeapRing, heap_ring};
pub use layout::{Request, Response, SlotControl, SlotIdentity, decode_label, encode_label};
pub use mapped::{
    GuestEndpoints, HeadWatch, HostEndpoints, MappedRing, RequestConsumer, RequestProducer,
    ResponseConsumer, ResponseProducer, guest_endpoints, host_endpoints,
};
pub use protocol::{
    ErrorCode, MAX_PRIORITY, OpShape, Opcode, Status, priority_name, response_text,
};
pub use region::{Access, Geometry, Region, RegionError, RingIndices, SlotControlWords};
pub use reset::{
    ControlBlock, ControlWord, HeapControl, complete_reset, request_reset, reset_completed,
    take_reset_request,
};
pub use ring::{Consumer, Producer, PushError, RingBackend, RingError};
pub use sigbus::fault_count;
pub use sync::spin_hint;
