//! The process's memory allocator: mimalloc in place of the C library's.
//!
//! A proxied request allocates and frees dozens of small blocks and a few of 3 to 8 KB (hyper's
//! read buffers, the request's future), which glibc serves from its slow path (what it buys:
//! docs/performance.md).
//!
//! Built without transparent huge pages (`no_thp`): with them, the first touch of each of the
//! allocator's regions brought in 2 MB, and the idle process used 20 MB instead of 9.
//!
//! The `mimalloc` crate's allocator asks for every block through `mi_malloc_aligned`, whose
//! blocks over 1 KB take a slower, over-allocating path even when the alignment asked for is
//! one `mi_malloc` gives anyway; this one calls `mi_malloc` for those.

// The one place the workspace allows `unsafe`: `GlobalAlloc` is an unsafe trait. Each method
// only forwards to the mimalloc function for the same job.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment of every mimalloc block of at least this size (`MI_MAX_ALIGN_SIZE` on 64-bit
/// targets; mimalloc v3, the `libmimalloc-sys` default, keeps every size class a multiple of it);
/// smaller blocks are aligned to at least their size rounded up to a word.
const MIN_ALIGN: usize = 16;

/// Whether `mi_malloc` of `layout.size()` bytes is aligned enough for `layout` (the rule Rust's
/// `System` allocator applies to `malloc`).
fn plain(layout: &Layout) -> bool {
    layout.align() <= MIN_ALIGN && layout.align() <= layout.size()
}

pub struct MiMalloc;

// SAFETY: every method forwards to the mimalloc function for the same job; blocks from any of
// them may be freed with `mi_free` and resized with `mi_realloc[_aligned]`.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(&layout) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(&layout) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The new size must keep the layout's alignment plain, or the aligned call keeps it.
        if layout.align() <= MIN_ALIGN && layout.align() <= new_size {
            mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many live blocks of sizes in between the power-of-two classes, at the alignments the
    /// plain path serves: every one is aligned (one block at a time would get the same slot back).
    #[test]
    fn live_blocks_of_odd_sizes_are_aligned() {
        let a = MiMalloc;
        let mut live = Vec::new();
        for size in [
            8, 12, 16, 24, 40, 52, 72, 100, 136, 200, 520, 1000, 1030, 3000,
        ] {
            for align in [1, 8, 16] {
                let layout = Layout::from_size_align(size, align).unwrap();
                for _ in 0..300 {
                    // SAFETY: freed below with the same layout.
                    let p = unsafe { a.alloc(layout) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    live.push((p, layout));
                }
            }
        }
        for (p, layout) in live {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { a.dealloc(p, layout) };
        }
    }

    /// Blocks of every size and alignment come back aligned, zeroed when asked, and keep their
    /// bytes through resizes either way across mimalloc's 1 KB small-block limit.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = MiMalloc;
        for align in [1, 2, 8, 16, 32, 64, 4096] {
            for size in [
                1, 7, 8, 15, 16, 24, 100, 1000, 1024, 1025, 3264, 8192, 100_000,
            ] {
                let mut layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: every block is used within its layout and freed once, with it.
                unsafe {
                    let zeroed = a.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0, "size {size} align {align}");
                    assert!(std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|&b| b == 0));
                    a.dealloc(zeroed, layout);

                    let mut p = a.alloc(layout);
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xA5, size);
                    for new_size in [size / 2 + 1, size * 3] {
                        let kept = layout.size().min(new_size);
                        p = a.realloc(p, layout, new_size);
                        layout = Layout::from_size_align(new_size, align).unwrap();
                        assert_eq!(p as usize % align, 0, "to {new_size} align {align}");
                        assert!(std::slice::from_raw_parts(p, kept)
                            .iter()
                            .all(|&b| b == 0xA5));
                        std::ptr::write_bytes(p, 0xA5, new_size);
                    }
                    a.dealloc(p, layout);
                }
            }
        }
    }
}
