//! Surviving a region file that shrinks under its mapping.
//!
//! Touching a page of a shared file mapping beyond the file's end (another process ran
//! `truncate`, or the filesystem could not back a sparse page) raises `SIGBUS`, whose
//! default action ends the process: one VM's file would stop the mediator for every VM.
//! This module uses the technique of libwayland-server's `wl_shm` pools: a `SIGBUS`
//! handler looks the faulting address up in a table of the process's region mappings;
//! if it lies in one, the handler maps anonymous zeroed memory over that whole mapping
//! (`MAP_FIXED`), so the faulting access completes harmlessly when the handler returns,
//! and flags the mapping. The owner of the region notices the flag
//! ([`Region::is_faulted`](crate::Region::is_faulted), cheaply through [`fault_count`])
//! and stops using it. A `SIGBUS` outside every registered mapping restores the
//! previous disposition and returns, so the access faults again and is handled as if
//! this module did not exist (by default the process ends, as before).
//!
//! The handler is async-signal-safe: it only loads and stores lock-free atomics of a
//! static table and calls `mmap(2)` (not on POSIX's list of async-signal-safe functions,
//! but a plain system call on Linux, as libwayland relies on) and `sigaction(2)`.

use crate::sync::Ordering;
use crate::sync::mapped::AtomicU64;
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize};
use nix::libc;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use std::sync::OnceLock;

/// Mappings the handler can protect at once; a region mapped beyond this many is
/// still usable but not protected (reported by [`Registration::protected`]).
const CAPACITY: usize = 4096;

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const ACTIVE: u8 = 2;

struct Entry {
    state: AtomicU8,
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
}

impl Entry {
    const fn new() -> Self {
        Self {
            state: AtomicU8::new(FREE),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            faulted: AtomicBool::new(false),
        }
    }
}

static TABLE: [Entry; CAPACITY] = [const { Entry::new() }; CAPACITY];
static FAULTS: AtomicU64 = AtomicU64::new(0);
/// The disposition before ours (restored for a fault outside every region), or why
/// ours could not be installed.
static PREVIOUS: OnceLock<Result<SigAction, nix::errno::Errno>> = OnceLock::new();

/// How many region mappings have faulted (and been replaced) in this process so far.
///
/// A thread serving many regions loads this once per pass and looks at its regions'
/// [`is_faulted`](crate::Region::is_faulted) only when it changed.
///
/// ```
/// assert_eq!(vgpu_ring::fault_count(), 0);
/// ```
#[must_use]
#[inline]
pub fn fault_count() -> u64 {
    // SYNC(hardware): Acquire pairs with the handler's Release increment: the faulted
    // flag it set first is visible once the new count is (on weakly ordered CPUs the
    // count could otherwise be seen first, and the fault missed for good). No loom
    // model: a signal handler cannot run loom's atomics.
    FAULTS.load(Ordering::Acquire)
}

fn install() -> bool {
    PREVIOUS
        .get_or_init(|| {
            let action = SigAction::new(
                SigHandler::SigAction(on_sigbus),
                SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK,
                SigSet::empty(),
            );
            // SAFETY: `on_sigbus` is async-signal-safe (see the module documentation)
            // and valid for the life of the process.
            unsafe { sigaction(Signal::SIGBUS, &action) }
        })
        .is_ok()
}

/// A mapping's entry in the handler's table; unregisters on drop, which must happen
/// before the mapping is unmapped.
#[derive(Debug)]
pub(crate) struct Registration {
    index: Option<usize>,
}

impl Registration {
    /// Register `len` bytes at `start`, installing the handler on first use. A full
    /// table or a failed `sigaction` leaves the mapping unprotected, not unusable.
    pub(crate) fn new(start: *mut u8, len: usize) -> Self {
        if !install() {
            return Self { index: None };
        }
        let index = TABLE.iter().position(|entry| {
            entry
                .state
                // Relaxed: the claim publishes nothing and reads nothing a previous
                // holder wrote; the entry's bounds are published by the ACTIVE store.
                .compare_exchange(FREE, CLAIMED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        });
        if let Some(i) = index {
            let entry = &TABLE[i];
            entry.start.store(start as usize, Ordering::Relaxed);
            entry.len.store(len, Ordering::Relaxed);
            entry.faulted.store(false, Ordering::Relaxed);
            // SYNC(hardware): Release pairs with the handler's Acquire load of `state`:
            // a handler on another CPU sees this mapping's bounds once it sees it active.
            entry.state.store(ACTIVE, Ordering::Release);
        }
        Self { index }
    }

    /// Whether the handler covers this mapping.
    pub(crate) fn protected(&self) -> bool {
        self.index.is_some()
    }

    /// Whether the mapping faulted and was replaced by anonymous memory.
    pub(crate) fn faulted(&self) -> bool {
        // Relaxed: the flag publishes nothing else (the replacement happened in the
        // kernel); a reader that must not miss it loads `fault_count` first.
        self.index.is_some_and(|i| TABLE[i].faulted.load(Ordering::Relaxed))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(i) = self.index {
            // The mapping is still in place (this runs before the unmap): a fault racing
            // with this store is either handled or, once FREE, would be a bug elsewhere.
            // Relaxed: FREE publishes nothing (a new holder writes fresh bounds before
            // its own ACTIVE store).
            TABLE[i].state.store(FREE, Ordering::Relaxed);
        }
    }
}

extern "C" fn on_sigbus(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for a handler installed with
    // SA_SIGINFO; `si_addr` is the faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    for entry in &TABLE {
        // SYNC(hardware): Acquire pairs with the Release store of ACTIVE in
        // `Registration::new`.
        if entry.state.load(Ordering::Acquire) != ACTIVE {
            continue;
        }
        let start = entry.start.load(Ordering::Relaxed);
        let len = entry.len.load(Ordering::Relaxed);
        if addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: [start, start + len) is a live mapping owned by a `Region` (it
        // unregisters before unmapping). Replacing it with anonymous memory at the same
        // address keeps every pointer into it valid; only its contents change.
        let replaced = unsafe {
            libc::mmap(
                start as *mut c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if replaced == libc::MAP_FAILED {
            break;
        }
        entry.faulted.store(true, Ordering::Relaxed);
        // SYNC(hardware): Release pairs with the Acquire load in `fault_count`: the flag
        // stored above is visible to whoever sees the new count.
        FAULTS.fetch_add(1, Ordering::Release);
        return;
    }
    // Not ours: put the previous disposition back and return; the access faults again.
    // `OnceLock::get` is a lock-free load.
    let previous = match PREVIOUS.get() {
        Some(Ok(previous)) => *previous,
        _ => SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
    };
    // SAFETY: restoring the disposition that was in place before ours (or the default).
    let _ = unsafe { sigaction(Signal::SIGBUS, &previous) };
}
