//! The process's allocator: mimalloc, tuned before anything else runs, with what a runtime
//! thread keeps of large buffers given back when the thread next waits for work.
//!
//! mimalloc keeps the pages a thread freed in that thread's own heap, for its next
//! allocations. After a large upload, a runtime thread holds about 10 MiB that way (its
//! request's body buffers, freed) until it allocates again; the next large upload, whose
//! buffers are of other sizes or made on other threads, then grows the process by as much
//! again. With an object store, whose sinks add buffers of their own, that took 1 GiB in
//! 20 MB parts after 1 GiB in one request to 70 MiB. So while a body is sent to the store as
//! it arrives (and for a second after), a thread that allocated at least [`RELEASE_AFTER`] in
//! large buffers collects its heap (and lets the freed pages go) when it parks, at most once
//! per [`RELEASE_EVERY`]. The pages given back are faulted in again as the upload goes on
//! (about 2 % of a 1 GiB upload's CPU on a local folder, which is why uploads to a folder, at
//! 45-50 MiB, go without); small requests allocate no large buffers and never pay for it.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Allocations of this size or more count as large.
const LARGE: usize = 64 * 1024;
/// Large allocations a thread makes before its next park gives memory back.
const RELEASE_AFTER: usize = 1024 * 1024;
/// One release per thread within this time at most (a large upload parks its threads often).
const RELEASE_EVERY: Duration = Duration::from_millis(20);

thread_local! {
    /// Bytes of large allocations this thread made since it last gave memory back.
    static LARGE_BYTES: Cell<usize> = const { Cell::new(0) };
    static LAST_RELEASE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// mimalloc, counting each thread's large allocations.
pub struct Allocator;

#[inline]
fn count(size: usize) {
    if size >= LARGE {
        LARGE_BYTES.with(|c| c.set(c.get().saturating_add(size)));
    }
}

/// Every block mimalloc hands out is aligned to a word at least: layouts that ask no more
/// take its plain calls. Its aligned calls try one free list and otherwise go a longer way,
/// over-allocating, for any block over 1 KiB (and its GlobalAlloc uses those for all).
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: a layout aligned to at most a word is served by mimalloc's plain calls, whose
// blocks are word-aligned; any other by its aligned calls; blocks of both are freed by
// `mi_free`. The counting touches a thread-local `Cell` only (constant-initialised, no
// destructor, no allocation).
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        if layout.align() <= WORD {
            libmimalloc_sys::mi_malloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        if layout.align() <= WORD {
            libmimalloc_sys::mi_zalloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            count(new_size);
        }
        if layout.align() <= WORD {
            libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mimalloc::MiMalloc.realloc(ptr, layout, new_size)
        }
    }
}

/// Called by a runtime thread about to park: gives back what the thread's heap holds when it
/// made enough large allocations since the last time, that was long enough ago, and a body is
/// (or was just) being sent to the blob store as it arrives.
pub fn on_park() {
    if LARGE_BYTES.with(Cell::get) < RELEASE_AFTER || !nephos::storage::streaming_recently() {
        return;
    }
    let now = Instant::now();
    if LAST_RELEASE.with(|l| {
        l.get()
            .is_some_and(|t| now.duration_since(t) < RELEASE_EVERY)
    }) {
        return;
    }
    LARGE_BYTES.with(|c| c.set(0));
    LAST_RELEASE.with(|l| l.set(Some(now)));
    // SAFETY: mimalloc's collection of the calling thread's heap; no pointer is involved.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Runs [`tune`] before anything else of the process, mimalloc's own start included
/// (a prioritized constructor; mimalloc reserves its first arena at its start).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00099"]
static TUNE_FIRST: extern "C" fn() = {
    extern "C" fn first() {
        tune();
    }
    first
};

/// mimalloc's options (its `mi_option_e` numbering, version 3).
pub fn tune() {
    const ARENA_EAGER_COMMIT: i32 = 4;
    const PURGE_DELAY: i32 = 15;
    const ARENA_RESERVE: i32 = 23;
    // SAFETY: called before `main`, while the process has one thread (mimalloc's options are
    // not thread safe to set).
    unsafe {
        // Arena memory is committed as used, and freed pages go back to the system no sooner
        // than 100 ms after (mimalloc purges when it next runs): soon enough for a large
        // upload's passing buffers, late enough that the next request reuses them instead of
        // faulting in fresh zeroed pages.
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 100);
        // Arenas of 4 MiB (the value is in KiB).
        libmimalloc_sys::mi_option_set(ARENA_RESERVE, 4096);
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};

    /// Blocks of every size and alignment, plain or zeroed, grown or shrunk, come back aligned
    /// and hold what was written (the test binary allocates through [`super::Allocator`]).
    #[test]
    fn blocks_are_aligned_as_asked() {
        let sizes = (1..=96).chain([127, 1000, 1024, 1025, 1500, 4096, 70_000, 300_000]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is freed with the layout it has.
                unsafe {
                    for zeroed in [false, true] {
                        let p = if zeroed {
                            alloc_zeroed(layout)
                        } else {
                            alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "{size} {align}");
                        if zeroed {
                            assert!(std::slice::from_raw_parts(p, size).iter().all(|b| *b == 0));
                        }
                        p.write_bytes(0xa5, size);
                        let bigger = size * 3 + 5;
                        let q = realloc(p, layout, bigger);
                        assert_eq!(q as usize % align, 0);
                        assert!(std::slice::from_raw_parts(q, size)
                            .iter()
                            .all(|b| *b == 0xa5));
                        let smaller = (size / 2).max(1);
                        let r =
                            realloc(q, Layout::from_size_align(bigger, align).unwrap(), smaller);
                        assert_eq!(r as usize % align, 0);
                        assert!(std::slice::from_raw_parts(r, smaller)
                            .iter()
                            .all(|b| *b == 0xa5));
                        dealloc(r, Layout::from_size_align(smaller, align).unwrap());
                    }
                }
            }
        }
    }
}
