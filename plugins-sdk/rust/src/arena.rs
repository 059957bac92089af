//! `CallArena`: a bump allocator that starts over at every plugin call.

use core::alloc::{GlobalAlloc, Layout};

use crate::rt::Global;

/// A tiny global allocator for plugins that keep no heap data between calls.
///
/// Allocation is a pointer bump in pages taken with `memory.grow`; `dealloc` only gives back the
/// most recent allocation. Everything is released at once when the **next** call starts (after
/// the host has copied the previous output), so memory does not creep up over many calls. This
/// keeps minimal plugins under 1 KiB, where Rust's default allocator adds several KiB.
///
/// Use it only if nothing allocated in one call is used in a later one (no heap data in
/// statics). plugsafe already throws an instance away after any trap, so plugins should not
/// rely on state between calls anyway. Register it on wasm only, so native unit tests keep the
/// system allocator:
///
/// ```ignore
/// #[cfg(target_arch = "wasm32")]
/// #[global_allocator]
/// static ALLOC: plugsafe::CallArena = plugsafe::CallArena::new();
/// ```
///
/// On targets other than wasm32 every allocation fails.
pub struct CallArena {
    _private: (),
}

impl CallArena {
    /// Creates the allocator (all state is global; create only one, as the global allocator).
    pub const fn new() -> Self {
        CallArena { _private: () }
    }
}

impl Default for CallArena {
    fn default() -> Self {
        Self::new()
    }
}

struct State {
    /// Start of the region the arena currently bumps in (0 until the first allocation).
    start: usize,
    /// Next free byte.
    top: usize,
    /// End of the region (one past the last usable byte).
    end: usize,
}

static ARENA: Global<State> = Global::new(State { start: 0, top: 0, end: 0 });

const PAGE: usize = 65536;

/// Called when a new plugin call starts: everything allocated before is free again.
pub(crate) fn reset() {
    // SAFETY: single-threaded; the reference does not escape.
    unsafe {
        let st = ARENA.get();
        st.top = st.start;
    }
}

#[cfg(target_arch = "wasm32")]
fn grow(pages: usize) -> Option<usize> {
    let prev = core::arch::wasm32::memory_grow(0, pages);
    if prev == usize::MAX {
        None
    } else {
        Some(prev * PAGE)
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn grow(_pages: usize) -> Option<usize> {
    None
}

fn pages_for(bytes: usize) -> usize {
    bytes / PAGE + usize::from(bytes % PAGE != 0)
}

fn align_up(addr: usize, align: usize) -> Option<usize> {
    Some(addr.checked_add(align - 1)? & !(align - 1))
}

fn bump(st: &mut State, layout: Layout) -> Option<usize> {
    let addr = align_up(st.top, layout.align())?;
    let new_top = addr.checked_add(layout.size())?;
    if new_top <= st.end && st.end != 0 {
        st.top = new_top;
        return Some(addr);
    }
    // Not enough room: take more pages. They usually continue the current region; if something
    // else grew memory in between (or this is the first allocation) start a new region there.
    let contiguous = st.end != 0;
    let wanted = if contiguous { new_top - st.end } else { layout.size() + layout.align() };
    let pages = pages_for(wanted);
    let base = grow(pages)?;
    if contiguous && base == st.end {
        st.end += pages * PAGE;
    } else {
        st.start = base;
        st.top = base;
        st.end = base + pages * PAGE;
        let addr = align_up(st.top, layout.align())?;
        let new_top = addr.checked_add(layout.size())?;
        if new_top > st.end {
            // Asked for too little for a fresh region: extend it once more, if still ours.
            let more = pages_for(new_top - st.end);
            if grow(more)? != st.end {
                return None;
            }
            st.end += more * PAGE;
        }
        st.top = new_top;
        return Some(addr);
    }
    st.top = new_top;
    Some(addr)
}

// SAFETY: `alloc` returns properly aligned, non-overlapping blocks inside linear memory pages
// that only this allocator hands out, or null; `dealloc` only ever moves `top` back over the
// block being freed.
unsafe impl GlobalAlloc for CallArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match bump(ARENA.get(), layout) {
            Some(addr) => addr as *mut u8,
            None => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Freeing the newest block (a common pattern for temporaries) makes its room reusable.
        let st = ARENA.get();
        if ptr as usize + layout.size() == st.top {
            st.top = ptr as usize;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let st = ARENA.get();
        let addr = ptr as usize;
        if new_size <= layout.size() && addr + layout.size() != st.top {
            // Shrinking a block in the middle: keep it where it is.
            return ptr;
        }
        // Growing the newest block in place makes `Vec::push` loops cheap.
        if addr + layout.size() == st.top {
            if let Some(end) = addr.checked_add(new_size) {
                if end <= st.end {
                    st.top = end;
                    return ptr;
                }
            }
        }
        let new_layout = match Layout::from_size_align(new_size, layout.align()) {
            Ok(l) => l,
            Err(_) => return core::ptr::null_mut(),
        };
        let new = self.alloc(new_layout);
        if !new.is_null() {
            core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
        }
        new
    }
}
