//! Values carried by the wire structs: opcodes, statuses, error codes, priorities.

use core::fmt;

/// Operations a guest can request. Data is `f32`, little-endian, in the slot's arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Opcode {
    /// Do nothing; a command name that is not an operation is sent as a labelled NOOP.
    Noop = 1,
    /// Copy the input range to the output range.
    Echo = 2,
    /// Occupy the pool for `args[0]` microseconds (a stand-in for a long GPU job).
    Sleep = 3,
    /// `out[i] = a[i] + b[i]`; `args[0]` = n; input = a ‖ b.
    VectorAdd = 4,
    /// `out[i] = alpha * x[i] + y[i]`; `args[0]` = n, `args[1]` = alpha's f32 bits;
    /// input = x ‖ y.
    Saxpy = 5,
    /// `out[0] = Σ x[i] * y[i]`; `args[0]` = n; input = x ‖ y.
    Dot = 6,
    /// `C = A × B`, row-major; `args` = (m, k, n); input = A (m×k) ‖ B (k×n); output C (m×n).
    Matmul = 7,
}

impl Opcode {
    /// Every opcode, in wire order.
    pub const ALL: [Self; 7] = [
        Self::Noop,
        Self::Echo,
        Self::Sleep,
        Self::VectorAdd,
        Self::Saxpy,
        Self::Dot,
        Self::Matmul,
    ];

    /// The command name used in labels and logs (`VECTOR_ADD`, ...).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Noop => "NOOP",
            Self::Echo => "ECHO",
            Self::Sleep => "SLEEP",
            Self::VectorAdd => "VECTOR_ADD",
            Self::Saxpy => "SAXPY",
            Self::Dot => "DOT",
            Self::Matmul => "MATMUL",
        }
    }

    /// The opcode whose [`name`](Self::name) is `name`, if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }
}

impl TryFrom<u16> for Opcode {
    type Error = u16;

    fn try_from(value: u16) -> Result<Self, u16> {
        Self::ALL.into_iter().find(|&op| op as u16 == value).ok_or(value)
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Response status, as in the original file protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Not answered yet (never published in a response entry).
    Pending = 0,
    /// The operation succeeded.
    Success = 1,
    /// The operation failed; see the error code.
    Error = 2,
}

impl TryFrom<u32> for Status {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        match value {
            0 => Ok(Self::Pending),
            1 => Ok(Self::Success),
            2 => Ok(Self::Error),
            other => Err(other),
        }
    }
}

/// Why a request failed (the response's `error` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// No error.
    None = 0,
    /// The opcode is not one of [`Opcode`].
    UnknownOpcode = 1,
    /// The request's pool, priority or VM id differs from the slot's configured identity.
    IdentityMismatch = 2,
    /// An input or output range lies outside the slot's arena.
    BadRange = 3,
    /// The arguments do not describe a valid shape for the input (or are too large).
    BadShape = 4,
    /// The output range is too small for the result.
    OutputTooSmall = 5,
    /// The VM has more requests queued than its quota allows.
    QuotaExceeded = 6,
    /// The executor failed (e.g. a GPU error).
    ExecutorFailed = 7,
    /// The mediator is shutting down.
    ShuttingDown = 8,
    /// The input and output ranges overlap (a request may be executed twice, after a
    /// mediator restart, so an operation must not overwrite its own input).
    OverlappingRanges = 9,
}

impl ErrorCode {
    /// Every error code, in wire order.
    pub const ALL: [Self; 10] = [
        Self::None,
        Self::UnknownOpcode,
        Self::IdentityMismatch,
        Self::BadRange,
        Self::BadShape,
        Self::OutputTooSmall,
        Self::QuotaExceeded,
        Self::ExecutorFailed,
        Self::ShuttingDown,
        Self::OverlappingRanges,
    ];

    /// A short human-readable description.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Self::None => "no error",
            Self::UnknownOpcode => "unknown opcode",
            Self::IdentityMismatch => "pool, priority or vm id differs from the slot's identity",
            Self::BadRange => "arena range out of bounds",
            Self::BadShape => "bad shape",
            Self::OutputTooSmall => "output range too small",
            Self::QuotaExceeded => "in-flight quota exceeded",
            Self::ExecutorFailed => "executor failed",
            Self::ShuttingDown => "mediator shutting down",
            Self::OverlappingRanges => "input and output ranges overlap",
        }
    }
}

impl TryFrom<u32> for ErrorCode {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        Self::ALL.into_iter().find(|&e| e as u32 == value).ok_or(value)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// An error code is an error: a `?` turns it into any error type.
///
/// ```
/// fn refused() -> Result<(), Box<dyn std::error::Error>> {
///     Err(vgpu_ring::ErrorCode::BadShape)?
/// }
/// assert_eq!(refused().unwrap_err().to_string(), "bad shape");
/// ```
impl std::error::Error for ErrorCode {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::try_from(op as u16), Ok(op));
            assert_eq!(Opcode::from_name(op.name()), Some(op));
        }
        assert_eq!(Opcode::try_from(0), Err(0));
        assert_eq!(Opcode::try_from(99), Err(99));
        for e in ErrorCode::ALL {
            assert_eq!(ErrorCode::try_from(e as u32), Ok(e));
        }
        assert_eq!(Status::try_from(3), Err(3));
    }
}

impl crate::Response {
    /// The answer to `request` from the slot whose configured identity is `identity`:
    /// the request's tag, opcode and label echoed, the host's identity (never what the
    /// request claimed), and `result` (bytes written, or the error); timings are zero.
    ///
    /// ```
    /// use vgpu_ring::{ErrorCode, PoolId, Priority, Request, Response, VmIdentity};
    /// let id = VmIdentity { vm_id: 7, pool: PoolId::new(b'A').unwrap(), priority: Priority::LOW };
    /// let request = Request { tag: 9, opcode: 4, ..Request::default() };
    /// let ok = Response::answer(&request, &id, Ok(16));
    /// assert_eq!((ok.tag, ok.vm_id, ok.outcome()), (9, 7, Ok(16)));
    /// let refused = Response::answer(&request, &id, Err(ErrorCode::BadShape));
    /// assert_eq!(refused.outcome(), Err(ErrorCode::BadShape));
    /// ```
    #[must_use]
    pub fn answer(
        request: &crate::Request,
        identity: &crate::VmIdentity,
        result: Result<u32, ErrorCode>,
    ) -> Self {
        let (status, error, out_len) = match result {
            Ok(n) => (Status::Success, ErrorCode::None, n),
            Err(e) => (Status::Error, e, 0),
        };
        Self {
            tag: request.tag,
            status: status as u32,
            error: error as u32,
            out_len,
            vm_id: identity.vm_id,
            pool: identity.pool.byte(),
            priority: identity.priority.get(),
            opcode: request.opcode,
            label: request.label,
            ready: 0,
            queued_ns: 0,
            exec_ns: 0,
        }
    }

    /// What the response says: `Ok(bytes written)` for status 1, else the error code (an
    /// unknown code, or a status that is neither, reads as
    /// [`ErrorCode::ExecutorFailed`]: the peer is not one this build understands).
    ///
    /// ```
    /// use vgpu_ring::{ErrorCode, Response};
    /// let ok = Response { status: 1, out_len: 16, ..Response::default() };
    /// assert_eq!(ok.outcome(), Ok(16));
    /// let refused = Response { status: 2, error: ErrorCode::BadShape as u32, ..Response::default() };
    /// assert_eq!(refused.outcome(), Err(ErrorCode::BadShape));
    /// let garbled = Response { status: 7, ..Response::default() };
    /// assert_eq!(garbled.outcome(), Err(ErrorCode::ExecutorFailed));
    /// ```
    pub fn outcome(&self) -> Result<u32, ErrorCode> {
        match Status::try_from(self.status) {
            Ok(Status::Success) => Ok(self.out_len),
            _ => Err(ErrorCode::try_from(self.error)
                .ok()
                .filter(|&e| e != ErrorCode::None)
                .unwrap_or(ErrorCode::ExecutorFailed)),
        }
    }
}

/// The original protocol's response line, from a response entry:
/// `1:Pool A processed: VECTOR_ADD (prio=2, vm=100)`, or for an error
/// `2:Pool A error: VECTOR_ADD (output range too small; prio=2, vm=100)`.
///
/// ```
/// let r = vgpu_ring::Response {
///     status: 1, pool: b'A', priority: 2, vm_id: 100,
///     label: vgpu_ring::encode_label("VECTOR_ADD"), ..Default::default()
/// };
/// assert_eq!(vgpu_ring::response_text(&r), "1:Pool A processed: VECTOR_ADD (prio=2, vm=100)");
/// ```
#[must_use]
pub fn response_text(r: &crate::Response) -> String {
    let label = crate::decode_label(&r.label);
    let pool = if r.pool.is_ascii_graphic() { char::from(r.pool) } else { '?' };
    match r.outcome() {
        Ok(_) => format!(
            "{}:Pool {pool} processed: {label} (prio={}, vm={})",
            r.status, r.priority, r.vm_id
        ),
        Err(_) => {
            let error = ErrorCode::try_from(r.error).map_or("unknown error", ErrorCode::describe);
            format!(
                "{}:Pool {pool} error: {label} ({error}; prio={}, vm={})",
                r.status, r.priority, r.vm_id
            )
        }
    }
}

/// Byte sizes an operation needs, derived from its arguments: the contract both sides
/// check (see the opcode table in `docs/LAYOUT.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpShape {
    /// Exact input length in bytes, or `None` for "any" (ECHO).
    pub input: Option<u64>,
    /// Minimum output capacity in bytes, or `None` for "as long as the input" (ECHO).
    pub output: Option<u64>,
}

impl OpShape {
    /// Longest SLEEP a request may ask for, in microseconds (10 s).
    pub const MAX_SLEEP_US: u32 = 10_000_000;

    /// The sizes `op` needs with arguments `args`, or [`ErrorCode::BadShape`] if the
    /// arguments are invalid (zero or overflowing dimensions, an over-long sleep).
    ///
    /// ```
    /// use vgpu_ring::{Opcode, OpShape};
    /// let shape = OpShape::of(Opcode::Matmul, [2, 3, 4]).unwrap();
    /// assert_eq!((shape.input, shape.output), (Some(4 * (6 + 12)), Some(4 * 8)));
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorCode::BadShape`].
    pub fn of(op: Opcode, args: [u32; 3]) -> Result<Self, ErrorCode> {
        let f32s = |n: u64| n.checked_mul(4).ok_or(ErrorCode::BadShape);
        let n = u64::from(args[0]);
        let exact = |input: u64, output: u64| Ok(Self { input: Some(input), output: Some(output) });
        match op {
            Opcode::Noop => exact(0, 0),
            Opcode::Echo => Ok(Self { input: None, output: None }),
            Opcode::Sleep if args[0] <= Self::MAX_SLEEP_US => exact(0, 0),
            Opcode::Sleep => Err(ErrorCode::BadShape),
            _ if n == 0 => Err(ErrorCode::BadShape),
            Opcode::VectorAdd | Opcode::Saxpy => exact(f32s(2 * n)?, f32s(n)?),
            Opcode::Dot => exact(f32s(2 * n)?, 4),
            Opcode::Matmul => {
                let (m, k, n) = (u64::from(args[0]), u64::from(args[1]), u64::from(args[2]));
                if k == 0 || n == 0 {
                    return Err(ErrorCode::BadShape);
                }
                let input =
                    m.checked_mul(k).zip(k.checked_mul(n)).and_then(|(a, b)| a.checked_add(b));
                exact(f32s(input.ok_or(ErrorCode::BadShape)?)?, f32s(m * n)?)
            }
        }
    }
}
