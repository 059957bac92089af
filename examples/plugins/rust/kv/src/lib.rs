//! Example plugin that calls app-defined host functions and logs.
//!
//! The host app provides `kv_get(key: str) -> str | None` and
//! `kv_incr(key: str, by: int) -> int`; the policy must allow `log`, `kv_get` and `kv_incr`.
//!
//! ```python
//! plugin.call("render", "Hello, {user}!")   # b"Hello, Ada!" if the store has user=Ada
//! plugin.call("visit", "home")               # b"home: 3 visits"
//! ```

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOC: plugsafe::CallArena = plugsafe::CallArena::new();

plugsafe::import! {
    /// Looks a key up in the app's key-value store.
    fn kv_get(key: &str) -> Option<String>;
    /// Adds `by` to the counter `key` in the app's store and returns the new value.
    fn kv_incr(key: &str, by: i64) -> i64;
}

/// Replaces every `{key}` in the template with the value the store holds for `key`.
///
/// A missing key is logged as a warning and renders as nothing; an unclosed `{` is an error.
fn render(template: &str) -> plugsafe::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut lookups = 0;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = match after.find('}') {
            Some(close) => close,
            None => plugsafe::bail!("unclosed '{{' at byte {}", template.len() - after.len() - 1),
        };
        let key = &after[..close];
        lookups += 1;
        match kv_get(key) {
            Some(value) => out.push_str(&value),
            None => plugsafe::warn!("no value for key {:?}", key),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    plugsafe::info!("rendered {} bytes with {} lookups", out.len(), lookups);
    Ok(out)
}

/// Counts a visit to `page` in the app's store: returns `"<page>: <n> visits"`.
fn visit(page: &str) -> plugsafe::Result<String> {
    if page.is_empty() {
        plugsafe::bail!("which page?");
    }
    let mut key = String::from("visits:");
    key.push_str(page);
    let n = kv_incr(&key, 1);
    plugsafe::debug!("{} is now {}", key, n);
    Ok(format!("{}: {} visits", page, n))
}

plugsafe::export!(render, visit);
