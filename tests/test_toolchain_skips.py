"""Without guest toolchains the suite skips what needs them, says so in one line, and exits 0;
where toolchains are required (``PLUGSAFE_REQUIRE_TOOLCHAINS=1``, as in CI) it fails instead.

A machine without the toolchains is faked by pointing ``CC``, ``RUSTC`` and ``CARGO`` at paths
that do not exist (every toolchain probe honours them; see ``tests/toolchains.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Tests that need each kind of toolchain: C with wasi-libc, Rust for WASI, Rust and C templates.
NEEDS_TOOLCHAINS = [
    "tests/wasi/test_wasi.py::test_wasi_imports_are_refused_without_the_capability",
    "tests/wasi/test_wasi.py::test_rust_wasi_command",
    "tests/sdk/test_sdk_templates.py::test_build_script_builds_the_templates_in_place",
]


def run_without_toolchains(**extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PLUGSAFE_REQUIRE_TOOLCHAINS")}
    env.update(
        CC="/nonexistent/clang",
        RUSTC="/nonexistent/rustc",
        CARGO="/nonexistent/cargo",
        **extra_env,
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *NEEDS_TOOLCHAINS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_missing_toolchains_skip_with_what_to_install_and_one_summary_line() -> None:
    res = run_without_toolchains()
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "4 skipped" in out, out
    assert "apt-get install clang lld wasi-libc" in out
    assert "libstd-rust-dev-wasm32" in out
    summary = [line for line in out.splitlines() if line.startswith("plugsafe: ")]
    assert len(summary) == 1, out
    assert summary[0].startswith(
        "plugsafe: 4 test(s) skipped because a guest toolchain is missing; to run them: "
        "apt-get install clang lld wasi-libc"
    ), summary


@pytest.mark.slow
def test_missing_toolchains_fail_where_they_are_required() -> None:
    res = run_without_toolchains(PLUGSAFE_REQUIRE_TOOLCHAINS="1")
    assert res.returncode == 1, res.stdout + res.stderr
    # The WASI fixtures fail while setting up (errors), the SDK tests in their bodies (failures).
    assert "2 failed, 2 errors" in res.stdout, res.stdout
    assert "PLUGSAFE_REQUIRE_TOOLCHAINS" in res.stdout
