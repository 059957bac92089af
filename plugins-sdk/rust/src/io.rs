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

/// A plugin function of any supported input shape. The `Marker` type parameter only exists so
/// that the impls for the different input types do not overlap (a function type implements
/// exactly one of them), which lets `export!` accept any of them without being told which.
pub trait Handler<Marker, O> {
    /// Runs the function on the input buffer the host filled.
    fn handle(self, input: Vec<u8>) -> Result<Output, Error>;
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
    fn handle(self, _input: Vec<u8>) -> Result<Output, Error> {
        self().into_output()
    }
}

impl<F: FnOnce(&[u8]) -> O, O: IntoOutput> Handler<BytesIn, O> for F {
    fn handle(self, input: Vec<u8>) -> Result<Output, Error> {
        self(&input).into_output()
    }
}

impl<F: FnOnce(&str) -> O, O: IntoOutput> Handler<StrIn, O> for F {
    fn handle(self, input: Vec<u8>) -> Result<Output, Error> {
        match core::str::from_utf8(&input) {
            Ok(s) => self(s).into_output(),
            Err(_) => Err(utf8_error()),
        }
    }
}

impl<F: FnOnce(Vec<u8>) -> O, O: IntoOutput> Handler<VecIn, O> for F {
    fn handle(self, input: Vec<u8>) -> Result<Output, Error> {
        self(input).into_output()
    }
}

impl<F: FnOnce(String) -> O, O: IntoOutput> Handler<StringIn, O> for F {
    fn handle(self, input: Vec<u8>) -> Result<Output, Error> {
        match String::from_utf8(input) {
            Ok(s) => self(s).into_output(),
            Err(_) => Err(utf8_error()),
        }
    }
}
