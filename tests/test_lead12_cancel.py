"""lead12: a cancelled call whose interrupt was lost still ends promptly.

An interrupt marks the store (its arming becomes -inf) and then moves the engine's epoch up to
``MAX_DEADLINE_TICKS`` ahead. A deadline the call set meanwhile, counted from an epoch that
already included some of those increments (an arming; the guard extending a deadline reached
early by another store's interrupt), is then not reached: the interrupt "stands", so the
re-sender did not repeat it, and the call ran up to 2 s after its cancel (CI, Python 3.10:
tests/test_attack11_cancel.py measured 1.79 s). Both ways are forced here: the epoch
increments of an interrupt dropped, and an interrupt landing inside another store's guard.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest
from cancelling import cancel_invoke, drop_first_bump, free_after

import plugsafe
from plugsafe import Policy
from plugsafe._runtime import _ticker

SPIN = b'(module (func (export "spin") (result i32) (loop $l (br $l)) (i32.const 0)))'


def _running(plugin: plugsafe.Plugin) -> Any:
    """The instance of ``plugin``'s running call, once it runs (its lock held)."""
    for _ in range(500):
        inst = plugin._calls._inst  # type: ignore[attr-defined]
        if inst is not None and plugin._calls.lock.locked():  # type: ignore[attr-defined]
            return inst
        time.sleep(0.01)
    raise AssertionError("the call did not start")


def test_a_cancel_whose_epoch_increments_were_lost_still_ends_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with plugsafe.Host() as host:
        plugin = host.load(SPIN, policy=Policy(timeout=5.0))
        dropped = drop_first_bump(monkeypatch)
        cancelled = cancel_invoke(plugin, "spin")
        took = free_after(plugin, cancelled, wait=10)
        assert dropped, "the interrupt did not go through Ticker.bump (test premise)"
        # Re-sent 0.1 s after the lost one (was: the call's whole 5 s timeout).
        assert took < 1.0, took
        # The plugin is usable again.
        plugin2 = host.load(b'(module (func (export "one") (result i32) (i32.const 1)))')
        assert plugin2.invoke("one") == 1


def test_an_interrupt_landing_inside_a_guard_that_extends_the_deadline_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two long calls on one engine: interrupting `a` moves the epoch past `b`'s deadline, and
    # `b`'s guard finds it early and extends it. An interrupt of `b` made while that guard
    # runs (simulated: its first step, the arming, done from inside the guard; its increments
    # left out, since they would have been made before the extension) must still stop `b`.
    with plugsafe.Host() as host:
        a = host.load(SPIN, policy=Policy(timeout=5.0))
        b = host.load(SPIN, policy=Policy(timeout=5.0))
        outcome: dict[str, BaseException] = {}

        def run(name: str, plugin: plugsafe.Plugin) -> None:
            try:
                plugin.invoke("spin")
            except plugsafe.PlugsafeError as exc:
                outcome[name] = exc

        threads = [threading.Thread(target=run, args=(n, p)) for n, p in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        a_inst, b_inst = _running(a), _running(b)
        real_ahead = _ticker._ahead

        def ahead_then_interrupted(timeout: float) -> float:
            b_inst._arming[0] = -math.inf
            return real_ahead(timeout)

        monkeypatch.setattr(_ticker, "_ahead", ahead_then_interrupted)
        began = time.perf_counter()
        assert a_inst.interrupt()
        for t in threads:
            t.join(10)
        took = time.perf_counter() - began
        assert not any(t.is_alive() for t in threads)
        assert isinstance(outcome.get("a"), plugsafe.DeadlineExceeded), outcome
        assert isinstance(outcome.get("b"), plugsafe.DeadlineExceeded), outcome
        # Stopped by the guard that saw the interrupt (was: at its next deadline, ~2 s on).
        assert took < 1.0, took
