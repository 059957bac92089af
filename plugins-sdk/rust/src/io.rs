//! How plugin functions of different shapes are adapted to the one ABI shape
//! `(ptr, len) -> result word`.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::Error;

/// The output of a plugin function, ready to hand to the host.
///
/// You rarely need this type: return `Vec<u8>`, `String` or a static string instead. It exists
/// so that static data can be returned without copying it.
pub struct Output(pub(crate) Repr);

pub(crate) enum Repr {
    Owned(Vec<u8>),
    Static(&'static [u8]),
}

impl Output {
    /// Output that owns its bytes.
    pub fn owned(bytes: Vec<u8>) -> Self {
        Output(Repr::Owned(bytes))
    }

    /// Output that points at static bytes; nothing is copied or allocated.
    pub fn from_static(bytes: &'static [u8]) -> Self {
        Output(Repr::Static(bytes))
    }
}

/// Values a plugin function may return. Implemented for `Vec<u8>`, `String`, `&'static str`,
/// `&'static [u8]`, `()` (empty output), [`Output`], and `Result<T, E>` of those with
/// `E: Into<`[`Error`]`>`.
pub trait IntoOutput {
    /// Converts the value into the output bytes or the error message for the host.
    fn into_output(self) -> Result<Output, Error>;
}

impl IntoOutput for Output {
    fn into_output(self) -> Result<Output, Error> {
        Ok(self)
    }
}

impl IntoOutput for Vec<u8> {
    fn into_output(self) -> Result<Output, Error> {
        Ok(Output::owned(self))
    }
}

impl IntoOutput for String {
    fn into_output(self) -> Result<Output, Error> {
        Ok(Output::owned(self.into_bytes()))
    }
}

impl IntoOutput for &'static str {
    fn into_output(self) -> Result<Output, Error> {
        Ok(Output::from_static(self.as_bytes()))
    }
}

impl IntoOutput for &'static [u8] {
    fn into_output(self) -> Result<Output, Error> {
        Ok(Output::from_static(self))
    }
}

impl IntoOutput for () {
    fn into_output(self) -> Result<Output, Error> {
        Ok(Output::from_static(&[]))
    }
}

impl<T: IntoOutput, E: Into<Error>> IntoOutput for Result<T, E> {
    fn into_output(self) -> Result<Output, Error> {
        match self {
            Ok(v) => v.into_output(),
            Err(e) => Err(e.into()),
        }
    }
}

/// The input of one call: in the input buffer (borrowed for the call) or allocated through
/// `plugsafe_alloc` (owned). Functions taking `&[u8]`/`&str` read either in place; those taking
/// `Vec<u8>`/`String` get the owned one as is, or a copy of the borrowed one.
pub enum Input {
    /// Allocated by `plugsafe_alloc` for this call (or empty).
    Owned(Vec<u8>),
    /// The bytes in the input buffer, valid until the function returns.
    Borrowed(&'static [u8]),
}

impl Input {
    fn as_slice(&self) -> &[u8] {
        match self {
            Input::Owned(v) => v,
            Input::Borrowed(s) => s,
        }
    }

    fn into_vec(self) -> Result<Vec<u8>, Error> {
        match self {
            Input::Owned(v) => Ok(v),
            Input::Borrowed(s) => match copy_input(s) {
                Some(v) => Ok(v),
                None => Err(Error::from("out of memory")),
            },
        }
    }
}

/// A copy of a borrowed input (never empty), allocated the way `plugsafe_alloc` allocates
/// (alignment 1) rather than with `to_vec`, whose panic paths would make the smallest plugins
/// half as large again; `None` if there is no memory for it.
fn copy_input(s: &[u8]) -> Option<Vec<u8>> {
    let n = s.len();
    // `n` is at most the input buffer's capacity: it fits an i32.
    let p = crate::rt::plugsafe_alloc(n as i32) as u32 as usize as *mut u8;
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` has room for `n` bytes and does not overlap `s`; the Vec takes the
    // allocation as it was made (`n` bytes, alignment 1). With bulk memory enabled (the
    // template does) the copy is one `memory.copy` instruction, else a call of `memcpy`.
    unsafe {
        core::ptr::copy_nonoverlapping(s.as_ptr(), p, n);
        Some(Vec::from_raw_parts(p, n, n))
    }
}

/// A plugin function of any supported input shape. The `Marker` type parameter only exists so
/// that the impls for the different input types do not overlap (a function type implements
/// exactly one of them), which lets `export!` accept any of them without being told which.
pub trait Handler<Marker, O> {
    /// Runs the function on the input buffer the host filled.
    fn handle(self, input: Input) -> Result<Output, Error>;
}

/// Marker: the function takes no input.
pub struct NoIn;
/// Marker: the function takes `&[u8]`.
pub struct BytesIn;
/// Marker: the function takes `&str`.
pub struct StrIn;
/// Marker: the function takes `Vec<u8>`.
pub struct VecIn;
/// Marker: the function takes `String`.
pub struct StringIn;

fn utf8_error() -> Error {
    Error::new("input is not valid UTF-8")
}

impl<F: FnOnce() -> O, O: IntoOutput> Handler<NoIn, O> for F {
    fn handle(self, _input: Input) -> Result<Output, Error> {
        self().into_output()
    }
}

impl<F: FnOnce(&[u8]) -> O, O: IntoOutput> Handler<BytesIn, O> for F {
    fn handle(self, input: Input) -> Result<Output, Error> {
        self(input.as_slice()).into_output()
    }
}

impl<F: FnOnce(&str) -> O, O: IntoOutput> Handler<StrIn, O> for F {
    fn handle(self, input: Input) -> Result<Output, Error> {
        match core::str::from_utf8(input.as_slice()) {
            Ok(s) => self(s).into_output(),
            Err(_) => Err(utf8_error()),
        }
    }
}

impl<F: FnOnce(Vec<u8>) -> O, O: IntoOutput> Handler<VecIn, O> for F {
    fn handle(self, input: Input) -> Result<Output, Error> {
        self(input.into_vec()?).into_output()
    }
}

impl<F: FnOnce(String) -> O, O: IntoOutput> Handler<StringIn, O> for F {
    fn handle(self, input: Input) -> Result<Output, Error> {
        match String::from_utf8(input.into_vec()?) {
            Ok(s) => self(s).into_output(),
            Err(_) => Err(utf8_error()),
        }
    }
}
