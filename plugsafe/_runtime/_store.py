"""A store made, limited, given its WASI context and deleted through the C API directly.

Every new instance needs a store (a load, a call after a trap, every ``fresh_instance`` call).
Through wasmtime-py that cost ~20 us of Python on top of wasmtime's own work (issue 14):
``Store()`` (type checks, a ctypes finalizer cast, its context), ``set_limits``, a ``WasiConfig``
object and ``set_wasi``, two ctypes casts to reach the raw pointers the backends and the
deadline guard need, and ``close()``. Here each is one foreign call on plain addresses, with
ctypes prototypes declared here on ``_lib.dll`` (PYFUNCTYPE: the quick ones keep the GIL).

Deleting keeps :mod:`._forksafe`'s rule: only the process that made the store deletes it; a
forked child leaks what it inherited (counted with the rest in ``_forksafe.leaked``).
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, cast

from ._forksafe import Owned, count_leak
from ._lib import address, dll

__all__ = ["DEFAULT_WASI", "PoolSlots", "Store", "give_wasi"]

_vp = ctypes.c_void_p
_i64 = ctypes.c_int64


def _proto(factory: Any, name: str, restype: Any, *argtypes: Any) -> Callable[..., Any]:
    at = ctypes.cast(getattr(dll, name), _vp).value
    return cast(Callable[..., Any], factory(restype, *argtypes)(at))


# Quick calls keep the GIL (PYFUNCTYPE: no release and re-take around a few hundred
# nanoseconds of C); deleting a store unmaps its memory and may take a while: it releases it.
_new = _proto(ctypes.PYFUNCTYPE, "wasmtime_store_new", _vp, _vp, _vp, _vp)
_context = _proto(ctypes.PYFUNCTYPE, "wasmtime_store_context", _vp, _vp)
_limiter = _proto(ctypes.PYFUNCTYPE, "wasmtime_store_limiter", None, _vp, _i64, _i64, _i64, _i64,
                  _i64)  # fmt: skip
_wasi_new = _proto(ctypes.PYFUNCTYPE, "wasi_config_new", _vp)
_set_wasi = _proto(ctypes.PYFUNCTYPE, "wasmtime_context_set_wasi", _vp, _vp, _vp)
_delete = _proto(ctypes.CFUNCTYPE, "wasmtime_store_delete", None, _vp)
_getpid = os.getpid
_ref = weakref.ref


class _DefaultWasi:
    """The WASI context of a new ``wasi_config_t`` with nothing set (see :data:`DEFAULT_WASI`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT_WASI"


# What ``Instance(wasi=...)`` takes for a WASI context with no arguments, no variables, empty
# stdin, output discarded and nothing preopened: what a WASI plugin's instances for calls get
# under the default ``Wasi()``. Made by ``wasi_config_new`` alone, no Python object.
DEFAULT_WASI: object = _DefaultWasi()


class PoolSlots:
    """The instances alive at once over every engine of one pool (``Pooling``'s ``instances``).

    wasmtime's pooling allocator is per engine, but plugsafe makes one engine per
    ``(metered, max_stack)``: metered and unmetered plugins, and Hosts of another
    ``max_stack``, each had ``instances`` slots of their own (attack6). Every store of a pooled
    engine takes one of ``free`` before it is made (``free.pop()``, IndexError: none left) and
    gives it back when it is deleted (``free.append(None)``): single list operations, atomic
    under the GIL, so no lock (none to be held at a fork either), ~0.1 us per fresh instance.
    """

    __slots__ = ("free", "limit", "live")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free: list[None] = [None] * limit
        # The stores that own a slot (``id`` -> weak reference), for reclaim().
        self.live: dict[int, weakref.ref[Store]] = {}

    def reclaim(self) -> None:
        """``free`` ran out: give back the slots no live store owns.

        An exception a signal handler raises as a call returns (KeyboardInterrupt, a SIGALRM
        timeout's) can land between taking a slot and a store owning it, or between deleting a
        store and giving its slot back: that slot was lost for good, and a storm of them
        exhausted the pool for every plugin of the Host (attack11). Counted here, on the
        exhausted path only: the stores still alive and not deleted are all that is taken.
        (A store made meanwhile by another thread may be counted as free: wasmtime's own pool,
        per engine, still refuses what it has no room for.)
        """
        with _RECLAIM_LOCK:  # (two threads at once would each give the lost slots back)
            alive = 0
            live = self.live
            for key, ref in list(live.items()):
                store = ref()
                if store is None or not store.ptr:
                    live.pop(key, None)
                else:
                    alive += 1
            lost = self.limit - alive - len(self.free)
            if lost > 0:
                self.free.extend([None] * lost)


_POOLS: dict[object, PoolSlots] = {}
_POOLS_LOCK = threading.Lock()
# Re-entrant: a signal handler may make a plugin call while its thread reclaims.
_RECLAIM_LOCK = threading.RLock()


def pool_slots(key: object, limit: int) -> PoolSlots:
    """The one PoolSlots of the pool ``key`` (its limits), process-wide."""
    with _POOLS_LOCK:
        slots = _POOLS.get(key)
        if slots is None:
            slots = _POOLS[key] = PoolSlots(limit)
        return slots


def _after_fork_in_child() -> None:
    # A thread of the parent may have held it at the fork: held forever in the child. (The
    # counts stay: the child's copy of each pool still holds the parent's instances.)
    global _POOLS_LOCK, _RECLAIM_LOCK
    _POOLS_LOCK = threading.Lock()
    _RECLAIM_LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def give_wasi(ctx: int, config: object) -> int:
    """Give the store context at address ``ctx`` its WASI context: ``DEFAULT_WASI``, or what
    ``_linker.wasi_config`` made (an owned ``wasi_config_t``, handed over: a config serves one
    store). Returns the address of a wasmtime error (owned by the caller), or 0."""
    raw = _wasi_new() if config is DEFAULT_WASI else address(cast(Owned, config).take())
    # wasmtime_context_set_wasi takes the config over, whatever it returns.
    return int(_set_wasi(ctx, raw) or 0)


class Store:
    """One ``wasmtime_store_t``: its address, its context's address, and the means to free it.

    ``close()`` deletes it (idempotent); so does the garbage collector for one never closed.
    Not thread-safe: its Instance serializes every use (``Instance.release`` under a lock).
    """

    __slots__ = ("__weakref__", "_outputs", "_pid", "_slots", "ctx", "ptr")

    def __init__(
        self,
        engine: int,
        limits: tuple[int, int, int, int, int] | None = None,
        slots: PoolSlots | None = None,
    ) -> None:
        """A new store of the engine at address ``engine`` (no host data), limited at once
        with ``limits`` if given (:meth:`limit`'s arguments, in its order: one call fewer for
        every new instance). ``slots``: the pool's, one of which the caller took for it
        (given back when the store is deleted)."""
        self.ptr: int = 0
        self.ctx: int = 0
        self._slots: PoolSlots | None = None
        self._outputs: Any = None
        # The slot is the store's once ``_slots`` is set (close gives it back), and until then
        # given back here: exactly once, whatever a signal handler raises in between (a
        # handler runs as a call returns: the store's pointer is kept at once, the slot's
        # owner set with no call in between; see PoolSlots.reclaim).
        try:
            self._pid = _getpid()
            ptr = _new(engine, None, None)
            self.ptr = ptr
            if not ptr:  # pragma: no cover - wasmtime aborts on allocation failure instead
                raise MemoryError("wasmtime_store_new failed")
            if slots is not None:
                ref = _ref(self)
                slots.live[id(self)] = ref
                self._slots = slots
            self.ctx = _context(ptr)
            if limits is not None:
                _limiter(ptr, *limits)
        except BaseException:
            if slots is not None and self._slots is None:
                slots.free.append(None)
            raise

    def limit(
        self, *, memory_size: int, table_elements: int, instances: int, tables: int, memories: int
    ) -> None:
        """``wasmtime_store_limiter``: caps on what instances in this store may create or grow."""
        _limiter(self.ptr, memory_size, table_elements, instances, tables, memories)

    def set_wasi(self, config: object) -> int:
        """Give the store its WASI context: ``DEFAULT_WASI``, or what ``_linker.wasi_config``
        made (an owned ``wasi_config_t``, handed over: a config serves one store). Returns the
        address of a wasmtime error (owned by the caller), or 0.

        The configuration (its ``Owned``, the pointer taken) is the store's from then on:
        closed when the store is deleted, forgetting its custom outputs (``Owned.also``)."""
        error = give_wasi(self.ctx, config)
        if config is not DEFAULT_WASI:
            self._outputs = config
        return error

    def close(self) -> None:
        """Delete the store now (idempotent). A forked child never deletes its parent's."""
        ptr = self.ptr
        if not ptr:
            return
        outputs = self._outputs
        if outputs is not None:
            # Python's registry only: no call runs on a deleted store, so nothing writes.
            self._outputs = None
            outputs.close()
        if _getpid() != self._pid:
            self.ptr = self.ctx = 0
            count_leak()
            return
        # The pointer is forgotten and the store deleted with no call in between: a signal
        # handler's exception (raised as a call returns) never leaves a store forgotten but
        # not deleted, nor deleted but not forgotten (attack11).
        self.ptr = self.ctx = 0
        _delete(ptr)
        slots = self._slots
        if slots is not None:
            slots.free.append(None)  # (PoolSlots: its slot back; lost here: reclaim finds it)
            slots.live.pop(id(self), None)

    def __del__(self) -> None:
        # (Most are closed already: Instance.release; no second frame for them. No ``ptr``:
        # __init__ was interrupted on entry by a signal handler's exception, holding nothing.)
        if getattr(self, "ptr", 0):
            try:
                self.close()
            except BaseException:
                # A signal handler's exception (nothing else raises here): finish, or the store
                # and its slot are never freed.
                if self.ptr:
                    self.close()
                raise
