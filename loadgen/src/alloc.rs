//! A global allocator that can account live heap bytes, so benchmarks report resident memory
//! as the allocator sees it rather than as a data structure estimates it.
//!
//! Counting is off until [`start`] is called, so runs that do not measure memory pay one relaxed
//! load per allocation. Each allocation is charged what glibc's malloc really takes for it
//! ([`footprint`]): the chunk header, rounding to 16 bytes and the 32-byte minimum, or whole
//! pages for the large blocks it maps directly. That is the "allocator slack" the figures include.

// A `GlobalAlloc` cannot be written without `unsafe`; this module only forwards to the system
// allocator and adds bookkeeping.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// The system allocator with optional live-byte accounting.
pub(crate) struct Counting;

static ENABLED: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Starts accounting allocations.
pub(crate) fn start() {
    ENABLED.store(true, Ordering::SeqCst);
}

/// Live bytes (with allocator overhead) allocated since accounting started, less those freed.
pub(crate) fn live_bytes() -> isize {
    LIVE.load(Ordering::SeqCst)
}

/// What glibc malloc consumes for a request of `size` bytes.
pub(crate) fn footprint(size: usize) -> usize {
    const MMAP_THRESHOLD: usize = 128 * 1024;
    const PAGE: usize = 4096;
    if size >= MMAP_THRESHOLD {
        (size + 16).div_ceil(PAGE) * PAGE
    } else {
        ((size + 8 + 15) & !15).max(32)
    }
}

fn charge(size: usize, sign: isize) {
    if ENABLED.load(Ordering::Relaxed) {
        LIVE.fetch_add(sign * footprint(size) as isize, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// allocator's contract is `System`'s; the bookkeeping touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            charge(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            charge(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        charge(layout.size(), -1);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            charge(layout.size(), -1);
            charge(new_size, 1);
        }
        p
    }
}
