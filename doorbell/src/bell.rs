//! The mediator's side: the host ends of the doorbells, fetched from the holder, and a
//! waiter that sleeps on them.

use crate::ivshmem::{receive, signal};
use rustix::event::{Timespec, epoll};
use rustix::fd::{AsFd, OwnedFd};
use std::io::{Error, ErrorKind};
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The host end of one VM's doorbell: the eventfd its guest rings.
#[derive(Debug)]
pub struct Bell {
    /// The VM's id.
    pub vm_id: u32,
    /// The value the guest writes to its Doorbell register to ring it
    /// (`host_peer << 16 | vector`), published in the VM's slot.
    pub value: u32,
    fd: OwnedFd,
}

impl Bell {
    /// A bell of the host's own (not a VM's): a mediator rings it to wake its sleeping
    /// dispatchers when it shuts down.
    ///
    /// # Errors
    ///
    /// If no eventfd can be created.
    pub fn local() -> std::io::Result<Self> {
        use rustix::event::{EventfdFlags, eventfd};
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Self { vm_id: u32::MAX, value: 0, fd })
    }

    /// Take the rings counted since the last call (0 if none); the eventfd is
    /// non-blocking.
    #[must_use]
    pub fn drain(&self) -> u64 {
        let mut count = [0u8; 8];
        match rustix::io::read(&self.fd, &mut count) {
            Ok(8) => u64::from_ne_bytes(count),
            _ => 0,
        }
    }

    /// Ring it from the host (tests).
    ///
    /// # Errors
    ///
    /// If the eventfd write fails.
    pub fn ring(&self) -> std::io::Result<()> {
        signal(self.fd.as_fd())
    }
}

impl AsFd for Bell {
    /// The eventfd: readable while the bell is rung (a holder's stop, a poll set).
    ///
    /// ```
    /// use rustix::event::{PollFd, PollFlags, poll};
    /// let bell = vgpu_doorbell::Bell::local()?;
    /// bell.ring()?;
    /// let mut fds = [PollFd::new(&bell, PollFlags::IN)];
    /// assert_eq!(poll(&mut fds, None)?, 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn as_fd(&self) -> rustix::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Ask the holder listening on `control` for the host end of every doorbell it holds.
///
/// # Errors
///
/// If the holder cannot be reached (not running) or breaks the hand-over protocol.
pub fn fetch_bells(control: &Path) -> std::io::Result<Vec<Bell>> {
    let stream = UnixStream::connect(control)
        .map_err(|e| Error::new(e.kind(), format!("{}: {e}", control.display())))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let invalid = |m: &str| Error::new(ErrorKind::InvalidData, format!("doorbell hand-over: {m}"));
    let count = match receive(&stream)? {
        (count, None) if (0..=65_536).contains(&count) => count,
        _ => return Err(invalid("bad count")),
    };
    (0..count)
        .map(|_| match receive(&stream)? {
            (record, Some(fd)) => {
                Ok(Bell { vm_id: (record >> 32) as u32, value: record as u32, fd })
            }
            (_, None) => Err(invalid("a doorbell without its eventfd")),
        })
        .collect()
}

/// Sleeps until one of the watched bells rings (an epoll instance).
pub struct BellWaiter {
    epoll: OwnedFd,
    /// Tokens of the last wait (kept: a wait allocates nothing once warm).
    tokens: Vec<u64>,
}

impl std::fmt::Debug for BellWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BellWaiter").field("epoll", &self.epoll).finish_non_exhaustive()
    }
}

impl BellWaiter {
    /// An empty waiter.
    ///
    /// # Errors
    ///
    /// If the epoll instance cannot be created.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            tokens: Vec::with_capacity(64),
        })
    }

    /// Wake [`BellWaiter::wait`] with `token` when `bell` rings.
    ///
    /// # Errors
    ///
    /// If the bell cannot be added (already watched).
    pub fn watch(&mut self, bell: &Bell, token: u64) -> std::io::Result<()> {
        epoll::add(&self.epoll, &bell.fd, epoll::EventData::new_u64(token), epoll::EventFlags::IN)?;
        Ok(())
    }

    /// Stop watching `bell` (replaced by a new holder's).
    ///
    /// ```
    /// use vgpu_doorbell::{Bell, BellWaiter};
    /// let bell = Bell::local()?;
    /// let mut waiter = BellWaiter::new()?;
    /// waiter.watch(&bell, 7)?;
    /// waiter.unwatch(&bell)?;
    /// bell.ring()?;
    /// assert!(waiter.wait(Some(std::time::Duration::ZERO))?.is_empty(), "no longer watched");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// If the bell was not watched.
    pub fn unwatch(&mut self, bell: &Bell) -> std::io::Result<()> {
        epoll::delete(&self.epoll, &bell.fd)?;
        Ok(())
    }

    /// Wait up to `timeout` (`None`: forever; zero: just look) for rings; returns the
    /// tokens of the bells that rang (empty at the timeout). The bells stay rung until
    /// [`Bell::drain`]ed. Allocates nothing.
    ///
    /// # Errors
    ///
    /// If epoll fails (an interrupted wait returns no tokens instead).
    pub fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<&[u64]> {
        self.tokens.clear();
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); 64];
        let timeout = timeout
            .map(|t| Timespec { tv_sec: t.as_secs() as i64, tv_nsec: i64::from(t.subsec_nanos()) });
        match epoll::wait(&self.epoll, &mut events, timeout.as_ref()) {
            Ok((ready, _)) => self.tokens.extend(ready.iter().map(|event| event.data.u64())),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(&self.tokens)
    }
}
