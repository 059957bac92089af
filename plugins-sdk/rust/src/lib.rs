//! Guest SDK for plugsafe plugins.
//!
//! A plugsafe plugin is a WebAssembly module that a Python host app loads with
//! `plugsafe.Host().load(...)` and calls with `plugin.call("name", b"input")`. This crate
//! implements the guest side of the plugsafe ABI version 1 (`docs/abi.md` in the plugsafe
//! repository) so a plugin author only writes ordinary Rust functions:
//!
//! ```ignore
//! fn greet(name: &str) -> String {
//!     let mut s = String::from("Hello, ");
//!     s.push_str(name);
//!     s
//! }
//!
//! fn parse(input: &[u8]) -> plugsafe::Result<Vec<u8>> {
//!     if input.is_empty() {
//!         plugsafe::bail!("empty input"); // the host raises GuestError("empty input")
//!     }
//!     plugsafe::info!("parsing {} bytes", input.len());
//!     Ok(input.to_vec())
//! }
//!
//! plugsafe::export!(greet, parse);
//! ```
//!
//! What the crate gives you:
//!
//! * [`export!`] turns functions taking `&[u8]`, `&str`, `Vec<u8>`, `String` or nothing and
//!   returning bytes, text, `()` or a [`Result`] into ABI exports.
//! * [`Error`] and [`bail!`]: an `Err` becomes a `GuestError` with its message on the host side.
//! * [`trace!`], [`debug!`], [`info!`], [`warn!`], [`error!`] and [`log()`] write to the
//!   built-in `log` host function (the plugin's policy must allow `"log"`).
//! * [`import!`] declares app-defined host functions and gives you safe Rust wrappers.
//! * The `memory`, `plugsafe_abi_version` and `plugsafe_alloc` exports the ABI requires; they are
//!   always present when this crate is linked in. With the default feature `input-buffer`, also
//!   `plugsafe_input_buffer`: inputs of up to 4 KiB arrive in a static buffer, without a
//!   `plugsafe_alloc` call (one wasm call per plugin call instead of two).
//! * [`CallArena`], an optional tiny global allocator that frees everything at the start of each
//!   call (how the smallest plugins stay under 1 KiB).
//!
//! The crate is `no_std` and needs only `alloc`. It has no dependencies. It builds on Rust 1.63
//! and newer for `wasm32-unknown-unknown`. Plugins themselves may use `std` (on Rust 1.63 they
//! must, because `no_std` binaries that use `alloc` need Rust 1.68's default allocation error
//! handler).
//!
//! On targets other than wasm32 the crate still compiles so that plugin logic can be unit-tested
//! natively: logging does nothing there and imported host functions panic when called.
// `std` only for the unit tests' harness; the crate itself never uses it.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

mod arena;
mod error;
mod host;
mod io;
mod rt;
mod text;

#[cfg(test)]
mod tests;

pub use arena::CallArena;
pub use error::{Error, Result};
pub use host::{log, Level};
pub use io::{IntoOutput, Output};

/// The plugsafe ABI version this crate implements; the `plugsafe_abi_version` export returns it.
pub const ABI_VERSION: i32 = 1;

/// Implementation details used by the macros. Not part of the public API: anything here may
/// change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::host::{HostArg, HostResult};
    pub use crate::text::{format, has_brace, Text};
    pub use crate::io::{BytesIn, Handler, Input, NoIn, StrIn, StringIn, VecIn};
    pub use crate::rt::run;
}

/// Exports plugin functions so the host can call them with `plugin.call("name", input)`.
///
/// Each name must be a function in scope whose signature is one of
///
/// * input: `&[u8]`, `&str`, `Vec<u8>`, `String`, or no parameter at all;
/// * output: `Vec<u8>`, `String`, `&'static str`, `&'static [u8]`, `()`, [`Output`], or a
///   `Result<T, E>` of one of those where `E: Into<`[`Error`]`>`.
///
/// The export keeps the function's name. A `&str`/`String` input that is not valid UTF-8 and
/// an `Err` result both end the call with a `GuestError` on the host side.
///
/// ```ignore
/// fn upper(text: &str) -> String { text.to_uppercase() }
/// fn version() -> &'static str { "1.0" }
/// plugsafe::export!(upper, version);
/// ```
#[macro_export]
macro_rules! export {
    ($($name:ident),+ $(,)?) => {$(
        // An anonymous const keeps the wrapper out of the caller's namespace, so the plugin's
        // own function can keep the name the host sees.
        const _: () = {
            #[export_name = stringify!($name)]
            extern "C" fn __plugsafe_export(ptr: i32, len: i32) -> i64 {
                // SAFETY: the host calls plugin functions with a buffer it got from
                // `plugsafe_alloc`, or the input buffer, or 0/0 for empty input (the ABI).
                unsafe { $crate::__private::run(ptr, len, $name) }
            }
        };
    )+};
}

/// Returns early from a plugin function with an [`Error`] built from a message or a format
/// string: `bail!("bad header")`, `bail!("want {} bytes, got {}", want, got)`.
///
/// The host raises `GuestError` with that message.
#[macro_export]
macro_rules! bail {
    ($msg:literal $(,)?) => {
        return ::core::result::Result::Err($crate::Error::from($crate::__literal_or_format!($msg)).into())
    };
    ($fmt:literal, $($arg:tt)+) => {
        return ::core::result::Result::Err(
            $crate::Error::from($crate::__private::format(::core::format_args!($fmt, $($arg)+))).into()
        )
    };
}

/// A literal string as `&'static str` when it has no `{`, otherwise formatted (it may capture
/// variables, as in `"{x}"`). The test is a constant, so for plain literals the formatting code
/// is not linked into the plugin at all: that keeps small plugins small.
#[doc(hidden)]
#[macro_export]
macro_rules! __literal_or_format {
    ($msg:literal) => {{
        const PLAIN: bool = !$crate::__private::has_brace($msg);
        if PLAIN {
            $crate::__private::Text::Static($msg)
        } else {
            $crate::__private::Text::Owned($crate::__private::format(::core::format_args!($msg)))
        }
    }};
}

/// Logs a message at level [`Level::Trace`]; takes `format!`-style arguments.
#[macro_export]
macro_rules! trace {
    ($msg:literal $(,)?) => { $crate::log($crate::Level::Trace, $crate::__literal_or_format!($msg).as_str()) };
    ($fmt:literal, $($arg:tt)+) => {
        $crate::log($crate::Level::Trace, &$crate::__private::format(::core::format_args!($fmt, $($arg)+)))
    };
}

/// Logs a message at level [`Level::Debug`]; takes `format!`-style arguments.
#[macro_export]
macro_rules! debug {
    ($msg:literal $(,)?) => { $crate::log($crate::Level::Debug, $crate::__literal_or_format!($msg).as_str()) };
    ($fmt:literal, $($arg:tt)+) => {
        $crate::log($crate::Level::Debug, &$crate::__private::format(::core::format_args!($fmt, $($arg)+)))
    };
}

/// Logs a message at level [`Level::Info`]; takes `format!`-style arguments.
///
/// A plain string literal is sent as is, without pulling the formatting machinery into the
/// plugin; the same holds for all the logging macros and for [`bail!`].
#[macro_export]
macro_rules! info {
    ($msg:literal $(,)?) => { $crate::log($crate::Level::Info, $crate::__literal_or_format!($msg).as_str()) };
    ($fmt:literal, $($arg:tt)+) => {
        $crate::log($crate::Level::Info, &$crate::__private::format(::core::format_args!($fmt, $($arg)+)))
    };
}

/// Logs a message at level [`Level::Warn`]; takes `format!`-style arguments.
#[macro_export]
macro_rules! warn {
    ($msg:literal $(,)?) => { $crate::log($crate::Level::Warn, $crate::__literal_or_format!($msg).as_str()) };
    ($fmt:literal, $($arg:tt)+) => {
        $crate::log($crate::Level::Warn, &$crate::__private::format(::core::format_args!($fmt, $($arg)+)))
    };
}

/// Logs a message at level [`Level::Error`]; takes `format!`-style arguments.
#[macro_export]
macro_rules! error {
    ($msg:literal $(,)?) => { $crate::log($crate::Level::Error, $crate::__literal_or_format!($msg).as_str()) };
    ($fmt:literal, $($arg:tt)+) => {
        $crate::log($crate::Level::Error, &$crate::__private::format(::core::format_args!($fmt, $($arg)+)))
    };
}

/// Declares app-defined host functions and generates safe Rust wrappers that call them.
///
/// The host app registers the function in Python (`@host.function`) and the plugin's policy must
/// allow its name. Write one Rust signature per host function, matching its Python annotations:
///
/// | Python | Rust parameter | Rust result |
/// | --- | --- | --- |
/// | `bytes` | `&[u8]` | `Vec<u8>` |
/// | `str` | `&str` | `String` |
/// | `bytes \| None` / `str \| None` | — | `Option<Vec<u8>>` / `Option<String>` |
/// | `int` | `i64` | `i64` |
/// | `float` | `f64` | `f64` |
/// | `bool` | `bool` | `bool` |
/// | `None` | — | no `->` |
///
/// ```ignore
/// plugsafe::import! {
///     /// Looks a key up in the app's store.
///     fn kv_get(key: &str) -> Option<String>;
///     fn add(a: i64, b: i64) -> i64;
/// }
///
/// fn handler(key: &str) -> String {
///     kv_get(key).unwrap_or_default()
/// }
/// ```
///
/// Each function is imported from the wasm module `plugsafe` under its own name. The import only
/// appears in the built plugin if the wrapper is actually called.
#[macro_export]
macro_rules! import {
    () => {};
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident ( $($params:tt)* ) $(-> $ret:ty)? ;
        $($rest:tt)*
    ) => {
        $crate::__import_params! {
            [$(#[$meta])*] [$vis] [$name] [$crate::__ret_ty!($($ret)?)]
            [] [] [] ; $($params)*
        }
        $crate::import! { $($rest)* }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __ret_ty {
    () => { () };
    ($t:ty) => { $t };
}

/// Turns the parameter list of one [`import!`] signature into the raw wasm parameter list, the
/// wrapper's parameter list and the raw call's arguments, one parameter at a time.
#[doc(hidden)]
#[macro_export]
macro_rules! __import_params {
    // A `&str` or `&[u8]` parameter travels as two i32s: pointer and length.
    ([$($h:tt)*] [$($raw:tt)*] [$($wp:tt)*] [$($args:tt)*] ; $p:ident : &str $(, $($rest:tt)*)?) => {
        $crate::__import_params! {
            [$($h)*] [$($raw)* _: *const u8, _: usize,] [$($wp)* $p: &str,]
            [$($args)* $p.as_ptr(), $p.len(),] ; $($($rest)*)?
        }
    };
    ([$($h:tt)*] [$($raw:tt)*] [$($wp:tt)*] [$($args:tt)*] ; $p:ident : &[u8] $(, $($rest:tt)*)?) => {
        $crate::__import_params! {
            [$($h)*] [$($raw)* _: *const u8, _: usize,] [$($wp)* $p: &[u8],]
            [$($args)* $p.as_ptr(), $p.len(),] ; $($($rest)*)?
        }
    };
    // Numbers and bool travel as one wasm value (see `HostArg`).
    ([$($h:tt)*] [$($raw:tt)*] [$($wp:tt)*] [$($args:tt)*] ; $p:ident : $t:ty $(, $($rest:tt)*)?) => {
        $crate::__import_params! {
            [$($h)*] [$($raw)* _: <$t as $crate::__private::HostArg>::Raw,] [$($wp)* $p: $t,]
            [$($args)* $crate::__private::HostArg::into_raw($p),] ; $($($rest)*)?
        }
    };
    // All parameters done: emit the wrapper with the raw import inside it.
    ([[$($meta:tt)*] [$vis:vis] [$name:ident] [$($ret:tt)*]] [$($raw:tt)*] [$($wp:tt)*] [$($args:tt)*] ;) => {
        $($meta)*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($wp)*) -> $($ret)* {
            #[cfg(target_arch = "wasm32")]
            {
                #[link(wasm_import_module = "plugsafe")]
                extern "C" {
                    #[link_name = stringify!($name)]
                    fn raw($($raw)*) -> <$($ret)* as $crate::__private::HostResult>::Raw;
                }
                // SAFETY: the host implements this import with the signature the ABI derives
                // from the same types, and hands back buffers it got from `plugsafe_alloc`.
                unsafe { <$($ret)* as $crate::__private::HostResult>::from_raw(raw($($args)*)) }
            }
            #[cfg(not(target_arch = "wasm32"))]
            {
                let _ = ($($args)*);
                panic!(concat!("host function `", stringify!($name), "` is only available inside wasm"))
            }
        }
    };
    // First call: the header arrives as four groups; fold them into one so the rules above can
    // pass it along unchanged.
    ([$($meta:tt)*] [$($vis:tt)*] [$name:ident] [$($ret:tt)*] [] [] [] ; $($params:tt)*) => {
        $crate::__import_params! {
            [[$($meta)*] [$($vis)*] [$name] [$($ret)*]] [] [] [] ; $($params)*
        }
    };
}
