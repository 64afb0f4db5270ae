//! The long-lived holder of the doorbell sockets and eventfds (`ivshmem-setup serve`).

use crate::ivshmem::{HOST_PEER, PROTOCOL_VERSION, VECTORS, VM_PEER, doorbell_value, send};
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::fs::OpenOptions;
use std::io::{Error, ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A VM whose doorbell the holder serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoorbellVm {
    /// The VM's id (what the mediator's configuration knows it by).
    pub vm_id: u32,
    /// The socket its QEMU connects to (`-chardev socket,path=…`).
    pub socket: PathBuf,
    /// The region file sent to QEMU as the shared memory (BAR 2).
    pub region: PathBuf,
}

/// One VM's socket, eventfds and connected peer.
#[derive(Debug)]
struct Held {
    vm: DoorbellVm,
    listener: UnixListener,
    /// The host's eventfds: the VM rings them; the mediator waits on them.
    host: Vec<OwnedFd>,
    /// The VM's own eventfds (interrupts to the guest, for a later use).
    guest: Vec<OwnedFd>,
    /// The connected peer (the VM's QEMU); a second connection is refused meanwhile.
    peer: Option<UnixStream>,
}

/// Owns each doorbell VM's socket and eventfds for as long as it runs (longer than any
/// mediator: QEMU cannot reconnect to a new server), serves QEMU's ivshmem protocol on
/// them, and hands the host ends to every mediator that asks on its control socket.
#[derive(Debug)]
pub struct Holder {
    vms: Vec<Held>,
    control: UnixListener,
    control_path: PathBuf,
}

/// Bind a listening socket at `path` with `mode`, replacing a stale socket file (one
/// nobody listens on); a live one means another holder runs.
fn bind(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::new(
                ErrorKind::AddrInUse,
                format!("{}: another doorbell holder serves it", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Make an accepted stream blocking for the few messages the holder sends, with a
/// bound: a peer that never reads cannot stall the holder, which serves every VM.
fn sending(stream: &UnixStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))
}

fn eventfds() -> std::io::Result<Vec<OwnedFd>> {
    (0..VECTORS).map(|_| Ok(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)).collect()
}

impl Holder {
    /// Create the eventfds and bind every VM's socket (mode 0660: the QEMU user's group)
    /// and the control socket (mode 0600: the mediator runs as the holder's user).
    ///
    /// # Errors
    ///
    /// If a socket cannot be bound (another holder runs, a non-socket file is in the
    /// way, the directory is missing) or eventfds cannot be created.
    pub fn bind(vms: Vec<DoorbellVm>, control: &Path) -> std::io::Result<Self> {
        let control_listener = bind(control, 0o600)?;
        let mut held = Vec::with_capacity(vms.len());
        for vm in vms {
            held.push(Held {
                listener: bind(&vm.socket, 0o660)?,
                host: eventfds()?,
                guest: eventfds()?,
                peer: None,
                vm,
            });
        }
        Ok(Self { vms: held, control: control_listener, control_path: control.to_owned() })
    }

    /// Serve connections until `stop` is readable (a rung [`Bell`](crate::Bell), the
    /// read end of a signal's self-pipe); between connections the holder sleeps.
    ///
    /// # Errors
    ///
    /// Only if polling itself fails; a misbehaving peer is logged and dropped.
    pub fn serve(&mut self, stop: impl AsFd) -> std::io::Result<()> {
        while !self.serve_once(stop.as_fd())? {}
        Ok(())
    }

    /// Wait for connections and disconnections and handle them; whether `stop` is
    /// readable.
    fn serve_once(&mut self, stop: BorrowedFd<'_>) -> std::io::Result<bool> {
        // The poll set: the stop, the control socket, then per VM its listener and its
        // peer.
        let mut fds = vec![
            PollFd::from_borrowed_fd(stop, PollFlags::IN),
            PollFd::new(&self.control, PollFlags::IN),
        ];
        for held in &self.vms {
            fds.push(PollFd::new(&held.listener, PollFlags::IN));
            fds.push(match &held.peer {
                Some(peer) => PollFd::new(peer, PollFlags::IN),
                None => PollFd::from_borrowed_fd(held.listener.as_fd(), PollFlags::empty()),
            });
        }
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        if ready[0] {
            return Ok(true);
        }
        if ready[1] {
            self.hand_over();
        }
        for (index, held) in self.vms.iter_mut().enumerate() {
            if ready[3 + 2 * index] && held.peer.is_some() {
                held.check_peer();
            }
            if ready[2 + 2 * index] {
                held.accept();
            }
        }
        Ok(false)
    }

    /// Send the host end of every VM's doorbell to a mediator on the control socket:
    /// the count, then per VM `vm_id << 32 | doorbell value` with its host eventfd.
    fn hand_over(&self) {
        while let Ok((stream, _)) = self.control.accept() {
            let result = (|| {
                sending(&stream)?;
                send(&stream, self.vms.len() as i64, None)?;
                for held in &self.vms {
                    let value = doorbell_value(HOST_PEER, 0);
                    let record = i64::from(held.vm.vm_id) << 32 | i64::from(value);
                    send(&stream, record, Some(held.host[0].as_fd()))?;
                }
                std::io::Result::Ok(())
            })();
            match result {
                Ok(()) => tracing::info!(
                    "handed {} doorbells to a mediator on {}",
                    self.vms.len(),
                    self.control_path.display()
                ),
                Err(e) => tracing::warn!("handing doorbells to a mediator failed: {e}"),
            }
        }
    }
}

impl Held {
    /// Accept pending connections: the first while no peer is connected gets the
    /// setup, any other is refused (closed at once).
    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.peer.is_some() {
                tracing::warn!(
                    "vm {}: refused a second connection on {} (its peer is connected)",
                    self.vm.vm_id,
                    self.vm.socket.display()
                );
                continue;
            }
            match self.welcome(&stream) {
                Ok(()) => {
                    tracing::info!(
                        "vm {}: peer connected on {}",
                        self.vm.vm_id,
                        self.vm.socket.display()
                    );
                    self.peer = Some(stream);
                }
                Err(e) => tracing::warn!("vm {}: setup of a peer failed: {e}", self.vm.vm_id),
            }
        }
    }

    /// Send the setup: version, the VM's id, the region, the host's eventfds, the VM's.
    fn welcome(&self, stream: &UnixStream) -> std::io::Result<()> {
        sending(stream)?;
        let region = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.vm.region)
            .map_err(|e| Error::new(e.kind(), format!("{}: {e}", self.vm.region.display())))?;
        send(stream, PROTOCOL_VERSION, None)?;
        send(stream, i64::from(VM_PEER), None)?;
        send(stream, -1, Some(region.as_fd()))?;
        for fd in &self.host {
            send(stream, i64::from(HOST_PEER), Some(fd.as_fd()))?;
        }
        for fd in &self.guest {
            send(stream, i64::from(VM_PEER), Some(fd.as_fd()))?;
        }
        Ok(())
    }

    /// The peer's socket is readable: QEMU never writes, so this is its hang-up (or
    /// bytes to discard).
    fn check_peer(&mut self) {
        let Some(peer) = &mut self.peer else { return };
        let _ = peer.set_nonblocking(true);
        let mut buf = [0u8; 64];
        match peer.read(&mut buf) {
            Ok(0) => {}
            Ok(_) => return,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
            Err(_) => {}
        }
        tracing::info!("vm {}: peer left {}", self.vm.vm_id, self.vm.socket.display());
        self.peer = None;
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.control_path);
        for held in &self.vms {
            let _ = std::fs::remove_file(&held.vm.socket);
        }
    }
}
