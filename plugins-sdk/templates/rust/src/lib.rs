//! A plugsafe plugin. Build it with `python build.py` (or `cargo wasm`); the plugin is
//! `target/wasm32-unknown-unknown/release/plugsafe_template.wasm`. Test it with
//! `python -m pytest` (see `test_plugin.py`).

// A tiny allocator that frees everything at the start of each call. Remove these lines to use
// Rust's default allocator (a few KiB more) if the plugin keeps heap data between calls.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOC: plugsafe::CallArena = plugsafe::CallArena::new();

/// `shout(b"hello")` returns `b"HELLO"`; empty input is an error (`GuestError` on the host).
///
/// It works on the input buffer in place, so the output costs no copy and no allocation.
fn shout(mut input: Vec<u8>) -> plugsafe::Result<Vec<u8>> {
    if input.is_empty() {
        plugsafe::bail!("nothing to shout");
    }
    input.make_ascii_uppercase();
    Ok(input)
}

plugsafe::export!(shout);

// Unit tests run on this machine, not in wasm: `cargo test` (or `python build.py test`).
// The plugin as the host sees it is tested by test_plugin.py, through plugsafe.
#[cfg(test)]
mod tests {
    use super::shout;

    #[test]
    fn shouts() {
        assert_eq!(shout(b"hello".to_vec()).unwrap(), b"HELLO");
    }

    #[test]
    fn empty_input_is_an_error() {
        assert!(shout(Vec::new()).is_err());
    }
}
