"""Plugins built with the SDKs export the input buffer, and small inputs skip ``plugsafe_alloc``.

Real Rust and C plugins are built from source here (skipped without the toolchains, failing in
CI). Each shows, from inside the guest, whether its input arrived in the input buffer and
whether ``plugsafe_alloc`` ran for it.
"""

from __future__ import annotations

from pathlib import Path

import build_plugins
import pytest

import plugsafe

from .conftest import ROOT, RequireFn

SDK = (ROOT / "plugins-sdk" / "rust").as_posix()

# A counting global allocator over the SDK's CallArena: `allocs` says how many allocations
# the plugin made so far. `probe` answers its input's address and the allocations made in
# this call before it started (so: by `plugsafe_alloc` for its input); it allocates nothing
# itself (a static answer).
RUST_PLUGIN = """
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU32, Ordering};

struct Counting;
static ALLOCS: AtomicU32 = AtomicU32::new(0);
static BEFORE: AtomicU32 = AtomicU32::new(0);
static ARENA: plugsafe::CallArena = plugsafe::CallArena::new();

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ARENA.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ARENA.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[no_mangle]
pub extern "C" fn allocs() -> i32 {
    ALLOCS.load(Ordering::Relaxed) as i32
}

static mut ANSWER: [u8; 8] = [0; 8];

fn probe(input: &[u8]) -> plugsafe::Output {
    let at = input.as_ptr() as u32;
    let made = ALLOCS.load(Ordering::Relaxed);
    // SAFETY: single-threaded plugin; the host copies the answer before the next call.
    unsafe {
        ANSWER[..4].copy_from_slice(&at.to_le_bytes());
        ANSWER[4..].copy_from_slice(&made.to_le_bytes());
        plugsafe::Output::from_static(&*core::ptr::addr_of!(ANSWER))
    }
}

fn echo(input: &[u8]) -> Vec<u8> { input.to_vec() }
fn owned(mut input: Vec<u8>) -> Vec<u8> { input.reverse(); input }
fn text(input: String) -> String { input.to_uppercase() }
fn borrowed_text(input: &str) -> String { input.to_lowercase() }

plugsafe::export!(probe, echo, owned, text, borrowed_text);
"""


def build_rust(
    toolchains: build_plugins.Toolchains, project: Path, *, default_features: bool = True
) -> Path:
    (project / "src").mkdir(parents=True)
    (project / ".cargo").mkdir()
    (project / "src" / "lib.rs").write_text(RUST_PLUGIN)
    features = "" if default_features else ", default-features = false"
    (project / "Cargo.toml").write_text(
        '[package]\nname = "inbuf"\nversion = "0.1.0"\nedition = "2021"\n'
        '[lib]\ncrate-type = ["cdylib"]\n'
        f'[dependencies]\nplugsafe = {{ path = "{SDK}"{features} }}\n'
        '[profile.release]\nopt-level = "z"\npanic = "abort"\n'
    )
    release = build_plugins.cargo_build(toolchains, project, project / "target")
    return release / "inbuf.wasm"


def probe(plugin: plugsafe.Plugin, data: bytes) -> tuple[int, int]:
    out = plugin.call("probe", data)
    return int.from_bytes(out[:4], "little"), int.from_bytes(out[4:], "little")


def buffer_of(plugin: plugsafe.Plugin) -> tuple[int, int]:
    word = plugin.invoke("plugsafe_input_buffer") & 0xFFFF_FFFF_FFFF_FFFF
    return word >> 32, word & 0xFFFF_FFFF


def test_a_rust_plugin_gets_small_inputs_in_its_buffer_without_alloc(
    require: RequireFn, toolchains: build_plugins.Toolchains, tmp_path: Path
) -> None:
    require("rust")
    wasm = build_rust(toolchains, tmp_path / "inbuf")
    with plugsafe.Host() as host, host.load(wasm) as plugin:
        at, cap = buffer_of(plugin)
        assert cap == 4096 and at != 0
        for data in (b"x", b"hello world", b"y" * cap):
            assert probe(plugin, data) == (at, 0)  # in the buffer, no allocation before
        assert plugin.invoke("allocs") == 0
        # One byte over: through plugsafe_alloc, as before (one allocation, elsewhere).
        where, made = probe(plugin, b"z" * (cap + 1))
        assert where != at and made == 1
        # Every handler shape reads the input right, wherever it was placed.
        for data in (b"small input", bytes(range(256)) * 20):
            assert plugin.call("echo", data) == data
            assert plugin.call("owned", data) == data[::-1]
        assert plugin.call("text", "Grüße") == "GRÜSSE".encode()
        assert plugin.call("borrowed_text", "ÄBC") == "äbc".encode()
        with pytest.raises(plugsafe.GuestError, match="UTF-8"):
            plugin.call("text", b"\xff")


def test_a_rust_plugin_without_the_feature_is_a_plain_v1_plugin(
    require: RequireFn, toolchains: build_plugins.Toolchains, tmp_path: Path
) -> None:
    require("rust")
    wasm = build_rust(toolchains, tmp_path / "inbuf", default_features=False)
    with plugsafe.Host() as host, host.load(wasm) as plugin:
        assert "plugsafe_input_buffer" not in plugin.exports
        assert probe(plugin, b"hello world")[1] == 1
        assert plugin.call("owned", b"abc") == b"cba"


# `probe` answers its input's address and how much of the arena was in use when it started
# (plugsafe_alloc allocates the input there: 0 means it did not run for this call).
C_PLUGIN = """
#define PLUGSAFE_IMPLEMENTATION
#include "plugsafe.h"

static uint8_t answer[8];

PLUGSAFE_EXPORT(probe) {
    uint32_t at = (uint32_t)(uintptr_t)input;
    uint32_t used = (uint32_t)(plugsafe__st.top - plugsafe__st.start);
    (void)input_len;
    for (int i = 0; i < 4; i++) {
        answer[i] = (uint8_t)(at >> (8 * i));
        answer[4 + i] = (uint8_t)(used >> (8 * i));
    }
    return plugsafe_output(answer, 8);
}

PLUGSAFE_EXPORT(shout) {
    for (size_t i = 0; i < input_len; i++)
        if (input[i] >= 'a' && input[i] <= 'z') input[i] -= 32;
    return plugsafe_output(input, input_len);
}
"""


def build_c(toolchains: build_plugins.Toolchains, tmp_path: Path, prefix: str = "") -> Path:
    source = tmp_path / "inbuf.c"
    source.write_text(prefix + C_PLUGIN)
    return build_plugins.clang_build(toolchains, source, tmp_path / "inbuf.wasm")


def test_a_c_plugin_gets_small_inputs_in_its_buffer_without_alloc(
    require: RequireFn, toolchains: build_plugins.Toolchains, tmp_path: Path
) -> None:
    require("c")
    wasm = build_c(toolchains, tmp_path)
    with plugsafe.Host() as host, host.load(wasm) as plugin:
        at, cap = buffer_of(plugin)
        assert cap == 4096 and at != 0
        for data in (b"x", b"hello world", b"y" * cap):
            assert probe(plugin, data) == (at, 0)
        where, used = probe(plugin, b"z" * (cap + 1))
        assert where != at and used >= cap + 1
        # In place in the buffer, and the output points into it.
        assert plugin.call("shout", b"hello") == b"HELLO"
        assert plugin.call("shout", b"ab") == b"AB"
        big = b"abc" * 2000
        assert plugin.call("shout", big) == big.upper()


def test_a_c_plugin_can_size_or_turn_off_the_buffer(
    require: RequireFn, toolchains: build_plugins.Toolchains, tmp_path: Path
) -> None:
    require("c")
    small = build_c(toolchains, tmp_path, "#define PLUGSAFE_INPUT_BUFFER_SIZE 16\n")
    with plugsafe.Host() as host, host.load(small) as plugin:
        at, cap = buffer_of(plugin)
        assert cap == 16
        assert probe(plugin, b"x" * 16) == (at, 0)
        assert probe(plugin, b"x" * 17)[0] != at
    (tmp_path / "off").mkdir()
    off = build_c(toolchains, tmp_path / "off", "#define PLUGSAFE_INPUT_BUFFER_SIZE 0\n")
    with plugsafe.Host() as host, host.load(off) as plugin:
        assert "plugsafe_input_buffer" not in plugin.exports
        assert probe(plugin, b"hello")[1] >= 5
        assert plugin.call("shout", b"hello") == b"HELLO"
