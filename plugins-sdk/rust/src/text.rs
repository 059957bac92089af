//! Helpers for the macros that take a message: keep literals static, format the rest.

use alloc::string::String;

/// A message that is either a literal or formatted text.
pub enum Text {
    /// A string literal without `{`.
    Static(&'static str),
    /// Formatted text.
    Owned(String),
}

impl Text {
    /// The message.
    pub fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Owned(s) => s,
        }
    }
}

/// Whether a literal has a `{`, i.e. may be a format string with arguments or captures.
pub const fn has_brace(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'{' {
            return true;
        }
        i += 1;
    }
    false
}

/// `alloc::fmt::format`, kept out of line so each macro call site stays small.
#[inline(never)]
pub fn format(args: core::fmt::Arguments<'_>) -> String {
    alloc::fmt::format(args)
}
