"""asyncio support: run a blocking plugin call on a worker thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # concurrent.futures is not worth every import of plugsafe (issue 14)
    from concurrent.futures import Executor

__all__ = ["run_in_thread"]

T = TypeVar("T")


async def run_in_thread(executor: Executor | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in ``executor`` (the loop's default if None) without blocking the event loop.

    wasm runs without the GIL, so the loop keeps serving other tasks meanwhile. If the awaiting
    task is cancelled, the call itself still finishes in its thread (bounded by the policy's
    timeout) and its result is dropped.
    """
    # Imported here: asyncio costs tens of milliseconds to import, and most hosts never use it.
    import asyncio

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, fn)
