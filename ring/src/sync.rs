//! The one synchronisation shim of the crate.
//!
//! Under `cfg(loom)` the atomics and the cell used by the heap-backed ring come from
//! [loom](https://docs.rs/loom), so that the model checker sees every access; otherwise
//! from `core`. This is the pattern of tokio's `src/loom/` and crossbeam-utils'
//! `primitive` module.
//!
//! Atomics that live *inside mapped memory* cannot be loom atomics (their in-memory
//! representation differs), so [`mapped`] always re-exports `core`'s: the mapped backend
//! is exercised by multi-process tests instead, while the algorithm it shares with the
//! heap backend is model-checked.
#![allow(clippy::disallowed_types)]

pub(crate) use core::sync::atomic::Ordering;

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::fence;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::fence;

#[cfg(not(loom))]
pub(crate) use self::core_atomics::AtomicU32;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicU32;

/// Atomics that overlay bytes of a shared mapping: always `core`'s.
pub(crate) mod mapped {
    pub(crate) use super::core_atomics::{AtomicU32, AtomicU64};
}

/// Transparent wrappers over `core`'s atomics: the only place the crate names them, so
/// clippy's `disallowed-types` catches any use that bypasses this shim.
mod core_atomics {
    macro_rules! atomic {
        ($name:ident, $int:ty) => {
            #[derive(Debug)]
            #[repr(transparent)]
            pub(crate) struct $name(core::sync::atomic::$name);

            #[allow(dead_code, reason = "each build uses a subset")]
            impl $name {
                #[inline]
                pub(crate) const fn new(value: $int) -> Self {
                    Self(core::sync::atomic::$name::new(value))
                }

                /// # Safety
                ///
                /// As `core`'s `from_ptr`: `ptr` is aligned, valid for the lifetime
                /// `'a`, and only accessed atomically (or by raw copies) meanwhile.
                #[inline]
                pub(crate) unsafe fn from_ptr<'a>(ptr: *mut $int) -> &'a Self {
                    // SAFETY: the caller upholds `from_ptr`'s contract, and `Self` is
                    // `repr(transparent)` over the core atomic, so the cast is sound.
                    unsafe { &*ptr.cast_const().cast::<Self>() }
                }

                #[inline]
                pub(crate) fn load(&self, order: super::Ordering) -> $int {
                    self.0.load(order)
                }

                #[inline]
                pub(crate) fn store(&self, value: $int, order: super::Ordering) {
                    self.0.store(value, order);
                }

                #[inline]
                pub(crate) fn swap(&self, value: $int, order: super::Ordering) -> $int {
                    self.0.swap(value, order)
                }

                #[inline]
                pub(crate) fn fetch_add(&self, value: $int, order: super::Ordering) -> $int {
                    self.0.fetch_add(value, order)
                }

                #[inline]
                pub(crate) fn fetch_or(&self, value: $int, order: super::Ordering) -> $int {
                    self.0.fetch_or(value, order)
                }
            }
        };
    }

    atomic!(AtomicU32, u32);
    atomic!(AtomicU64, u64);
}

/// Called once per iteration of a busy-poll loop: yields to loom's scheduler in models,
/// and does nothing otherwise.
///
/// It deliberately does not issue the CPU's spin-loop hint (x86 `PAUSE`): inside a KVM
/// guest a `PAUSE` loop triggers pause-loop exits, and on the reference machine it made
/// the ring's cross-process round trip 4.6x slower (651 ns against 140 ns median).
#[inline]
pub fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// A cell whose accesses loom tracks; a thin wrapper over `core::cell::UnsafeCell`
/// otherwise, with the same closure-based API.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
