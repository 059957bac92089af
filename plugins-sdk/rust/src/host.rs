//! Logging through the built-in `log` host function, and the conversions `import!` uses for
//! app-defined host functions.

use alloc::string::String;
use alloc::vec::Vec;

/// Log levels of the built-in `log` host function. On the host, `Trace` and `Debug` both become
/// Python's `DEBUG`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum Level {
    /// Very detailed tracing (`0`).
    Trace = 0,
    /// Debugging output (`1`).
    Debug = 1,
    /// Normal information (`2`).
    Info = 2,
    /// Something looks wrong (`3`).
    Warn = 3,
    /// Something failed (`4`).
    Error = 4,
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugsafe")]
extern "C" {
    #[link_name = "log"]
    fn plugsafe_log(level: i32, ptr: *const u8, len: usize);
}

/// Sends `message` to the host's logger `plugsafe.plugin.<name>` at `level`.
///
/// The plugin's policy must allow `"log"`; the import only exists in plugins that log. The host
/// escapes control characters and caps message size and count per call. Outside wasm this does
/// nothing.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the pointer and length describe a live `&str`; the host only reads it.
    unsafe {
        plugsafe_log(level as i32, message.as_ptr(), message.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// A Rust type `import!` accepts as a numeric host-function parameter, and its wasm type.
pub trait HostArg {
    /// The wasm value type the host expects.
    type Raw;
    /// Converts the value for the call.
    fn into_raw(self) -> Self::Raw;
}

impl HostArg for i64 {
    type Raw = i64;
    fn into_raw(self) -> i64 {
        self
    }
}

impl HostArg for f64 {
    type Raw = f64;
    fn into_raw(self) -> f64 {
        self
    }
}

impl HostArg for bool {
    type Raw = i32;
    fn into_raw(self) -> i32 {
        i32::from(self)
    }
}

/// A Rust type `import!` accepts as a host-function result, and its wasm type.
pub trait HostResult: Sized {
    /// The wasm value type the host returns.
    type Raw;
    /// Converts the host's value.
    ///
    /// # Safety
    /// For byte and text results `raw` must be a result word whose buffer the host got from
    /// `plugsafe_alloc`, as the ABI guarantees.
    unsafe fn from_raw(raw: Self::Raw) -> Self;
}

impl HostResult for () {
    type Raw = ();
    unsafe fn from_raw(_: ()) {}
}

impl HostResult for i64 {
    type Raw = i64;
    unsafe fn from_raw(raw: i64) -> i64 {
        raw
    }
}

impl HostResult for f64 {
    type Raw = f64;
    unsafe fn from_raw(raw: f64) -> f64 {
        raw
    }
}

impl HostResult for bool {
    type Raw = i32;
    unsafe fn from_raw(raw: i32) -> bool {
        raw != 0
    }
}

impl HostResult for Vec<u8> {
    type Raw = i64;
    unsafe fn from_raw(raw: i64) -> Vec<u8> {
        <Option<Vec<u8>>>::from_raw(raw).unwrap_or_default()
    }
}

impl HostResult for Option<Vec<u8>> {
    type Raw = i64;
    unsafe fn from_raw(raw: i64) -> Option<Vec<u8>> {
        if raw == -1 {
            return None;
        }
        let w = raw as u64;
        let ptr = (w >> 32) as usize as *mut u8;
        let len = (w & 0x7FFF_FFFF) as usize;
        if len == 0 {
            // An empty result is `0`: no buffer was allocated.
            Some(Vec::new())
        } else {
            // The host filled a buffer from `plugsafe_alloc(len)`; it is ours now.
            Some(Vec::from_raw_parts(ptr, len, len))
        }
    }
}

impl HostResult for String {
    type Raw = i64;
    unsafe fn from_raw(raw: i64) -> String {
        <Option<String>>::from_raw(raw).unwrap_or_default()
    }
}

impl HostResult for Option<String> {
    type Raw = i64;
    unsafe fn from_raw(raw: i64) -> Option<String> {
        // The host sends UTF-8 for `str` results; stay memory-safe even if it did not.
        <Option<Vec<u8>>>::from_raw(raw).map(|bytes| match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}
