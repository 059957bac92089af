//! The ABI runtime: the required exports, the call lifecycle and the result word.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::cell::UnsafeCell;

use crate::arena;
use crate::error::Error;
use crate::io::{Handler, Input, Output, Repr};

/// Interior-mutable global for single-threaded wasm. plugsafe instances have no threads, and
/// the host never re-enters an instance while a call is running, so plain access is sound.
pub(crate) struct Global<T>(UnsafeCell<T>);

// SAFETY: see the type's documentation: there is only ever one thread touching these.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub(crate) const fn new(value: T) -> Self {
        Global(UnsafeCell::new(value))
    }

    /// # Safety
    /// The caller must not let two returned references live at the same time.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get(&self) -> &mut T {
        &mut *self.0.get()
    }
}

/// Where the instance is in the host's call sequence `alloc(input) -> f(ptr, len) -> copy out`.
// `Idle` is 0 so that the whole initial state is zero bytes: it then needs no data segment.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// No call running; the previous call's output may still be waiting to be copied.
    Idle = 0,
    /// The host allocated the input buffer of the next call.
    Prepared,
    /// A plugin function is running.
    InCall,
}

struct State {
    phase: Phase,
    /// Kept alive after the function returns because the host copies it afterwards.
    output: Option<Vec<u8>>,
    /// An error message built at run time (static ones need no keeping). `Option<String>`
    /// rather than `Option<Cow<str>>` because its `None` is all zero bytes.
    message: Option<String>,
}

static STATE: Global<State> = Global::new(State { phase: Phase::Idle, output: None, message: None });

/// Frees everything the previous call left for the host to copy. The ABI says the host copies
/// the output before it makes any other call into the instance, so the first thing the next
/// call does (allocating its input, or calling the function) marks the moment it is safe.
fn start_new_call(st: &mut State) {
    st.output = None;
    st.message = None;
    arena::reset();
}

/// `plugsafe_abi_version() -> i32`: the ABI version this plugin implements.
#[no_mangle]
pub extern "C" fn plugsafe_abi_version() -> i32 {
    crate::ABI_VERSION
}

/// `plugsafe_alloc(len) -> ptr`: room for `len` bytes, or 0 if there is none.
///
/// Also how the SDK copies a borrowed input (`io`): never inlined there, so that the global
/// allocator it inlines is not in small plugins twice.
#[inline(never)]
#[no_mangle]
pub extern "C" fn plugsafe_alloc(len: i32) -> i32 {
    // SAFETY: single-threaded; the reference does not outlive this block.
    unsafe {
        let st = STATE.get();
        if st.phase == Phase::Idle {
            start_new_call(st);
            st.phase = Phase::Prepared;
        }
    }
    // The ABI reads every length as unsigned.
    let len = len as u32 as usize;
    if len == 0 {
        // Never handed to the allocator (zero-sized allocations are not allowed); `take_input`
        // never frees an empty buffer.
        return 1;
    }
    match Layout::from_size_align(len, 1) {
        // SAFETY: the layout has a non-zero size.
        Ok(layout) => unsafe { alloc::alloc::alloc(layout) as usize as i32 },
        Err(_) => 0,
    }
}

/// Capacity of the input buffer (docs/abi.md, "The input buffer").
#[cfg(feature = "input-buffer")]
pub(crate) const INPUT_CAPACITY: usize = 4096;

/// The input buffer: the host writes inputs of up to `INPUT_CAPACITY` bytes here instead of
/// asking `plugsafe_alloc` for room, so a call is one wasm call instead of two. All zero
/// bytes: it costs memory, not bytes of the `.wasm` file.
#[cfg(feature = "input-buffer")]
static INPUT: Global<[u8; INPUT_CAPACITY]> = Global::new([0; INPUT_CAPACITY]);

/// `plugsafe_input_buffer() -> i64`: where the input buffer is, as `(pointer << 32) | capacity`.
/// The host asks once per instance, before its first call with input.
#[cfg(feature = "input-buffer")]
#[no_mangle]
pub extern "C" fn plugsafe_input_buffer() -> i64 {
    // The address only: no reference to the buffer is made here.
    let ptr = INPUT.0.get() as usize as u64;
    ((ptr << 32) | INPUT_CAPACITY as u64) as i64
}

/// Takes the input buffer the host filled: borrowed if it is the input buffer, else owned.
///
/// # Safety
/// `ptr` must come from `plugsafe_alloc(len)`, or be the input buffer with `len` at most its
/// capacity (or `len` must be 0). The input buffer is not touched again until the call ends.
pub(crate) unsafe fn take_input(ptr: i32, len: i32) -> Input {
    let len = len as u32 as usize;
    if len == 0 {
        return Input::Owned(Vec::new());
    }
    let ptr = ptr as u32 as usize as *mut u8;
    #[cfg(feature = "input-buffer")]
    {
        if ptr as usize == INPUT.0.get() as usize {
            return Input::Borrowed(core::slice::from_raw_parts(ptr, len));
        }
    }
    // `plugsafe_alloc` allocated exactly `len` bytes with alignment 1.
    Input::Owned(Vec::from_raw_parts(ptr, len, len))
}

const ERROR_BIT: u64 = 0x8000_0000;

fn word(ptr: *const u8, len: usize, error: bool) -> i64 {
    let mut w = ((ptr as usize as u64) << 32) | len as u64;
    if error {
        w |= ERROR_BIT;
    }
    w as i64
}

/// Runs one plugin function over the ABI. This is what `export!` expands to.
///
/// # Safety
/// Must only be called from an exported function with the `ptr`/`len` the host passed in.
pub unsafe fn run<M, O, H: Handler<M, O>>(ptr: i32, len: i32, handler: H) -> i64 {
    {
        let st = STATE.get();
        if st.phase == Phase::Idle {
            // Empty input: the host skipped `plugsafe_alloc`.
            start_new_call(st);
        }
        st.phase = Phase::InCall;
    }
    let input = take_input(ptr, len);
    // No reference to STATE may be held across this: host functions that return bytes call
    // `plugsafe_alloc`, which takes its own.
    let result = handler.handle(input);
    let st = STATE.get();
    let w = match result {
        Ok(out) => keep_output(st, out),
        Err(e) => keep_error(st, e),
    };
    st.phase = Phase::Idle;
    w
}

fn keep_output(st: &mut State, out: Output) -> i64 {
    // No length check is needed for the 31-bit length field: Rust caps every slice and `Vec`
    // at `isize::MAX` bytes, which on wasm32 is exactly 2^31 - 1.
    match out.0 {
        Repr::Static(bytes) => word(bytes.as_ptr(), bytes.len(), false),
        Repr::Owned(bytes) => {
            let w = word(bytes.as_ptr(), bytes.len(), false);
            st.output = Some(bytes);
            w
        }
    }
}

fn keep_error(st: &mut State, e: Error) -> i64 {
    // Fits the 31-bit length field for the same reason as in `keep_output`.
    match e.into_message() {
        Cow::Borrowed(message) => word(message.as_ptr(), message.len(), true),
        Cow::Owned(message) => {
            let w = word(message.as_ptr(), message.len(), true);
            st.message = Some(message);
            w
        }
    }
}
