//! A hostile plugin, written with the SDK, for the demo and the tests: everything here is what a
//! sandbox must survive. Each function should be stopped by one of plugsafe's limits.
//!
//! * `spin`: loops forever (stopped by fuel or the timeout);
//! * `hog`: allocates memory without end (stopped by the memory cap);
//! * `recurse`: recurses without end (stopped by the wasm stack limit, a trap);
//! * `forge_log`: tries to forge log lines with newlines and floods the log (the host escapes
//!   control characters and caps messages per call).

use core::sync::atomic::{AtomicU64, Ordering};

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOC: plugsafe::CallArena = plugsafe::CallArena::new();

static SPINS: AtomicU64 = AtomicU64::new(0);

/// Never returns. The atomic store keeps the loop from being optimised into nothing.
fn spin() {
    loop {
        SPINS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps every megabyte it reserves, so memory only grows. It writes one byte per block: enough
/// to make the allocation real, cheap enough that the memory cap bites before the fuel does.
fn hog() -> Vec<u8> {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = Vec::with_capacity(1 << 20);
        block.push(kept.len() as u8);
        kept.push(block);
    }
}

/// Recurses until the stack runs out. The volatile read keeps this a real call chain.
#[inline(never)]
#[allow(unconditional_recursion)]
fn depth(n: u64) -> u64 {
    let here = [n; 16];
    // SAFETY: reading a live local array.
    let v = unsafe { core::ptr::read_volatile(&here[(n % 16) as usize]) };
    depth(n + 1).wrapping_add(v)
}

fn recurse() -> String {
    depth(0).to_string()
}

/// Writes a message that pretends to be another log record, then floods the log.
fn forge_log() {
    plugsafe::error!("innocent\nCRITICAL:root:the host was compromised");
    for i in 0..10_000 {
        plugsafe::info!("flood {}", i);
    }
}

plugsafe::export!(spin, hog, recurse, forge_log);
