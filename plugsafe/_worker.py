"""A plugin's own worker thread for its asynchronous calls (``_aio.run_call``'s executor).

One per Plugin and per ComponentPlugin, made on first use: a single thread, as a plugin runs one
call at a time, and never the event loop's default executor (queued plugin calls must not starve
an app's ``asyncio.to_thread``). ``concurrent.futures`` is imported only then (issue 14: it cost
every ``import plugsafe``; never half done across a fork, see _lazymodule).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import PluginClosedError
from ._lazymodule import import_now

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["Worker"]


class Worker:
    """The worker of the plugin named ``name``: :meth:`executor` makes it, :meth:`close`
    ends it."""

    __slots__ = ("_executor", "_lock", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        # Re-entrant: the plugin's close() (from a signal handler, as documented) may run on a
        # thread that holds it, making the worker (attack9: it waited for itself for ever).
        self._lock = threading.RLock()

    def executor(self, closed: Callable[[], bool]) -> ThreadPoolExecutor:
        """The worker (made now if need be); PluginClosedError once ``closed()``."""
        executor = self._executor
        if executor is None:
            with self._lock:
                if closed():
                    raise PluginClosedError(f"plugin {self._name!r} is closed")
                executor = self._executor
                if executor is None:
                    futures: Any = import_now("concurrent.futures")
                    executor = self._executor = futures.ThreadPoolExecutor(
                        1, thread_name_prefix=f"plugsafe-{self._name}"
                    )
                    if closed():  # by a signal handler, meanwhile
                        self._executor = None
                        executor.shutdown(wait=False)
                        raise PluginClosedError(f"plugin {self._name!r} is closed")
        return executor

    def take(self) -> Callable[[], None]:
        """Forget the worker (the plugin is closing: no new one is made once it is closed);
        returns what ends it, for the caller to run once the plugin is closed."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return _nothing
        # Queued async calls still run, and raise PluginClosedError at once (a running one
        # finishes first). Not waited for: close() may run on that very thread (from a host
        # function); the thread ends when its queue is empty.
        return lambda: executor.shutdown(wait=False)


def _nothing() -> None:
    pass
