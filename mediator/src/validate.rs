//! Checking a request copied out of shared memory. The guest is untrusted: everything
//! it wrote is checked against the host's own configuration and the slot's arena.

use crate::executor::Job;
use vgpu_ring::{ErrorCode, OpShape, Opcode, Request, VmIdentity};

/// Turn a private copy of a request into a [`Job`], or the error to answer with.
///
/// # Errors
///
/// [`ErrorCode::IdentityMismatch`] if the request claims another pool, priority or VM
/// id than the host configured for the slot; [`ErrorCode::UnknownOpcode`];
/// [`ErrorCode::BadShape`]; [`ErrorCode::BadRange`] if a range leaves the arena;
/// [`ErrorCode::OutputTooSmall`].
#[inline]
pub fn validate(req: &Request, identity: &VmIdentity, arena_size: u32) -> Result<Job, ErrorCode> {
    if !identity.claimed_by(req) {
        return Err(ErrorCode::IdentityMismatch);
    }
    let op = Opcode::try_from(req.opcode).map_err(|_| ErrorCode::UnknownOpcode)?;
    let shape = OpShape::of(op, req.args)?;
    let input = (req.in_offset, req.in_len);
    let output = (req.out_offset, req.out_len);
    let uses_input = shape.input != Some(0);
    let uses_output = shape.output != Some(0);
    let inside =
        |(offset, len): (u32, u32)| u64::from(offset) + u64::from(len) <= u64::from(arena_size);
    if (uses_input && !inside(input)) || (uses_output && !inside(output)) {
        return Err(ErrorCode::BadRange);
    }
    // Execution is at least once (a restarted mediator runs an unreleased request
    // again): an operation that overwrote its own input would answer differently.
    let overlap = |(a, a_len): (u32, u32), (b, b_len): (u32, u32)| {
        a_len > 0 && b_len > 0 && a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
    };
    if uses_input && uses_output && overlap(input, output) {
        return Err(ErrorCode::OverlappingRanges);
    }
    if let Some(want) = shape.input
        && uses_input
        && want != u64::from(req.in_len)
    {
        return Err(ErrorCode::BadShape);
    }
    let need_out = shape.output.unwrap_or(u64::from(req.in_len));
    if u64::from(req.out_len) < need_out {
        return Err(ErrorCode::OutputTooSmall);
    }
    // Ranges the operation does not use were not checked: they do not reach the job.
    let input = if uses_input { input } else { (0, 0) };
    let output = if uses_output { output } else { (0, 0) };
    Ok(Job { op, args: req.args, input, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: VmIdentity = VmIdentity {
        vm_id: 7,
        pool: vgpu_ring::PoolId::new(b'A').unwrap(),
        priority: vgpu_ring::Priority::MEDIUM,
    };

    fn req(op: Opcode, args: [u32; 3], input: (u32, u32), output: (u32, u32)) -> Request {
        Request {
            opcode: op as u16,
            pool: b'A',
            priority: 1,
            vm_id: 7,
            args,
            in_offset: input.0,
            in_len: input.1,
            out_offset: output.0,
            out_len: output.1,
            ..Request::default()
        }
    }

    #[test]
    fn accepts_well_formed_requests() {
        let job =
            validate(&req(Opcode::VectorAdd, [4, 0, 0], (0, 32), (32, 16)), &ID, 4096).unwrap();
        assert_eq!(job.op, Opcode::VectorAdd);
        // A NOOP's ranges are not used, so not checked, and not passed on.
        let noop = validate(&req(Opcode::Noop, [0; 3], (u32::MAX, u32::MAX), (9, 9)), &ID, 4096);
        assert_eq!(noop.map(|j| (j.input, j.output)), Ok(((0, 0), (0, 0))));
        assert!(validate(&req(Opcode::Matmul, [2, 3, 4], (0, 72), (100, 32)), &ID, 4096).is_ok());
        assert!(validate(&req(Opcode::Echo, [0; 3], (0, 10), (10, 10)), &ID, 4096).is_ok());
    }

    #[test]
    fn identity_must_match_the_host_configuration() {
        let mut r = req(Opcode::Noop, [0; 3], (0, 0), (0, 0));
        r.priority = 2;
        assert_eq!(validate(&r, &ID, 4096), Err(ErrorCode::IdentityMismatch));
        r.priority = 1;
        r.pool = b'B';
        assert_eq!(validate(&r, &ID, 4096), Err(ErrorCode::IdentityMismatch));
        r.pool = b'A';
        r.vm_id = 8;
        assert_eq!(validate(&r, &ID, 4096), Err(ErrorCode::IdentityMismatch));
    }

    #[test]
    fn rejects_bad_opcodes_shapes_and_ranges() {
        let mut r = req(Opcode::Noop, [0; 3], (0, 0), (0, 0));
        r.opcode = 99;
        assert_eq!(validate(&r, &ID, 4096), Err(ErrorCode::UnknownOpcode));
        let v = |op, args, i, o| validate(&req(op, args, i, o), &ID, 4096);
        assert_eq!(v(Opcode::VectorAdd, [4, 0, 0], (4090, 32), (0, 16)), Err(ErrorCode::BadRange));
        assert_eq!(
            v(Opcode::VectorAdd, [4, 0, 0], (0, 32), (u32::MAX, 16)),
            Err(ErrorCode::BadRange)
        );
        assert_eq!(v(Opcode::VectorAdd, [4, 0, 0], (0, 24), (32, 16)), Err(ErrorCode::BadShape));
        assert_eq!(
            v(Opcode::VectorAdd, [4, 0, 0], (0, 32), (32, 8)),
            Err(ErrorCode::OutputTooSmall)
        );
        assert_eq!(v(Opcode::VectorAdd, [0, 0, 0], (0, 0), (0, 0)), Err(ErrorCode::BadShape));
        assert_eq!(
            v(Opcode::Matmul, [u32::MAX, u32::MAX, u32::MAX], (0, 8), (0, 8)),
            Err(ErrorCode::BadShape)
        );
        assert_eq!(
            v(Opcode::Sleep, [OpShape::MAX_SLEEP_US + 1, 0, 0], (0, 0), (0, 0)),
            Err(ErrorCode::BadShape)
        );
        assert_eq!(v(Opcode::Echo, [0; 3], (0, 10), (10, 9)), Err(ErrorCode::OutputTooSmall));
    }

    #[test]
    fn rejects_overlapping_input_and_output() {
        let v = |op, args, i, o| validate(&req(op, args, i, o), &ID, 4096);
        assert_eq!(
            v(Opcode::VectorAdd, [4, 0, 0], (0, 32), (16, 16)),
            Err(ErrorCode::OverlappingRanges)
        );
        assert_eq!(
            v(Opcode::VectorAdd, [4, 0, 0], (64, 32), (60, 16)),
            Err(ErrorCode::OverlappingRanges)
        );
        assert_eq!(v(Opcode::Echo, [0; 3], (0, 10), (0, 10)), Err(ErrorCode::OverlappingRanges));
        // Touching ranges do not overlap; an empty range overlaps nothing.
        assert!(v(Opcode::VectorAdd, [4, 0, 0], (0, 32), (32, 16)).is_ok());
        assert!(v(Opcode::Echo, [0; 3], (0, 0), (0, 0)).is_ok());
    }
}
