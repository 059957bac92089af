"""wasmtime objects a forked child never deletes: what keeps it from waiting on a lock forever.

``fork()`` copies only the calling thread: a lock another thread of the parent held at that
moment stays held in the child forever, and wasmtime has such locks inside (the process-wide
registry of compiled code, taken to read by every trap and backtrace and to write when a
module's code is freed; the pooling allocator's slots; the engine's type registry). A child
deleting an object it inherited, at the wrong moment, hangs. And children do delete them, not
by choice (measured, issue 12): a cycle collection in the child deletes the parent's garbage
(the store, module, linker and instance-pre of a plugin that was dropped without ``close()``),
and CPython's own fork handling (``PyOS_AfterFork_Child`` -> ``_PyThreadState_DeleteExcept``,
inside ``os.fork()``, before any at-fork handler) releases what only the parent's other
threads held: their ``threading.local`` data, contexts and handled exceptions (measured: an idle
thread's ``ThreadRoom`` and the per-thread ``last_call`` records it keyed were freed inside
``os.fork()``, with the ``rt.Instance`` objects they held; their stores had been closed already
in every case seen, but nothing guarantees it). A ProcessPoolExecutor worker forked by the test
suite once hung there for minutes (not reproduced since).

So every wasmtime object plugsafe makes that can take such a lock when deleted is an
:class:`Owned` pointer (made through the C API) or goes through :func:`forksafe` (a wasmtime-py
object: components): it is deleted only by the process that made it; a forked child leaks what it
inherited (its memory is the parent's copy-on-write pages: nothing the child did not already
have). Objects the child makes itself are deleted as usual. The cost: an ``os.getpid()`` (a
plain system call, ~0.1 us) when the object is made and when it is deleted, never per call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Owned", "count_leak", "forksafe", "leaked"]

T = TypeVar("T")

# How many inherited objects this process leaked rather than deleted (for tests and debugging).
_leaked = [0]


def leaked() -> int:
    """How many wasmtime objects made by a parent process this process leaked, not deleted."""
    return _leaked[0]


def count_leak() -> None:
    """Count one inherited object leaked (for objects not made through wasmtime-py: _store)."""
    _leaked[0] += 1


class Owned:
    """One C object plugsafe made through the C API and frees exactly once: when this object
    is closed or collected, in the process that made it (a forked child leaks it, counted).

    ``raw`` is the pointer (a cffi ``cdata``), None once freed or taken: whoever holds an Owned
    reads ``raw`` at the moment of use and never keeps the pointer past the Owned's life.

    ``also``: None, or what to release with it on the Python side (things the C object refers
    to, such as the sinks of a WASI configuration's custom outputs): called once, when this
    object is closed or collected, whether it freed the pointer or handed it over (take()).
    Whoever takes the pointer therefore keeps this object, and closes it, while the pointer's
    new owner may still use them (``_store.Store`` does for its WASI configuration).
    """

    __slots__ = ("__weakref__", "_free", "_pid", "also", "raw")

    def __init__(self, raw: Any, free: Callable[[Any], None]) -> None:
        # A signal handler's exception can interrupt this as a call returns, and __del__ then
        # runs on what was built (tidy12): the pointer is kept last, with no call after it, so
        # an object that holds it is whole, and one interrupted before frees it here. (Only an
        # exception raised on entry, before the first line, loses it: as one raised in the
        # caller as the C call that made the pointer returned.)
        try:
            self._pid = os.getpid()
            self._free = free
            self.also: Callable[[], None] | None = None
        except BaseException:
            if raw:
                free(raw)
            raise
        if not raw:
            raise MemoryError("wasmtime returned a null pointer")
        self.raw: Any = raw

    def take(self) -> Any:
        """The pointer, now the caller's (a C function that takes ownership of it); this object
        forgets it and frees nothing (``also`` stays until it is closed). ValueError if it was
        freed or taken already."""
        raw, self.raw = self.raw, None
        if raw is None:
            raise ValueError("a C object used after it was freed or handed over")
        return raw

    def close(self, _getpid: Callable[[], int] = os.getpid, _leaked: list[int] = _leaked) -> None:
        """Free it now, then release ``also`` (idempotent; a forked child only counts the
        pointer as leaked)."""
        # (Both bound as defaults: __del__ may run at shutdown, once module globals are gone.)
        # The pointer is forgotten and freed with no call in between (the free is a C function:
        # no Python frame), so a signal handler's exception never leaves it forgotten but not
        # freed, nor freed but not forgotten.
        if self.raw is not None:
            mine = _getpid() == self._pid
            raw, self.raw = self.raw, None
            if raw is not None:
                if mine:
                    self._free(raw)
                else:
                    _leaked[0] += 1
        also = self.also
        if also is not None:
            self.also = None
            also()

    def __del__(self) -> None:
        try:
            self.raw  # noqa: B018 - absent: __init__ was interrupted before it held anything
        except AttributeError:
            return
        try:
            self.close()
        except BaseException:
            # A signal handler's exception (nothing else raises here): finish, as Store does,
            # or the pointer or ``also`` is never released; then let it be reported.
            if self.raw is not None or self.also is not None:
                self.close()
            raise


def _kept(cls: type) -> type:
    """``cls`` (a wasmtime-py ``Managed`` class) whose ``_delete`` (reached from ``close()``
    and ``__del__``, the latter possibly inside ``os.fork()``) runs only in the process that
    made the object. Nothing in it may raise or block."""
    delete = cls._delete  # type: ignore[attr-defined]

    def _delete(self: Any, ptr: Any) -> None:
        if os.getpid() != self._plugsafe_pid:
            _leaked[0] += 1
            return
        delete(self, ptr)

    # Nothing but a method added: the same layout, so an object can change class in place,
    # and it stays an instance of ``cls`` for wasmtime-py's own isinstance checks.
    return type(cls.__name__, (cls,), {"_delete": _delete, "__module__": __name__})


_KEPT: dict[type, type] = {}


def forksafe(obj: T) -> T:
    """``obj`` (a wasmtime-py ``Store``, ``Module``, ``Linker`` or ``InstancePre``, just made),
    made deletable only by this process. Returns it."""
    cls = type(obj)
    kept = _KEPT.get(cls)
    if kept is None:
        kept = _KEPT.setdefault(cls, _kept(cls))
    obj._plugsafe_pid = os.getpid()  # type: ignore[attr-defined]
    obj.__class__ = kept
    return obj
