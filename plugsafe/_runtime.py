"""The one module that calls into wasmtime.

Everything plugsafe does with WebAssembly goes through the classes here. Nothing here knows about
policies or plugsafe's public errors: failures come out as :class:`WasmFailure` and
:class:`GuestMemoryError`, and ``_plugin`` decides what they mean.

Why not wasmtime-py's ``Func.__call__`` and ``Linker.define_func``: they rebuild type information
on every call (tens of microseconds), and they hand a host function's exception back through a
module-global variable that threads running wasm at the same time overwrite. Here calls go through
``wasmtime_func_call_unchecked`` with types checked once, and host callbacks never raise into
wasmtime-py: they report failures to a sink the caller owns and return a trap of their own.

Two interchangeable *backends* do the per-call work (calls, memory access, fuel, deadlines, host
callbacks):

- ``cffi``: cffi in ABI mode on the ``libwasmtime`` inside the wasmtime wheel (no compiler
  needed). The struct layouts it declares are checked against wasmtime-py's own ctypes
  declarations at import; if they differ the module falls back to ``ctypes`` and warns once.
- ``ctypes``: wasmtime-py's ctypes bindings, used directly.

Set ``PLUGSAFE_BACKEND=ctypes`` to force the fallback (CI runs the suite both ways). Everything
else (engines, compiling, linkers, instantiation) uses wasmtime-py's objects, which are not on
the per-call path.
"""

from __future__ import annotations

import _thread
import ctypes
import functools
import json
import os
import struct
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from ctypes import POINTER, byref
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _ffi as wf

from ._types import ExportInfo, ExternKind, ImportInfo

__all__ = [
    "BACKEND",
    "NO_DEADLINE_TICKS",
    "NUMERIC_TYPES",
    "TICK_SECONDS",
    "Caller",
    "Engine",
    "ArgumentsDoNotFit",
    "EpochTicker",
    "FuncRef",
    "GuestAllocError",
    "GuestMemoryError",
    "Instance",
    "Linker",
    "Module",
    "WasmFailure",
    "library_fingerprint",
    "wasi_config",
    "wasmtime_version",
    "wat_to_wasm",
]

# Epoch ticker period. A deadline is enforced to within about one tick.
TICK_SECONDS = 0.005
# "No deadline": wasmtime traps at once if none is set, so unlimited calls get a far-off one.
NO_DEADLINE_TICKS = 1 << 62

_U32 = 0xFFFF_FFFF
_KIND_FUNC = wf.WASMTIME_EXTERN_FUNC.value
_KIND_MEMORY = wf.WASMTIME_EXTERN_MEMORY.value
_VALTYPE_FACTORIES: dict[str, Callable[[], wasmtime.ValType]] = {
    "i32": wasmtime.ValType.i32,
    "i64": wasmtime.ValType.i64,
    "f32": wasmtime.ValType.f32,
    "f64": wasmtime.ValType.f64,
}
NUMERIC_TYPES = frozenset(_VALTYPE_FACTORIES)
_TrapPtr = POINTER(wf.wasm_trap_t)
_ErrorPtr = POINTER(wf.wasmtime_error_t)


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


class WasmFailure(Exception):
    """A call into wasm (or an instantiation, or a compile) did not complete.

    ``trap_code`` is wasmtime's trap code name (``"OUT_OF_FUEL"``, ``"INTERRUPT"``,
    ``"UNREACHABLE"``, ...) or None when it was an error rather than a coded trap.
    """

    def __init__(
        self, message: str, trap_code: str | None = None, exit_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.trap_code = trap_code
        # Set when a WASI program called proc_exit(exit_code).
        self.exit_code = exit_code


class GuestMemoryError(ValueError):
    """A guest-supplied pointer/length does not lie inside the guest's memory."""


class GuestAllocError(GuestMemoryError):
    """The guest's allocator returned 0 (it could not allocate)."""


def _failure_from_addresses(error: int, trap: int) -> WasmFailure:
    """Wrap an owned wasmtime error or trap (given as addresses) into a WasmFailure."""
    if error:
        ptr = ctypes.cast(error, _ErrorPtr)
        status = ctypes.c_int()
        exit_code = status.value if wf.wasmtime_error_exit_status(ptr, byref(status)) else None
        return WasmFailure(str(wasmtime.WasmtimeError._from_ptr(ptr)), exit_code=exit_code)
    t = wasmtime.Trap._from_ptr(ctypes.cast(trap, _TrapPtr))
    code = t.trap_code
    return WasmFailure(t.message, None if code is None else code.name)


def _failure(error: Any, trap: Any) -> WasmFailure:
    """The same for ctypes pointers (either may be a null pointer)."""
    e = ctypes.cast(error, ctypes.c_void_p).value if error else 0
    t = ctypes.cast(trap, ctypes.c_void_p).value if trap else 0
    return _failure_from_addresses(e or 0, t or 0)


def _address(ptr: Any) -> int:
    """The address held by a ctypes pointer."""
    return ctypes.cast(ptr, ctypes.c_void_p).value or 0


def _out_of_range(pointer: int, length: int, size: int) -> GuestMemoryError:
    return GuestMemoryError(
        f"guest pointer {pointer} with length {length} runs past the end of its {size}-byte memory"
    )


# ---------------------------------------------------------------------------------------------
# Backends. Each turns wasmtime-py objects into its own handles once, then does the per-call C
# calls with as little Python as possible. Handles: ``ctx`` (a store context), ``func``
# (wasmtime_func_t), ``mem`` (wasmtime_memory_t), ``buf`` (wasmtime_val_raw_t[n]); raw values
# are read and written as ``buf[i].i32`` etc. in both backends, or through ``bytes_view(buf)``
# with struct layouts on the hot path.
# ---------------------------------------------------------------------------------------------

# A host function as the C API calls it: (env, caller, args_and_results, count) -> the backend's
# ``ok`` or ``trap(message)``. It must not raise: nothing may unwind through wasmtime's frames.
HostEntry = Callable[[Any, Any, Any, int], Any]


class _CtypesBackend:
    name = "ctypes"

    def __init__(self) -> None:
        self._call = wf.wasmtime_func_call_unchecked
        self._data = wf.wasmtime_memory_data
        self._size = wf.wasmtime_memory_data_size
        self._deadline = wf.wasmtime_context_set_epoch_deadline
        self._null_finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()

    def ctx(self, store: wasmtime.Store) -> Any:
        return store._context()

    def buf(self, n: int) -> Any:
        return (wf.wasmtime_val_raw_t * n)()

    def pre(self, pre: Any) -> Any:
        return pre

    def instantiate(self, pre: Any, ctx: Any) -> Any:
        instance = wf.wasmtime_instance_t()
        trap = _TrapPtr()
        error = wf.wasmtime_instance_pre_instantiate(pre.ptr(), ctx, byref(instance), byref(trap))
        if error or trap:
            raise _failure(error, trap)
        return instance

    def export(self, ctx: Any, instance: Any, name: bytes) -> tuple[int, Any] | None:
        item = wf.wasmtime_extern_t()
        if not wf.wasmtime_instance_export_get(ctx, byref(instance), name, len(name), byref(item)):
            return None
        kind = int(item.kind)
        if kind == _KIND_FUNC:
            return kind, item.of.func
        if kind == _KIND_MEMORY:
            return kind, item.of.memory
        return kind, None

    # -- the fast path: raw calls on scratch buffers --

    @property
    def raw_call(self) -> Any:
        return self._call

    def func_arg(self, func: Any) -> Any:
        return byref(func)

    def trap_arg(self, buf: Any, offset: int) -> Any:
        return ctypes.cast(ctypes.addressof(buf) + offset, POINTER(_TrapPtr))

    def bytes_view(self, buf: Any) -> memoryview:
        return memoryview(buf).cast("B")

    def window(self, ctx: Any, mem: Any) -> tuple[Any, int]:
        size = int(self._size(ctx, byref(mem)))
        if not size:
            return b"", 0
        base = ctypes.addressof(self._data(ctx, byref(mem)).contents)
        # A c_char array: slices read as bytes, slice assignment writes.
        return (ctypes.c_char * size).from_address(base), size

    def address(self, ptr: Any) -> int:
        return _address(ptr) if ptr else 0

    def call(self, ctx: Any, func: Any, buf: Any, n: int, trap: Any = None) -> None:
        trap = _TrapPtr()
        error = self._call(ctx, byref(func), buf, n, byref(trap))
        if error or trap:
            raise _failure(error, trap)

    def size(self, ctx: Any, mem: Any) -> int:
        return int(self._size(ctx, byref(mem)))

    def read(self, ctx: Any, mem: Any, pointer: int, length: int) -> bytes:
        size = int(self._size(ctx, byref(mem)))
        if pointer < 0 or length < 0 or pointer + length > size:
            raise _out_of_range(pointer, length, size)
        if not length:
            return b""
        base = ctypes.addressof(self._data(ctx, byref(mem)).contents)
        return ctypes.string_at(base + pointer, length)

    def write(self, ctx: Any, mem: Any, pointer: int, data: bytes) -> None:
        size = int(self._size(ctx, byref(mem)))
        length = len(data)
        if pointer < 0 or pointer + length > size:
            raise _out_of_range(pointer, length, size)
        if length:
            base = ctypes.addressof(self._data(ctx, byref(mem)).contents)
            ctypes.memmove(base + pointer, data, length)

    def set_fuel(self, ctx: Any, fuel: int) -> None:
        error = wf.wasmtime_context_set_fuel(ctx, fuel)
        if error:
            raise _failure(error, None)

    def get_fuel(self, ctx: Any) -> int:
        out = ctypes.c_uint64()
        error = wf.wasmtime_context_get_fuel(ctx, byref(out))
        if error:
            raise _failure(error, None)
        return out.value

    def set_deadline(self, ctx: Any, ticks: int) -> None:
        self._deadline(ctx, ticks)

    # -- inside host callbacks --

    def caller_ctx(self, caller: Any) -> Any:
        return wf.wasmtime_caller_context(caller)

    def caller_export(self, caller: Any, name: bytes, kind: int) -> Any:
        item = wf.wasmtime_extern_t()
        if not wf.wasmtime_caller_export_get(caller, name, len(name), byref(item)):
            return None
        if int(item.kind) != kind:
            return None
        return item.of.func if kind == _KIND_FUNC else item.of.memory

    # What a host callback returns: ``ok`` when it succeeded, else ``trap(message)``.
    ok = 0

    def trap(self, message: str) -> Any:
        data = message.encode("utf-8", "replace")
        return _address(wf.wasmtime_trap_new(data, len(data)))

    def define_func(
        self, linker: wasmtime.Linker, module: bytes, name: bytes, ty: Any, callback: HostEntry
    ) -> Any:
        cb = wf.wasmtime_func_unchecked_callback_t(callback)
        error = wf.wasmtime_linker_define_func_unchecked(
            linker.ptr(), module, len(module), name, len(name), ty.ptr(), cb, None,
            self._null_finalizer,
        )  # fmt: skip
        if error:
            raise _failure(error, None)
        return cb


class _CffiBackend:
    name = "cffi"

    def __init__(self) -> None:
        try:
            # Pre-parsed declarations (generated by ``python -m plugsafe._cdef``): importing
            # them costs microseconds, where parsing C with pycparser costs tens of milliseconds.
            from ._wasmtime_cffi import ffi
        except ImportError:
            import cffi

            from ._cdef import CDEF

            ffi = cffi.FFI()
            ffi.cdef(CDEF)
        self._check_layouts(ffi)
        lib = ffi.dlopen(str(wf.filename))
        self.ffi = ffi
        self.lib = lib
        self._call = lib.wasmtime_func_call_unchecked
        self._data = lib.wasmtime_memory_data
        self._size = lib.wasmtime_memory_data_size
        self._deadline = lib.wasmtime_context_set_epoch_deadline
        self._null = ffi.NULL
        # What a host callback returns: ``ok`` when it succeeded, else ``trap(message)``.
        self.ok = ffi.NULL

    @staticmethod
    def _check_layouts(ffi: Any) -> None:
        """Refuse to run if our declarations disagree with wasmtime-py's (i.e. wasmtime's)."""
        pairs = [
            ("wasmtime_func_t", wf.wasmtime_func_t),
            ("wasmtime_memory_t", wf.wasmtime_memory_t),
            ("wasmtime_val_raw_t", wf.wasmtime_val_raw_t),
            ("wasmtime_extern_t", wf.wasmtime_extern_t),
            ("wasmtime_instance_t", wf.wasmtime_instance_t),
        ]
        for cname, ctype in pairs:
            if ffi.sizeof(cname) != ctypes.sizeof(ctype):
                raise ImportError(
                    f"{cname} is {ctypes.sizeof(ctype)} bytes in wasmtime-py, "
                    f"{ffi.sizeof(cname)} in plugsafe's declaration"
                )
        checks: list[tuple[str, str, Any]] = [
            ("wasmtime_func_t", "store_id", wf.wasmtime_func_t),
            ("wasmtime_extern_t", "kind", wf.wasmtime_extern_t),
            ("wasmtime_extern_t", "of", wf.wasmtime_extern_t),
        ]
        for cname, fieldname, ctype in checks:
            if ffi.offsetof(cname, fieldname) != getattr(ctype, fieldname).offset:
                raise ImportError(f"{cname}.{fieldname} is at a different offset in wasmtime-py")
        kind_field: Any = wf.wasmtime_extern_t.kind
        if kind_field.size != 1 or int(wf.WASMTIME_EXTERN_FUNC.value) != 0:
            raise ImportError("wasmtime_extern_t.kind is not the uint8 tag plugsafe expects")

    # -- the fast path: raw calls on scratch buffers --

    @property
    def raw_call(self) -> Any:
        return self._call

    def func_arg(self, func: Any) -> Any:
        return func

    def trap_arg(self, buf: Any, offset: int) -> Any:
        return self.ffi.cast("wasm_trap_t **", self.ffi.cast("char *", buf) + offset)

    def bytes_view(self, buf: Any) -> memoryview:
        return memoryview(self.ffi.buffer(buf))

    def window(self, ctx: Any, mem: Any) -> tuple[Any, int]:
        size = int(self._size(ctx, mem))
        if not size:
            return b"", 0
        return self.ffi.buffer(self._data(ctx, mem), size), size

    def address(self, ptr: Any) -> int:
        return int(self.ffi.cast("uintptr_t", ptr)) if ptr else 0

    def ctx(self, store: wasmtime.Store) -> Any:
        return self.ffi.cast("wasmtime_context_t *", _address(store._context()))

    def buf(self, n: int) -> Any:
        return self.ffi.new("wasmtime_val_raw_t[]", n)

    def pre(self, pre: Any) -> Any:
        # Kept as a cffi pointer (with the wasmtime-py object that owns it) for instantiate.
        return (self.ffi.cast("wasmtime_instance_pre_t *", _address(pre.ptr())), pre)

    def instantiate(self, pre: Any, ctx: Any) -> Any:
        ffi = self.ffi
        instance = ffi.new("wasmtime_instance_t *")
        trap = ffi.new("wasm_trap_t **")
        error = self.lib.wasmtime_instance_pre_instantiate(pre[0], ctx, instance, trap)
        if error or trap[0]:
            self._raise(error, trap[0])
        return instance

    def export(self, ctx: Any, instance: Any, name: bytes) -> tuple[int, Any] | None:
        ffi = self.ffi
        item = ffi.new("wasmtime_extern_t *")
        if not self.lib.wasmtime_instance_export_get(ctx, instance, name, len(name), item):
            return None
        kind = int(item.kind)
        if kind == _KIND_FUNC:
            out = ffi.new("wasmtime_func_t *")
            out[0] = item.of.func
            return kind, out
        if kind == _KIND_MEMORY:
            mem = ffi.new("wasmtime_memory_t *")
            mem[0] = item.of.memory
            return kind, mem
        return kind, None

    def _raise(self, error: Any, trap: Any) -> None:
        ffi = self.ffi
        raise _failure_from_addresses(
            int(ffi.cast("uintptr_t", error)), int(ffi.cast("uintptr_t", trap))
        )

    def call(self, ctx: Any, func: Any, buf: Any, n: int, trap: Any = None) -> None:
        # A slot for the trap pointer: one per FuncRef (its calls never overlap: re-entrant calls
        # into a plugin are refused), or a fresh one.
        if trap is None:
            trap = self.ffi.new("wasm_trap_t **")
        trap[0] = self._null
        error = self._call(ctx, func, buf, n, trap)
        if error or trap[0]:
            self._raise(error, trap[0])

    def size(self, ctx: Any, mem: Any) -> int:
        return int(self._size(ctx, mem))

    def read(self, ctx: Any, mem: Any, pointer: int, length: int) -> bytes:
        size = int(self._size(ctx, mem))
        if pointer < 0 or length < 0 or pointer + length > size:
            raise _out_of_range(pointer, length, size)
        if not length:
            return b""
        out: bytes = self.ffi.buffer(self._data(ctx, mem) + pointer, length)[:]
        return out

    def write(self, ctx: Any, mem: Any, pointer: int, data: bytes) -> None:
        size = int(self._size(ctx, mem))
        length = len(data)
        if pointer < 0 or pointer + length > size:
            raise _out_of_range(pointer, length, size)
        if length:
            self.ffi.memmove(self._data(ctx, mem) + pointer, data, length)

    def set_fuel(self, ctx: Any, fuel: int) -> None:
        error = self.lib.wasmtime_context_set_fuel(ctx, fuel)
        if error:
            self._raise(error, self._null)

    def get_fuel(self, ctx: Any) -> int:
        out = self.ffi.new("uint64_t *")
        error = self.lib.wasmtime_context_get_fuel(ctx, out)
        if error:
            self._raise(error, self._null)
        return int(out[0])

    def set_deadline(self, ctx: Any, ticks: int) -> None:
        self._deadline(ctx, ticks)

    def caller_ctx(self, caller: Any) -> Any:
        return self.lib.wasmtime_caller_context(caller)

    def caller_export(self, caller: Any, name: bytes, kind: int) -> Any:
        item = self.ffi.new("wasmtime_extern_t *")
        if not self.lib.wasmtime_caller_export_get(caller, name, len(name), item):
            return None
        if item.kind != kind:
            return None
        out = self.ffi.new("wasmtime_func_t *" if kind == _KIND_FUNC else "wasmtime_memory_t *")
        out[0] = item.of.func if kind == _KIND_FUNC else item.of.memory
        return out

    def trap(self, message: str) -> Any:
        data = message.encode("utf-8", "replace")
        return self.lib.wasmtime_trap_new(data, len(data))

    def define_func(
        self, linker: wasmtime.Linker, module: bytes, name: bytes, ty: Any, callback: HostEntry
    ) -> Any:
        ffi = self.ffi
        cb = ffi.callback("wasmtime_func_unchecked_callback_t", callback)
        error = self.lib.wasmtime_linker_define_func_unchecked(
            ffi.cast("wasmtime_linker_t *", _address(linker.ptr())),
            module, len(module), name, len(name),
            ffi.cast("wasm_functype_t *", _address(ty.ptr())),
            cb, ffi.NULL, ffi.NULL,
        )  # fmt: skip
        if error:
            self._raise(error, ffi.NULL)
        return cb


def _select_backend() -> _CtypesBackend | _CffiBackend:
    wanted = os.environ.get("PLUGSAFE_BACKEND", "").strip().lower()
    if wanted == "ctypes":
        return _CtypesBackend()
    try:
        return _CffiBackend()
    except Exception as exc:  # cffi missing, or layouts that do not match this wasmtime
        warnings.warn(
            f"plugsafe: using the slower ctypes call path because the cffi one is unavailable: "
            f"{exc}",
            RuntimeWarning,
            stacklevel=2,
        )
        return _CtypesBackend()


_B = _select_backend()
BACKEND: str = _B.name
_raw_call = _B.raw_call


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
        # A linear memory never moves once created (growth past the reservation, 4 GiB on 64-bit
        # hosts, fails instead): an Instance may then keep a window on its memory across calls
        # rather than asking wasmtime for the base address on every access.
        cfg.memory_may_move = False
        self.metered = metered
        # Everything that changes compiled code: part of the on-disk cache key.
        self.settings = (
            f"fuel={metered};stack={max_stack};epoch;nothreads;no64;nogc;multimem;nomove"
        )
        self._engine = wasmtime.Engine(cfg)
        self._ptr = self._engine.ptr()

    def increment_epoch(self) -> None:
        """Advance the epoch; safe from any thread."""
        wf.wasmtime_engine_increment_epoch(self._ptr)

    def compile(self, wasm: bytes) -> Module:
        """Compile and validate a wasm binary (the GIL is released while wasmtime compiles)."""
        try:
            return Module(wasmtime.Module(self._engine, wasm))
        except wasmtime.WasmtimeError as exc:
            raise WasmFailure(str(exc)) from None

    def deserialize(self, artifact: bytes, description: bytes | None = None) -> Module:
        """Load an artifact that ``Module.serialize`` of *this plugsafe* produced.

        ``description`` is what ``Module.describe`` gave for it (asked of wasmtime if None).
        Never call this on bytes from anywhere else: a crafted artifact runs arbitrary code.
        """
        try:
            return Module(wasmtime.Module.deserialize(self._engine, artifact), description)
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

    def __init__(self, module: wasmtime.Module, description: bytes | None = None) -> None:
        self._module = module
        self.imports: tuple[ImportInfo, ...]
        self.exports: dict[str, ExportInfo]
        if description is not None:
            self.imports, self.exports = _parse_description(description)
            return
        imports = []
        for imp in module.imports:
            kind, params, results, detail = _kind_and_detail(imp.type)
            imports.append(ImportInfo(imp.name or "", kind, params, results, detail, imp.module))
        exports = []
        for exp in module.exports:
            kind, params, results, detail = _kind_and_detail(exp.type)
            exports.append(ExportInfo(exp.name, kind, params, results, detail))
        self.imports = tuple(imports)
        self.exports = {e.name: e for e in exports}

    def serialize(self) -> bytes:
        """The compiled artifact, for plugsafe's own on-disk cache."""
        return bytes(self._module.serialize())

    def describe(self) -> bytes:
        """Imports and exports as JSON, stored beside the artifact in the on-disk cache.

        Asking wasmtime for them costs a fresh process far more than deserializing the module
        does (hundreds of microseconds of type objects); reading them back costs microseconds.
        """
        return json.dumps(
            {
                "imports": [
                    [i.module, i.name, i.kind, i.params, i.results, i.detail] for i in self.imports
                ],
                "exports": [
                    [e.name, e.kind, e.params, e.results, e.detail] for e in self.exports.values()
                ],
            },
            separators=(",", ":"),
        ).encode()


_KINDS = frozenset({"func", "memory", "table", "global", "tag", "unknown"})


def _parse_description(
    description: bytes,
) -> tuple[tuple[ImportInfo, ...], dict[str, ExportInfo]]:
    """Module.describe's output back as infos; WasmFailure if it is not exactly that shape."""

    def strs(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ValueError("not a list of strings")
        return tuple(v)

    def kind(v: Any) -> ExternKind:
        if v not in _KINDS:
            raise ValueError(f"unknown kind {v!r}")
        return v  # type: ignore[no-any-return]

    def text(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError("not a string")
        return v

    try:
        data = json.loads(description)
        imports = tuple(
            ImportInfo(text(n), kind(k), strs(p), strs(r), text(d), text(m))
            for m, n, k, p, r, d in data["imports"]
        )
        exports = {
            text(n): ExportInfo(n, kind(k), strs(p), strs(r), text(d))
            for n, k, p, r, d in data["exports"]
        }
    except (ValueError, TypeError, KeyError) as exc:
        raise WasmFailure(f"unreadable module description: {exc}") from None
    return imports, exports


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
        # Looked up on first use: numeric host functions never touch memory, so never pay it.
        self._ctx: Any = None
        self._valid = True

    def _context(self) -> Any:
        ctx = self._ctx
        if ctx is None:
            ctx = self._ctx = _B.caller_ctx(self._ptr)
        return ctx

    def _export(self, name: bytes, kind: int) -> Any:
        if not self._valid:
            raise RuntimeError("caller used after its host call returned")
        return _B.caller_export(self._ptr, name, kind)

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
        return _B.read(self._context(), self._memory(), pointer, length)

    def write(self, pointer: int, data: bytes) -> None:
        """Copy ``data`` into the guest's memory at ``pointer`` (bounds-checked)."""
        _B.write(self._context(), self._memory(), pointer & _U32, data)

    def place(self, data: bytes, alloc_export: bytes) -> int:
        """Copy ``data`` into memory the guest allocates for it; return the guest pointer."""
        if not data:
            return 0
        func = self._export(alloc_export, _KIND_FUNC)
        if func is None:
            raise GuestMemoryError(
                f"the plugin exports no allocator {alloc_export.decode()!r} to receive a result"
            )
        buf = _B.buf(1)
        buf[0].i32 = len(data)
        # Re-entering the guest from inside a host call is allowed by wasmtime on the same store.
        _B.call(self._context(), func, buf, 1)
        pointer = int(buf[0].i32) & _U32
        if pointer == 0:
            raise GuestAllocError(f"the plugin's allocator could not allocate {len(data)} bytes")
        try:
            _B.write(self._context(), self._memory(), pointer, data)
        except GuestMemoryError as exc:
            raise GuestMemoryError(f"the plugin's allocator returned a bad buffer: {exc}") from None
        return pointer

    def _invalidate(self) -> None:
        self._valid = False


def _trap_message(on_error: ErrorSink, exc: BaseException) -> str:
    try:
        return on_error(exc)
    except BaseException:  # the sink must not fail, but never unwind into C
        return "plugsafe: host function failed"


def _make_functype(params: Sequence[str], results: Sequence[str]) -> wasmtime.FuncType:
    return wasmtime.FuncType(
        [_VALTYPE_FACTORIES[t]() for t in params], [_VALTYPE_FACTORIES[t]() for t in results]
    )


def wasi_config(
    *,
    args: Sequence[str],
    env: dict[str, str],
    stdin: bytes,
    stdout: tuple[str, Callable[[bytes], int]],
    stderr: tuple[str, Callable[[bytes], int]],
    preopens: Sequence[tuple[str, str, bool]],
) -> Any:
    """A wasmtime WasiConfig granting exactly this, and nothing of the host by default.

    ``stdout``/``stderr`` are (mode, sink): "inherit" uses the host's stream, anything else hands
    every write to ``sink`` (which returns the bytes it took).
    """
    cfg = wasmtime.WasiConfig()
    # wasmtime-py exposes these as write-only properties.
    cfg.argv = list(args)
    cfg.env = list(env.items())
    vec = wf.wasm_byte_vec_t()
    buf = (ctypes.c_uint8 * max(len(stdin), 1)).from_buffer_copy(stdin or b"\0")
    # wasi_config_set_stdin_bytes takes ownership of the vector: stdin is an in-memory buffer, so
    # reading it never blocks.
    wf.wasm_byte_vec_new(byref(vec), len(stdin), buf)
    wf.wasi_config_set_stdin_bytes(cfg.ptr(), byref(vec))
    if stdout[0] == "inherit":
        cfg.inherit_stdout()
    else:
        cfg.stdout_custom = stdout[1]
    if stderr[0] == "inherit":
        cfg.inherit_stderr()
    else:
        cfg.stderr_custom = stderr[1]
    for host, guest, writable in preopens:
        # wasmtime-py's default is writable: say so explicitly every time.
        cfg.preopen_dir(host, guest, fs_mutable=writable)
    return cfg


class Linker:
    """The host functions one plugin may import, bound to that plugin's callbacks."""

    def __init__(self, engine: Engine) -> None:
        self._linker = wasmtime.Linker(engine._engine)
        # The callback objects must outlive every store that can call them.
        self._keep: list[Any] = []
        self._pre: Any = None
        # Per-function scratch (argument buffer with its trap slot, struct layouts) shared by
        # every instance made from this linker: they belong to one Plugin, whose calls never
        # overlap.
        self.scratch: dict[str, tuple[Any, ...]] = {}

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
        ok, trap = _B.ok, _B.trap

        def entry(_env: Any, caller_ptr: Any, raw: Any, _n: int) -> Any:
            caller = Caller(caller_ptr)
            try:
                args = [getattr(raw[i], t) for i, t in enumerate(param_fields)]
                out = callback(caller, args)
                if result_fields:
                    assert out is not None
                    for i, t in enumerate(result_fields):
                        setattr(raw[i], t, out[i])
                return ok
            except BaseException as exc:
                return trap(_trap_message(on_error, exc))
            finally:
                caller._invalidate()

        self._define(module, name, param_fields, result_fields, entry)

    def define_numeric(
        self,
        module: str,
        name: str,
        params: Sequence[str],
        result: str | None,
        fn: Callable[..., Any],
        on_error: ErrorSink,
    ) -> None:
        """Define ``module.name`` as ``fn(*values) -> value`` (or None with no result).

        For host functions that only take and return numbers: no Caller, no argument list, the
        result written straight into its slot. Failures go to ``on_error`` as for define_func.
        """
        fields = tuple(params)
        ok, trap = _B.ok, _B.trap
        if len(fields) == 1 and result is not None:
            # The common shape (one number in, one out), with no loop at all.
            (field,) = fields

            def entry(_env: Any, _caller: Any, raw: Any, _n: int) -> Any:
                try:
                    slot = raw[0]
                    setattr(slot, result, fn(getattr(slot, field)))
                    return ok
                except BaseException as exc:
                    return trap(_trap_message(on_error, exc))

        else:

            def entry(_env: Any, _caller: Any, raw: Any, _n: int) -> Any:
                try:
                    out = fn(*[getattr(raw[i], t) for i, t in enumerate(fields)])
                    if result is not None:
                        setattr(raw[0], result, out)
                    return ok
                except BaseException as exc:
                    return trap(_trap_message(on_error, exc))

        self._define(module, name, fields, (result,) if result is not None else (), entry)

    def _define(
        self,
        module: str,
        name: str,
        params: tuple[str, ...],
        results: tuple[str, ...],
        entry: HostEntry,
    ) -> None:
        ty = _make_functype(params, results)
        cb = _B.define_func(self._linker, module.encode(), name.encode(), ty, entry)
        self._keep.append((cb, ty))

    def define_wasi(self) -> None:
        """Offer wasmtime's WASI preview 1 functions (the store's WasiConfig says what they see).

        Later definitions may shadow individual WASI functions (plugsafe replaces poll_oneoff).
        """
        self._linker.allow_shadowing = True
        try:
            self._linker.define_wasi()
        except wasmtime.WasmtimeError as exc:
            raise WasmFailure(str(exc)) from None

    def prepare(self, module: Module) -> None:
        """Type-check imports once (an InstancePre); later instantiations skip that work."""
        try:
            self._pre = _B.pre(self._linker.instantiate_pre(module._module))
        except wasmtime.WasmtimeError as exc:
            raise WasmFailure(str(exc)) from None


class ArgumentsDoNotFit(Exception):
    """Instance.invoke could not pack the arguments as given (count, type or range)."""


_STRUCT_CODES = {"i32": ("i", 4), "i64": ("q", 8), "f32": ("f", 4), "f64": ("d", 8)}


def _slot_struct(types: Sequence[str], trap_slot: int | None = None) -> struct.Struct:
    """A struct layout over 16-byte raw value slots: value i of type t sits at byte 16*i.

    With ``trap_slot``, the 8-byte trap pointer kept in slot ``trap_slot`` is read last.
    Integers are signed, as wasm's raw values are; packing refuses what does not fit.
    """
    fmt = "<"
    pos = 0
    for i, t in enumerate(types):
        code, size = _STRUCT_CODES[t]
        if 16 * i > pos:
            fmt += f"{16 * i - pos}x"
        fmt += code
        pos = 16 * i + size
    if trap_slot is not None:
        if 16 * trap_slot > pos:
            fmt += f"{16 * trap_slot - pos}x"
        fmt += "Q"
    return struct.Struct(fmt)


def _unbound(*_args: object) -> Any:
    raise RuntimeError("FuncRef.call or .invoke used before Instance.func bound it")


@dataclass(eq=False)
class FuncRef:
    """An exported function of one instance, with its types and a reusable argument buffer.

    The buffer holds ``width`` raw value slots and then one more for the trap pointer the C call
    may store: the call path packs the arguments, calls, and reads back results and trap pointer
    with one ``struct`` operation each. The trap slot is null between calls (the failure path
    clears it), so no call has to clear it first.
    """

    name: str
    func: Any
    # ``func`` as the C call takes it.
    arg: Any
    params: tuple[str, ...]
    results: tuple[str, ...]
    buf: Any
    width: int
    # ``put(*args)`` packs the parameters into ``buf``; ``get()`` unpacks the results and then
    # the trap pointer. None when a parameter or result is not a number (such a function is
    # never called from here).
    put: Callable[..., None] | None
    get: Callable[[], tuple[Any, ...]] | None
    view: memoryview
    # Where the C call stores a trap pointer: ``buf``'s last slot.
    trap: Any
    # ``call()`` makes the C call on ``buf`` (set by Instance.func).
    call: Callable[[], Any] = _unbound
    # ``invoke(args)``: Instance.invoke for this function as one closure (set by
    # Instance.prepare_invoke for numeric functions): the per-call path with no method lookups.
    invoke: Callable[[Sequence[object]], tuple[Any, ...]] = _unbound
    # Set by the Plugin once it has checked the signature for invoke() / for the plugin ABI.
    invoke_ok: bool = False
    abi_ok: bool = False


def _call_failed(view: memoryview, trap_at: int, error: Any, trap: int) -> WasmFailure:
    # Clear the trap slot: the call path relies on it being null before every call.
    struct.pack_into("<Q", view, trap_at, 0)
    return _failure_from_addresses(_B.address(error), trap)


def _invoker(
    name: str,
    put: Callable[..., None],
    get: Callable[[], tuple[Any, ...]],
    call: Callable[[], Any],
    view: memoryview,
    trap_at: int,
    ctx: Any,
    epochs: EpochTicker | _NoTicks,
    arming: list[int],
    ticks: int,
    fuel: int | None,
) -> Callable[[Sequence[object]], tuple[Any, ...]]:
    """Instance.invoke for one function as a closure: every call's cost in one frame.

    It holds no reference to the Instance (so dropping an instance frees its store at once):
    the deadline's arming state is the instance's shared one-item list.
    """
    set_deadline = _B.set_deadline
    set_fuel = _B.set_fuel

    def invoke(args: Sequence[object]) -> tuple[Any, ...]:
        try:
            put(*args)
        except (struct.error, TypeError, OverflowError):
            raise ArgumentsDoNotFit(name) from None
        if fuel is not None:
            set_fuel(ctx, fuel)
        count = epochs.count
        if count != arming[0]:  # Instance._arm, inlined
            arming[0] = count
            set_deadline(ctx, ticks)
        error = call()
        out = get()
        if error or out[-1]:
            raise _call_failed(view, trap_at, error, out[-1])
        return out

    return invoke


class _NoTicks:
    """Stands in for an EpochTicker when there is no deadline: its count never moves."""

    count = 0


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
        epochs: EpochTicker | None = None,
        wasi: Any = None,
    ) -> None:
        self._metered = engine.metered
        self._store = wasmtime.Store(engine._engine)
        if wasi is not None:
            self._store.set_wasi(wasi)
        self._store.set_limits(
            memory_size=memory_size,
            table_elements=table_elements,
            instances=1,
            tables=tables,
            memories=memories,
        )
        self._ctx = _B.ctx(self._store)
        # Every top-level entry (invoke, call, abi_call) refills fuel and makes sure the deadline
        # is at least ``deadline_ticks`` away (see _arm).
        self._fuel = 0 if fuel is None else fuel
        self._epochs: EpochTicker | _NoTicks = _NoTicks() if epochs is None else epochs
        # One tick more than asked: a deadline armed in an earlier call of the same tick may
        # have lost up to one tick already (see _arm).
        self._ticks = deadline_ticks if epochs is None else deadline_ticks + 1
        # The ticker's count when the deadline was last armed, shared with every invoker of
        # this instance (a list, so the invokers need no reference back to the instance).
        self._arming = [-1]
        self.set_budget()
        if linker._pre is None:
            linker.prepare(module)
        self._instance = _B.instantiate(linker._pre, self._ctx)
        self._exports = module.exports
        self._scratch = linker.scratch
        # Exported functions looked up so far, by name (read directly by the Plugin's hot path).
        self.funcs: dict[str, FuncRef] = {}
        self._memories: list[Any] = []
        self.memory: Any = None
        # A window on ``memory`` and a size it is known to have: memories never shrink and, on
        # our engines, never move (Engine sets memory_may_move=False), so both stay valid and
        # wasmtime is asked again only when an access reaches past ``_known``.
        self._window: Any = b""
        self._known = 0
        for exp in module.exports.values():
            if exp.kind == "memory":
                found = _B.export(self._ctx, self._instance, exp.name.encode())
                if found is not None and found[0] == _KIND_MEMORY:
                    self._memories.append(found[1])
                    if exp.name == "memory":
                        self.memory = found[1]

    # -- budget -------------------------------------------------------------------------------

    def set_budget(self) -> None:
        """Refill fuel (metered engines only) and arm the epoch deadline afresh."""
        if self._metered:
            _B.set_fuel(self._ctx, self._fuel)
        self._arm()

    def _arm(self) -> None:
        """Set the deadline ``_ticks`` epochs from now and note the ticker's count.

        Calls skip re-arming while the count has not moved: the deadline they would set is the
        one already set. The ticker bumps the engine epoch before its count, so while the count
        is unchanged the epoch is at most one past where it was at arming; the extra tick in
        ``_ticks`` covers that.
        """
        self._arming[0] = self._epochs.count
        _B.set_deadline(self._ctx, self._ticks)

    def fuel_left(self) -> int:
        """Fuel remaining in the store (0 for an unmetered engine)."""
        return _B.get_fuel(self._ctx) if self._metered else 0

    # -- functions ----------------------------------------------------------------------------

    def func(self, name: str) -> FuncRef | None:
        """The exported function ``name``, or None if there is none."""
        ref = self.funcs.get(name)
        if ref is not None:
            return ref
        info = self._exports.get(name)
        if info is None or info.kind != "func":
            return None
        found = _B.export(self._ctx, self._instance, name.encode())
        if found is None or found[0] != _KIND_FUNC:
            return None
        scratch = self._scratch.get(name)
        if scratch is None:
            scratch = self._scratch[name] = self._make_scratch(info)
        arg = _B.func_arg(found[1])
        ref = FuncRef(name, found[1], arg, info.params, info.results, *scratch)
        # The C call with every argument bound: one attribute load on the hot path, not five.
        ref.call = functools.partial(_raw_call, self._ctx, arg, ref.buf, ref.width, ref.trap)
        self.funcs[name] = ref
        return ref

    @staticmethod
    def _make_scratch(info: ExportInfo) -> tuple[Any, ...]:
        width = max(len(info.params), len(info.results), 1)
        buf = _B.buf(width + 1)  # the last slot holds the trap pointer
        view = _B.bytes_view(buf)
        put = get = None
        if all(t in NUMERIC_TYPES for t in (*info.params, *info.results)):
            put = functools.partial(_slot_struct(info.params).pack_into, view, 0)
            get = functools.partial(_slot_struct(info.results, width).unpack_from, view, 0)
        return (buf, width, put, get, view, _B.trap_arg(buf, 16 * width))

    def _failed(self, ref: FuncRef, error: Any, trap: int) -> WasmFailure:
        return _call_failed(ref.view, 16 * ref.width, error, trap)

    def invoke(self, ref: FuncRef, args: Sequence[object]) -> tuple[int | float, ...]:
        """Call a numeric function under a fresh budget; its results, then a 0 (the trap slot).

        Integers go in as signed values: anything ``struct`` packs as one (ints, objects with
        ``__index__``; for floats also objects with ``__float__``). Raises ArgumentsDoNotFit
        (before calling anything) if the arguments are not exactly the parameters in number,
        type and signed range, and WasmFailure if the call traps or fails. ``ref.invoke(args)``
        is the same without this method's frame.
        """
        invoke = ref.invoke
        if invoke is _unbound:
            invoke = self.prepare_invoke(ref)
        return invoke(args)

    def prepare_invoke(self, ref: FuncRef) -> Callable[[Sequence[object]], tuple[Any, ...]]:
        """Build ``ref.invoke`` (on first use: a fresh instance used only through the ABI never
        pays for it)."""
        if ref.put is None or ref.get is None:
            raise ArgumentsDoNotFit(f"{ref.name} has parameters or results that are not numbers")
        ref.invoke = _invoker(
            ref.name, ref.put, ref.get, ref.call, ref.view, 16 * ref.width, self._ctx,
            self._epochs, self._arming, self._ticks, self._fuel if self._metered else None,
        )  # fmt: skip
        return ref.invoke

    def call(self, ref: FuncRef, args: Sequence[object]) -> list[int | float]:
        """Call with already-checked numeric arguments under a fresh budget; the results."""
        return list(self.invoke(ref, args)[:-1])

    def abi_call(self, alloc: FuncRef, ref: FuncRef, payload: bytes) -> int:
        """The plugin ABI's hot path: allocate, copy the input in once, call; the result word.

        The budget (fuel, deadline) is re-armed once and covers the allocation and the call.

        Raises GuestAllocError if the guest's allocator returned 0, GuestMemoryError if it
        returned a buffer outside its memory.
        """
        ctx = self._ctx
        if self._metered:
            _B.set_fuel(ctx, self._fuel)
        if self._epochs.count != self._arming[0]:
            self._arm()
        n = len(payload)
        # Both go to the guest as i32: signed, as the slot layout packs them.
        raw_n = n if n <= 0x7FFF_FFFF else n - 0x1_0000_0000
        raw_pointer = 0
        if n:
            alloc.put(raw_n)  # type: ignore[misc]
            error = alloc.call()
            raw_pointer, trap = alloc.get()  # type: ignore[misc]
            if error or trap:
                raise self._failed(alloc, error, trap)
            pointer = raw_pointer & _U32
            if pointer == 0:
                raise GuestAllocError(f"the plugin's allocator returned 0 for {n} input bytes")
            end = pointer + n
            if end > self._known:
                self._refresh()
                if end > self._known:
                    raise _out_of_range(pointer, n, self._known)
            self._window[pointer:end] = payload
        ref.put(raw_pointer, raw_n)  # type: ignore[misc]
        error = ref.call()
        word, trap = ref.get()  # type: ignore[misc]
        if error or trap:
            raise self._failed(ref, error, trap)
        return word  # type: ignore[no-any-return]

    # -- memory -------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Ask wasmtime for ``memory``'s current size (and a window covering all of it)."""
        if self.memory is None:
            raise GuestMemoryError("the plugin exports no memory named 'memory'")
        self._window, self._known = _B.window(self._ctx, self.memory)

    def memory_size(self) -> int:
        """Current size in bytes of the ``memory`` export (0 if none)."""
        return 0 if self.memory is None else _B.size(self._ctx, self.memory)

    def memory_total(self) -> int:
        """Bytes held by all exported memories."""
        mems = self._memories
        if len(mems) == 1:
            return _B.size(self._ctx, mems[0])
        return sum(_B.size(self._ctx, m) for m in mems)

    def read(self, pointer: int, length: int) -> bytes:
        """Copy bytes out of ``memory`` (bounds-checked against its current size, one copy)."""
        end = pointer + length
        if pointer < 0 or length < 0 or end > self._known:
            self._refresh()
            if pointer < 0 or length < 0 or end > self._known:
                raise _out_of_range(pointer, length, self._known)
        if not length:
            return b""
        return self._window[pointer:end]  # type: ignore[no-any-return]

    def write(self, pointer: int, data: bytes) -> None:
        """Copy bytes into ``memory`` (bounds-checked against its current size, one copy)."""
        length = len(data)
        end = pointer + length
        if pointer < 0 or end > self._known:
            self._refresh()
            if pointer < 0 or end > self._known:
                raise _out_of_range(pointer, length, self._known)
        if length:
            self._window[pointer:end] = data


class EpochTicker:
    """One background thread per Host that advances its engines' epochs every TICK_SECONDS.

    Deadlines are per store (``set_epoch_deadline``), so one plugin running out of time never
    interrupts another. The thread holds no reference to the Host; it stops on ``stop()`` or when
    the Host is garbage-collected. A child made by ``os.fork()`` starts a ticker thread of its
    own (only the forking thread survives a fork, and without a ticker no deadline would pass).
    """

    def __init__(self, engines: Sequence[Engine], owner: object) -> None:
        self._engines = list(engines)
        # Ticks so far; bumped after the engines' epochs (Instance._arm relies on that order).
        self.count = 0
        self._stop = threading.Event()
        # Held by the running thread, released when it ends (stop() waits on it).
        self._running: Any = None
        self._lock = threading.Lock()
        weakref.finalize(owner, self._halt)
        _TICKERS.add(self)

    def _halt(self) -> None:
        self._stop.set()

    def add(self, engine: Engine) -> None:
        """Tick ``engine`` too from now on."""
        with self._lock:
            if engine not in self._engines:
                self._engines = [*self._engines, engine]

    def ensure_running(self) -> None:
        """Start the thread if it is not running yet (idempotent)."""
        if self._running is not None:
            return
        with self._lock:
            if self._running is None and not self._stop.is_set():
                # A bare thread rather than threading.Thread: Thread.start() waits until the new
                # thread has run, which costs a fresh process more than the rest of a cached
                # load. Nothing needs that wait: the first tick is due a full period later.
                running = _thread.allocate_lock()
                running.acquire()
                _thread.start_new_thread(self._run, (self._stop, self, running))
                self._running = running

    @staticmethod
    def _run(stop: threading.Event, ticker: EpochTicker, running: Any) -> None:
        try:
            while not stop.wait(TICK_SECONDS):
                for engine in ticker._engines:
                    engine.increment_epoch()
                ticker.count += 1
        finally:
            running.release()

    @property
    def running(self) -> bool:
        """Whether the ticker thread has been started and has not ended."""
        running = self._running
        return running is not None and running.locked()

    def stop(self) -> None:
        """Stop the thread and wait (up to a second) for it to end."""
        self._stop.set()
        running = self._running
        if running is not None and running.acquire(timeout=1.0):
            running.release()

    def _after_fork(self) -> None:
        # In the child: the parent's thread is gone, and it may have held these locks when the
        # fork happened. Fresh ones, the same stop state, and a thread of our own if one ran.
        stopped = self._stop.is_set()
        self._stop = threading.Event()
        if stopped:
            self._stop.set()
        self._lock = threading.Lock()
        started = self._running is not None
        self._running = None
        if started:
            self.ensure_running()


_TICKERS: weakref.WeakSet[EpochTicker] = weakref.WeakSet()


def _restart_tickers_in_child() -> None:
    for ticker in list(_TICKERS):
        ticker._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_tickers_in_child)
