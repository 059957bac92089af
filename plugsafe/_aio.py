"""asyncio support: run a blocking plugin call on a worker thread, and stop it if abandoned."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # concurrent.futures is not worth every import of plugsafe (issue 14)
    from concurrent.futures import Executor

from ._callpath import CallToken

__all__ = ["run_call"]

T = TypeVar("T")


async def run_call(executor: Executor, fn: Callable[[CallToken], T]) -> T:
    """Run ``fn(token)`` in ``executor`` without blocking the event loop; return its result.

    ``executor`` is plugsafe's own (a Plugin's, a PluginPool's), never the loop's default one:
    queued plugin calls must not starve an app's ``asyncio.to_thread``. The call runs in a copy
    of the caller's ``contextvars`` context (as ``asyncio.to_thread`` does), so host functions
    see the caller's context variables and their changes stay in that copy. If the awaiting
    task is cancelled (``wait_for`` timing out cancels it too), a queued call never starts and
    a running one is interrupted through ``token`` (see ``CallToken``).
    """
    # Imported here: asyncio costs tens of milliseconds to import, and most hosts never use it.
    import asyncio

    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    token = CallToken()
    future = loop.run_in_executor(executor, ctx.run, fn, token)
    try:
        return await future
    except asyncio.CancelledError:
        token.cancel()
        raise
