"""The demo the README opens with really runs, and every attack in it meets its limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_and_stops_every_attack() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
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
