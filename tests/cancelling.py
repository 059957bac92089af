"""What the cancellation tests share: cancel a running ``invoke_async``, time its end.

A cancelled call's end is when it lets go of its plugin (the lock a call holds to its end),
not when its task raised CancelledError (that is at once): ``free_after`` measures that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import plugsafe
from plugsafe._runtime import _ticker

__all__ = ["cancel_invoke", "drop_first_bump", "free_after"]


def cancel_invoke(
    plugin: Any,
    function: str,
    *args: object,
    after: float = 0.2,
    check: Callable[[], None] | None = None,
) -> float:
    """Start ``plugin.invoke_async(function, *args)`` as a task, cancel it ``after`` seconds
    later (``check()`` first, to assert the test's premise) and await its CancelledError;
    return the ``time.perf_counter()`` of the cancel."""

    async def main() -> float:
        task = asyncio.create_task(plugin.invoke_async(function, *args))
        await asyncio.sleep(after)
        if check is not None:
            check()
        cancelled = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return cancelled

    return asyncio.run(main())


def free_after(plugin: Any, since: float, wait: float = 30.0) -> float:
    """Seconds from ``since`` until ``plugin``'s running call is over (its lock free); fails
    if that takes over ``wait`` seconds."""
    lock = plugin._lock if isinstance(plugin, plugsafe.ComponentPlugin) else plugin._calls.lock
    assert lock.acquire(timeout=wait), "the call did not end"
    lock.release()
    return time.perf_counter() - since


def drop_first_bump(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the first interrupt's epoch increments go to waste (``Ticker.bump`` drops them),
    as when a call set its deadline from an epoch that had already counted them (lead12).
    Returns the list the dropped count is put in (empty: nothing was dropped yet)."""
    dropped: list[int] = []
    real_bump = _ticker.Ticker.bump

    def lossy_bump(self: _ticker.Ticker, n: int) -> None:
        if not dropped:
            dropped.append(n)
            return
        real_bump(self, n)

    monkeypatch.setattr(_ticker.Ticker, "bump", lossy_bump)
    return dropped
