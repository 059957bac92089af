"""`plugsafe new` projects: each builds with its one command, is under 1 KiB, passes its tests."""

from __future__ import annotations

import importlib.util
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
    """Build the project with the command its README gives (``python build.py``/``make``)."""
    if lang == "rust":
        assert toolchains.cargo is not None and toolchains.rustc is not None
        env = {**os.environ, "CARGO": toolchains.cargo, "RUSTC": toolchains.rustc}
        env.pop("CARGO_TARGET_DIR", None)
        res = subprocess.run(
            [sys.executable, "build.py"], cwd=project, env=env, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stdout + res.stderr
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


def _template_env(toolchains: build_plugins.Toolchains) -> dict[str, str]:
    assert toolchains.cargo is not None and toolchains.rustc is not None
    env = {**os.environ, "CARGO": toolchains.cargo, "RUSTC": toolchains.rustc}
    env.pop("CARGO_TARGET_DIR", None)
    return env


def test_rust_project_unit_tests_run_on_the_host(
    tmp_path: Path, require: RequireFn, toolchains: build_plugins.Toolchains
) -> None:
    """`cargo test` (here through build.py, which finds a cargo that runs) in a new project."""
    require("rust")
    project = new_project("rust", "unit", tmp_path / "unit")
    res = subprocess.run(
        [sys.executable, "build.py", "test"],
        cwd=project,
        env=_template_env(toolchains),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "test result: ok. 2 passed" in res.stdout


def test_rust_build_survives_a_lock_file_from_a_newer_cargo(
    tmp_path: Path, require: RequireFn, toolchains: build_plugins.Toolchains
) -> None:
    """A Cargo.lock of version 4 (cargo 1.78+) does not stop an older cargo's build."""
    require("rust")
    project = new_project("rust", "locked", tmp_path / "locked")
    (project / "Cargo.lock").write_text(
        "# This file is automatically @generated by Cargo.\n"
        "# It is not intended for manual editing.\nversion = 4\n\n"
        '[[package]]\nname = "locked"\nversion = "0.1.0"\ndependencies = [\n "plugsafe",\n]\n\n'
        '[[package]]\nname = "plugsafe"\nversion = "0.1.0"\n'
    )
    res = subprocess.run(
        [sys.executable, "build.py"],
        cwd=project,
        env=_template_env(toolchains),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (project / BUILT_WASM["rust"].with_name("locked.wasm")).is_file()


def test_rust_build_says_what_to_install_without_a_wasm_toolchain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cargo/rustc that can build wasm: build.py names the packages to install, and fails."""
    project = new_project("rust", "bare", tmp_path / "bare")
    spec = importlib.util.spec_from_file_location("template_build", project / "build.py")
    assert spec is not None and spec.loader is not None
    template_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(template_build)
    # Only toolchains that do not exist: as on a machine with neither Debian's nor any other.
    monkeypatch.setattr(
        template_build, "_candidates", lambda: [("/nonexistent/cargo", "/nonexistent/rustc")]
    )
    found = template_build.find_toolchain(wasm=True)
    assert isinstance(found, str)
    assert "/nonexistent/cargo: cannot run" in found
    assert "apt-get install rustc cargo libstd-rust-dev-wasm32" in found
    assert template_build.main([]) == 1
