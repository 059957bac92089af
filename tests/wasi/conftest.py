"""Build the WASI test programs from C source with clang and wasi-libc, once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

SRC = Path(__file__).parent / "src"
INSTALL = "apt-get install clang lld wasi-libc libclang-rt-dev-wasm32"


def _toolchain_problem() -> str | None:
    clang = shutil.which("clang")
    if clang is None:
        return "clang is not installed"
    if not Path("/usr/lib/wasm32-wasi/libc.a").exists():
        return "wasi-libc is not installed"
    return None


@pytest.fixture(scope="session")
def build_wasi(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """build_wasi("filter.c", reactor=False) -> path of the built .wasm (cached per session)."""
    problem = _toolchain_problem()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}; CI must have the WASI toolchain: {INSTALL}")
        pytest.skip(f"{problem}: {INSTALL}")
    out_dir = tmp_path_factory.mktemp("wasi-build")
    built: dict[tuple[str, bool], Path] = {}

    def build(source: str, *, reactor: bool = False, flags: tuple[str, ...] = ()) -> Path:
        key = (source, reactor)
        if key in built:
            return built[key]
        out = out_dir / (Path(source).stem + (".reactor" if reactor else "") + ".wasm")
        cmd = ["clang", "--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-o", str(out)]
        if reactor:
            cmd += ["-mexec-model=reactor"]
        cmd += [*flags, str(SRC / source)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            message = f"building {source} failed:\n{result.stderr}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(f"{message}\n(install: {INSTALL})")
        built[key] = out
        return out

    return build
