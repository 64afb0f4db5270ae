//! Header validation (what `Region::open` decides on) on arbitrary header bytes, init
//! words and mapping sizes: never a panic, and an accepted header describes a valid
//! geometry that fits the mapping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vgpu_ring::layout::{PAGE_SIZE, RegionHeader};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

fuzz_target!(|data: &[u8]| {
    let Some((sizes, bytes)) = data.split_first_chunk::<12>() else { return };
    let len = u64::from_le_bytes(sizes[..8].try_into().unwrap_or_default());
    let init = u32::from_le_bytes(sizes[8..].try_into().unwrap_or_default());
    let mut header = RegionHeader::new_zeroed();
    let take = bytes.len().min(PAGE_SIZE);
    header.as_mut_bytes()[..take].copy_from_slice(&bytes[..take]);
    let header = RegionHeader::read_from_bytes(header.as_bytes()).unwrap_or(header);
    if let Ok(geometry) = header.validate(init, len) {
        assert!(geometry.validate().is_ok());
        assert!(geometry.required_size() as u64 <= len);
        assert!(len.is_power_of_two());
    }
});
