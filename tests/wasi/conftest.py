"""Build the WASI test programs from C source with clang and wasi-libc, once per session.

Without clang or wasi-libc the tests that need them skip (or fail where toolchains are
required): see ``tests/toolchains.py``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import toolchains

SRC = Path(__file__).parent / "src"
INSTALL = "apt-get install clang lld wasi-libc libclang-rt-dev-wasm32"


def _sysroot() -> Path:
    return Path(os.environ.get("WASI_SYSROOT") or "/usr")


def _toolchain() -> str:
    """The clang to use; skips (or fails) when it or wasi-libc is missing."""
    clang = toolchains.which("CC", "clang")
    if clang is None:
        toolchains.missing("clang is not installed", INSTALL)
    libc = [_sysroot() / "lib" / "wasm32-wasi" / "libc.a", _sysroot() / "lib" / "libc.a"]
    if not any(p.exists() for p in libc):
        toolchains.missing(f"wasi-libc is not installed (no {libc[0]})", INSTALL)
    return clang


@pytest.fixture(scope="session")
def build_wasi(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """build_wasi("filter.c", reactor=False) -> path of the built .wasm (cached per session)."""
    clang = _toolchain()
    out_dir = tmp_path_factory.mktemp("wasi-build")
    built: dict[tuple[str, bool], Path] = {}

    def build(source: str, *, reactor: bool = False, flags: tuple[str, ...] = ()) -> Path:
        key = (source, reactor)
        if key in built:
            return built[key]
        out = out_dir / (Path(source).stem + (".reactor" if reactor else "") + ".wasm")
        cmd = [clang, "--target=wasm32-wasi", f"--sysroot={_sysroot()}", "-O2", "-o", str(out)]
        if reactor:
            cmd += ["-mexec-model=reactor"]
        cmd += [*flags, str(SRC / source)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            toolchains.missing(f"building {source} failed:\n{result.stderr}", INSTALL)
        built[key] = out
        return out

    return build
