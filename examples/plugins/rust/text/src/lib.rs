//! Text transform example plugin: `uppercase` and `word_count`.
//!
//! ```python
//! plugin.call("uppercase", "straße")    # b"STRASSE" (full Unicode upper-casing)
//! plugin.call("word_count", "a b\nc")   # b'{"words":3,"lines":2,"chars":5}'
//! ```

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOC: plugsafe::CallArena = plugsafe::CallArena::new();

/// Upper-cases UTF-8 text with Unicode's rules (`ß` becomes `SS`).
fn uppercase(text: &str) -> String {
    text.to_uppercase()
}

/// Counts words (runs of non-whitespace), lines and characters, as JSON.
///
/// Whitespace is ASCII whitespace (space, `\t`, `\n`, `\x0b`, `\x0c`, `\r`) so that the C
/// version of this plugin counts exactly the same. A last line without `\n` still counts.
fn word_count(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut words = 0u64;
    let mut in_word = false;
    for &b in bytes {
        let space = matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
        if !space && !in_word {
            words += 1;
        }
        in_word = !space;
    }
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    let lines = newlines + u64::from(!bytes.is_empty() && !bytes.ends_with(b"\n"));
    let chars = text.chars().count();
    format!("{{\"words\":{},\"lines\":{},\"chars\":{}}}", words, lines, chars)
}

plugsafe::export!(uppercase, word_count);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(word_count("a b\nc"), r#"{"words":3,"lines":2,"chars":5}"#);
        assert_eq!(word_count(""), r#"{"words":0,"lines":0,"chars":0}"#);
    }
}
