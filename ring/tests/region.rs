//! Creating, opening and validating regions.
#![cfg(not(loom))]

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use vgpu_ring::layout::{PAGE_SIZE, REGION_MAGIC};
use vgpu_ring::{
    Access, Geometry, Region, RegionError, Request, Response, SlotIdentity, guest_endpoints,
    host_endpoints,
};

const GEOMETRY: Geometry = Geometry { slot_count: 1, ring_entries: 16, arena_size: 8192 };

fn create(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("vm7");
    Region::create(&path, 1 << 16, GEOMETRY, &[SlotIdentity::new(7, b'B', 1)], false).unwrap();
    path
}

#[test]
fn create_then_open_round_trips_geometry_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let region = Region::open(&path, Access::ReadOnly).unwrap();
    assert_eq!(region.geometry(), GEOMETRY);
    assert_eq!(region.size(), 1 << 16);
    assert_eq!(region.identity(0).unwrap(), SlotIdentity::new(7, b'B', 1));
    assert_eq!(region.epoch(), 0);
    assert!(matches!(region.identity(1), Err(RegionError::SlotOutOfRange { slot: 1, count: 1 })));
    assert!(matches!(
        region.set_identity(0, SlotIdentity::new(1, b'A', 0)),
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
        Err(RegionError::BadGeometry(_))
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
    // Another major version.
    file.write_all_at(&2u16.to_le_bytes(), 8).unwrap();
    assert!(matches!(
        Region::open(&path, Access::ReadOnly),
        Err(RegionError::VersionMismatch { found_major: 2, .. })
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
fn session_heartbeat_pending_and_arena() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let region = Region::open(&path, Access::ReadWrite).unwrap();
    region.begin_session(77, 1234, 100).unwrap();
    region.store_heartbeat(5_000).unwrap();
    let view = Region::open(&path, Access::ReadOnly).unwrap();
    assert_eq!((view.epoch(), view.mediator_pid(), view.heartbeat()), (77, 1234, (5_000, 100)));

    region.mark_pending(0).unwrap();
    assert_eq!(region.take_pending(0).unwrap(), 1);
    assert_eq!(region.take_pending(0).unwrap(), 0);
    assert!(region.mark_pending(1).is_err());

    region.arena_write(0, 8190, &[1, 2]).unwrap();
    let mut out = [0; 2];
    view.arena_read(0, 8190, &mut out).unwrap();
    assert_eq!(out, [1, 2]);
    assert!(matches!(
        region.arena_write(0, 8191, &[1, 2]),
        Err(RegionError::ArenaOutOfBounds { .. })
    ));
    assert!(region.arena_read(0, u64::MAX, &mut out).is_err());
}

#[test]
fn rings_carry_entries_between_two_mappings() {
    let dir = tempfile::tempdir().unwrap();
    let path = create(dir.path());
    let guest_region = Arc::new(Region::open(&path, Access::ReadWrite).unwrap());
    let host_region = Arc::new(Region::open_expecting(&path, Access::ReadWrite, GEOMETRY).unwrap());
    let mut guest = guest_endpoints(&guest_region, 0).unwrap();
    let mut host = host_endpoints(&host_region, 0).unwrap();
    for round in 0..5u32 {
        for i in 0..16 {
            guest.requests.stage(Request { tag: round * 100 + i, ..Request::default() }).unwrap();
        }
        assert!(guest.requests.stage(Request::default()).is_err(), "17th entry must not fit");
        guest.requests.publish();
        for i in 0..16 {
            let req = host.requests.pop().unwrap().unwrap();
            assert_eq!(req.tag, round * 100 + i);
            host.responses
                .push(Response { tag: req.tag, status: 1, ..Response::default() })
                .unwrap();
        }
        assert_eq!(host.requests.pop().unwrap(), None);
        for i in 0..16 {
            assert_eq!(guest.responses.pop().unwrap().unwrap().tag, round * 100 + i);
        }
    }
    let indices = host_region.ring_indices(0).unwrap();
    assert_eq!(
        (indices.req_head, indices.req_tail, indices.resp_head, indices.resp_tail),
        (80, 80, 80, 80)
    );
    let view = Region::open(&path, Access::ReadOnly).unwrap();
    assert!(matches!(guest_endpoints(&Arc::new(view), 0), Err(RegionError::ReadOnly)));
}
