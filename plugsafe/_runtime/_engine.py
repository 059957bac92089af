"""Engines (process-wide, each with its epoch ticker) and compiling text and binaries.

Everything here goes through the C API (``_lib``): a core engine, its configuration, compiling,
deserializing, function types and ``wat_to_wasm`` never import wasmtime-py (issue 14: a cold
start). An engine for components is a ``wasmtime.Engine`` (wasmtime-py's component API takes
nothing else), made from a ``wasmtime.Config`` given exactly the same settings by the same code
(``_configure``, on the config's pointer) and owned by wasmtime-py alone.

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
from typing import TYPE_CHECKING, Any, NamedTuple

from .._lazymodule import lazy_module
from ._backend import WasmFailure, failure_from_addresses
from ._forksafe import Owned
from ._lib import PATH, address, ffi, lib, take_bytes
from ._module import VALKINDS, Description, Module, check_description, describe_binary
from ._store import pool_slots
from ._ticker import Ticker

if TYPE_CHECKING:
    import wasmtime

    from . import _hostmem
else:
    # The components' memory creator, when the first engine for components is made (issue 14:
    # a cold start that loads a module never needs it).
    _hostmem = lazy_module("plugsafe._runtime._hostmem", globals(), "_hostmem")
    # wasmtime-py, for engines of components only.
    wasmtime = lazy_module("wasmtime", globals(), "wasmtime")

__all__ = [
    "Engine",
    "EpochTicker",
    "NO_DEADLINE_TICKS",
    "PoolLimits",
    "PoolUnreservable",
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
    st = os.stat(PATH)
    return f"{PATH}:{st.st_size}:{st.st_mtime_ns}"


def _check(error: Any) -> None:
    """Raise the WasmFailure for a ``wasmtime_error_t *`` a C function returned (freed), if any."""
    if error:
        raise failure_from_addresses(address(error), 0)


def wat_to_wasm(text: str | bytes) -> bytes:
    """Translate WebAssembly text to binary; raises WasmFailure with wasmtime's message."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    out = ffi.new("wasm_byte_vec_t *")
    _check(lib.wasmtime_wat2wasm(data, len(data), out))
    return take_bytes(out)


def _configure(
    cfg: Any, *, metered: bool, max_stack: int, components: bool, pooling: PoolLimits | None
) -> None:
    """Give the ``wasm_config_t *`` ``cfg`` every setting of a plugsafe engine: the one home of
    them, for core engines (a config of the C API's) and component engines (wasmtime-py's)."""
    lib.wasmtime_config_consume_fuel_set(cfg, metered)
    lib.wasmtime_config_epoch_interruption_set(cfg, True)
    lib.wasmtime_config_max_wasm_stack_set(cfg, max_stack)
    # Features that widen the attack surface or break the 32-bit pointer model are off.
    lib.wasmtime_config_wasm_threads_set(cfg, False)
    lib.wasmtime_config_shared_memory_set(cfg, False)
    lib.wasmtime_config_wasm_memory64_set(cfg, False)
    lib.wasmtime_config_wasm_gc_set(cfg, False)
    # Components get engines of their own (``components=True``): core modules never see
    # the component model's parser and validator.
    lib.wasmtime_config_wasm_component_model_set(cfg, components)
    lib.wasmtime_config_wasm_multi_memory_set(cfg, True)
    # A linear memory never moves once created (growth past the reservation, 4 GiB on 64-bit
    # hosts, fails instead): an Instance may then keep a window on its memory across calls
    # rather than asking wasmtime for the base address on every access.
    lib.wasmtime_config_memory_may_move_set(cfg, False)
    # wasmtime compiles on a thread pool of its own, whose threads do not survive fork(): a
    # forked worker (ProcessPoolExecutor, pre-forking servers) that compiled after its
    # parent had compiled hung forever, with its parent waiting on it. One thread compiles
    # instead (no slower on the 2-core machines measured; compile_timeout bounds it anyway).
    lib.wasmtime_config_parallel_compilation_set(cfg, False)
    if pooling is not None:
        _set_pooling(cfg, pooling)


class _CoreEngine:
    """A ``wasm_engine_t`` made through the C API, freed with its last reference.

    Shaped as a Ticker takes an engine (``ptr()``): a Ticker keeps it for the life of the
    process. Modules, linkers and stores hold wasmtime's own references to the engine inside,
    so freeing this handle first is safe.
    """

    __slots__ = ("address", "owned")

    def __init__(self, cfg: Any) -> None:
        # wasm_engine_new_with_config takes the config over.
        self.owned = Owned(lib.wasm_engine_new_with_config(cfg), lib.wasm_engine_delete)
        self.address = address(self.owned.raw)

    def ptr(self) -> ctypes.c_void_p:
        return ctypes.c_void_p(self.address)


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
        self.components = components
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
            # (keep_resident changes no code: left out, as before it existed.)
            self.settings += ";pool=" + ",".join(map(str, pooling[:5]))
        # wasmtime-py's engine, for components only (None for core engines).
        self._engine: wasmtime.Engine | None = None
        self.host_memory = False
        if components:
            cfg = wasmtime.Config()
            raw = ffi.cast("wasm_config_t *", _ctypes_address(cfg.ptr()))
            _configure(raw, metered=metered, max_stack=max_stack, components=True, pooling=pooling)
            # Components' memories come from plugsafe (_hostmem): the only way the host sees a
            # component's memory grow and can tell a refused growth from any other trap. It
            # turns copy-on-write initialisation off, which wasmtime records in compiled
            # artifacts (one compiled with it on is refused by an engine with it off): part of
            # the cache key.
            self.host_memory = pooling is None and _hostmem.install(cfg)
            if self.host_memory:
                self.settings += ";hostmem"
            self._engine = engine = wasmtime.Engine(cfg)
            self._owner: Any = engine
            self.address: int = _ctypes_address(engine.ptr())
        else:
            if pooling is not None:
                # Before the config exists (nothing to free if this raises): the C API cannot
                # report a failed engine, it aborts the process (see _check_reservable).
                _check_reservable(pooling)
            raw = lib.wasm_config_new()
            _configure(raw, metered=metered, max_stack=max_stack, components=False, pooling=pooling)
            self._owner = core = _CoreEngine(raw)
            # Its address, for stores made through the C API directly (_store.Store).
            self.address = core.address
        # The wasm_engine_t * as cffi passes it (linkers, modules).
        self.ptr: Any = ffi.cast("wasm_engine_t *", self.address)
        self._ticker: Ticker | None = None
        self._functypes: dict[tuple[tuple[str, ...], tuple[str, ...]], Owned] = {}

    def functype(self, params: tuple[str, ...], results: tuple[str, ...]) -> Owned:
        """A function type (an owned ``wasm_functype_t``) of numeric value types, made once
        per signature for this engine.

        Every host function of every load needs one. Defining a function only borrows the
        type, but wasmtime ties it to the first engine it is used with (using it with another
        one is a Rust panic, which aborts the process): hence one cache per engine, never a
        global one.
        """
        key = (params, results)
        ty = self._functypes.get(key)
        if ty is None:
            ty = Owned(
                lib.wasm_functype_new(_valtypes(params), _valtypes(results)),
                lib.wasm_functype_delete,
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
                    self._ticker = Ticker(self._owner)
                ticker = self._ticker
        return ticker

    def increment_epoch(self) -> None:
        """Advance the epoch; safe from any thread."""
        lib.wasmtime_engine_increment_epoch(self.ptr)

    def compile(self, wasm: bytes) -> Module:
        """Compile and validate a wasm binary (the GIL is released while wasmtime compiles:
        cffi releases it around every C call).

        Bytes that do not start with a NUL byte are taken as WebAssembly text, as wasmtime-py's
        ``Module`` takes them. Its imports and exports are described from the binary itself
        (``describe_binary``).
        """
        if wasm and wasm[0] != 0:
            wasm = wat_to_wasm(wasm)
        return Module(self._module_of(lib.wasmtime_module_new, wasm), describe_binary(wasm))

    def _module_of(self, make: Any, data: bytes) -> Owned:
        out = ffi.new("wasmtime_module_t **")
        _check(make(self.ptr, data, len(data), out))
        # Never deleted in a forked child (see _forksafe: it could wait on a lock forever).
        return Owned(out[0], lib.wasmtime_module_delete)

    def deserialize(self, artifact: bytes, description: Description) -> Module:
        """Load an artifact that ``Module.serialize`` of *this plugsafe* produced.

        ``description`` is the module's, from ``parse_description`` of what ``Module.describe``
        stored, or ``describe_binary`` of the binary it was compiled from.
        Never call this on bytes from anywhere else: a crafted artifact runs arbitrary code.
        Raises WasmFailure if wasmtime refuses the artifact, or if ``description`` does not
        match the artifact's imports and exports (``check_description``: calls trust it).
        """
        owned = self._module_of(lib.wasmtime_module_deserialize, artifact)
        try:
            check_description(owned.raw, description)
        except WasmFailure as exc:
            raise WasmFailure(f"the artifact does not match its description: {exc}") from None
        return Module(owned, description)


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


def _valtypes(kinds: Sequence[str]) -> Any:
    """A new ``wasm_valtype_vec_t *`` of these numeric types (``wasm_functype_new`` takes the
    vector and its types over)."""
    vec = ffi.new("wasm_valtype_vec_t *")
    types = [lib.wasm_valtype_new(VALKINDS[k]) for k in kinds]
    # (Never a null array, even for no types: wasmtime makes a slice of it.)
    lib.wasm_valtype_vec_new(vec, len(types), ffi.new("wasm_valtype_t *[]", types or 1))
    return vec


def _ctypes_address(ptr: Any) -> int:
    """The address a wasmtime-py (ctypes) pointer holds."""
    return ctypes.cast(ptr, ctypes.c_void_p).value or 0


class PoolUnreservable(WasmFailure):
    """A pooling allocator's slots do not fit in this process's address space (or under its
    ``RLIMIT_AS``): no engine was made."""


# What wasmtime reserves per pooled linear memory at least (its default memory reservation on
# 64-bit hosts), the guard after it, bytes per table element, and what a pooled engine reserves
# whatever its limits: each an over-estimate on purpose. (Measured, wasmtime 50 on x86-64: an
# engine with one slot of one table element reserved 6,164 MiB, each further slot 4,128 MiB.)
_SLOT_RESERVATION = 4 << 30
_SLOT_GUARD = 64 << 20
_TABLE_ELEMENT = 16
_WASM_PAGE = 64 << 10
_POOL_BASE = (2 << 30) + (256 << 20)


def reservation_bytes(limits: PoolLimits) -> int:
    """At least the address space wasmtime's pooling allocator reserves for ``limits`` when
    an engine is made: a slot per memory (its 4 GiB reservation or ``memory_size`` if larger,
    plus guard pages) and per table, and what every pooled engine reserves."""
    slot = max(limits.memory_size, _SLOT_RESERVATION) + _SLOT_GUARD
    table = -(-limits.table_elements * _TABLE_ELEMENT // _WASM_PAGE) * _WASM_PAGE
    count = limits.instances
    return count * limits.memories * slot + count * limits.tables * table + _POOL_BASE


def _check_reservable(limits: PoolLimits) -> None:
    """Raise PoolUnreservable unless ``reservation_bytes(limits)`` can be mapped now.

    ``wasm_engine_new_with_config`` ``unwrap()``s wasmtime's engine creation: a pool whose
    reservation fails (``mmap`` refused: past the 128 TiB a Linux process may address, or
    past ``ulimit -v``) was a Rust panic that aborted the host process at the first load
    (attack8). So the same reservation is tried here first (inaccessible, never touched:
    address space only, not memory) and released at once; wasmtime then reserves what fits.
    """
    size = reservation_bytes(limits)
    if os.name != "posix":  # pragma: no cover - no anonymous PROT_NONE mappings to try
        return
    import mmap

    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    try:
        mmap.mmap(-1, size, flags=flags, prot=0).close()
    except (OSError, OverflowError, ValueError) as exc:
        raise PoolUnreservable(
            f"the pool's slots need {size / (1 << 40):.1f} TiB of address space "
            f"({limits.instances} instances x {limits.memories} memories of 4 GiB or more, "
            f"plus tables and guard pages), which this process cannot reserve ({exc})"
        ) from None


def _set_pooling(cfg: Any, limits: PoolLimits) -> None:
    """Switch the ``wasm_config_t *`` ``cfg`` to the pooling allocator with these slots."""
    pool = lib.wasmtime_pooling_allocation_config_new()
    try:
        lib.wasmtime_pooling_allocation_config_total_core_instances_set(pool, limits.instances)
        lib.wasmtime_pooling_allocation_config_total_memories_set(
            pool, limits.instances * limits.memories
        )
        lib.wasmtime_pooling_allocation_config_total_tables_set(
            pool, limits.instances * limits.tables
        )
        lib.wasmtime_pooling_allocation_config_max_memories_per_module_set(pool, limits.memories)
        lib.wasmtime_pooling_allocation_config_max_tables_per_module_set(pool, limits.tables)
        lib.wasmtime_pooling_allocation_config_max_memory_size_set(pool, limits.memory_size)
        lib.wasmtime_pooling_allocation_config_table_elements_set(pool, limits.table_elements)
        if limits.keep_resident:
            # A freed slot's first bytes are zeroed with memset and stay mapped, instead of
            # being handed back (madvise) and faulted in again, a page at a time, by the next
            # instance: a fresh instance per call paid ~1 page fault per call on the smallest
            # guest (issue 14, goal 6). wasmtime still resets the slot (zeroes, then the
            # module's data): a new instance never sees the last one's bytes
            # (tests/test_pooling.py).
            lib.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(
                pool, limits.keep_resident
            )
            lib.wasmtime_pooling_allocation_config_table_keep_resident_set(
                pool, limits.keep_resident
            )
        # Components and GC heaps are off on plugsafe's engines: no slots for them.
        lib.wasmtime_pooling_allocation_config_total_component_instances_set(pool, 0)
        lib.wasmtime_pooling_allocation_config_total_gc_heaps_set(pool, 0)
        lib.wasmtime_pooling_allocation_strategy_set(cfg, pool)
    finally:
        lib.wasmtime_pooling_allocation_config_delete(pool)


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
