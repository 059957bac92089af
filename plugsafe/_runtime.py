"""The one module that calls into wasmtime.

Everything plugsafe does with WebAssembly goes through the few classes here, so a faster call path
(cffi on ``libwasmtime``) can replace this module without touching the rest. Nothing here knows
about policies or plugsafe's public errors: failures come out as :class:`WasmFailure` and
:class:`GuestMemoryError`, and ``_plugin`` decides what they mean.

Why not wasmtime-py's ``Func.__call__`` and ``Linker.define_func``: they rebuild type information
on every call (tens of microseconds), and they hand a host function's exception back through a
module-global variable that threads running wasm at the same time overwrite. Here calls go through
``wasmtime_func_call_unchecked`` with types checked once, and host callbacks never raise into
wasmtime-py: they report failures to a sink the caller owns and return a trap of their own.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Callable, Sequence
from ctypes import POINTER, byref
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from ._types import ExportInfo, ExternKind, ImportInfo

__all__ = [
    "Caller",
    "Engine",
    "EpochTicker",
    "FuncRef",
    "GuestAllocError",
    "GuestMemoryError",
    "Instance",
    "Linker",
    "Module",
    "TICK_SECONDS",
    "WasmFailure",
    "wat_to_wasm",
]

# Epoch ticker period. A deadline is enforced to within about one tick.
TICK_SECONDS = 0.005
# "No deadline": wasmtime traps at once if none is set, so unlimited calls get a far-off one.
NO_DEADLINE_TICKS = 1 << 62

_U32 = 0xFFFF_FFFF
_KIND_FUNC = ffi.WASMTIME_EXTERN_FUNC.value
_KIND_MEMORY = ffi.WASMTIME_EXTERN_MEMORY.value
_NULL_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()
_VALTYPE_FACTORIES: dict[str, Callable[[], wasmtime.ValType]] = {
    "i32": wasmtime.ValType.i32,
    "i64": wasmtime.ValType.i64,
    "f32": wasmtime.ValType.f32,
    "f64": wasmtime.ValType.f64,
}
NUMERIC_TYPES = frozenset(_VALTYPE_FACTORIES)

_func_call = ffi.wasmtime_func_call_unchecked
_memory_data = ffi.wasmtime_memory_data
_memory_size = ffi.wasmtime_memory_data_size
_TrapPtr = POINTER(ffi.wasm_trap_t)


class WasmFailure(Exception):
    """A call into wasm (or an instantiation, or a compile) did not complete.

    ``trap_code`` is wasmtime's trap code name (``"OUT_OF_FUEL"``, ``"INTERRUPT"``,
    ``"UNREACHABLE"``, ...) or None when it was an error rather than a coded trap.
    """

    def __init__(self, message: str, trap_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.trap_code = trap_code


class GuestMemoryError(ValueError):
    """A guest-supplied pointer/length does not lie inside the guest's memory."""


class GuestAllocError(GuestMemoryError):
    """The guest's allocator returned 0 (it could not allocate)."""


def _failure(error: Any, trap: Any) -> WasmFailure:
    """Turn a wasmtime error pointer or trap pointer (we own both) into a WasmFailure."""
    if error:
        return WasmFailure(str(wasmtime.WasmtimeError._from_ptr(error)))
    t = wasmtime.Trap._from_ptr(trap)
    code = t.trap_code
    return WasmFailure(t.message, None if code is None else code.name)


def wat_to_wasm(text: str) -> bytes:
    """Translate WebAssembly text to binary; raises WasmFailure with wasmtime's message."""
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise WasmFailure(str(exc)) from None


class Engine:
    """A wasmtime engine configured for untrusted code.

    Fuel metering is engine-wide in wasmtime, and it slows all code down, so a host keeps one
    metered and one unmetered engine and compiles each plugin for the one its policy needs.
    """

    def __init__(self, *, metered: bool, max_stack: int) -> None:
        cfg = wasmtime.Config()
        cfg.consume_fuel = metered
        cfg.epoch_interruption = True
        cfg.max_wasm_stack = max_stack
        # Features that widen the attack surface or break the 32-bit pointer model are off.
        cfg.wasm_threads = False
        cfg.shared_memory = False
        cfg.wasm_memory64 = False
        cfg.wasm_gc = False
        cfg.wasm_component_model = False
        cfg.wasm_multi_memory = True
        self.metered = metered
        self._engine = wasmtime.Engine(cfg)
        self._ptr = self._engine.ptr()

    def increment_epoch(self) -> None:
        """Advance the epoch; safe from any thread."""
        ffi.wasmtime_engine_increment_epoch(self._ptr)

    def compile(self, wasm: bytes) -> Module:
        """Compile and validate a wasm binary (the GIL is released while wasmtime compiles)."""
        try:
            return Module(wasmtime.Module(self._engine, wasm))
        except wasmtime.WasmtimeError as exc:
            raise WasmFailure(str(exc)) from None


def _kind_and_detail(ty: Any) -> tuple[ExternKind, tuple[str, ...], tuple[str, ...], str]:
    if isinstance(ty, wasmtime.FuncType):
        return "func", tuple(map(str, ty.params)), tuple(map(str, ty.results)), ""
    if isinstance(ty, wasmtime.MemoryType):
        lim = ty.limits
        top = "" if lim.max is None else f" max {lim.max}"
        return "memory", (), (), f"min {lim.min}{top} pages"
    if isinstance(ty, wasmtime.TableType):
        lim = ty.limits
        top = "" if lim.max is None else f" max {lim.max}"
        return "table", (), (), f"{ty.element} min {lim.min}{top}"
    if isinstance(ty, wasmtime.GlobalType):
        return "global", (), (), f"{'mut ' if ty.mutable else ''}{ty.content}"
    return "unknown", (), (), type(ty).__name__


class Module:
    """A compiled module and a plain-data description of its imports and exports."""

    def __init__(self, module: wasmtime.Module) -> None:
        self._module = module
        imports = []
        for imp in module.imports:
            kind, params, results, detail = _kind_and_detail(imp.type)
            imports.append(ImportInfo(imp.name or "", kind, params, results, detail, imp.module))
        exports = []
        for exp in module.exports:
            kind, params, results, detail = _kind_and_detail(exp.type)
            exports.append(ExportInfo(exp.name, kind, params, results, detail))
        self.imports: tuple[ImportInfo, ...] = tuple(imports)
        self.exports: dict[str, ExportInfo] = {e.name: e for e in exports}


# A host callback: receives a Caller and the wasm arguments as Python numbers, returns the wasm
# results as a sequence (or None when there are none). It may raise; see Linker.define_func.
HostCallback = Callable[["Caller", list[Any]], Sequence[Any] | None]
ErrorSink = Callable[[BaseException], str]


class Caller:
    """The guest as seen from inside a host callback: its memory and its allocator.

    Valid only while the callback runs. Every pointer and length is taken as unsigned 32-bit and
    checked against the memory's size at the moment of access.
    """

    __slots__ = ("_ctx", "_ptr", "_valid")

    def __init__(self, ptr: Any) -> None:
        self._ptr = ptr
        self._ctx = ffi.wasmtime_caller_context(ptr)
        self._valid = True

    def _export(self, name: bytes, kind: int) -> Any:
        if not self._valid:
            raise RuntimeError("caller used after its host call returned")
        item = ffi.wasmtime_extern_t()
        if not ffi.wasmtime_caller_export_get(self._ptr, name, len(name), byref(item)):
            return None
        if int(item.kind) != kind:
            return None
        return item.of.func if kind == _KIND_FUNC else item.of.memory

    def _memory(self) -> Any:
        mem = self._export(b"memory", _KIND_MEMORY)
        if mem is None:
            raise GuestMemoryError("the plugin exports no memory named 'memory'")
        return mem

    def read(self, pointer: int, length: int) -> bytes:
        """Copy ``length`` bytes at ``pointer`` out of the guest's memory."""
        pointer &= _U32
        length &= _U32
        if length == 0:
            return b""
        mem = self._memory()
        size = _memory_size(self._ctx, byref(mem))
        if pointer + length > size:
            raise GuestMemoryError(
                f"guest pointer {pointer} with length {length} runs past the end of its "
                f"{size}-byte memory"
            )
        base = ctypes.addressof(_memory_data(self._ctx, byref(mem)).contents)
        return ctypes.string_at(base + pointer, length)

    def place(self, data: bytes, alloc_export: bytes) -> int:
        """Copy ``data`` into memory the guest allocates for it; return the guest pointer."""
        if not data:
            return 0
        func = self._export(alloc_export, _KIND_FUNC)
        if func is None:
            raise GuestMemoryError(
                f"the plugin exports no allocator {alloc_export.decode()!r} to receive a result"
            )
        buf = (ffi.wasmtime_val_raw_t * 1)()
        buf[0].i32 = len(data)
        trap = _TrapPtr()
        # Re-entering the guest from inside a host call is allowed by wasmtime on the same store.
        error = _func_call(self._ctx, byref(func), buf, 1, byref(trap))
        if error or trap:
            raise _failure(error, trap)
        pointer = buf[0].i32 & _U32
        mem = self._memory()
        size = _memory_size(self._ctx, byref(mem))
        if pointer == 0:
            raise GuestAllocError(f"the plugin's allocator could not allocate {len(data)} bytes")
        if pointer + len(data) > size:
            raise GuestMemoryError(
                f"the plugin's allocator returned pointer {pointer} for {len(data)} bytes, "
                f"outside its {size}-byte memory"
            )
        base = ctypes.addressof(_memory_data(self._ctx, byref(mem)).contents)
        ctypes.memmove(base + pointer, data, len(data))
        return pointer

    def _invalidate(self) -> None:
        self._valid = False


def _make_functype(params: Sequence[str], results: Sequence[str]) -> wasmtime.FuncType:
    return wasmtime.FuncType(
        [_VALTYPE_FACTORIES[t]() for t in params], [_VALTYPE_FACTORIES[t]() for t in results]
    )


class Linker:
    """The host functions one plugin may import, bound to that plugin's callbacks."""

    def __init__(self, engine: Engine) -> None:
        self._linker = wasmtime.Linker(engine._engine)
        self._ptr = self._linker.ptr()
        # The ctypes callback objects must outlive every store that can call them.
        self._keep: list[Any] = []

    def define_func(
        self,
        module: str,
        name: str,
        params: Sequence[str],
        results: Sequence[str],
        callback: HostCallback,
        on_error: ErrorSink,
    ) -> None:
        """Define ``module.name`` with the given wasm types.

        If ``callback`` raises anything (BaseException included: nothing may unwind through
        wasmtime's C frames), ``on_error(exc)`` records it and returns the trap message the guest
        traps with.
        """
        param_fields = tuple(params)
        result_fields = tuple(results)

        def trampoline(_env: Any, caller_ptr: Any, raw: Any, _n: int) -> int:
            caller = Caller(caller_ptr)
            try:
                args = [getattr(raw[i], t) for i, t in enumerate(param_fields)]
                out = callback(caller, args)
                if result_fields:
                    assert out is not None
                    for i, t in enumerate(result_fields):
                        setattr(raw[i], t, out[i])
                return 0
            except BaseException as exc:
                try:
                    message = on_error(exc)
                except BaseException:  # the sink must not fail, but never unwind into C
                    message = "plugsafe: host function failed"
                data = message.encode("utf-8", "replace")
                trap = ffi.wasmtime_trap_new(data, len(data))
                return ctypes.cast(trap, ctypes.c_void_p).value or 0
            finally:
                caller._invalidate()

        cb = ffi.wasmtime_func_unchecked_callback_t(trampoline)
        ty = _make_functype(param_fields, result_fields)
        m, n = module.encode(), name.encode()
        error = ffi.wasmtime_linker_define_func_unchecked(
            self._ptr, m, len(m), n, len(n), ty.ptr(), cb, None, _NULL_FINALIZER
        )
        if error:
            raise _failure(error, None)
        self._keep.append((cb, ty))


@dataclass(eq=False)
class FuncRef:
    """An exported function of one instance, with its types and a reusable argument buffer."""

    name: str
    func: Any
    params: tuple[str, ...]
    results: tuple[str, ...]
    buf: Any


class Instance:
    """One store holding one instance of a module.

    Not thread-safe: the owning Plugin serializes every use. A store is never shared between
    instances, so a function is always called with the store it belongs to (mixing them up
    aborts the process in wasmtime).
    """

    def __init__(
        self,
        engine: Engine,
        linker: Linker,
        module: Module,
        *,
        memory_size: int,
        memories: int,
        table_elements: int,
        tables: int,
        fuel: int | None,
        deadline_ticks: int,
    ) -> None:
        self._engine = engine
        self._store = wasmtime.Store(engine._engine)
        self._ctx = self._store._context()
        self._store.set_limits(
            memory_size=memory_size,
            table_elements=table_elements,
            instances=1,
            tables=tables,
            memories=memories,
        )
        self.set_budget(fuel, deadline_ticks)
        instance = ffi.wasmtime_instance_t()
        trap = _TrapPtr()
        error = ffi.wasmtime_linker_instantiate(
            linker._ptr, self._ctx, module._module.ptr(), byref(instance), byref(trap)
        )
        if error or trap:
            raise _failure(error, trap)
        self._instance = instance
        self._exports = module.exports
        self._funcs: dict[str, FuncRef] = {}
        self._memories: list[Any] = []
        self.memory: Any = None
        for exp in module.exports.values():
            if exp.kind == "memory":
                item = self._get_extern(exp.name)
                if item is not None and item.kind == _KIND_MEMORY:
                    self._memories.append(item.of.memory)
                    if exp.name == "memory":
                        self.memory = item.of.memory

    def _get_extern(self, name: str) -> Any:
        n = name.encode()
        item = ffi.wasmtime_extern_t()
        if ffi.wasmtime_instance_export_get(
            self._ctx, byref(self._instance), n, len(n), byref(item)
        ):
            return item
        return None

    # -- budget -------------------------------------------------------------------------------

    def set_budget(self, fuel: int | None, deadline_ticks: int) -> None:
        """Refill fuel (metered engines only) and arm the epoch deadline, for one call."""
        if self._engine.metered:
            error = ffi.wasmtime_context_set_fuel(self._ctx, fuel if fuel is not None else 0)
            if error:
                raise _failure(error, None)
        ffi.wasmtime_context_set_epoch_deadline(self._ctx, deadline_ticks)

    def fuel_left(self) -> int:
        """Fuel remaining in the store (0 for an unmetered engine)."""
        if not self._engine.metered:
            return 0
        out = ctypes.c_uint64()
        error = ffi.wasmtime_context_get_fuel(self._ctx, byref(out))
        if error:
            raise _failure(error, None)
        return out.value

    # -- functions ----------------------------------------------------------------------------

    def func(self, name: str) -> FuncRef | None:
        """The exported function ``name`` with numeric params/results, or None if there is none."""
        ref = self._funcs.get(name)
        if ref is not None:
            return ref
        info = self._exports.get(name)
        if info is None or info.kind != "func":
            return None
        item = self._get_extern(name)
        if item is None or item.kind != _KIND_FUNC:
            return None
        width = max(len(info.params), len(info.results), 1)
        ref = FuncRef(
            name, item.of.func, info.params, info.results, (ffi.wasmtime_val_raw_t * width)()
        )
        self._funcs[name] = ref
        return ref

    def call(self, ref: FuncRef, args: Sequence[int | float]) -> list[int | float]:
        """Call with already-checked numeric arguments; return the results."""
        buf = ref.buf
        for i, t in enumerate(ref.params):
            setattr(buf[i], t, args[i])
        trap = _TrapPtr()
        error = _func_call(self._ctx, byref(ref.func), buf, len(buf), byref(trap))
        if error or trap:
            raise _failure(error, trap)
        return [getattr(buf[i], t) for i, t in enumerate(ref.results)]

    def call_i32_to_i32(self, ref: FuncRef, a: int) -> int:
        """Fast path for ``plugsafe_alloc``-shaped functions; the result as unsigned 32-bit."""
        buf = ref.buf
        buf[0].i32 = a
        trap = _TrapPtr()
        error = _func_call(self._ctx, byref(ref.func), buf, len(buf), byref(trap))
        if error or trap:
            raise _failure(error, trap)
        return int(buf[0].i32) & _U32

    def call_i32_i32_to_i64(self, ref: FuncRef, a: int, b: int) -> int:
        """Fast path for ABI plugin functions ``(ptr, len) -> i64``."""
        buf = ref.buf
        buf[0].i32 = a
        buf[1].i32 = b
        trap = _TrapPtr()
        error = _func_call(self._ctx, byref(ref.func), buf, len(buf), byref(trap))
        if error or trap:
            raise _failure(error, trap)
        return int(buf[0].i64)

    # -- memory -------------------------------------------------------------------------------

    def has_memory(self) -> bool:
        """Whether the instance exports a memory named ``memory``."""
        return self.memory is not None

    def memory_size(self) -> int:
        """Current size in bytes of the ``memory`` export (0 if none)."""
        if self.memory is None:
            return 0
        return int(_memory_size(self._ctx, byref(self.memory)))

    def memory_total(self) -> int:
        """Bytes held by all exported memories."""
        return sum(int(_memory_size(self._ctx, byref(m))) for m in self._memories)

    def _span(self, pointer: int, length: int) -> int:
        """Check a span of ``memory``; return its host address. Views are fetched fresh."""
        if self.memory is None:
            raise GuestMemoryError("the plugin exports no memory named 'memory'")
        size = int(_memory_size(self._ctx, byref(self.memory)))
        if pointer < 0 or length < 0 or pointer + length > size:
            raise GuestMemoryError(
                f"offset {pointer} with length {length} is outside the {size}-byte memory"
            )
        return ctypes.addressof(_memory_data(self._ctx, byref(self.memory)).contents) + pointer

    def read(self, pointer: int, length: int) -> bytes:
        """Copy bytes out of ``memory`` (bounds-checked, one copy)."""
        if length == 0:
            self._span(pointer, 0)
            return b""
        return ctypes.string_at(self._span(pointer, length), length)

    def write(self, pointer: int, data: bytes) -> None:
        """Copy bytes into ``memory`` (bounds-checked, one copy)."""
        address = self._span(pointer, len(data))
        if data:
            ctypes.memmove(address, data, len(data))


class EpochTicker:
    """One background thread per Host that advances its engines' epochs every TICK_SECONDS.

    Deadlines are per store (``set_epoch_deadline``), so one plugin running out of time never
    interrupts another. The thread holds no reference to the Host; it stops on ``stop()`` or when
    the Host is garbage-collected.
    """

    def __init__(self, engines: Sequence[Engine], owner: object) -> None:
        self._engines = list(engines)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        weakref.finalize(owner, self._stop.set)

    def add(self, engine: Engine) -> None:
        """Tick ``engine`` too from now on."""
        with self._lock:
            if engine not in self._engines:
                self._engines = [*self._engines, engine]

    def ensure_running(self) -> None:
        """Start the thread if it is not running yet (idempotent)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                t = threading.Thread(
                    target=self._run,
                    args=(self._stop, self),
                    name="plugsafe-epoch-ticker",
                    daemon=True,
                )
                t.start()
                self._thread = t

    @staticmethod
    def _run(stop: threading.Event, ticker: EpochTicker) -> None:
        while not stop.wait(TICK_SECONDS):
            for engine in ticker._engines:
                engine.increment_epoch()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=1.0)
