//! Creating, opening and validating regions.
#![cfg(not(loom))]

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use vgpu_ring::layout::{PAGE_SIZE, REGION_MAGIC};
use vgpu_ring::{Access, Geometry, Region, RegionError, Request, Response, SlotIdentity};

const GEOMETRY: Geometry = Geometry { slot_count: 1, ring_entries: 16, arena_size: 8192 };

fn create(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("vm7");
    Region::create(
        &path,
        1 << 16,
        GEOMETRY,
        &[SlotIdentity::new(7, vgpu_ring::PoolId::new(b'B').unwrap(), vgpu_ring::Priority::MEDIUM)],
        false,
    )
    .unwrap();
    path
}

#[test]
fn create_then_open_round_trips_geometry_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let region = Arc::new(Region::open(&path, Access::ReadOnly).unwrap());
    assert_eq!(region.geometry(), GEOMETRY);
    assert_eq!(region.size(), 1 << 16);
    assert_eq!(
        region.slot(0).unwrap().identity(),
        SlotIdentity::new(7, vgpu_ring::PoolId::new(b'B').unwrap(), vgpu_ring::Priority::MEDIUM)
    );
    assert_eq!(region.epoch(), 0);
    assert!(matches!(region.slot(1), Err(RegionError::SlotOutOfRange { slot: 1, count: 1 })));
    assert!(matches!(
        region.slot(0).unwrap().set_identity(SlotIdentity::new(
            1,
            vgpu_ring::PoolId::new(b'A').unwrap(),
            vgpu_ring::Priority::LOW
        )),
        Err(RegionError::ReadOnly)
    ));
}

#[test]
fn create_refuses_bad_sizes_and_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    assert!(matches!(
        Region::create(&path, 1 << 16, GEOMETRY, &[], false),
        Err(RegionError::AlreadyExists(_))
    ));
    Region::create(&path, 1 << 16, GEOMETRY, &[], true).unwrap();
    let other = dir.path().join("x");
    assert!(matches!(
        Region::create(&other, 3 << 14, GEOMETRY, &[], false),
        Err(RegionError::NotPowerOfTwo(_))
    ));
    assert!(matches!(
        Region::create(&other, 1 << 12, GEOMETRY, &[], false),
        Err(RegionError::TooSmall { .. })
    ));
    let bad = Geometry { ring_entries: 12, ..GEOMETRY };
    assert!(matches!(
        Region::create(&other, 1 << 16, bad, &[], false),
        Err(RegionError::Geometry(vgpu_ring::GeometryError::RingEntries(12)))
    ));
}

#[test]
fn open_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let file = std::fs::File::options().write(true).open(&path).unwrap();

    // Geometry other than the host's config.
    let expected = Geometry { arena_size: 4096, ..GEOMETRY };
    assert!(matches!(
        Region::open_expecting(&path, Access::ReadOnly, expected),
        Err(RegionError::GeometryMismatch { .. })
    ));
    // Init word cleared: formatting incomplete.
    file.write_all_at(&0u32.to_le_bytes(), 12).unwrap();
    assert!(matches!(Region::open(&path, Access::ReadOnly), Err(RegionError::NotInitialized)));
    // Another major version (layout 1: entries without publication words).
    file.write_all_at(&1u16.to_le_bytes(), 8).unwrap();
    assert!(matches!(
        Region::open(&path, Access::ReadOnly),
        Err(RegionError::VersionMismatch { found_major: 1, .. })
    ));
    // Not a region at all.
    file.write_all_at(&[0x55; 8], 0).unwrap();
    assert!(matches!(Region::open(&path, Access::ReadOnly), Err(RegionError::BadMagic(_))));
    // Truncated.
    let short = dir.path().join("short");
    std::fs::write(&short, [0u8; 100]).unwrap();
    assert!(matches!(Region::open(&short, Access::ReadOnly), Err(RegionError::TooSmall { .. })));
    // Missing.
    assert!(matches!(
        Region::open(&dir.path().join("nope"), Access::ReadOnly),
        Err(RegionError::Io { .. })
    ));
}

#[test]
fn header_geometry_inconsistent_with_the_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    // Claims a huge arena: the slot would not fit.
    file.write_all_at(&(1u32 << 30).to_le_bytes(), 40).unwrap();
    assert!(Region::open(&path, Access::ReadOnly).is_err());
    // The file grew after formatting: size disagrees with the header.
    let path = dir.path().join("grown");
    Region::create(&path, 1 << 16, GEOMETRY, &[], false).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_len(1 << 17).unwrap();
    assert!(matches!(Region::open(&path, Access::ReadOnly), Err(RegionError::BadGeometry(_))));
}

#[test]
fn random_bytes_are_not_a_region() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("random");
    let bytes: Vec<u8> =
        (0..PAGE_SIZE as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let err = Region::open(&path, Access::ReadOnly).unwrap_err();
    assert!(matches!(err, RegionError::BadMagic(m) if m != REGION_MAGIC), "{err}");
}

#[test]
fn session_heartbeat_and_arena() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let region = Arc::new(Region::open(&path, Access::ReadWrite).unwrap());
    region.begin_session(77, 1234, 100).unwrap();
    region.store_heartbeat(5_000).unwrap();
    let view = Arc::new(Region::open(&path, Access::ReadOnly).unwrap());
    assert_eq!((view.epoch(), view.mediator_pid(), view.heartbeat()), (77, 1234, (5_000, 100)));

    region.slot(0).unwrap().arena_write(8190, &[1, 2]).unwrap();
    let mut out = [0; 2];
    view.slot(0).unwrap().arena_read(8190, &mut out).unwrap();
    assert_eq!(out, [1, 2]);
    assert!(matches!(
        region.slot(0).unwrap().arena_write(8191, &[1, 2]),
        Err(RegionError::ArenaOutOfBounds { .. })
    ));
    assert!(region.slot(0).unwrap().arena_read(u64::MAX, &mut out).is_err());
}

#[test]
fn rings_carry_entries_between_two_mappings() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let guest_region = Arc::new(Region::open(&path, Access::ReadWrite).unwrap());
    let host_region = Arc::new(Region::open_expecting(&path, Access::ReadWrite, GEOMETRY).unwrap());
    let mut guest = guest_region.slot(0).unwrap().guest_endpoints().unwrap();
    let mut host = host_region.slot(0).unwrap().host_endpoints().unwrap();
    for round in 0..5u32 {
        for i in 0..16 {
            guest.requests.stage(Request { tag: round * 100 + i, ..Request::default() }).unwrap();
        }
        assert!(guest.requests.stage(Request::default()).is_err(), "17th entry must not fit");
        guest.requests.publish();
        for i in 0..16 {
            let req = host.requests.pop().unwrap();
            assert_eq!(req.tag, round * 100 + i);
            host.responses
                .push(Response { tag: req.tag, status: 1, ..Response::default() })
                .unwrap();
        }
        assert_eq!(host.requests.pop(), None);
        for i in 0..16 {
            assert_eq!(guest.responses.pop().unwrap().tag, round * 100 + i);
        }
    }
    let indices = host_region.slot(0).unwrap().ring_indices();
    assert_eq!(
        (indices.req_head, indices.req_tail, indices.resp_head, indices.resp_tail),
        (80, 80, 80, 80)
    );
    let view = Arc::new(Region::open(&path, Access::ReadOnly).unwrap());
    assert!(matches!(view.slot(0).unwrap().guest_endpoints(), Err(RegionError::ReadOnly)));
}

/// A file truncated under a live mapping: the access that would raise a fatal SIGBUS
/// completes (on anonymous memory), the region reports it, and a second region of the
/// same process is untouched.
#[test]
fn a_file_shrinking_under_the_mapping_is_survived_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let other = dir.path().join("other");
    Region::create(
        &other,
        1 << 16,
        GEOMETRY,
        &[SlotIdentity::new(8, vgpu_ring::PoolId::new(b'B').unwrap(), vgpu_ring::Priority::MEDIUM)],
        false,
    )
    .unwrap();
    let region = Arc::new(Region::open(&path, Access::ReadWrite).unwrap());
    let second = Arc::new(Region::open(&other, Access::ReadWrite).unwrap());
    assert!(region.is_protected() && !region.is_faulted());
    let faults = vgpu_ring::fault_count();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4096).unwrap();
    // The arena lies beyond the first page: reading it faults and is handled.
    let mut bytes = [0xffu8; 64];
    region.slot(0).unwrap().arena_read(0, &mut bytes).unwrap();
    assert_eq!(bytes, [0; 64], "the replacement memory reads as zeros");
    assert!(region.is_faulted());
    assert!(vgpu_ring::fault_count() > faults);
    // Writes land harmlessly too, and the other region still works.
    region.slot(0).unwrap().arena_write(0, &[1, 2, 3]).unwrap();
    assert!(!second.is_faulted());
    second.slot(0).unwrap().arena_write(0, &[9]).unwrap();
    assert_eq!(second.slot(0).unwrap().identity().vm_id, 8);
}

/// The host attaches from its configuration: whatever a guest wrote over the header and
/// the identity words is stamped over; the rings and arena are left as they are.
#[test]
fn attach_host_restamps_a_scribbled_header_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let garbage: Vec<u8> =
        (0..PAGE_SIZE as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
    file.write_all_at(&garbage, 0).unwrap();
    file.write_all_at(&[0xAB; 16], PAGE_SIZE as u64).unwrap();
    file.write_all_at(b"arena", PAGE_SIZE as u64 + GEOMETRY.arena_offset() as u64).unwrap();
    assert!(Region::open(&path, Access::ReadOnly).is_err());
    let id =
        SlotIdentity::new(7, vgpu_ring::PoolId::new(b'B').unwrap(), vgpu_ring::Priority::MEDIUM);
    let host = Arc::new(Region::attach_host(&path, 1 << 16, GEOMETRY, &[id]).unwrap());
    assert_eq!(host.slot(0).unwrap().identity(), id);
    let guest = Arc::new(Region::open(&path, Access::ReadOnly).unwrap());
    assert_eq!(guest.geometry(), GEOMETRY);
    let mut kept = [0u8; 5];
    guest.slot(0).unwrap().arena_read(0, &mut kept).unwrap();
    assert_eq!(&kept, b"arena");
}

/// Only what the configuration cannot fix is refused: another size, not a file.
#[test]
fn attach_host_refuses_what_the_configuration_cannot_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let id =
        [SlotIdentity::new(7, vgpu_ring::PoolId::new(b'B').unwrap(), vgpu_ring::Priority::MEDIUM)];
    assert!(matches!(
        Region::attach_host(&path, 1 << 17, GEOMETRY, &id),
        Err(RegionError::WrongSize { found: 65536, expected: 131072, .. })
    ));
    std::fs::create_dir(dir.path().join("dir")).unwrap();
    let err = Region::attach_host(&dir.path().join("dir"), 1 << 16, GEOMETRY, &id).unwrap_err();
    assert!(err.to_string().contains("dir"), "{err}");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert!(matches!(
        Region::attach_host(&fifo, 1 << 16, GEOMETRY, &id),
        Err(RegionError::NotRegularFile(_))
    ));
}

/// One host per region: a second attach is refused naming the first one's pid, and
/// the lock goes with its holder. A client's `flock` does not interfere.
#[test]
fn one_host_per_region() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let id =
        [SlotIdentity::new(7, vgpu_ring::PoolId::new(b'B').unwrap(), vgpu_ring::Priority::MEDIUM)];
    let client_lock = nix::fcntl::Flock::lock(
        std::fs::File::open(&path).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    let first = Arc::new(Region::attach_host(&path, 1 << 16, GEOMETRY, &id).unwrap());
    first.begin_session(3, 4242, 10).unwrap();
    match Region::attach_host(&path, 1 << 16, GEOMETRY, &id) {
        Err(RegionError::ServedElsewhere { pid, .. }) => assert_eq!(pid, 4242),
        other => panic!("expected ServedElsewhere, got {other:?}"),
    }
    drop(first);
    Region::attach_host(&path, 1 << 16, GEOMETRY, &id).unwrap();
    drop(client_lock);
}

/// The reset handshake over a mapped slot: fresh indices, cleared status, and new
/// endpoints that work.
#[test]
fn reset_handshake_over_a_mapped_slot() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let region = Arc::new(Region::open(&path, Access::ReadWrite).unwrap());
    let mut guest = region.slot(0).unwrap().guest_endpoints().unwrap();
    for tag in 0..5 {
        guest.requests.push(Request { tag, ..Request::default() }).unwrap();
    }
    region.slot(0).unwrap().set_host_status(1).unwrap();
    let control = region.slot(0).unwrap();
    let ticket = vgpu_ring::request_reset(&control);
    assert!(!vgpu_ring::reset_completed(&control, ticket));
    let asked = vgpu_ring::take_reset_request(&control).unwrap();
    vgpu_ring::complete_reset(&control, asked);
    assert!(vgpu_ring::reset_completed(&control, ticket));
    assert_eq!(vgpu_ring::take_reset_request(&control), None);
    let indices = region.slot(0).unwrap().ring_indices();
    assert_eq!(
        (indices.req_head, indices.req_tail, indices.resp_head, indices.resp_tail),
        (0, 0, 0, 0)
    );
    assert_eq!(region.slot(0).unwrap().host_status(), 0);
    let mut guest = region.slot(0).unwrap().guest_endpoints().unwrap();
    let mut host = region.slot(0).unwrap().host_endpoints().unwrap();
    guest.requests.push(Request { tag: 99, ..Request::default() }).unwrap();
    assert_eq!(host.requests.pop().unwrap().tag, 99);
    host.responses.push(Response { tag: 99, ..Response::default() }).unwrap();
    assert_eq!(guest.responses.pop().unwrap().tag, 99);
}

/// A SIGBUS outside every region is not swallowed: the process ends as it would
/// without the handler. Runs [`sigbus_outside_regions_child`] in a child process.
#[test]
fn a_sigbus_outside_every_region_still_ends_the_process() {
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sigbus_outside_regions_child", "--ignored", "--nocapture"])
        .env("VGPU_SIGBUS_CHILD", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(nix::libc::SIGBUS), "{status:?}");
}

/// The child of [`a_sigbus_outside_every_region_still_ends_the_process`]: installs the
/// handler (by mapping a region), then faults on a file mapping that is no region.
#[test]
#[ignore = "run by a_sigbus_outside_every_region_still_ends_the_process in a child process"]
fn sigbus_outside_regions_child() {
    assert_eq!(std::env::var("VGPU_SIGBUS_CHILD").as_deref(), Ok("1"), "only as a child");
    let dir = tempfile::tempdir().unwrap();
    let _region = Arc::new(Region::open(&create(dir.path()), Access::ReadWrite).unwrap());
    let path = dir.path().join("plain");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(1 << 16).unwrap();
    let map = memmap2::MmapOptions::new().len(1 << 16).map_raw(&file).unwrap();
    file.set_len(0).unwrap();
    // SAFETY: in bounds of the mapping; the read faults (SIGBUS), which is the point.
    let byte = unsafe { map.as_ptr().add(8192).read_volatile() };
    panic!("read {byte} from a truncated mapping without SIGBUS");
}
