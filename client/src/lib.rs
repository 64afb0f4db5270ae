//! The guest library: attach to the VM's region, submit GPU requests to the host
//! mediator through the request ring and collect the answers from the response ring.
//!
//! In a guest, `Client::attach(&ClientOptions::default())` finds the ivshmem device in
//! sysfs. On a host, name a region file: the examples of this crate attach to a
//! temporary region served by the real mediator on a thread
//! (`vgpu_mediator::sandbox::Sandbox`), so each of them runs as a test.
//!
//! ```
//! use vgpu_client::{Call, Client, ClientOptions};
//! # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
//! let options = ClientOptions { region: Some(sandbox.region().into()), ..ClientOptions::default() };
//! let mut client = Client::attach(&options)?;
//! let sum = client.vector_add(&[1.0, 2.0], &[10.0, 20.0])?;
//! assert_eq!(sum, [11.0, 22.0]);
//! // Pipelining: several requests in flight, then collect them.
//! let tickets: Vec<_> = (0..8).map(|_| client.submit(&Call::noop("PING"))).collect::<Result<_, _>>()?;
//! for t in tickets {
//!     client.wait(t, std::time::Duration::from_secs(1))?;
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod arena;
pub mod discover;
mod tags;

use arena::ArenaAllocator;
pub use discover::IdentitySource;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use tags::Tickets;
use tags::{Delivery, TagTable};
use thiserror::Error;
use vgpu_ring::stub::StubFileError;
use vgpu_ring::{
    ErrorCode, GuestEndpoints, Opcode, PushError, Region, RegionError, Request, Response,
    RingError, Slot, VmIdentity, encode_label,
};
use zerocopy::IntoBytes;

/// Why a client that cannot ring a doorbell the host sleeps on says so.
const NO_RING_WARNING: &str = "the host sleeps on this VM's doorbell when idle, but this \
    program cannot ring it (in a guest: no write access to the ivshmem device's resource0; \
    on the host: no doorbell socket given): a request after an idle spell waits for the \
    host's next timed wake-up, up to five heartbeat intervals (500 ms at the defaults)";

/// Everything that can go wrong for a client.
///
/// ```
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
/// # let mut client = vgpu_client::Client::attach(&options)?;
/// use vgpu_client::ClientError;
/// use vgpu_ring::ErrorCode;
/// // Vectors of different lengths are refused before anything is sent.
/// let e = client.vector_add(&[1.0], &[1.0, 2.0]).unwrap_err();
/// assert!(matches!(e, ClientError::InvalidArgument(_)), "{e}");
/// // The host refuses a shape it cannot hold: status 2 with the mediator's code.
/// let huge = vgpu_client::Call { args: [u32::MAX, 0, 0], ..vgpu_client::Call::noop("X") };
/// let huge = vgpu_client::Call { op: vgpu_ring::Opcode::VectorAdd, ..huge };
/// match client.call(&huge)?.response.outcome() {
///     Err(code) => assert_ne!(code, ErrorCode::ShuttingDown),
///     Ok(_) => unreachable!("{} floats cannot fit", u32::MAX),
/// }
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Error)]
pub enum ClientError {
    /// No ivshmem device holds a vgpu region.
    #[error("no vgpu region found under {searched}: {details}")]
    NoDevice {
        /// The sysfs directory searched.
        searched: PathBuf,
        /// What was found instead.
        details: String,
    },
    /// The region could not be opened or is invalid (wrong magic, version, ...).
    #[error("region: {0}")]
    Region(#[from] RegionError),
    /// The vgpu-stub registers could not be read.
    #[error("vgpu-stub: {0}")]
    Stub(#[from] StubFileError),
    /// The host never assigned the slot and there is no stub to say who we are.
    #[error("the region's slot has no identity and no vgpu-stub device was found")]
    NoIdentity,
    /// The VM's doorbell socket could not be used (no holder, another peer connected).
    #[error("doorbell socket {}: {source}", path.display())]
    Doorbell {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No mediator has attached to the region since it was created.
    #[error("no mediator has attached to this region (is vgpu-mediator running?)")]
    NoMediator,
    /// The caller's timeout expired while the mediator's heartbeat stood still.
    #[error("the mediator is not responding (no heartbeat for {:.1} s)", .0.as_secs_f64())]
    MediatorDead(Duration),
    /// The host isolated the slot's rings (it found an index impossible); the client
    /// resets them when it attaches, or with [`Client::reset_rings`].
    #[error(
        "the mediator isolated this slot's rings as corrupt (host status {0:#x}); reattach or reset them"
    )]
    Poisoned(u32),
    /// The region file shrank under the mapping (host processes only): its contents
    /// are gone.
    #[error("the region file shrank under this client's mapping; reattach")]
    RegionLost,
    /// Another client holds the slot.
    #[error("slot in use by pid {pid} (one client per VM; pass --wait-slot to wait)")]
    SlotInUse {
        /// The other client's pid, as it recorded it.
        pid: u32,
    },
    /// Locking the region file failed.
    #[error("lock {path}: {source}")]
    Lock {
        /// The region.
        path: PathBuf,
        /// The error.
        source: nix::Error,
    },
    /// The request ring is full: complete some requests first.
    #[error("request ring full ({0} requests in flight)")]
    RingFull(usize),
    /// The arena has no room for the buffers: complete some requests first.
    #[error("no room in the arena for {0} bytes")]
    ArenaFull(u64),
    /// A ring endpoint found the mediator's index corrupt.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The request was not answered in time.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The mediator answered with status 2.
    #[error("request failed: {0}")]
    Failed(ErrorCode),
    /// The arguments are inconsistent (e.g. vectors of different lengths).
    #[error("invalid arguments: {0}")]
    InvalidArgument(String),
}

/// The numbers of the client's errors in other languages (the C library's `VGPU_E_*`,
/// the Python package's `code`): negative, next to the mediator's positive error codes
/// (see [`ClientError::code`]).
pub mod codes {
    /// [`ClientError::InvalidArgument`](crate::ClientError::InvalidArgument).
    pub const INVALID: i32 = -1;
    /// No device.
    pub const NO_DEVICE: i32 = -2;
    /// The region or the vgpu-stub cannot be used (or was lost).
    pub const REGION: i32 = -3;
    /// No mediator serves the region, or it stopped answering.
    pub const NO_MEDIATOR: i32 = -4;
    /// No answer in time.
    pub const TIMEOUT: i32 = -5;
    /// The ring or the arena is full, or another client holds the slot.
    pub const BUSY: i32 = -6;
    /// The slot's rings are corrupt.
    pub const POISONED: i32 = -7;
    /// The doorbell socket cannot be used.
    pub const DOORBELL: i32 = -8;
}

impl ClientError {
    /// The error's number for other languages: the mediator's error code (1..=9) for
    /// [`ClientError::Failed`], else one of [`codes`].
    ///
    /// ```
    /// use vgpu_client::{ClientError, codes};
    /// use vgpu_ring::ErrorCode;
    /// assert_eq!(ClientError::Failed(ErrorCode::BadShape).code(), 4);
    /// assert_eq!(ClientError::RingFull(8).code(), codes::BUSY);
    /// ```
    #[must_use]
    pub fn code(&self) -> i32 {
        match self {
            Self::Failed(code) => *code as i32,
            Self::InvalidArgument(_) => codes::INVALID,
            Self::NoDevice { .. } => codes::NO_DEVICE,
            Self::Region(_)
            | Self::Stub(_)
            | Self::NoIdentity
            | Self::Lock { .. }
            | Self::RegionLost => codes::REGION,
            Self::NoMediator | Self::MediatorDead(_) => codes::NO_MEDIATOR,
            Self::Timeout(_) => codes::TIMEOUT,
            Self::RingFull(_) | Self::ArenaFull(_) | Self::SlotInUse { .. } => codes::BUSY,
            Self::Poisoned(_) | Self::Ring(_) => codes::POISONED,
            Self::Doorbell { .. } => codes::DOORBELL,
        }
    }
}

/// How a waiting client polls.
///
/// ```
/// use std::time::Duration;
/// use vgpu_client::{ClientOptions, Wait};
/// // Lowest latency: a core polls while a call waits.
/// let spinning = ClientOptions { wait: Wait::Spin, ..ClientOptions::default() };
/// // The default: 200 µs of polling, then sleeps of up to 500 µs.
/// let gentle = Wait::Adaptive { spin: Duration::from_micros(200), max_sleep: Duration::from_micros(500) };
/// assert_eq!(ClientOptions::default().wait, gentle);
/// # let _ = spinning;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Busy-poll without pause: lowest latency, one core busy while waiting.
    Spin,
    /// Busy-poll for `spin`, then yield, then sleep with a growing interval up to
    /// `max_sleep`.
    Adaptive {
        /// How long to busy-poll first.
        spin: Duration,
        /// Longest sleep between polls.
        max_sleep: Duration,
    },
}

impl Default for Wait {
    fn default() -> Self {
        Self::Adaptive { spin: Duration::from_micros(200), max_sleep: Duration::from_micros(500) }
    }
}

/// How to attach.
///
/// ```
/// use std::time::Duration;
/// use vgpu_client::ClientOptions;
/// // In a guest the defaults find the ivshmem device; on a host, name the region file.
/// let options = ClientOptions {
///     region: Some("/dev/shm/vgpu-vm1".into()),
///     timeout: Duration::from_secs(5),
///     ..ClientOptions::default()
/// };
/// assert!(options.doorbell_socket.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The region file; `None` searches the ivshmem devices under `sysfs_root`.
    pub region: Option<PathBuf>,
    /// The vgpu-stub register file; `None` tries [`discover::DEFAULT_STUB`] and falls
    /// back to the identity in the region.
    pub stub: Option<PathBuf>,
    /// Root of sysfs (`/sys`), configurable for tests.
    pub sysfs_root: PathBuf,
    /// Waiting strategy.
    pub wait: Wait,
    /// Wait for another client to release the slot instead of failing.
    pub wait_for_slot: bool,
    /// Default timeout of the typed helpers.
    pub timeout: Duration,
    /// On the host, stand in for the VM's QEMU: connect to the VM's doorbell socket,
    /// map the region it sends (when `region` is `None`) and ring the host's eventfd
    /// when the mediator asks for it. In a guest the doorbell is found by itself (the
    /// device's `resource0` next to the region's `resource2`).
    pub doorbell_socket: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            region: None,
            stub: None,
            sysfs_root: PathBuf::from("/sys"),
            wait: Wait::default(),
            wait_for_slot: false,
            timeout: Duration::from_secs(30),
            doorbell_socket: None,
        }
    }
}

/// A request to submit.
///
/// ```
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
/// # let mut client = vgpu_client::Client::attach(&options)?;
/// use vgpu_client::Call;
/// use vgpu_ring::Opcode;
/// let bytes = [1u8, 2, 3, 4];
/// let echo = Call { op: Opcode::Echo, label: "ECHO", args: [0; 3], input: &bytes, output_len: 4 };
/// assert_eq!(client.call(&echo)?.output, bytes);
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// The operation.
    pub op: Opcode,
    /// The label (command name) shown in the mediator's log.
    pub label: &'a str,
    /// Operation arguments.
    pub args: [u32; 3],
    /// Input bytes, copied into the arena.
    pub input: &'a [u8],
    /// Output capacity to reserve in the arena.
    pub output_len: u32,
}

impl<'a> Call<'a> {
    /// A NOOP carrying `label` (the original protocol's plain commands, e.g. `TEST_HIGH`).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let done = client.call(&vgpu_client::Call::noop("TEST_HIGH"))?;
    /// assert!(done.succeeded());
    /// assert!(done.text().ends_with("TEST_HIGH (prio=1, vm=1)"), "{}", done.text());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn noop(label: &'a str) -> Self {
        Self { op: Opcode::Noop, label, args: [0; 3], input: &[], output_len: 0 }
    }

    /// A SLEEP that occupies the pool for `us` microseconds.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let done = client.call(&vgpu_client::Call::sleep(1000))?;
    /// assert!(done.response.exec_ns >= 1_000_000);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn sleep(us: u32) -> Self {
        Self { op: Opcode::Sleep, label: "SLEEP", args: [us, 0, 0], input: &[], output_len: 0 }
    }
}

/// Bytes of the arena reserved for a request's input or output (see
/// [`Client::alloc_buffer`]).
///
/// ```
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
/// # let mut client = vgpu_client::Client::attach(&options)?;
/// let buffer = client.alloc_buffer(100)?;
/// assert_eq!((buffer.len(), buffer.is_empty()), (100, false));
/// client.free_buffer(buffer);
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a buffer is submitted or freed, or its arena space stays reserved"]
pub struct Buffer {
    offset: u32,
    len: u32,
    /// What the allocator reserved (`len` rounded up).
    allocated: u32,
}

impl Buffer {
    /// Its length in bytes.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let buffer = client.alloc_buffer(100)?;
    /// assert_eq!(buffer.len(), 100);
    /// client.free_buffer(buffer);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether it has no bytes.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let buffer = client.alloc_buffer(0)?;
    /// assert!(buffer.is_empty());
    /// client.free_buffer(buffer);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its offset in the arena.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let (a, b) = (client.alloc_buffer(64)?, client.alloc_buffer(64)?);
    /// assert_ne!(a.offset(), b.offset());
    /// client.free_buffer(a);
    /// client.free_buffer(b);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn offset(&self) -> u32 {
        self.offset
    }
}

/// A submitted request; redeem it with [`Client::try_complete`] or [`Client::wait`].
///
/// ```
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
/// # let mut client = vgpu_client::Client::attach(&options)?;
/// use std::time::Duration;
/// let ticket = client.submit(&vgpu_client::Call::noop("PING"))?;
/// let tag = ticket.tag();
/// let done = client.wait(ticket, Duration::from_secs(5))?;
/// assert_eq!(done.response.tag, tag);
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a ticket must be waited for, or its arena buffers stay reserved"]
pub struct Ticket {
    tag: u32,
}

impl Ticket {
    /// The request's tag.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let first = client.submit(&vgpu_client::Call::noop("A"))?;
    /// let second = client.submit(&vgpu_client::Call::noop("B"))?;
    /// assert_ne!(first.tag(), second.tag());
    /// # client.wait(first, std::time::Duration::from_secs(5))?;
    /// # client.wait(second, std::time::Duration::from_secs(5))?;
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn tag(&self) -> u32 {
        self.tag
    }
}

/// An answered request.
///
/// ```
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
/// # let mut client = vgpu_client::Client::attach(&options)?;
/// let done = client.call(&vgpu_client::Call::noop("PING"))?;
/// assert_eq!(done.response.out_len, 0);
/// assert!(done.output.is_empty());
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Completion {
    /// The response entry.
    pub response: Response,
    /// The output bytes the mediator wrote (`response.out_len` of them).
    pub output: Vec<u8>,
}

impl Completion {
    /// Whether the status is 1 (success).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// assert!(client.call(&vgpu_client::Call::noop("PING"))?.succeeded());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.response.outcome().is_ok()
    }

    /// The original protocol's response line, e.g.
    /// `1:Pool A processed: VECTOR_ADD (prio=2, vm=100)`.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let done = client.call(&vgpu_client::Call::noop("VECTOR_ADD"))?;
    /// assert_eq!(done.text(), "1:Pool A processed: VECTOR_ADD (prio=1, vm=1)");
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn text(&self) -> String {
        vgpu_ring::response_text(&self.response)
    }

    fn into_result(self) -> Result<Vec<u8>, ClientError> {
        match self.response.outcome() {
            Ok(_) => Ok(self.output),
            Err(code) => Err(ClientError::Failed(code)),
        }
    }
}

/// Something worth telling a person while a call waits (see [`Client::on_notice`]).
///
/// ```
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
/// # let mut client = vgpu_client::Client::attach(&options)?;
/// use std::sync::{Arc, Mutex};
/// use vgpu_client::Notice;
/// let seen: Arc<Mutex<Vec<Notice>>> = Arc::default();
/// let log = Arc::clone(&seen);
/// client.on_notice(move |notice| {
///     eprintln!("vgpu: {notice}");
///     log.lock().unwrap().push(notice);
/// });
/// client.reset_rings(std::time::Duration::from_secs(5))?;
/// assert_eq!(*seen.lock().unwrap(), [Notice::RingsReset]);
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A new mediator took over (its requests in flight are executed again and
    /// answered; nothing is lost).
    MediatorRestarted {
        /// Epoch before.
        old: u64,
        /// Epoch now.
        new: u64,
    },
    /// The mediator's heartbeat has stood still this long; the call keeps waiting
    /// within its timeout.
    MediatorSilent(Duration),
    /// The client reset the slot's rings because they were poisoned.
    RingsReset,
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MediatorRestarted { old, new } => write!(
                f,
                "the mediator restarted (epoch {old:#x} -> {new:#x}); requests in flight are answered by the new one"
            ),
            Self::MediatorSilent(d) => write!(
                f,
                "no heartbeat from the mediator for {:.1} s; waiting for it (restarting?)",
                d.as_secs_f64()
            ),
            Self::RingsReset => {
                f.write_str("the slot's rings were poisoned; reset them with the mediator")
            }
        }
    }
}

/// Where a wait stands: its polls so far, when it started (the clock is read lazily,
/// about 60 ns in a VM: an answer that arrives within the first polls costs no clock
/// read at all), and its next sleep.
struct Waiting {
    polls: u32,
    start: Option<Instant>,
    sleep: Duration,
}

impl Waiting {
    fn new() -> Self {
        Self { polls: 0, start: None, sleep: Duration::from_micros(1) }
    }
}

/// A response taken for its ticket, with the request's output range (offset, capacity)
/// in the arena.
struct Answer {
    response: Response,
    output: (u32, u32),
}

/// Arena ranges of an answered request, kept reserved until the mediator has released
/// the request's ring position: until then a restarted mediator may execute the request
/// again and write its output range once more.
struct Retired {
    position: u32,
    input: (u32, u32),
    output: (u32, u32),
}

/// An attached client: the only producer of its slot's request ring.
///
/// ```
/// use std::time::Duration;
/// use vgpu_client::{Call, Client, ClientOptions};
/// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// // In a guest: the ivshmem device is found in sysfs; on a host, name the region file.
/// let options = ClientOptions { region: Some(sandbox.region().into()), ..ClientOptions::default() };
/// let mut client = Client::attach(&options)?;
/// println!("{}", client.identity());
/// let ticket = client.submit(&Call::sleep(1000))?;
/// let done = client.wait(ticket, Duration::from_secs(5))?;
/// assert!(done.succeeded(), "{}", done.text());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub struct Client {
    slot: Slot,
    guest: GuestEndpoints,
    identity: VmIdentity,
    identity_source: IdentitySource,
    identity_warning: Option<String>,
    doorbell_warning: Option<&'static str>,
    epoch: u64,
    last_beat: u64,
    beat_changed: Instant,
    arena: ArenaAllocator,
    in_flight: TagTable,
    retired: Vec<Retired>,
    notice: Option<Box<dyn FnMut(Notice) + Send>>,
    rings_were_reset: bool,
    silence_reported: bool,
    wait: Wait,
    timeout: Duration,
    ringer: Option<discover::Ringer>,
    _lock: Flock<File>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("region", &self.slot.region().path())
            .field("identity", &self.identity)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

/// The guest's ends of `slot`'s rings, its requests written ahead: the mediator takes
/// requests in bursts some way behind a pipelining client, so asking early for the
/// lines of the next requests overlaps their transfers (one VM pipelining: about +25%,
/// docs/PERFORMANCE.md).
fn endpoints(slot: &Slot) -> Result<GuestEndpoints, RegionError> {
    let mut guest = slot.guest_endpoints()?;
    guest.requests.set_write_ahead(true);
    Ok(guest)
}

fn len_u32(n: usize) -> Result<u32, ClientError> {
    u32::try_from(n).map_err(|_| ClientError::InvalidArgument(format!("{n} elements is too many")))
}

impl Client {
    /// Retired requests collected before their arena ranges are reclaimed.
    const RECLAIM_BATCH: usize = 8;

    /// Find the region and identity, take the slot, and check a mediator is attached.
    ///
    /// ```
    /// use vgpu_client::{Client, ClientOptions};
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// let options = ClientOptions { region: Some(sandbox.region().into()), ..ClientOptions::default() };
    /// let client = Client::attach(&options)?;
    /// // One client per VM: the slot is taken.
    /// assert!(matches!(Client::attach(&options), Err(vgpu_client::ClientError::SlotInUse { .. })));
    /// drop(client);
    /// Client::attach(&options)?;
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::NoDevice`], [`ClientError::Region`] (wrong magic, version, ...),
    /// [`ClientError::Stub`], [`ClientError::NoIdentity`], [`ClientError::SlotInUse`],
    /// [`ClientError::NoMediator`].
    pub fn attach(options: &ClientOptions) -> Result<Self, ClientError> {
        let peer = match &options.doorbell_socket {
            Some(socket) => Some(
                vgpu_doorbell::HostPeer::connect(socket)
                    .map_err(|source| ClientError::Doorbell { path: socket.clone(), source })?,
            ),
            None => None,
        };
        // A host peer maps the region its socket sent, as QEMU does.
        let region_path = options.region.clone().or_else(|| {
            peer.as_ref().map(|p| PathBuf::from(format!("/proc/self/fd/{}", p.shm().as_raw_fd())))
        });
        let region = Arc::new(discover::find_region(region_path.as_deref(), &options.sysfs_root)?);
        let ringer = match peer {
            Some(peer) => Some(discover::Ringer::Peer(peer)),
            None => discover::doorbell_register(region.path()).map(discover::Ringer::Register),
        };
        let discover::ResolvedIdentity {
            identity,
            source: identity_source,
            warning: identity_warning,
        } = discover::resolve_identity(&region, options.stub.as_deref())?;
        let slot = region.slot(0)?;

        let file = File::open(region.path())
            .map_err(|e| RegionError::Io { path: region.path().to_owned(), source: e })?;
        let mode = if options.wait_for_slot {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let lock = match Flock::lock(file, mode) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(ClientError::SlotInUse { pid: slot.client_pid() });
            }
            Err((_, source)) => {
                return Err(ClientError::Lock { path: region.path().to_owned(), source });
            }
        };
        let epoch = region.epoch();
        if epoch == 0 {
            return Err(ClientError::NoMediator);
        }
        slot.set_client_pid(std::process::id())?;
        let doorbell_warning =
            (ringer.is_none() && vgpu_ring::doorbell_published(&slot)).then_some(NO_RING_WARNING);
        let guest = endpoints(&slot)?;
        let (last_beat, _) = region.heartbeat();
        let mut client = Self {
            arena: ArenaAllocator::new(slot.arena_size()),
            guest,
            identity,
            identity_source,
            identity_warning,
            doorbell_warning,
            epoch,
            last_beat,
            beat_changed: Instant::now(),
            // Tags start at a per-process value, so responses a crashed predecessor left
            // behind are not mistaken for ours.
            in_flight: TagTable::new(
                std::process::id().rotate_left(20)
                    ^ nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                        .map_or(0, |t| t.tv_nsec() as u32),
            ),
            retired: Vec::new(),
            notice: None,
            rings_were_reset: false,
            silence_reported: false,
            wait: options.wait,
            timeout: options.timeout,
            ringer,
            slot,
            _lock: lock,
        };
        if client.rings_poisoned() {
            client.reset_rings(options.timeout)?;
            client.rings_were_reset = true;
        }
        Ok(client)
    }

    /// Whether the host or this client found the slot's rings corrupt.
    fn rings_poisoned(&self) -> bool {
        self.slot.host_status() != 0 || self.guest.requests.poisoned().is_some()
    }

    /// Ask the mediator to start the slot's rings afresh (the reset handshake of
    /// docs/LAYOUT.md) and wait up to `timeout` for it. Every request in flight is
    /// dropped. [`attach`](Self::attach) does this by itself for a poisoned slot.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// use std::time::Duration;
    /// let dropped = client.submit(&vgpu_client::Call::sleep(10_000))?;
    /// client.reset_rings(Duration::from_secs(5))?;
    /// assert_eq!(client.in_flight(), 0);
    /// assert!(client.wait(dropped, Duration::from_millis(10)).is_err(), "forgotten by the reset");
    /// client.noop("AFTER_RESET")?;
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] (or [`ClientError::MediatorDead`]) if the mediator
    /// does not carry it out in time.
    pub fn reset_rings(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let slot = self.slot.clone();
        let ticket = vgpu_ring::request_reset(&slot);
        // A sleeping mediator notices resets only when woken.
        self.ring_if_asked();
        let start = Instant::now();
        while !vgpu_ring::reset_completed(&slot, ticket) {
            if start.elapsed() > timeout {
                return Err(self.timeout_error(timeout));
            }
            self.check_alive();
            std::thread::sleep(Duration::from_micros(100));
        }
        self.guest = endpoints(&self.slot)?;
        self.arena = ArenaAllocator::new(self.slot.arena_size());
        self.in_flight.clear();
        self.retired.clear();
        self.notify(Notice::RingsReset);
        Ok(())
    }

    /// Whether [`attach`](Self::attach) found the slot poisoned and reset its rings.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// // A fresh region's rings are sound.
    /// assert!(!client.rings_were_reset());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn rings_were_reset(&self) -> bool {
        self.rings_were_reset
    }

    /// Call `notice` for every [`Notice`] from now on (e.g. to tell a person once that
    /// the mediator is restarting).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// client.on_notice(|notice| eprintln!("vgpu: {notice}"));
    /// client.noop("PING")?;
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn on_notice(&mut self, notice: impl FnMut(Notice) + Send + 'static) {
        self.notice = Some(Box::new(notice));
    }

    fn notify(&mut self, notice: Notice) {
        if let Some(f) = &mut self.notice {
            f(notice);
        }
    }

    /// The identity requests carry (the host's copy when both exist).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let id = client.identity();
    /// assert_eq!((id.vm_id, id.pool.name(), id.priority.get()), (1, 'A', 1));
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn identity(&self) -> VmIdentity {
        self.identity
    }

    /// Where [`identity`](Self::identity) came from.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// assert_eq!(client.identity_source(), vgpu_client::IdentitySource::Region);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn identity_source(&self) -> IdentitySource {
        self.identity_source
    }

    /// A warning if the stub and the region disagree about the identity.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// // No vgpu-stub device here, so nothing to disagree with.
    /// assert_eq!(client.identity_warning(), None);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn identity_warning(&self) -> Option<&str> {
        self.identity_warning.as_deref()
    }

    /// A warning if the host sleeps on this VM's doorbell but this client cannot ring
    /// it (its requests after an idle spell wait for the host's timed wake-up).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # use vgpu_client::{Client, ClientOptions};
    /// let client = Client::attach(&options)?;
    /// if let Some(warning) = client.doorbell_warning() {
    ///     eprintln!("warning: {warning}");
    /// }
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn doorbell_warning(&self) -> Option<&str> {
        self.doorbell_warning
    }

    /// Every warning of the attach: [`identity_warning`](Self::identity_warning), then
    /// [`doorbell_warning`](Self::doorbell_warning).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # use vgpu_client::{Client, ClientOptions};
    /// let client = Client::attach(&options)?;
    /// for warning in client.warnings() {
    ///     eprintln!("warning: {warning}");
    /// }
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn warnings(&self) -> impl Iterator<Item = &str> {
        [self.identity_warning(), self.doorbell_warning()].into_iter().flatten()
    }

    /// The region.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// assert_eq!(client.region().path(), sandbox.region());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn region(&self) -> &Arc<Region> {
        self.slot.region()
    }

    /// The slot this client owns.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// assert!(client.slot().arena_size() >= 1 << 20);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    /// The default timeout of the typed helpers and [`call`](Self::call)
    /// ([`ClientOptions::timeout`]).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// use std::time::Duration;
    /// use vgpu_client::{Client, ClientOptions};
    /// let options = ClientOptions {
    ///     region: Some(sandbox.region().into()),
    ///     timeout: Duration::from_secs(2),
    ///     ..ClientOptions::default()
    /// };
    /// assert_eq!(Client::attach(&options)?.timeout(), Duration::from_secs(2));
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Requests submitted and not yet redeemed.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let ticket = client.submit(&vgpu_client::Call::noop("PING"))?;
    /// assert_eq!(client.in_flight(), 1);
    /// client.wait(ticket, std::time::Duration::from_secs(5))?;
    /// assert_eq!(client.in_flight(), 0);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Submit a request without waiting.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// use std::time::Duration;
    /// // Eight requests in flight, then their answers.
    /// let tickets = (0..8)
    ///     .map(|_| client.submit(&vgpu_client::Call::noop("PING")))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// for ticket in tickets {
    ///     assert!(client.wait(ticket, Duration::from_secs(5))?.succeeded());
    /// }
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::RingFull`], [`ClientError::ArenaFull`], [`ClientError::Ring`],
    /// [`ClientError::RegionLost`].
    pub fn submit(&mut self, call: &Call<'_>) -> Result<Ticket, ClientError> {
        self.submit_parts(call, &[call.input], true)
    }

    /// [`submit`](Self::submit) without making the request visible to the host yet:
    /// the requests staged since the last publication are published together (each
    /// one's word, in order, then the index; at most one doorbell) at the next
    /// [`flush`](Self::flush),
    /// `submit`, wait or poll. For many small requests at once (the way io_uring
    /// separates preparing entries from submitting them).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # use vgpu_client::{Call, Client, ClientOptions};
    /// # let mut client = Client::attach(&options)?;
    /// let call = Call::noop("batch");
    /// let tickets: Vec<_> = (0..32).map(|_| client.stage(&call)).collect::<Result<_, _>>()?;
    /// client.flush(); // all 32 visible at once (waiting would flush too)
    /// for ticket in tickets {
    ///     client.wait(ticket, std::time::Duration::from_secs(1))?;
    /// }
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub fn stage(&mut self, call: &Call<'_>) -> Result<Ticket, ClientError> {
        self.submit_parts(call, &[call.input], false)
    }

    /// Make the [`stage`](Self::stage)d requests visible to the host (their publication
    /// words, in order, and the producer index), and ring the doorbell if the mediator
    /// asked for it. Nothing if none is staged.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # use vgpu_client::{Call, Client, ClientOptions};
    /// let mut client = Client::attach(&options)?;
    /// let ticket = client.stage(&Call::noop("LATER"))?;
    /// client.flush(); // the host sees it from now on
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn flush(&mut self) {
        if self.guest.requests.staged() != 0 {
            self.guest.requests.publish();
            self.ring_if_asked();
        }
    }

    /// [`submit`](Self::submit) with the input given as consecutive parts (`call.input`
    /// is ignored): each is copied into the arena once, with no concatenated copy first.
    /// The request is published (with any staged before it) if `visible`.
    fn submit_parts(
        &mut self,
        call: &Call<'_>,
        parts: &[&[u8]],
        visible: bool,
    ) -> Result<Ticket, ClientError> {
        self.check_mapping()?;
        let in_len = len_u32(parts.iter().map(|p| p.len()).sum())?;
        let input = self.alloc(in_len)?;
        let output = match self.alloc(call.output_len) {
            Ok(output) => output,
            Err(e) => {
                self.arena.free(input);
                return Err(e);
            }
        };
        let mut at = u64::from(input.0);
        for part in parts.iter().filter(|p| !p.is_empty()) {
            if let Err(e) = self.slot.arena_write(at, part) {
                self.arena.free(input);
                self.arena.free(output);
                return Err(e.into());
            }
            at += part.len() as u64;
        }
        let input = Buffer { offset: input.0, len: in_len, allocated: input.1 };
        let output = Buffer { offset: output.0, len: call.output_len, allocated: output.1 };
        self.publish(call.op as u16, call.label, call.args, input, output, visible)
    }

    /// Stage a request whose operands are in `input` (all of its `len` bytes) and
    /// whose answer goes to `output`, and publish it if `visible`; the buffers belong to
    /// the request from now on (freed here if it cannot be staged).
    #[inline]
    fn publish(
        &mut self,
        opcode: u16,
        label: &str,
        args: [u32; 3],
        input: Buffer,
        output: Buffer,
        visible: bool,
    ) -> Result<Ticket, ClientError> {
        let tag = self.in_flight.next_tag();
        let request = Request {
            tag,
            opcode,
            pool: self.identity.pool.byte(),
            priority: self.identity.priority.get(),
            vm_id: self.identity.vm_id,
            label: encode_label(label),
            in_offset: input.offset,
            in_len: input.len,
            out_offset: output.offset,
            out_len: output.len,
            args,
            // The ring stores it when it publishes.
            ready: 0,
        };
        let position = self.guest.requests.position();
        let staged = if visible {
            self.guest.requests.push(request)
        } else {
            self.guest.requests.stage(request)
        };
        let refused = match staged {
            Ok(()) => None,
            Err(PushError::Full(_)) => Some(ClientError::RingFull(self.in_flight.len())),
            Err(PushError::Poisoned(e)) => Some(self.ring_error(e)),
        };
        if let Some(e) = refused {
            self.free_buffer(input);
            self.free_buffer(output);
            return Err(e);
        }
        if visible {
            self.ring_if_asked();
        }
        self.in_flight.insert(tags::Entry {
            tag,
            position,
            input: (input.offset, input.allocated),
            output: (output.offset, output.len),
            state: tags::State::Waiting,
        });
        Ok(Ticket { tag })
    }

    /// Reserve `len` bytes of the arena for a request's input or output, to be filled
    /// or read in place ([`write_buffer`](Self::write_buffer),
    /// [`read_buffer`](Self::read_buffer), or [`buffer_ptr`](Self::buffer_ptr) from
    /// other languages) and handed to [`submit_buffers`](Self::submit_buffers); give an
    /// unused one back with [`free_buffer`](Self::free_buffer).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let buffer = client.alloc_buffer(4096)?;
    /// client.write_buffer(&buffer, 0, &[1; 4096])?;
    /// client.free_buffer(buffer);
    /// // More than the arena holds.
    /// assert!(client.alloc_buffer(u32::MAX).is_err());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::ArenaFull`] (complete requests in flight first).
    pub fn alloc_buffer(&mut self, len: u32) -> Result<Buffer, ClientError> {
        let (offset, allocated) = self.alloc(len)?;
        Ok(Buffer { offset, len, allocated })
    }

    /// Give back a buffer that was not submitted.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let buffer = client.alloc_buffer(512 << 10)?;
    /// client.free_buffer(buffer);
    /// // Its space is free again.
    /// let again = client.alloc_buffer(512 << 10)?;
    /// client.free_buffer(again);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn free_buffer(&mut self, buffer: Buffer) {
        self.arena.free((buffer.offset, buffer.allocated));
    }

    /// The arena offset of `buffer`'s byte `at`, if `at..at + len` lies inside it.
    fn buffer_range(buffer: &Buffer, at: u32, len: usize) -> Result<u64, ClientError> {
        match u64::from(at).checked_add(len as u64) {
            Some(end) if end <= u64::from(buffer.len) => Ok(u64::from(buffer.offset + at)),
            _ => Err(ClientError::InvalidArgument(format!(
                "{len} bytes at {at} do not fit a {}-byte buffer",
                buffer.len
            ))),
        }
    }

    /// Copy `bytes` into `buffer` at byte `at`.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let buffer = client.alloc_buffer(8)?;
    /// client.write_buffer(&buffer, 4, &[1, 2, 3, 4])?;
    /// assert!(client.write_buffer(&buffer, 5, &[1, 2, 3, 4]).is_err(), "past its end");
    /// client.free_buffer(buffer);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] past the buffer's end; [`ClientError::Region`].
    pub fn write_buffer(&self, buffer: &Buffer, at: u32, bytes: &[u8]) -> Result<(), ClientError> {
        Ok(self.slot.arena_write(Self::buffer_range(buffer, at, bytes.len())?, bytes)?)
    }

    /// Copy `out.len()` bytes out of `buffer` from byte `at`.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let buffer = client.alloc_buffer(8)?;
    /// client.write_buffer(&buffer, 0, b"vgpu-ok!")?;
    /// let mut out = [0; 2];
    /// client.read_buffer(&buffer, 5, &mut out)?;
    /// assert_eq!(&out, b"ok");
    /// client.free_buffer(buffer);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] past the buffer's end; [`ClientError::Region`].
    pub fn read_buffer(&self, buffer: &Buffer, at: u32, out: &mut [u8]) -> Result<(), ClientError> {
        Ok(self.slot.arena_read(Self::buffer_range(buffer, at, out.len())?, out)?)
    }

    /// A raw pointer to `buffer`'s bytes in the shared arena, for code in other
    /// languages that fills operands and reads results in place (see
    /// [`Slot::arena_ptr`] for what its user must respect). It stays valid while the
    /// client lives; an output buffer's bytes are the answer once the request
    /// completed, until the client next allocates arena space.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let buffer = client.alloc_buffer(16)?;
    /// let ptr = client.buffer_ptr(&buffer)?;
    /// assert!(!ptr.is_null());
    /// // Hand `ptr` and `buffer.len()` to code in another language; Rust uses write_buffer.
    /// client.free_buffer(buffer);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::Region`] if the buffer lies outside the arena (never for a buffer
    /// of this client).
    pub fn buffer_ptr(&self, buffer: &Buffer) -> Result<*mut u8, ClientError> {
        Ok(self.slot.arena_ptr(u64::from(buffer.offset), buffer.len as usize)?)
    }

    /// Submit operation `opcode` with `args` on operands already in `input` (all of
    /// its bytes), its answer to be written to `output`. The buffers belong to the
    /// request from now on (also when this fails).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// use vgpu_client::{Client, ClientOptions};
    /// use vgpu_ring::Opcode;
    /// let mut client = Client::attach(&options)?;
    /// let input = client.alloc_buffer(64)?;
    /// client.write_buffer(&input, 0, &[7; 64])?;
    /// let output = client.alloc_buffer(64)?;
    /// let ticket = client.submit_buffers(Opcode::Echo as u16, "ECHO", [0; 3], input, output)?;
    /// let done = client.wait(ticket, std::time::Duration::from_secs(1))?;
    /// assert_eq!(done.output, [7; 64]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub fn submit_buffers(
        &mut self,
        opcode: u16,
        label: &str,
        args: [u32; 3],
        input: Buffer,
        output: Buffer,
    ) -> Result<Ticket, ClientError> {
        self.buffers_request(opcode, label, args, [input, output], true)
    }

    /// [`submit_buffers`](Self::submit_buffers) without publishing, as
    /// [`stage`](Self::stage).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// use vgpu_client::{Client, ClientOptions};
    /// use vgpu_ring::Opcode;
    /// let mut client = Client::attach(&options)?;
    /// let (input, output) = (client.alloc_buffer(0)?, client.alloc_buffer(0)?);
    /// let ticket = client.stage_buffers(Opcode::Noop as u16, "NOOP", [0; 3], input, output)?;
    /// client.flush();
    /// client.wait(ticket, std::time::Duration::from_secs(1))?;
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub fn stage_buffers(
        &mut self,
        opcode: u16,
        label: &str,
        args: [u32; 3],
        input: Buffer,
        output: Buffer,
    ) -> Result<Ticket, ClientError> {
        self.buffers_request(opcode, label, args, [input, output], false)
    }

    /// A request on buffers the caller filled, published if `visible`.
    fn buffers_request(
        &mut self,
        opcode: u16,
        label: &str,
        args: [u32; 3],
        [input, output]: [Buffer; 2],
        visible: bool,
    ) -> Result<Ticket, ClientError> {
        if let Err(e) = self.check_mapping() {
            self.free_buffer(input);
            self.free_buffer(output);
            return Err(e);
        }
        self.publish(opcode, label, args, input, output, visible)
    }

    /// After a publication: ring the doorbell if the mediator is (about to be) asleep
    /// (the wake-up flag protocol of docs/LAYOUT.md). Without a doorbell of its own the
    /// client does nothing and the mediator finds the request at its next timed wake-up.
    fn ring_if_asked(&self) {
        if let Some(ringer) = &self.ringer
            && let Some(value) = vgpu_ring::wakeup_wanted(&self.slot)
        {
            ringer.ring(value);
        }
    }

    /// Whether the client can ring the mediator's doorbell for this VM.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// // The sandbox's VM has no doorbell: its mediator polls.
    /// assert!(!client.has_doorbell());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn has_doorbell(&self) -> bool {
        self.ringer.is_some()
    }

    /// Reserve `len` arena bytes, reclaiming the ranges of answered requests the
    /// mediator has released when the arena looks full.
    fn alloc(&mut self, len: u32) -> Result<(u32, u32), ClientError> {
        if let Some(range) = self.arena.alloc(len) {
            return Ok(range);
        }
        self.reclaim();
        self.arena.alloc(len).ok_or(ClientError::ArenaFull(u64::from(len)))
    }

    /// Free the ranges of retired requests whose ring position the mediator released
    /// (it will never execute them again).
    fn reclaim(&mut self) {
        if self.retired.is_empty() || self.guest.requests.free_slots().is_err() {
            return;
        }
        let tail = self.guest.requests.consumer_position();
        let capacity = self.guest.requests.capacity();
        let arena = &mut self.arena;
        self.retired.retain(|r| {
            // Unreleased positions lie in tail..tail + capacity.
            let released = r.position.wrapping_sub(tail) >= capacity;
            if released {
                arena.free(r.input);
                arena.free(r.output);
            }
            !released
        });
    }

    /// Collect the responses that have arrived, up to the one for `wanted`, which is
    /// returned rather than stored; those after it stay in the ring for later polls.
    /// So requests awaited in the order they were sent (one at a time, or pipelined)
    /// cost no map operation beyond the in-flight entry itself. A response whose tag is
    /// not in flight (a duplicate from a restarted mediator, or an answer to a previous
    /// client of the slot) is dropped.
    #[inline]
    fn poll_responses(&mut self, wanted: u32) -> Option<Response> {
        let mut found = None;
        while let Some(response) = self.guest.responses.take() {
            if response.tag == wanted {
                found = Some(response);
                break;
            }
            if let Delivery::Abandoned(entry) = self.in_flight.deliver(response) {
                self.retire(&entry);
            }
        }
        self.guest.responses.release();
        found
    }

    /// Take `tag` out of flight; its arena ranges are retired (see [`Retired`]).
    #[inline]
    fn finish(&mut self, tag: u32) -> Option<tags::Entry> {
        let entry = self.in_flight.remove(tag)?;
        self.retire(&entry);
        Some(entry)
    }

    /// Keep `entry`'s arena ranges until the mediator has released its ring position.
    fn retire(&mut self, entry: &tags::Entry) {
        let output = (entry.output.0, entry.output.1.next_multiple_of(64));
        if entry.input.1 != 0 || output.1 != 0 {
            self.retired.push(Retired { position: entry.position, input: entry.input, output });
            // Reclaim in small batches (one load of the mediator's index each), so the
            // arena's working set stays small and first-fit keeps reusing the same pages.
            if self.retired.len() >= Self::RECLAIM_BATCH {
                self.reclaim();
            }
        }
    }

    /// The completion of `ticket` if its response has arrived. The ticket is given back
    /// (inside `Err`) when it has not.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let mut ticket = client.submit(&vgpu_client::Call::noop("PING"))?;
    /// let done = loop {
    ///     match client.try_complete(ticket)? {
    ///         Ok(done) => break done,
    ///         Err(again) => ticket = again, // not yet: do something else meanwhile
    ///     }
    /// };
    /// assert!(done.succeeded());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::RegionLost`] if the region file shrank under the mapping.
    pub fn try_complete(
        &mut self,
        ticket: Ticket,
    ) -> Result<Result<Completion, Ticket>, ClientError> {
        Ok(match self.poll_answer(ticket)? {
            Ok(answer) => Ok(self.completion(answer)?),
            Err(ticket) => Err(ticket),
        })
    }

    /// One look for `ticket`'s answer, for the callers that poll on their own: the
    /// ticket comes back if it has not arrived, unless the mapping is gone.
    fn poll_answer(&mut self, ticket: Ticket) -> Result<Result<Answer, Ticket>, ClientError> {
        match self.take_answer(ticket.tag) {
            Some(answer) => Ok(Ok(answer)),
            None => self.check_mapping().map(|()| Err(ticket)),
        }
    }

    /// The answer to `ticket` if it has arrived: the response and the request's output
    /// range (offset, capacity), which stays reserved (retired) while it is read.
    #[inline]
    fn take_answer(&mut self, tag: u32) -> Option<Answer> {
        let response = self.take_response(tag)?;
        let output = self.finish(tag).map_or((0, 0), |e| e.output);
        Some(Answer { response, output })
    }

    /// The response to `tag` if it has arrived (kept in the table earlier, or next in
    /// the ring); the request stays in the table.
    #[inline]
    fn take_response(&mut self, tag: u32) -> Option<Response> {
        // A staged request is never waited for unpublished.
        self.flush();
        self.in_flight.take_answer(tag).or_else(|| self.poll_responses(tag))
    }

    /// The answer with its output bytes copied out of the arena.
    fn completion(&self, answer: Answer) -> Result<Completion, ClientError> {
        let (offset, capacity) = answer.output;
        let mut output = vec![0; answer.response.out_len.min(capacity) as usize];
        if !output.is_empty() {
            self.slot.arena_read(u64::from(offset), &mut output)?;
        }
        Ok(Completion { response: answer.response, output })
    }

    /// Wait up to `timeout` for `ticket`'s completion, polling as the [`Wait`] strategy
    /// says. A mediator restart is not an error: the new mediator executes the
    /// request and answers (see [`Notice`]). On an error the request is abandoned (its
    /// answer is dropped when it comes); to wait again after a timeout, use
    /// [`wait_answered`](Self::wait_answered).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// use std::time::Duration;
    /// let ticket = client.submit(&vgpu_client::Call::sleep(100))?;
    /// let done = client.wait(ticket, Duration::from_secs(5))?;
    /// println!("queued {} ns, executed {} ns", done.response.queued_ns, done.response.exec_ns);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`], or [`ClientError::MediatorDead`] when the heartbeat
    /// stood still too at that moment; [`ClientError::Poisoned`] as soon as the host
    /// isolates the slot's rings; [`ClientError::Region`] (a version mismatch) as soon
    /// as a mediator of another layout has taken the region over; [`ClientError::Ring`];
    /// [`ClientError::RegionLost`].
    pub fn wait(&mut self, ticket: Ticket, timeout: Duration) -> Result<Completion, ClientError> {
        let answer = self.wait_answer(ticket, timeout)?;
        self.completion(answer)
    }

    /// [`wait`](Self::wait) without copying the output: the response only (the answer
    /// is in the request's output buffer, see [`submit_buffers`](Self::submit_buffers)).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// use std::time::Duration;
    /// let (input, output) = (client.alloc_buffer(4)?, client.alloc_buffer(4)?);
    /// client.write_buffer(&input, 0, b"ping")?;
    /// let out = client.buffer_ptr(&output)?;
    /// let ticket = client.submit_buffers(vgpu_ring::Opcode::Echo as u16, "ECHO", [0; 3], input, output)?;
    /// let response = client.wait_response(ticket, Duration::from_secs(5))?;
    /// assert_eq!(response.out_len, 4);
    /// let _ = out; // the answer is there until the client next allocates arena space
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    pub fn wait_response(
        &mut self,
        ticket: Ticket,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        Ok(self.wait_answer(ticket, timeout)?.response)
    }

    /// [`try_complete`](Self::try_complete) without copying the output.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let mut ticket = client.submit(&vgpu_client::Call::noop("PING"))?;
    /// let response = loop {
    ///     match client.poll_response(ticket)? {
    ///         Ok(response) => break response,
    ///         Err(again) => ticket = again,
    ///     }
    /// };
    /// assert_eq!(response.status, 1);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_complete`](Self::try_complete).
    pub fn poll_response(
        &mut self,
        ticket: Ticket,
    ) -> Result<Result<Response, Ticket>, ClientError> {
        Ok(self.poll_answer(ticket)?.map(|answer| answer.response))
    }

    /// Wait up to `timeout` until `ticket`'s answer has arrived, keeping the ticket:
    /// redeem it then with [`try_complete`](Self::try_complete) or
    /// [`poll_response`](Self::poll_response), which succeed at once. On an error
    /// (e.g. [`ClientError::Timeout`]) the request stays in flight, to be waited for
    /// again.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// use std::time::Duration;
    /// use vgpu_client::ClientError;
    /// let ticket = client.submit(&vgpu_client::Call::sleep(20_000))?;
    /// let e = client.wait_answered(&ticket, Duration::from_millis(1)).unwrap_err();
    /// assert!(matches!(e, ClientError::Timeout(_)), "{e}");
    /// // Still in flight: wait some more, then take the answer.
    /// client.wait_answered(&ticket, Duration::from_secs(5))?;
    /// let done = client.try_complete(ticket)?.expect("answered");
    /// assert!(done.succeeded());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    pub fn wait_answered(&mut self, ticket: &Ticket, timeout: Duration) -> Result<(), ClientError> {
        let mut waiting = Waiting::new();
        loop {
            if let Some(response) = self.take_response(ticket.tag) {
                // Kept in the table, where the ticket's redemption finds it.
                self.in_flight.deliver(response);
                return Ok(());
            }
            self.between_polls(&mut waiting, timeout)?;
        }
    }

    /// [`wait`](Self::wait), leaving the output in the arena.
    fn wait_answer(&mut self, ticket: Ticket, timeout: Duration) -> Result<Answer, ClientError> {
        let mut waiting = Waiting::new();
        loop {
            if let Some(answer) = self.take_answer(ticket.tag) {
                return Ok(answer);
            }
            if let Err(e) = self.between_polls(&mut waiting, timeout) {
                self.in_flight.abandon(ticket.tag);
                return Err(e);
            }
        }
    }

    /// Between two polls of a wait: every 64 polls (about a microsecond), the deadline,
    /// the slot's state, the mediator's liveness and the back-off the [`Wait`] strategy
    /// asks for.
    #[inline]
    fn between_polls(
        &mut self,
        waiting: &mut Waiting,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        waiting.polls = waiting.polls.wrapping_add(1);
        if waiting.polls.is_multiple_of(64) { self.pause(waiting, timeout) } else { Ok(()) }
    }

    /// [`between_polls`](Self::between_polls)' every 64th.
    #[inline(never)]
    fn pause(&mut self, waiting: &mut Waiting, timeout: Duration) -> Result<(), ClientError> {
        let now = Instant::now();
        let waited = now - *waiting.start.get_or_insert(now);
        self.check_slot()?;
        if waited > timeout {
            return Err(self.timeout_error(timeout));
        }
        self.check_alive();
        if let Wait::Adaptive { spin, max_sleep } = self.wait
            && waited > spin
        {
            std::thread::sleep(waiting.sleep);
            waiting.sleep = (waiting.sleep * 2).min(max_sleep);
        }
        Ok(())
    }

    /// A ring found corrupt: because the file under the mapping shrank, or because the
    /// peer's index is impossible.
    fn ring_error(&self, e: RingError) -> ClientError {
        if self.slot.region().is_faulted() { ClientError::RegionLost } else { ClientError::Ring(e) }
    }

    /// The region still maps the file (a host-process client whose file shrank gets
    /// [`ClientError::RegionLost`]).
    fn check_mapping(&mut self) -> Result<(), ClientError> {
        // One load of a process-wide counter; the region's own flag only once any
        // mapping of the process has faulted.
        if vgpu_ring::fault_count() != 0 && self.slot.region().is_faulted() {
            return Err(ClientError::RegionLost);
        }
        Ok(())
    }

    /// The slot is usable: mapped, still of this build's layout (a mediator of another
    /// one may have taken the region over), not isolated by the host.
    fn check_slot(&mut self) -> Result<(), ClientError> {
        self.check_mapping()?;
        self.slot.region().check_layout_version()?;
        match self.slot.host_status() {
            0 => Ok(()),
            status => Err(ClientError::Poisoned(status)),
        }
    }

    /// The error for a timeout: the mediator's silence if its heartbeat stands still.
    fn timeout_error(&mut self, timeout: Duration) -> ClientError {
        match self.silence() {
            Some(stale) => ClientError::MediatorDead(stale),
            None => ClientError::Timeout(timeout),
        }
    }

    /// How long the heartbeat has stood still, if longer than about ten intervals.
    fn silence(&mut self) -> Option<Duration> {
        let (beat, interval_ms) = self.slot.region().heartbeat();
        if beat != self.last_beat {
            self.last_beat = beat;
            self.beat_changed = Instant::now();
            self.silence_reported = false;
            return None;
        }
        let limit =
            (Duration::from_millis(u64::from(interval_ms)) * 10).max(Duration::from_millis(500));
        let stale = self.beat_changed.elapsed();
        (stale > limit).then_some(stale)
    }

    /// Tell the [`on_notice`](Self::on_notice) callback about a new mediator or a
    /// silent one (once per silence).
    fn check_alive(&mut self) {
        let now = self.slot.region().epoch();
        if now != self.epoch {
            let old = std::mem::replace(&mut self.epoch, now);
            self.notify(Notice::MediatorRestarted { old, new: now });
        }
        if let Some(stale) = self.silence()
            && !self.silence_reported
        {
            self.silence_reported = true;
            self.notify(Notice::MediatorSilent(stale));
        }
    }

    /// Submit and wait (with the default timeout).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let done = client.call(&vgpu_client::Call::noop("TEST_LOW"))?;
    /// println!("{}", done.text());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit) and [`wait`](Self::wait).
    pub fn call(&mut self, call: &Call<'_>) -> Result<Completion, ClientError> {
        let ticket = self.submit(call)?;
        self.wait(ticket, self.timeout)
    }

    /// Run `op` on the operands `first ‖ second`, expecting `out` f32s back.
    fn call_f32(
        &mut self,
        op: Opcode,
        args: [u32; 3],
        operands: (&[f32], &[f32]),
        out: usize,
    ) -> Result<Vec<f32>, ClientError> {
        let mut values = vec![0f32; out];
        let written = self.call_f32_into(op, args, operands, &mut values)?;
        values.truncate(written);
        Ok(values)
    }

    /// Run `op` on the operands `first ‖ second` with room for `out.len()` f32s of
    /// answer; returns how many were written into `out`.
    fn call_f32_into(
        &mut self,
        op: Opcode,
        args: [u32; 3],
        (first, second): (&[f32], &[f32]),
        out: &mut [f32],
    ) -> Result<usize, ClientError> {
        let output_len = len_u32(out.len() * 4)?;
        let call = Call { op, label: op.name(), args, input: &[], output_len };
        let ticket = self.submit_parts(&call, &[first.as_bytes(), second.as_bytes()], true)?;
        let answer = self.wait_answer(ticket, self.timeout)?;
        let written = answer.response.outcome().map_err(ClientError::Failed)?;
        // Straight from the arena into the result, with no byte vector in between.
        let (offset, capacity) = answer.output;
        let n = (written.min(capacity) / 4) as usize;
        self.slot.arena_read(u64::from(offset), out[..n].as_mut_bytes())?;
        Ok(n)
    }

    /// `out.len()` must be `n`.
    fn check_out(out: &[f32], n: usize) -> Result<(), ClientError> {
        if out.len() == n {
            Ok(())
        } else {
            Err(ClientError::InvalidArgument(format!("output of {} for {n} results", out.len())))
        }
    }

    fn same_len(a: &[f32], b: &[f32]) -> Result<u32, ClientError> {
        if a.len() != b.len() || a.is_empty() {
            return Err(ClientError::InvalidArgument(format!(
                "vector lengths {} and {}",
                a.len(),
                b.len()
            )));
        }
        len_u32(a.len())
    }

    /// `a + b` on the host.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// assert_eq!(client.vector_add(&[1.0, 2.0], &[10.0, 20.0])?, [11.0, 22.0]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call); [`ClientError::Failed`] on status 2.
    pub fn vector_add(&mut self, a: &[f32], b: &[f32]) -> Result<Vec<f32>, ClientError> {
        let n = Self::same_len(a, b)?;
        self.call_f32(Opcode::VectorAdd, [n, 0, 0], (a, b), a.len())
    }

    /// [`vector_add`](Self::vector_add) into `out` (as long as the operands): the answer
    /// is copied once, from the arena into `out`.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let mut sum = [0.0; 3];
    /// client.vector_add_into(&[1.0, 2.0, 3.0], &[1.0; 3], &mut sum)?;
    /// assert_eq!(sum, [2.0, 3.0, 4.0]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`vector_add`](Self::vector_add); [`ClientError::InvalidArgument`] if `out`
    /// has another length.
    pub fn vector_add_into(
        &mut self,
        a: &[f32],
        b: &[f32],
        out: &mut [f32],
    ) -> Result<(), ClientError> {
        let n = Self::same_len(a, b)?;
        Self::check_out(out, a.len())?;
        self.call_f32_into(Opcode::VectorAdd, [n, 0, 0], (a, b), out).map(drop)
    }

    /// [`saxpy`](Self::saxpy) into `out` (as long as the operands).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let mut out = [0.0; 2];
    /// client.saxpy_into(2.0, &[1.0, 2.0], &[0.5, 0.5], &mut out)?;
    /// assert_eq!(out, [2.5, 4.5]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`vector_add_into`](Self::vector_add_into).
    pub fn saxpy_into(
        &mut self,
        alpha: f32,
        x: &[f32],
        y: &[f32],
        out: &mut [f32],
    ) -> Result<(), ClientError> {
        let n = Self::same_len(x, y)?;
        Self::check_out(out, x.len())?;
        self.call_f32_into(Opcode::Saxpy, [n, alpha.to_bits(), 0], (x, y), out).map(drop)
    }

    /// `alpha * x + y` on the host.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// assert_eq!(client.saxpy(3.0, &[1.0, 2.0], &[1.0, 1.0])?, [4.0, 7.0]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`vector_add`](Self::vector_add).
    pub fn saxpy(&mut self, alpha: f32, x: &[f32], y: &[f32]) -> Result<Vec<f32>, ClientError> {
        let n = Self::same_len(x, y)?;
        self.call_f32(Opcode::Saxpy, [n, alpha.to_bits(), 0], (x, y), x.len())
    }

    /// `Σ x[i] * y[i]` on the host.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// assert_eq!(client.dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0])?, 32.0);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`vector_add`](Self::vector_add).
    pub fn dot(&mut self, x: &[f32], y: &[f32]) -> Result<f32, ClientError> {
        let n = Self::same_len(x, y)?;
        let out = self.call_f32(Opcode::Dot, [n, 0, 0], (x, y), 1)?;
        out.first().copied().ok_or(ClientError::Failed(ErrorCode::OutputTooSmall))
    }

    /// `A (m×k) × B (k×n)`, row-major, on the host.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// // [1 2] × [5 6]   [19 22]
    /// // [3 4]   [7 8] = [43 50]
    /// let c = client.matmul(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], 2, 2, 2)?;
    /// assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`vector_add`](Self::vector_add); [`ClientError::InvalidArgument`] if the
    /// slices do not match the shape.
    pub fn matmul(
        &mut self,
        a: &[f32],
        b: &[f32],
        m: u32,
        k: u32,
        n: u32,
    ) -> Result<Vec<f32>, ClientError> {
        Self::check_shape(a, b, m, k, n)?;
        self.call_f32(Opcode::Matmul, [m, k, n], (a, b), m as usize * n as usize)
    }

    fn check_shape(a: &[f32], b: &[f32], m: u32, k: u32, n: u32) -> Result<(), ClientError> {
        let (mu, ku, nu) = (m as usize, k as usize, n as usize);
        if a.len() != mu * ku || b.len() != ku * nu || a.is_empty() || b.is_empty() {
            return Err(ClientError::InvalidArgument(format!(
                "matmul {m}x{k} by {k}x{n} needs {} and {} elements, got {} and {}",
                mu * ku,
                ku * nu,
                a.len(),
                b.len()
            )));
        }
        Ok(())
    }

    /// [`matmul`](Self::matmul) into `out` (m×n).
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// // A 1×2 row times a 2×1 column.
    /// let mut c = [0.0];
    /// client.matmul_into((&[1.0, 2.0], &[3.0, 4.0]), (1, 2, 1), &mut c)?;
    /// assert_eq!(c, [11.0]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`matmul`](Self::matmul); [`ClientError::InvalidArgument`] if `out` is not
    /// m×n.
    pub fn matmul_into(
        &mut self,
        (a, b): (&[f32], &[f32]),
        (m, k, n): (u32, u32, u32),
        out: &mut [f32],
    ) -> Result<(), ClientError> {
        Self::check_shape(a, b, m, k, n)?;
        Self::check_out(out, m as usize * n as usize)?;
        self.call_f32_into(Opcode::Matmul, [m, k, n], (a, b), out).map(drop)
    }

    /// Send `bytes` and get them back.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// assert_eq!(client.echo(b"hello, host")?, b"hello, host");
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`vector_add`](Self::vector_add).
    pub fn echo(&mut self, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
        let call = Call {
            op: Opcode::Echo,
            label: "ECHO",
            args: [0; 3],
            input: bytes,
            output_len: len_u32(bytes.len())?,
        };
        self.call(&call)?.into_result()
    }

    /// Occupy the pool for `us` microseconds.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// let start = std::time::Instant::now();
    /// client.sleep_us(2000)?;
    /// assert!(start.elapsed() >= std::time::Duration::from_millis(2));
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`vector_add`](Self::vector_add).
    pub fn sleep_us(&mut self, us: u32) -> Result<(), ClientError> {
        self.call(&Call::sleep(us))?.into_result().map(drop)
    }

    /// A NOOP labelled `label`.
    ///
    /// ```
    /// # let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # let options = vgpu_client::ClientOptions { region: Some(sandbox.region().into()), ..Default::default() };
    /// # let mut client = vgpu_client::Client::attach(&options)?;
    /// client.noop("TEST_HIGH")?;
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`vector_add`](Self::vector_add).
    pub fn noop(&mut self, label: &str) -> Result<(), ClientError> {
        self.call(&Call::noop(label))?.into_result().map(drop)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.slot.set_client_pid(0);
    }
}
