"""`plugsafe new` projects: each builds with its one command, is under 1 KiB, passes its tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import build_plugins
import pytest

import plugsafe
from plugsafe._scaffold import new_project

from .conftest import COMMITTED, ROOT, RequireFn

BUILT_WASM = {
    "rust": Path("target") / "wasm32-unknown-unknown" / "release" / "hello_plugin.wasm",
    "c": Path("hello_plugin.wasm"),
}


def build(lang: str, project: Path, toolchains: build_plugins.Toolchains) -> Path:
    """Build the project with the command its README gives (``cargo build --release``/``make``)."""
    if lang == "rust":
        build_plugins.cargo_build(toolchains, project, project / "target")
    elif shutil.which("make"):
        res = subprocess.run(
            ["make", f"CC={toolchains.clang}"], cwd=project, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stdout + res.stderr
    else:
        # No make: the same compile the Makefile runs.
        build_plugins.clang_build(
            toolchains, project / "hello_plugin.c", project / "hello_plugin.wasm", include=project
        )
    return project / BUILT_WASM[lang]


@pytest.mark.parametrize("lang", ["rust", "c"])
def test_new_project_builds_small_and_passes_its_own_tests(
    lang: str, tmp_path: Path, require: RequireFn, toolchains: build_plugins.Toolchains
) -> None:
    require(lang)
    project = new_project(lang, "hello-plugin", tmp_path / "hello-plugin")
    wasm = build(lang, project, toolchains)
    assert wasm.stat().st_size < 1024, f"{lang} minimal plugin is {wasm.stat().st_size} bytes"

    # The project's own test file, run the way its README says, against plugsafe from here.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plugin.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 passed" in res.stdout


@pytest.mark.parametrize("lang", ["rust", "c"])
def test_build_script_builds_the_templates_in_place(
    lang: str, tmp_path: Path, require: RequireFn, toolchains: build_plugins.Toolchains
) -> None:
    """The repository's templates build as they are (what plugins-sdk/build_plugins.py does)."""
    require(lang)
    (wasm,) = build_plugins.build_templates(toolchains, tmp_path, langs=[lang])
    assert wasm.stat().st_size < 1024


STATEFUL_PLUGIN = """
use std::sync::Mutex;

// Heap data that lives across calls: only allowed with Rust's default allocator.
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remembers every name and returns all of them so far.
fn remember(name: &str) -> String {
    let mut seen = SEEN.lock().unwrap();
    seen.push(name.to_string());
    seen.join(",")
}

/// Returns `n` copies of the input, where `n` is its first byte.
fn repeat(input: &[u8]) -> plugsafe::Result<Vec<u8>> {
    match input.split_first() {
        Some((&n, rest)) => Ok(rest.repeat(usize::from(n))),
        None => plugsafe::bail!("empty"),
    }
}

plugsafe::export!(remember, repeat);
"""


def test_default_allocator_keeps_state_and_frees_outputs(
    tmp_path: Path, require: RequireFn, toolchains: build_plugins.Toolchains
) -> None:
    """Without CallArena (the guide's advice for stateful plugins) state survives between calls
    and every output is freed once the next call starts, so memory stays flat."""
    require("rust")
    project = new_project("rust", "stateful", tmp_path / "stateful")
    (project / "src" / "lib.rs").write_text(STATEFUL_PLUGIN)
    wasm = build("rust", project, toolchains).with_name("stateful.wasm")
    with (
        plugsafe.Host() as host,
        host.load(wasm, policy=plugsafe.Policy(memory=8 * 2**20)) as plugin,
    ):
        assert plugin.call("remember", "a") == b"a"
        assert plugin.call("remember", "b") == b"a,b"
        sizes = []
        for i in range(40):
            chunk = bytes([200]) + bytes([i]) * 5000  # 1 MB of output per call
            assert plugin.call("repeat", chunk) == bytes([i]) * 1_000_000
            assert plugin.last_call is not None
            sizes.append(plugin.last_call.memory_bytes)
        # 40 MB of outputs through an 8 MiB cap: only possible if each one is freed.
        assert max(sizes) <= 8 * 2**20
        assert sizes[-1] == sizes[10]
        assert plugin.call("remember", "c") == b"a,b,c"


@pytest.mark.parametrize("lang", ["rust", "c"])
def test_arena_memory_stays_flat_over_many_calls(lang: str) -> None:
    """CallArena (Rust) and the C arena start over at every call."""
    with (
        plugsafe.Host() as host,
        host.load(COMMITTED / f"text-{lang}.wasm", policy=plugsafe.Policy(memory=4 * 2**20)) as p,
    ):
        sizes = []
        for _ in range(30):
            assert p.call("uppercase", b"ab" * 500_000) == b"AB" * 500_000
            assert p.last_call is not None
            sizes.append(p.last_call.memory_bytes)
        assert sizes[-1] == sizes[1]
