//! The error type a plugin function returns to make the host raise `GuestError`.

use alloc::borrow::Cow;
use alloc::string::{String, ToString};
use core::fmt;

/// A plugin failure with a message for the host.
///
/// Returning `Err(error)` from an exported function ends the call with a `GuestError` on the host
/// side that carries [`Error::message`]. Build one from a `&'static str` (no allocation), a
/// `String`, with [`bail!`](crate::bail), or from the standard UTF-8 and formatting errors via `?`.
pub struct Error {
    message: Cow<'static, str>,
}

/// `Result<T, plugsafe::Error>`, the usual return type of a fallible plugin function.
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl Error {
    /// Creates an error with the given message.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Error { message: message.into() }
    }

    /// The message the host will see.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_message(self) -> Cow<'static, str> {
        self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Error").field(&self.message).finish()
    }
}

impl From<&'static str> for Error {
    fn from(message: &'static str) -> Self {
        Error::new(message)
    }
}

impl From<crate::text::Text> for Error {
    fn from(text: crate::text::Text) -> Self {
        match text {
            crate::text::Text::Static(s) => Error::new(s),
            crate::text::Text::Owned(s) => Error::new(s),
        }
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::new(message)
    }
}

impl From<core::str::Utf8Error> for Error {
    fn from(e: core::str::Utf8Error) -> Self {
        Error::new(e.to_string())
    }
}

impl From<alloc::string::FromUtf8Error> for Error {
    fn from(e: alloc::string::FromUtf8Error) -> Self {
        Error::new(e.to_string())
    }
}

impl From<fmt::Error> for Error {
    fn from(_: fmt::Error) -> Self {
        Error::new("formatting failed")
    }
}
