"""One daemon helper thread, started on demand: the shape the re-sender of cancelled calls
(``_callpath.CallToken``) and an engine's interrupt bumper (``_ticker.Ticker.bump``) share.

Each hands work to its thread under a lock and starts the thread only if none runs; the thread
stops once it finds no work left. The parts that are easy to get wrong live here once:

- the lock is re-entrant: requests come from the caller's thread, often the main one, where a
  Python signal handler that cancels a call can run while that thread holds it (attack9's class
  of hang, tests/test_lead10.py);
- a thread that fails to start leaves the flag unset, so the next request tries again;
- a forked child (``fork()`` copies only the forking thread) has no such thread, and the
  parent's may have held the lock at the fork: the first use in a process makes a new lock,
  forgets the flag and has the owner forget its work (``fresh``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

__all__ = ["Daemon"]


class Daemon:
    """One daemon thread named ``name`` running ``target`` while there is work, per process.

    :meth:`request` hands it work and starts it if it does not run; ``target`` takes its work
    under :meth:`lock` and, finding none, calls :meth:`stopping` under it and returns.
    ``fresh`` forgets the owner's work (no lock held): at the first use in each process.
    """

    __slots__ = ("_cond", "_fresh", "_name", "_pid", "_runs", "_target")

    def __init__(self, name: str, target: Callable[[], None], fresh: Callable[[], None]) -> None:
        self._name = name
        self._target = target
        self._fresh = fresh
        self._pid = -1
        self._runs = False
        self._cond = threading.Condition(threading.RLock())

    def lock(self) -> threading.Condition:
        """This process's condition (on a re-entrant lock): held to read or change the work."""
        if self._pid != os.getpid():
            # First use, or a forked child: no thread of ours runs here, and the parent's may
            # have held the lock at the fork (then held for ever in the child).
            self._cond = threading.Condition(threading.RLock())
            self._runs = False
            self._fresh()
            self._pid = os.getpid()
        return self._cond

    def request(self, add: Callable[[], None]) -> None:
        """Run ``add`` (hand the thread its work) under the lock, wake the thread, and start
        it if it does not run. Raises what starting a thread raises (the next request then
        tries again)."""
        cond = self.lock()
        with cond:
            add()
            cond.notify()
            if self._runs:
                return
            self._runs = True
        try:
            threading.Thread(target=self._target, name=self._name, daemon=True).start()
        except BaseException:
            with cond:
                self._runs = False
            raise

    def stopping(self) -> None:
        """The thread found no work and returns (call it under the lock, from ``target``):
        the next request starts a new one."""
        self._runs = False

    def running(self) -> bool:
        """Whether the thread runs (or is being started) in this process."""
        with self.lock():
            return self._runs
