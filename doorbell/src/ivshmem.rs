//! QEMU's ivshmem client/server protocol (QEMU `docs/specs/ivshmem-spec.rst`).
//!
//! The server only sends; every message is one little-endian `int64`, some with one
//! file descriptor attached (`SCM_RIGHTS`). On connection, in order: the protocol
//! version (0); the connecting peer's id (0..=65535); `-1` with the shared-memory fd;
//! for every other peer it may signal, that peer's id once per vector with one eventfd
//! each; then its own id once per vector with its own eventfds. QEMU reads this while it
//! creates the device, and more eventfds than `vectors` for one peer is an error.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use std::collections::BTreeMap;
use std::io::{Error, ErrorKind, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The protocol version this implementation speaks.
pub const PROTOCOL_VERSION: i64 = 0;
/// Interrupt vectors per peer (the `vectors=` of QEMU's device): the host listens on
/// vector 0; a guest needs no interrupt from the host (it spins for its answers).
pub const VECTORS: u16 = 1;
/// The host's peer id on every VM's socket.
pub const HOST_PEER: u16 = 0;
/// The VM's peer id on its own socket (the only other peer there is the host).
pub const VM_PEER: u16 = 1;

/// The value a guest writes to the Doorbell register to ring `peer`'s `vector`.
#[must_use]
pub const fn doorbell_value(peer: u16, vector: u16) -> u32 {
    (peer as u32) << 16 | vector as u32
}

fn protocol_error(message: String) -> Error {
    Error::new(ErrorKind::InvalidData, message)
}

/// Send one message: `value`, with `fd` attached if given.
///
/// # Errors
///
/// If the socket fails or takes only part of the message.
pub fn send(stream: &UnixStream, value: i64, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let bytes = value.to_le_bytes();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = fd.as_slice();
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    let sent = sendmsg(stream, &[IoSlice::new(&bytes)], &mut control, SendFlags::NOSIGNAL)?;
    if sent != bytes.len() {
        return Err(Error::new(ErrorKind::WriteZero, "short write of an ivshmem message"));
    }
    Ok(())
}

/// Receive one message: its value and the fd attached to it, if any.
///
/// # Errors
///
/// End of stream, a short message, or more than one fd attached.
pub fn receive(stream: &UnixStream) -> std::io::Result<(i64, Option<OwnedFd>)> {
    let mut bytes = [0u8; 8];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::WAITALL,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    match got.bytes {
        0 => return Err(Error::new(ErrorKind::UnexpectedEof, "the ivshmem server hung up")),
        8 => {}
        n => return Err(protocol_error(format!("short ivshmem message ({n} of 8 bytes)"))),
    }
    if fds.len() > 1 {
        return Err(protocol_error(format!("{} fds attached to one message", fds.len())));
    }
    Ok((i64::from_le_bytes(bytes), fds.pop()))
}

/// What a peer learns when it connects (as QEMU's device does).
#[derive(Debug)]
pub struct Setup {
    /// The peer's own id.
    pub own_id: u16,
    /// The shared memory (the region file).
    pub shm: OwnedFd,
    /// The other peers' eventfds, by peer id, one per vector: signalling one rings
    /// that peer.
    pub peers: BTreeMap<u16, Vec<OwnedFd>>,
    /// The peer's own eventfds, one per vector.
    pub own: Vec<OwnedFd>,
}

fn peer_id(value: i64) -> std::io::Result<u16> {
    u16::try_from(value).map_err(|_| protocol_error(format!("peer id {value} out of 0..=65535")))
}

/// Read the setup a server sends on connection, as a peer with `vectors` vectors,
/// checking the order, the id range and the fd counts.
///
/// # Errors
///
/// A protocol violation, or the server hanging up before the setup is complete.
pub fn receive_setup(stream: &UnixStream, vectors: u16) -> std::io::Result<Setup> {
    let expect_plain = |what: &str| -> std::io::Result<i64> {
        match receive(stream)? {
            (value, None) => Ok(value),
            (_, Some(_)) => Err(protocol_error(format!("an fd attached to the {what}"))),
        }
    };
    let version = expect_plain("version")?;
    if version != PROTOCOL_VERSION {
        return Err(protocol_error(format!("protocol version {version}, expected 0")));
    }
    let own_id = peer_id(expect_plain("peer id")?)?;
    let shm = match receive(stream)? {
        (-1, Some(fd)) => fd,
        (value, fd) => {
            return Err(protocol_error(format!(
                "expected the shared memory (-1 with an fd), got {value} with {} fd",
                usize::from(fd.is_some())
            )));
        }
    };
    let mut peers: BTreeMap<u16, Vec<OwnedFd>> = BTreeMap::new();
    let mut own = Vec::new();
    while own.len() < usize::from(vectors) {
        let (value, fd) = receive(stream)?;
        let id = peer_id(value)?;
        let fd = fd.ok_or_else(|| protocol_error(format!("peer {id} announced without fd")))?;
        let list = if id == own_id { &mut own } else { peers.entry(id).or_default() };
        if list.len() == usize::from(vectors) {
            return Err(protocol_error(format!("more than {vectors} eventfds for peer {id}")));
        }
        list.push(fd);
    }
    Ok(Setup { own_id, shm, peers, own })
}

/// Signal an eventfd once.
///
/// # Errors
///
/// If the write fails (a full counter, which needs 2^64 - 1 unread rings, or a bad fd).
pub fn signal(eventfd: BorrowedFd<'_>) -> std::io::Result<()> {
    rustix::io::write(eventfd, &1u64.to_ne_bytes())?;
    Ok(())
}

/// A host process connected to a VM's doorbell socket as the VM's QEMU would be: it
/// rings the host's doorbell as the guest's Doorbell register write would (tests,
/// benchmarks, `vgpu-client --doorbell-socket`). While it is connected, the VM's QEMU
/// cannot connect.
#[derive(Debug)]
pub struct HostPeer {
    /// Kept open: closing it tells the holder that the peer left.
    _stream: UnixStream,
    setup: Setup,
}

impl HostPeer {
    /// Connect to `socket` and read the setup.
    ///
    /// # Errors
    ///
    /// If the socket cannot be reached, the holder refuses the connection (another peer
    /// is connected) or breaks the protocol.
    pub fn connect(socket: &Path) -> std::io::Result<Self> {
        let stream = UnixStream::connect(socket)?;
        let setup = receive_setup(&stream, VECTORS)
            .map_err(|e| Error::new(e.kind(), format!("{}: {e}", socket.display())))?;
        Ok(Self { _stream: stream, setup })
    }

    /// The setup the holder sent.
    #[must_use]
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// The shared memory the holder sent (the VM's region file).
    #[must_use]
    pub fn shm(&self) -> BorrowedFd<'_> {
        self.setup.shm.as_fd()
    }

    /// Ring as a Doorbell register write of `value` would: signal peer `value >> 16`'s
    /// vector `value & 0xffff`.
    ///
    /// # Errors
    ///
    /// If no such peer or vector was announced, or the eventfd write fails.
    pub fn ring(&self, value: u32) -> std::io::Result<()> {
        let (peer, vector) = ((value >> 16) as u16, (value & 0xffff) as usize);
        let fd = self.setup.peers.get(&peer).and_then(|fds| fds.get(vector)).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("no peer {peer} vector {vector} to ring"))
        })?;
        signal(fd.as_fd())
    }
}
