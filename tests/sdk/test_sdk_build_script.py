"""plugins-sdk/build_plugins.py: toolchain detection and its messages (no toolchain needed)."""

from __future__ import annotations

import subprocess
import sys

import build_plugins
import pytest

from .conftest import ROOT


def test_missing_toolchains_are_reported_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUSTC", "/nonexistent/rustc")
    monkeypatch.setenv("CARGO", "/nonexistent/cargo")
    monkeypatch.setenv("CC", "/nonexistent/clang")
    tc = build_plugins.find_toolchains()
    assert not tc.rust and not tc.c and not tc.wasi
    for what in ("rust", "c", "wasi"):
        with pytest.raises(build_plugins.ToolchainMissing, match=r"apt-get install .*lld"):
            tc.require(what)


def test_check_mode_reports_each_toolchain() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "plugins-sdk" / "build_plugins.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = res.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["rust", "c", "wasi"]
    assert res.returncode == (0 if all(line.split()[1] == "ok" for line in lines) else 1)
