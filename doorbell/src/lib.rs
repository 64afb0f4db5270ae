//! Doorbells for vGPU regions.
//!
//! A VM configured with a doorbell gets QEMU's `ivshmem-doorbell` device instead of
//! `ivshmem-plain`. That device does not open the region file itself: it connects to a
//! Unix socket and receives, over QEMU's ivshmem client/server protocol
//! ([`ivshmem`]), the region's file descriptor and eventfds. A guest rings the host by
//! one write to the device's Doorbell register, which signals the host's eventfd; a
//! mediator sleeping in `epoll_wait` on it wakes at once.
//!
//! QEMU cannot reconnect to a restarted server, so the sockets and eventfds are owned by
//! a small long-lived [`Holder`] (`ivshmem-setup serve`), not by the mediator: each
//! mediator that starts fetches the host ends from the holder's control socket
//! ([`fetch_bells`]), so a mediator restart is invisible to QEMU. Every VM has a socket
//! of its own on which the only other peer is the host: a VM never learns another VM's
//! eventfds and cannot interrupt it.
//!
//! A holder, a VM's peer (as QEMU would connect) and a mediator's bell:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use vgpu_doorbell::{Bell, BellWaiter, DoorbellVm, Holder, HostPeer, fetch_bells};
//! let dir = tempfile::tempdir().unwrap();
//! let region = dir.path().join("vgpu-vm1");
//! std::fs::write(&region, [0u8; 4096]).unwrap();
//! let vm = DoorbellVm { vm_id: 1, socket: dir.path().join("vgpu-vm1.sock"), region };
//! let control = dir.path().join("vgpu-doorbells.sock");
//! let mut holder = Holder::bind(vec![vm.clone()], &control)?;
//! let stop = Arc::new(Bell::local()?);
//! let serving = { let stop = Arc::clone(&stop); std::thread::spawn(move || holder.serve(&*stop)) };
//! // The mediator takes the host end of VM 1's doorbell and waits on it.
//! let bells = fetch_bells(&control)?;
//! let mut waiter = BellWaiter::new()?;
//! waiter.watch(&bells[0], 0)?;
//! // The VM's side (QEMU, or a host process standing in for it) rings.
//! let peer = HostPeer::connect(&vm.socket)?;
//! peer.ring(bells[0].value)?;
//! assert_eq!(waiter.wait(Some(Duration::from_secs(5)))?, [0]);
//! assert_eq!(bells[0].drain(), 1);
//! stop.ring()?;
//! serving.join().unwrap()?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod bell;
mod holder;
pub mod ivshmem;

pub use bell::{Bell, BellWaiter, fetch_bells};
pub use holder::{DoorbellVm, Holder};
pub use ivshmem::HostPeer;
