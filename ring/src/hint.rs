//! Cache hints for the shared memory that rings and arenas live in.
//!
//! A line of shared memory was last read by the peer, so a write to it waits until the
//! peer's copy is invalidated; many such writes in a row fill the store buffer and wait
//! one behind another. `PREFETCHW` asks for ownership of a line before it is written,
//! so that those waits overlap. A hint only: it never faults, never changes memory and
//! orders nothing, whatever the address. Where the CPU lacks it (or under Miri), these
//! functions do nothing.

use std::sync::LazyLock;

/// Whether this CPU has `PREFETCHW`, read once.
static PREFETCHW: LazyLock<bool> = LazyLock::new(detect);

/// Writes of at most this many bytes ask for all their lines first (64 lines): a
/// 1,024-float VECTOR_ADD's operands and sums got faster (docs/PERFORMANCE.md); asking
/// first for all the lines of 4 MB made the 4 MB copies slower, and sizes between are
/// left to `memcpy` as they were.
const WHOLE_RANGE: usize = 4096;

/// A cache line's bytes.
const LINE: usize = 64;

/// Whether this CPU has `PREFETCHW` (CPUID leaf 8000_0001h, ECX bit 8).
pub(crate) fn has_prefetchw() -> bool {
    *PREFETCHW
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn detect() -> bool {
    use core::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86-64 CPU and only reports (`__cpuid` is a safe
    // function in newer Rust, an unsafe one in older).
    #[allow(unused_unsafe)]
    let (top, features) = unsafe { (__cpuid(0x8000_0000).eax, __cpuid(0x8000_0001).ecx) };
    top >= 0x8000_0001 && features & (1 << 8) != 0
}

#[cfg(not(all(target_arch = "x86_64", not(miri))))]
fn detect() -> bool {
    false
}

/// Ask for ownership of the line holding `address`; call only where
/// [`has_prefetchw`].
#[inline]
pub(crate) fn prefetch_for_write(address: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: PREFETCHW (present: the caller checked `has_prefetchw`) is a hint that
    // neither faults nor changes memory nor orders anything, whatever the address.
    unsafe {
        core::arch::asm!("prefetchw [{0}]", in(reg) address, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = address;
}

/// Before writing `len` bytes at `start`: ask for ownership of all their lines, if the
/// CPU can and the range is at most [`WHOLE_RANGE`] bytes.
#[inline]
pub(crate) fn prepare_write(start: *const u8, len: usize) {
    if len <= WHOLE_RANGE && has_prefetchw() {
        lines(start, len).for_each(prefetch_for_write);
    }
}

/// The start of each line that `len` bytes at `start` lie in.
fn lines(start: *const u8, len: usize) -> impl Iterator<Item = *const u8> {
    let end = start.wrapping_add(len);
    let first = start.wrapping_sub(start.addr() % LINE);
    core::iter::successors(Some(first), |line| Some(line.wrapping_add(LINE)))
        .take_while(move |&line| line < end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_covered_line_by_line_from_the_line_it_starts_in() {
        let at = |address: usize| core::ptr::without_provenance::<u8>(address);
        let addresses =
            |start, len| lines(at(start), len).map(<*const u8>::addr).collect::<Vec<_>>();
        assert_eq!(addresses(0x1000, 64), [0x1000]);
        assert_eq!(addresses(0x1020, 64), [0x1000, 0x1040], "misaligned: two lines");
        assert_eq!(addresses(0x103f, 2), [0x1000, 0x1040]);
        assert_eq!(addresses(0x1000, 4096).len(), 64);
        assert!(addresses(0x1000, 0).is_empty());
    }
}
