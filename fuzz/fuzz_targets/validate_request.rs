//! Request validation on arbitrary 64-byte entries, arena sizes and slot identities:
//! never a panic, and an accepted request only ever names arena bytes that exist and
//! an output that does not overlap its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vgpu_ring::{PoolId, Priority, Request, VmIdentity};
use zerocopy::FromBytes;

fuzz_target!(|data: &[u8]| {
    let Some((entry, rest)) = data.split_first_chunk::<64>() else { return };
    let Ok(request) = Request::read_from_bytes(entry) else { return };
    let [a, b, c, d, pool, priority, ..] = *rest else { return };
    let arena_size = u32::from_le_bytes([a, b, c, d]);
    let (Some(pool), Some(priority)) = (PoolId::new(pool), Priority::new(priority % 3)) else {
        return;
    };
    let identity = VmIdentity { vm_id: request.vm_id ^ u32::from(c & 1), pool, priority };
    if let Ok(job) = vgpu_mediator::validate(&request, &identity, arena_size) {
        assert!(identity.claimed_by(&request));
        let end = |(offset, len): (u32, u32)| u64::from(offset) + u64::from(len);
        let arena = u64::from(arena_size);
        if job.input.1 > 0 {
            assert!(end(job.input) <= arena, "input outside the arena");
        }
        if job.output.1 > 0 {
            assert!(end(job.output) <= arena, "output outside the arena");
        }
        if job.input.1 > 0 && job.output.1 > 0 {
            let disjoint = end(job.input) <= u64::from(job.output.0)
                || end(job.output) <= u64::from(job.input.0);
            assert!(disjoint, "overlapping ranges accepted");
        }
    }
});
