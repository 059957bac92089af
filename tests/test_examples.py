"""The demo the README opens with really runs, and every attack in it meets its limit.

The demo is deterministic: each attack can only meet the limit it demonstrates (the others are
far away), so these checks hold on a loaded machine too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess[str]:
    """The demo's run, once for this module."""
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_demo_runs_and_stops_every_attack(demo: subprocess.CompletedProcess[str]) -> None:
    result = demo
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "greet('world')    -> b'Hello, world!'" in out
    assert "describe('ada')   -> b'Countess of Lovelace'" in out
    assert "GuestError: bob" in out
    assert "wasi_snapshot_preview1.fd_write (unknown: WASI is not enabled" in out
    for expected in (
        "DeadlineExceeded",
        "FuelExhausted",
        "MemoryLimitExceeded",
        "PluginTrap: plugin 'hostile' in 'deep'",
        "AbiError",
        "HostCallLimitExceeded",
    ):
        assert expected in out, expected
    assert "NOT STOPPED" not in out
    assert "the good plugin still answers: b'Hello, again!'" in out


def test_each_attack_meets_exactly_the_limit_it_demonstrates(
    demo: subprocess.CompletedProcess[str],
) -> None:
    # Lines like "spin   (infinite loop, timeout 0.2 s)    -> DeadlineExceeded: ...", in order.
    errors = [
        line.split("-> ")[1].split(":")[0]
        for line in demo.stdout.splitlines()
        if line.split(" ")[0] in ("spin", "bomb", "deep", "liar", "flood") and " -> " in line
    ]
    assert errors == [
        "DeadlineExceeded",
        "FuelExhausted",
        "MemoryLimitExceeded",
        "PluginTrap",
        "AbiError",
        "HostCallLimitExceeded",
    ], demo.stdout


def test_demo_output_is_readable(demo: subprocess.CompletedProcess[str]) -> None:
    """No raw bytes: the flood's log lines are text, cut to the policy's message size."""
    assert "\\x00" not in demo.stdout, demo.stdout
    assert "BUY CHEAP FUEL! BUY CHEA... [cut: 65536 bytes in all]" in demo.stdout
