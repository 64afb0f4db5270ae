//! The holder against a fake QEMU peer: message order, fd counts, id range, isolation
//! between VMs, refusal of a second connection, and hand-over to successive mediators.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vgpu_doorbell::ivshmem::{HOST_PEER, VECTORS, VM_PEER, doorbell_value, receive, receive_setup};
use vgpu_doorbell::{Bell, DoorbellVm, Holder, HostPeer, fetch_bells};

struct Running {
    dir: tempfile::TempDir,
    vms: Vec<DoorbellVm>,
    control: PathBuf,
    stop: Arc<Bell>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    fn start(ids: &[u32]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vms: Vec<DoorbellVm> = ids
            .iter()
            .map(|&id| {
                let region = dir.path().join(format!("vgpu-vm{id}"));
                std::fs::write(&region, vec![0u8; 8192]).unwrap();
                DoorbellVm {
                    vm_id: id,
                    socket: dir.path().join(format!("vgpu-vm{id}.sock")),
                    region,
                }
            })
            .collect();
        let control = dir.path().join("vgpu-doorbells.sock");
        let mut holder = Holder::bind(vms.clone(), &control).unwrap();
        let stop = Arc::new(Bell::local().unwrap());
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || holder.serve(&*stop))
        };
        Self { dir, vms, control, stop, thread: Some(thread) }
    }

    fn socket(&self, index: usize) -> &Path {
        &self.vms[index].socket
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.ring().unwrap();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap().unwrap();
        }
    }
}

#[test]
fn a_peer_receives_its_setup_in_order_and_nothing_of_other_vms() {
    let holder = Running::start(&[1, 2]);
    let stream = UnixStream::connect(holder.socket(0)).unwrap();
    let setup = receive_setup(&stream, VECTORS).unwrap();
    assert_eq!(setup.own_id, VM_PEER);
    assert_eq!(setup.own.len(), usize::from(VECTORS));
    // The only other peer is the host, with one eventfd per vector.
    assert_eq!(setup.peers.keys().copied().collect::<Vec<_>>(), vec![HOST_PEER]);
    assert_eq!(setup.peers[&HOST_PEER].len(), usize::from(VECTORS));
    // The shared memory is the VM's own region file.
    let shm = rustix::fs::fstat(&setup.shm).unwrap();
    let region = std::fs::metadata(&holder.vms[0].region).unwrap();
    assert_eq!((shm.st_dev, shm.st_ino), (region.dev(), region.ino()));
    // Nothing follows the setup.
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let after = receive(&stream).unwrap_err();
    assert!(matches!(after.kind(), std::io::ErrorKind::WouldBlock), "{after}");

    // Ringing the host's eventfd of VM 1 rings VM 1's bell only.
    let bells = fetch_bells(&holder.control).unwrap();
    assert_eq!(
        bells.iter().map(|b| (b.vm_id, b.value)).collect::<Vec<_>>(),
        vec![(1, doorbell_value(HOST_PEER, 0)), (2, doorbell_value(HOST_PEER, 0))]
    );
    vgpu_doorbell::ivshmem::signal(rustix::fd::AsFd::as_fd(&setup.peers[&HOST_PEER][0])).unwrap();
    assert_eq!((bells[0].drain(), bells[1].drain()), (1, 0));
}

#[test]
fn a_second_connection_is_refused_until_the_first_peer_leaves() {
    let holder = Running::start(&[1]);
    let first = HostPeer::connect(holder.socket(0)).unwrap();
    let second = UnixStream::connect(holder.socket(0)).unwrap();
    let refused = receive(&second).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::UnexpectedEof, "{refused}");
    assert!(HostPeer::connect(holder.socket(0)).is_err());
    // The first peer leaves (QEMU exits); a new one (QEMU restarted) is served.
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        if let Ok(peer) = HostPeer::connect(holder.socket(0)) {
            again = Some(peer);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = again.expect("a new peer is served once the first left");
    assert_eq!(again.setup().own_id, VM_PEER);
}

#[test]
fn every_mediator_gets_the_same_eventfds() {
    let holder = Running::start(&[4]);
    let peer = HostPeer::connect(holder.socket(0)).unwrap();
    let first = fetch_bells(&holder.control).unwrap();
    peer.ring(first[0].value).unwrap();
    assert_eq!(first[0].drain(), 1);
    // A restarted mediator fetches again; the peer (QEMU) never reconnects.
    drop(first);
    let second = fetch_bells(&holder.control).unwrap();
    peer.ring(second[0].value).unwrap();
    peer.ring(second[0].value).unwrap();
    assert_eq!(second[0].drain(), 2);
    // A value naming no announced peer or vector is refused.
    assert!(peer.ring(doorbell_value(7, 0)).is_err());
    assert!(peer.ring(doorbell_value(HOST_PEER, VECTORS)).is_err());
}

#[test]
fn a_second_holder_and_a_missing_region_are_refused() {
    let holder = Running::start(&[1]);
    let err = Holder::bind(holder.vms.clone(), &holder.dir.path().join("other.sock")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    std::fs::remove_file(&holder.vms[0].region).unwrap();
    let stream = UnixStream::connect(holder.socket(0)).unwrap();
    assert!(receive_setup(&stream, VECTORS).is_err(), "no setup without the region");
}

#[test]
fn no_holder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = fetch_bells(&dir.path().join("none.sock")).unwrap_err();
    assert!(err.to_string().contains("none.sock"), "{err}");
}
