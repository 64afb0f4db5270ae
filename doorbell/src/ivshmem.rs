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
///
/// ```
/// use vgpu_doorbell::ivshmem::{HOST_PEER, doorbell_value};
/// assert_eq!(doorbell_value(HOST_PEER, 0), 0);
/// assert_eq!(doorbell_value(3, 1), 0x0003_0001);
/// ```
#[must_use]
pub const fn doorbell_value(peer: u16, vector: u16) -> u32 {
    (peer as u32) << 16 | vector as u32
}

fn protocol_error(message: String) -> Error {
    Error::new(ErrorKind::InvalidData, message)
}

/// Send one message: `value`, with `fd` attached if given.
///
/// ```
/// use rustix::fd::AsFd;
/// use std::os::unix::net::UnixStream;
/// use vgpu_doorbell::ivshmem::{receive, send};
/// let (server, peer) = UnixStream::pair()?;
/// let file = tempfile::tempfile()?;
/// send(&server, -1, Some(file.as_fd()))?;
/// let (value, fd) = receive(&peer)?;
/// assert_eq!((value, fd.is_some()), (-1, true));
/// # Ok::<(), std::io::Error>(())
/// ```
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
/// ```
/// use std::os::unix::net::UnixStream;
/// use vgpu_doorbell::ivshmem::{receive, send};
/// let (server, peer) = UnixStream::pair()?;
/// send(&server, 0, None)?;
/// assert_eq!(receive(&peer)?.0, 0);
/// drop(server);
/// assert_eq!(receive(&peer).unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
/// # Ok::<(), std::io::Error>(())
/// ```
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
///
/// ```
/// # use std::sync::Arc;
/// # use vgpu_doorbell::{Bell, DoorbellVm, Holder};
/// # let dir = tempfile::tempdir()?;
/// # let region = dir.path().join("vgpu-vm1");
/// # std::fs::write(&region, [0u8; 4096])?;
/// # let vm = DoorbellVm { vm_id: 1, socket: dir.path().join("vgpu-vm1.sock"), region };
/// # let mut holder = Holder::bind(vec![vm.clone()], &dir.path().join("control.sock"))?;
/// # let stop = Arc::new(Bell::local()?);
/// # let serving = { let stop = Arc::clone(&stop); std::thread::spawn(move || holder.serve(&*stop)) };
/// use vgpu_doorbell::ivshmem::{HOST_PEER, VECTORS, VM_PEER, receive_setup};
/// // What the VM's QEMU learns on its doorbell socket.
/// let stream = std::os::unix::net::UnixStream::connect(&vm.socket)?;
/// let setup = receive_setup(&stream, VECTORS)?;
/// assert_eq!(setup.own_id, VM_PEER);
/// assert_eq!(setup.peers[&HOST_PEER].len(), usize::from(VECTORS));
/// assert_eq!(setup.own.len(), usize::from(VECTORS));
/// # stop.ring()?;
/// # serving.join().unwrap()?;
/// # Ok::<(), std::io::Error>(())
/// ```
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
/// ```
/// use std::os::unix::net::UnixStream;
/// use vgpu_doorbell::ivshmem::{receive_setup, send};
/// // A server speaking another protocol version is refused.
/// let (server, peer) = UnixStream::pair()?;
/// send(&server, 1, None)?;
/// let e = receive_setup(&peer, 1).unwrap_err();
/// assert_eq!(e.to_string(), "protocol version 1, expected 0");
/// # Ok::<(), std::io::Error>(())
/// ```
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
/// ```
/// use rustix::fd::AsFd;
/// let bell = vgpu_doorbell::Bell::local()?;
/// vgpu_doorbell::ivshmem::signal(bell.as_fd())?;
/// vgpu_doorbell::ivshmem::signal(bell.as_fd())?;
/// assert_eq!(bell.drain(), 2);
/// # Ok::<(), std::io::Error>(())
/// ```
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
///
/// ```
/// # use std::sync::Arc;
/// # use vgpu_doorbell::{Bell, DoorbellVm, Holder};
/// # let dir = tempfile::tempdir()?;
/// # let region = dir.path().join("vgpu-vm1");
/// # std::fs::write(&region, [0u8; 4096])?;
/// # let vm = DoorbellVm { vm_id: 1, socket: dir.path().join("vgpu-vm1.sock"), region };
/// # let mut holder = Holder::bind(vec![vm.clone()], &dir.path().join("control.sock"))?;
/// # let stop = Arc::new(Bell::local()?);
/// # let serving = { let stop = Arc::clone(&stop); std::thread::spawn(move || holder.serve(&*stop)) };
/// use vgpu_doorbell::HostPeer;
/// let peer = HostPeer::connect(&vm.socket)?;
/// // The VM's QEMU cannot connect meanwhile: one peer per VM.
/// assert!(HostPeer::connect(&vm.socket).is_err());
/// drop(peer);
/// # stop.ring()?;
/// # serving.join().unwrap()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct HostPeer {
    /// Kept open: closing it tells the holder that the peer left.
    _stream: UnixStream,
    setup: Setup,
}

impl HostPeer {
    /// Connect to `socket` and read the setup.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use vgpu_doorbell::{Bell, DoorbellVm, Holder};
    /// # let dir = tempfile::tempdir()?;
    /// # let region = dir.path().join("vgpu-vm1");
    /// # std::fs::write(&region, [0u8; 4096])?;
    /// # let vm = DoorbellVm { vm_id: 1, socket: dir.path().join("vgpu-vm1.sock"), region };
    /// # let mut holder = Holder::bind(vec![vm.clone()], &dir.path().join("control.sock"))?;
    /// # let stop = Arc::new(Bell::local()?);
    /// # let serving = { let stop = Arc::clone(&stop); std::thread::spawn(move || holder.serve(&*stop)) };
    /// let peer = vgpu_doorbell::HostPeer::connect(&vm.socket)?;
    /// assert_eq!(peer.setup().own_id, vgpu_doorbell::ivshmem::VM_PEER);
    /// # stop.ring()?;
    /// # serving.join().unwrap()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
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
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use vgpu_doorbell::{Bell, DoorbellVm, Holder};
    /// # let dir = tempfile::tempdir()?;
    /// # let region = dir.path().join("vgpu-vm1");
    /// # std::fs::write(&region, [0u8; 4096])?;
    /// # let vm = DoorbellVm { vm_id: 1, socket: dir.path().join("vgpu-vm1.sock"), region };
    /// # let mut holder = Holder::bind(vec![vm.clone()], &dir.path().join("control.sock"))?;
    /// # let stop = Arc::new(Bell::local()?);
    /// # let serving = { let stop = Arc::clone(&stop); std::thread::spawn(move || holder.serve(&*stop)) };
    /// use vgpu_doorbell::ivshmem::HOST_PEER;
    /// let peer = vgpu_doorbell::HostPeer::connect(&vm.socket)?;
    /// assert!(peer.setup().peers.contains_key(&HOST_PEER));
    /// # stop.ring()?;
    /// # serving.join().unwrap()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// The shared memory the holder sent (the VM's region file).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use vgpu_doorbell::{Bell, DoorbellVm, Holder};
    /// # let dir = tempfile::tempdir()?;
    /// # let region = dir.path().join("vgpu-vm1");
    /// # std::fs::write(&region, [0u8; 4096])?;
    /// # let vm = DoorbellVm { vm_id: 1, socket: dir.path().join("vgpu-vm1.sock"), region };
    /// # let mut holder = Holder::bind(vec![vm.clone()], &dir.path().join("control.sock"))?;
    /// # let stop = Arc::new(Bell::local()?);
    /// # let serving = { let stop = Arc::clone(&stop); std::thread::spawn(move || holder.serve(&*stop)) };
    /// use std::io::Read;
    /// let peer = vgpu_doorbell::HostPeer::connect(&vm.socket)?;
    /// // The region file, as QEMU maps it.
    /// let mut region = std::fs::File::from(peer.shm().try_clone_to_owned()?);
    /// let mut bytes = Vec::new();
    /// region.read_to_end(&mut bytes)?;
    /// assert_eq!(bytes.len(), 4096);
    /// # stop.ring()?;
    /// # serving.join().unwrap()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn shm(&self) -> BorrowedFd<'_> {
        self.setup.shm.as_fd()
    }

    /// Ring as a Doorbell register write of `value` would: signal peer `value >> 16`'s
    /// vector `value & 0xffff`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use vgpu_doorbell::{Bell, DoorbellVm, Holder};
    /// # let dir = tempfile::tempdir()?;
    /// # let region = dir.path().join("vgpu-vm1");
    /// # std::fs::write(&region, [0u8; 4096])?;
    /// # let vm = DoorbellVm { vm_id: 1, socket: dir.path().join("vgpu-vm1.sock"), region };
    /// # let mut holder = Holder::bind(vec![vm.clone()], &dir.path().join("control.sock"))?;
    /// # let stop = Arc::new(Bell::local()?);
    /// # let serving = { let stop = Arc::clone(&stop); std::thread::spawn(move || holder.serve(&*stop)) };
    /// use std::time::Duration;
    /// use vgpu_doorbell::{BellWaiter, HostPeer, fetch_bells};
    /// let bells = fetch_bells(&dir.path().join("control.sock"))?;
    /// let mut waiter = BellWaiter::new()?;
    /// waiter.watch(&bells[0], 7)?;
    /// let peer = HostPeer::connect(&vm.socket)?;
    /// peer.ring(bells[0].value)?;
    /// assert_eq!(waiter.wait(Some(Duration::from_secs(5)))?, [7]);
    /// assert!(peer.ring(0x0009_0000).is_err(), "no peer 9");
    /// # stop.ring()?;
    /// # serving.join().unwrap()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
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
