"""Engines (process-wide, each with its epoch ticker) and compiling text and binaries.

Deadlines are enforced by ``_ticker``: each Engine owns a :class:`~._ticker.Ticker` (kept, like
the engine, for the life of the process). ``EpochTicker`` is only a Host's view of it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import wasmtime
from wasmtime import _ffi as wf

from .._lazymodule import lazy_module
from ._backend import WasmFailure
from ._forksafe import forksafe
from ._module import VALTYPE_FACTORIES, Description, Module, describe_binary
from ._store import pool_slots
from ._ticker import Ticker

if TYPE_CHECKING:
    from . import _hostmem
else:
    # The components' memory creator, when the first engine for components is made (issue 14:
    # a cold start that loads a module never needs it).
    _hostmem = lazy_module("plugsafe._runtime._hostmem", globals(), "_hostmem")

__all__ = [
    "Engine",
    "EpochTicker",
    "NO_DEADLINE_TICKS",
    "PoolLimits",
    "TICK_SECONDS",
    "library_fingerprint",
    "shared_engine",
    "wasmtime_version",
    "wat_to_wasm",
]

# The Python fallback ticker's period (kept for compatibility: deadlines are counted by each
# engine's Ticker, whose period is Ticker.period).
TICK_SECONDS = 0.005
# "No deadline": wasmtime traps at once if none is set, so unlimited calls get a far-off one.
NO_DEADLINE_TICKS = 1 << 62
# Function types an engine keeps (see Engine.functype).
_FUNCTYPES_KEPT = 256


@functools.lru_cache(maxsize=1)
def wasmtime_version() -> str:
    """The installed wasmtime-py version."""
    from importlib.metadata import version

    return version("wasmtime")


@functools.lru_cache(maxsize=1)
def library_fingerprint() -> str:
    """Identifies the installed libwasmtime, for compiled-artifact cache keys.

    Cheaper than asking importlib.metadata (which alone costs a fresh process ~20 ms): any other
    wasmtime install is another file, or the same path with another size or modification time.
    """
    st = os.stat(wf.filename)
    return f"{wf.filename}:{st.st_size}:{st.st_mtime_ns}"


def wat_to_wasm(text: str) -> bytes:
    """Translate WebAssembly text to binary; raises WasmFailure with wasmtime's message."""
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise WasmFailure(str(exc)) from None


class PoolLimits(NamedTuple):
    """The pooling allocator's slots (``plugsafe.Pooling`` as plain numbers), engine-wide.

    ``instances`` instances may be alive at once, each with at most ``memories`` linear memories
    of at most ``memory_size`` bytes and ``tables`` tables of at most ``table_elements``. A freed
    slot keeps the first ``keep_resident`` bytes of each memory and table in RAM (zeroed with
    memset, not handed back to the kernel): no page faults there for the next instance.
    """

    instances: int
    memory_size: int
    memories: int
    tables: int
    table_elements: int
    keep_resident: int = 0


class Engine:
    """A wasmtime engine configured for untrusted code.

    Fuel metering is engine-wide in wasmtime, and it slows all code down, so a host keeps one
    metered and one unmetered engine and compiles each plugin for the one its policy needs.
    With ``pooling``, instances come from pre-reserved slots (wasmtime's pooling allocator):
    no mmap/munmap per instance, and at most ``pooling.instances`` alive at once.
    """

    def __init__(
        self,
        *,
        metered: bool,
        max_stack: int,
        components: bool = False,
        pooling: PoolLimits | None = None,
    ) -> None:
        # The native stack one call may use (plugsafe counts it per thread: _nesting).
        self.max_stack = max_stack
        cfg = wasmtime.Config()
        cfg.consume_fuel = metered
        cfg.epoch_interruption = True
        cfg.max_wasm_stack = max_stack
        # Features that widen the attack surface or break the 32-bit pointer model are off.
        cfg.wasm_threads = False
        cfg.shared_memory = False
        cfg.wasm_memory64 = False
        cfg.wasm_gc = False
        # Components get engines of their own (``components=True``): core modules never see
        # the component model's parser and validator.
        cfg.wasm_component_model = components
        self.components = components
        cfg.wasm_multi_memory = True
        # A linear memory never moves once created (growth past the reservation, 4 GiB on 64-bit
        # hosts, fails instead): an Instance may then keep a window on its memory across calls
        # rather than asking wasmtime for the base address on every access.
        cfg.memory_may_move = False
        # wasmtime compiles on a thread pool of its own, whose threads do not survive fork(): a
        # forked worker (ProcessPoolExecutor, pre-forking servers) that compiled after its
        # parent had compiled hung forever, with its parent waiting on it. One thread compiles
        # instead (no slower on the 2-core machines measured; compile_timeout bounds it anyway).
        cfg.parallel_compilation = False
        self.metered = metered
        self.pooling = pooling
        # Everything that changes compiled code: part of the on-disk cache key.
        self.settings = (
            f"fuel={metered};stack={max_stack};epoch;nothreads;no64;nogc;multimem;nomove"
            + (";components" if components else "")
        )
        # The pool's instances over every engine of it (see _store.PoolSlots); None unpooled.
        self.slots = None if pooling is None else pool_slots(pooling, pooling.instances)
        if pooling is not None:
            _set_pooling(cfg, pooling)
            # (keep_resident changes no code: left out, as before it existed.)
            self.settings += ";pool=" + ",".join(map(str, pooling[:5]))
        # Components' memories come from plugsafe (_hostmem): the only way the host sees a
        # component's memory grow and can tell a refused growth from any other trap. It turns
        # copy-on-write initialisation off, which wasmtime records in compiled artifacts (one
        # compiled with it on is refused by an engine with it off): part of the cache key.
        self.host_memory = components and pooling is None and _hostmem.install(cfg)
        if self.host_memory:
            self.settings += ";hostmem"
        self._engine = wasmtime.Engine(cfg)
        self._ptr = self._engine.ptr()
        # Its address, for stores made through the C API directly (_store.Store).
        self.address: int = ctypes.cast(self._ptr, ctypes.c_void_p).value or 0
        self._ticker: Ticker | None = None
        self._functypes: dict[tuple[tuple[str, ...], tuple[str, ...]], wasmtime.FuncType] = {}

    def functype(self, params: tuple[str, ...], results: tuple[str, ...]) -> wasmtime.FuncType:
        """A function type of numeric value types, made once per signature for this engine.

        Building one through wasmtime-py costs ~25 µs (a ctypes call per value type), and every
        host function of every load needs one. Defining a function only borrows the type, but
        wasmtime ties it to the first engine it is used with (using it with another one is a
        Rust panic, which aborts the process): hence one cache per engine, never a global one.
        """
        key = (params, results)
        ty = self._functypes.get(key)
        if ty is None:
            ty = wasmtime.FuncType(
                [VALTYPE_FACTORIES[t]() for t in params], [VALTYPE_FACTORIES[t]() for t in results]
            )
            with _SHARED_LOCK:
                if len(self._functypes) >= _FUNCTYPES_KEPT:
                    self._functypes.clear()  # signatures are few; this only bounds a hostile app
                ty = self._functypes.setdefault(key, ty)
        return ty

    @property
    def ticker(self) -> Ticker:
        """This engine's epoch ticker, made on first use (timed plugins only). From then on the
        engine is never freed: a timer must not tick a freed engine (see ``_ticker``)."""
        ticker = self._ticker
        if ticker is None:
            with _SHARED_LOCK:
                if self._ticker is None:
                    self._ticker = Ticker(self._engine)
                ticker = self._ticker
        return ticker

    def increment_epoch(self) -> None:
        """Advance the epoch; safe from any thread."""
        wf.wasmtime_engine_increment_epoch(self._ptr)

    def compile(self, wasm: bytes) -> Module:
        """Compile and validate a wasm binary (the GIL is released while wasmtime compiles).

        Its imports and exports are described from ``wasm`` itself (``describe_binary``).
        """
        try:
            # Never deleted in a forked child (see _forksafe: it could wait on a lock forever).
            compiled = forksafe(wasmtime.Module(self._engine, wasm))
        except wasmtime.WasmtimeError as exc:
            raise WasmFailure(str(exc)) from None
        return Module(compiled, describe_binary(wasm))

    def deserialize(self, artifact: bytes, description: Description) -> Module:
        """Load an artifact that ``Module.serialize`` of *this plugsafe* produced.

        ``description`` is the module's, from ``parse_description`` of what ``Module.describe``
        stored, or ``describe_binary`` of the binary it was compiled from.
        Never call this on bytes from anywhere else: a crafted artifact runs arbitrary code.
        """
        try:
            compiled = forksafe(wasmtime.Module.deserialize(self._engine, artifact))
            return Module(compiled, description)
        except wasmtime.WasmtimeError as exc:
            raise WasmFailure(str(exc)) from None


class EpochTicker:
    """A Host's view of deadline enforcement (the ticking itself is process-wide).

    Epochs are advanced by each engine's :class:`~._ticker.Ticker` (a native POSIX timer, or one
    Python thread for the whole process), armed only while timed calls may run; a Host owns
    nothing that must be stopped, so closing one (even from inside a host function) never stops
    another call's deadline. This object only answers whether the Host has timed plugins.
    """

    def __init__(self, engines: Sequence[Engine], owner: object) -> None:
        self._engines = list(engines)
        self._started = False
        self._stopped = threading.Event()
        weakref.finalize(owner, self._stopped.set)

    def add(self, engine: Engine) -> None:
        """Note that the Host uses ``engine`` (its ticker is process-wide)."""
        if engine not in self._engines:
            self._engines = [*self._engines, engine]

    def ensure_running(self) -> None:
        """Note that the Host loaded a plugin with a timeout (idempotent; starts nothing)."""
        self._started = True

    @property
    def running(self) -> bool:
        """Whether the Host has loaded a timed plugin and is neither closed nor collected."""
        return self._started and not self._stopped.is_set()

    def stop(self) -> None:
        """The Host is closing. Stops nothing shared: calls still running keep their deadlines."""
        self._stopped.set()


def _set_pooling(cfg: wasmtime.Config, limits: PoolLimits) -> None:
    """Switch ``cfg`` to the pooling allocator with these slots (the C API: wasmtime-py has no
    Python wrapper for it)."""
    pool = wf.wasmtime_pooling_allocation_config_new()
    try:
        wf.wasmtime_pooling_allocation_config_total_core_instances_set(pool, limits.instances)
        wf.wasmtime_pooling_allocation_config_total_memories_set(
            pool, limits.instances * limits.memories
        )
        wf.wasmtime_pooling_allocation_config_total_tables_set(
            pool, limits.instances * limits.tables
        )
        wf.wasmtime_pooling_allocation_config_max_memories_per_module_set(pool, limits.memories)
        wf.wasmtime_pooling_allocation_config_max_tables_per_module_set(pool, limits.tables)
        wf.wasmtime_pooling_allocation_config_max_memory_size_set(pool, limits.memory_size)
        wf.wasmtime_pooling_allocation_config_table_elements_set(pool, limits.table_elements)
        if limits.keep_resident:
            # A freed slot's first bytes are zeroed with memset and stay mapped, instead of
            # being handed back (madvise) and faulted in again, a page at a time, by the next
            # instance: a fresh instance per call paid ~1 page fault per call on the smallest
            # guest (issue 14, goal 6). wasmtime still resets the slot (zeroes, then the
            # module's data): a new instance never sees the last one's bytes
            # (tests/test_pooling.py).
            wf.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(
                pool, limits.keep_resident
            )
            wf.wasmtime_pooling_allocation_config_table_keep_resident_set(
                pool, limits.keep_resident
            )
        # Components and GC heaps are off on plugsafe's engines: no slots for them.
        wf.wasmtime_pooling_allocation_config_total_component_instances_set(pool, 0)
        wf.wasmtime_pooling_allocation_config_total_gc_heaps_set(pool, 0)
        wf.wasmtime_pooling_allocation_strategy_set(cfg.ptr(), pool)
    finally:
        wf.wasmtime_pooling_allocation_config_delete(pool)


_SHARED: dict[tuple[bool, int, bool, PoolLimits | None], Engine] = {}
_SHARED_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    # Another thread of the parent may have held it at the fork: held forever in the child.
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def shared_engine(
    *,
    metered: bool,
    max_stack: int,
    components: bool = False,
    pooling: PoolLimits | None = None,
) -> Engine:
    """The process-wide engine for this configuration (created on first use, never freed).

    Hosts share engines (compiled modules stay per Host): each engine carries a native timer
    that must never outlive it, and one ticker per engine keeps idle processes at zero wake-ups.
    Hosts asking for the same pooling limits therefore share one pool of slots.
    """
    key = (metered, max_stack, components, pooling)
    engine = _SHARED.get(key)
    if engine is None:
        with _SHARED_LOCK:
            engine = _SHARED.get(key)
            if engine is None:
                engine = _SHARED[key] = Engine(
                    metered=metered, max_stack=max_stack, components=components, pooling=pooling
                )
    return engine
