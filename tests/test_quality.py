"""The code stays typed (mypy --strict) and lint-clean (ruff); CI runs these with the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("mypy") is None and sys.platform != "linux", reason="no mypy")
def test_mypy_strict_is_clean() -> None:
    pytest.importorskip("mypy")
    result = _run(sys.executable, "-m", "mypy", "--strict", "plugsafe")
    assert result.returncode == 0, result.stdout + result.stderr


def test_examples_type_check_as_users_write_them() -> None:
    # The examples use the API the way the docs show it (e.g. Policy(allow={"log"})): a user's
    # strictly typed code must accept that.
    pytest.importorskip("mypy")
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.py"))
    result = _run(sys.executable, "-m", "mypy", "--strict", *examples)
    assert result.returncode == 0, result.stdout + result.stderr


def test_benchmarks_type_check_too() -> None:
    # The benchmarks are the evidence behind docs/performance.md: a wrong type there can make a
    # row measure something else without failing (a lambda's default argument bound late).
    pytest.importorskip("mypy")
    result = _run(sys.executable, "-m", "mypy", "--strict", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    pytest.importorskip("ruff")
    result = _run(
        sys.executable, "-m", "ruff", "check", "plugsafe", "tests", "examples", "benchmarks"
    )
    assert result.returncode == 0, result.stdout + result.stderr
