"""The cffi backend: cffi in ABI mode on the ``libwasmtime`` inside the wasmtime wheel.

No compiler needed. The struct layouts it declares (``plugsafe._cdef``) are checked when the
backend is made against ``_cdef.LAYOUTS`` for the installed wasmtime's major version (and
against wasmtime-py's own ctypes declarations too when wasmtime-py is loaded anyway: it is not
imported for this); if they differ, construction raises ImportError and ``_select`` falls back
to ctypes with one warning.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from .. import _cdef
from . import _lib
from ._backend import (
    EMPTY_WINDOW,
    KIND_FUNC,
    KIND_MEMORY,
    CallerPtr,
    Ctx,
    Extern,
    FuncHandle,
    HostEntry,
    InstanceHandle,
    MemHandle,
    PreHandle,
    RawSlots,
    TrapSlot,
    Window,
    address,
    check_span,
    failure_from_addresses,
)

if TYPE_CHECKING:
    import wasmtime

    from ._forksafe import Owned

__all__ = [
    "SPEEDUPS",
    "SPEEDUPS_API_VERSION",
    "SPEEDUPS_PROBLEM",
    "CffiBackend",
    "check_layouts",
    "load_speedups",
]


# The interface of plugsafe/_speedups.c this code calls (``bind``'s arguments, ``hostmem_setup``,
# the constants): the build's ``API_VERSION`` must be this one (raised with every change there).
SPEEDUPS_API_VERSION = 3

# Why the compiled call is not in use (None: it is), as the last load_speedups() found it.
SPEEDUPS_PROBLEM: str | None = None


def load_speedups() -> ModuleType | None:
    """``plugsafe._speedups`` (the compiled call into wasm), or None: not built here (no C
    compiler or no Python headers at install), a build of another API version (left from an
    older plugsafe: its ``bind`` would refuse our arguments), or turned off with
    ``PLUGSAFE_SPEEDUPS=0``. ``SPEEDUPS_PROBLEM`` says which.

    Without it the per-call C call goes through cffi's ABI-mode call (libffi), about 3,000
    instructions of a ~14,000-instruction ``invoke``; the compiled one costs a few hundred.
    """
    global SPEEDUPS_PROBLEM
    if os.environ.get("PLUGSAFE_SPEEDUPS", "").strip() == "0":
        SPEEDUPS_PROBLEM = "turned off with PLUGSAFE_SPEEDUPS=0"
        return None
    try:
        from .. import _speedups
    except ImportError as exc:
        SPEEDUPS_PROBLEM = f"plugsafe._speedups was not built or cannot be imported ({exc})"
        return None
    version = getattr(_speedups, "API_VERSION", None)
    if type(version) is not int or version != SPEEDUPS_API_VERSION:
        SPEEDUPS_PROBLEM = (
            f"plugsafe._speedups has API version {version!r}, this plugsafe needs "
            f"{SPEEDUPS_API_VERSION} (a build left from another version: reinstall plugsafe)"
        )
        return None
    SPEEDUPS_PROBLEM = None
    return _speedups


# Read once, when the backend is first imported.
SPEEDUPS: ModuleType | None = load_speedups()


def check_layouts(ffi: Any, major: int | None = None) -> None:
    """Refuse to run if our declarations disagree with the installed wasmtime's layouts.

    ``major`` is its major version (``_lib.version_major()`` unless given). Its layouts are
    ``_cdef.LAYOUTS[major]``. If wasmtime-py is loaded already (a component host, a test), its
    own ctypes declarations are checked too; for a version missing from ``LAYOUTS`` (or none
    found) they are the only reference, and wasmtime-py is imported for them.
    """
    if major is None:
        major = _lib.version_major()
    known = _cdef.LAYOUTS.get(major) if major is not None else None
    if known is None:
        check_against_wasmtime_py(ffi)
        return
    for cname, (size, offsets) in known.items():
        if ffi.sizeof(cname) != size:
            raise ImportError(
                f"{cname} is {size} bytes in wasmtime {major}, "
                f"{ffi.sizeof(cname)} in plugsafe's declaration"
            )
        for fieldname, offset in offsets.items():
            if ffi.offsetof(cname, fieldname) != offset:
                raise ImportError(f"{cname}.{fieldname} is at a different offset in wasmtime")
    if "wasmtime._ffi" in sys.modules:
        check_against_wasmtime_py(ffi)


def check_against_wasmtime_py(ffi: Any) -> None:
    """Refuse to run if our declarations disagree with wasmtime-py's (i.e. wasmtime's)."""
    from wasmtime import _ffi as wf

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


class CffiTraps:
    """Traps for host callbacks, made and freed through cffi: shared by both backends, since
    host callbacks are cffi callbacks on both (a ctypes callback has no failure value)."""

    _traps: Any  # the cffi library object that has wasmtime_trap_new and wasm_trap_delete

    def trap(self, message: str) -> object:
        data = message.encode("utf-8", "replace")
        return self._traps.wasmtime_trap_new(data, len(data))

    @property
    def trap_new(self) -> Callable[[bytes, int], object]:
        return cast(Callable[[bytes, int], object], self._traps.wasmtime_trap_new)

    def free_trap(self, trap: object) -> None:
        self._traps.wasm_trap_delete(trap)


class CffiBackend(CffiTraps):
    """The Backend over cffi. Handles are cffi pointers into memory cffi owns."""

    name = "cffi"

    def __init__(self, speedups: ModuleType | None = SPEEDUPS) -> None:
        """``speedups``: ``plugsafe._speedups`` to bind calls with (the default where it was
        built and not turned off), or None for cffi's own call (the tests build both)."""
        ffi = _lib.ffi
        check_layouts(ffi)
        lib = _lib.lib
        self.ffi = ffi
        self.lib = self._traps = lib
        self._call = lib.wasmtime_func_call_unchecked
        # The same function as the per-call paths call it (raw_call): declared to return the
        # error pointer as an intptr_t (returned in the same register as a pointer on x86-64
        # and aarch64, System V and Windows: wasmtime's wheels), so that a call that succeeds
        # gives the cached int 0 instead of a new NULL cdata object to make and free (issue
        # 14, goal 5: ~170 fewer instructions a call, counted with callgrind). ``address``
        # takes either.
        self._raw_call: Callable[[Ctx, object, RawSlots, int, TrapSlot], object] = ffi.cast(
            "intptr_t(*)(wasmtime_context_t *, const wasmtime_func_t *, wasmtime_val_raw_t *,"
            " size_t, wasm_trap_t **)",
            self._call,
        )
        # The compiled call (bind_call), aimed at the same C function.
        self._speedups = speedups
        # A plain attribute, not a property: read at every binding (Instance.fast_call).
        self.compiled = speedups is not None
        self._target = int(ffi.cast("uintptr_t", self._call))
        self._data = lib.wasmtime_memory_data
        self._size = lib.wasmtime_memory_data_size
        self._deadline = lib.wasmtime_context_set_epoch_deadline
        self._null = ffi.NULL
        # The types every new instance allocates or casts to, resolved once.
        self._ctx_t = ffi.typeof("wasmtime_context_t *")
        self._instance_t = ffi.typeof("wasmtime_instance_t *")
        self._trap_t = ffi.typeof("wasm_trap_t **")
        self._extern_t = ffi.typeof("wasmtime_extern_t *")
        self._func_t = ffi.typeof("wasmtime_func_t *")
        self._memory_t = ffi.typeof("wasmtime_memory_t *")
        # What a host callback returns when it succeeded: a null trap pointer.
        self.ok: object = ffi.NULL

    def _raise(self, error: Any, trap: Any) -> None:
        ffi = self.ffi
        raise failure_from_addresses(
            int(ffi.cast("uintptr_t", error)), int(ffi.cast("uintptr_t", trap))
        )

    def ctx(self, store: wasmtime.Store) -> Ctx:
        return Ctx(self.ffi.cast("wasmtime_context_t *", address(store._context())))

    def ctx_at(self, address: int) -> Ctx:
        # Annotated rather than wrapped in the NewType (a call through its __call__, ~300
        # instructions): this, instantiate and export run for every new instance (issue 14,
        # goal 6: five such calls per fresh_instance call). Likewise below.
        ctx: Ctx = self.ffi.cast(self._ctx_t, address)
        return ctx

    def buf(self, n: int) -> RawSlots:
        return cast(RawSlots, self.ffi.new("wasmtime_val_raw_t[]", n))

    def pre(self, pre: Owned) -> PreHandle:
        # Kept as a cffi pointer (with the object that owns it) for instantiate.
        return PreHandle((pre.raw, pre))

    def instantiate(self, pre: PreHandle, ctx: Ctx) -> InstanceHandle:
        new = self.ffi.new
        # (The types resolved once, in __init__: no lookup of their text per instance.)
        instance: InstanceHandle = new(self._instance_t)
        trap = new(self._trap_t)
        # (Annotated, not cast: a subscripted cast built its generic alias on every instance.)
        held: Any = pre
        pointer = held[0]
        error = self.lib.wasmtime_instance_pre_instantiate(pointer, ctx, instance, trap)
        if error or trap[0]:
            self._raise(error, trap[0])
        return instance

    def export(self, ctx: Ctx, instance: InstanceHandle, name: bytes) -> Extern | None:
        new = self.ffi.new
        item = new(self._extern_t)
        if not self.lib.wasmtime_instance_export_get(ctx, instance, name, len(name), item):
            return None
        kind = int(item.kind)
        if kind == KIND_FUNC:
            func: FuncHandle = new(self._func_t)
            func[0] = item.of.func  # type: ignore[index]
            return kind, func
        if kind == KIND_MEMORY:
            mem: MemHandle = new(self._memory_t)
            mem[0] = item.of.memory  # type: ignore[index]
            return kind, mem
        return kind, None

    # -- the fast path: raw calls on scratch buffers --

    @property
    def raw_call(self) -> Callable[[Ctx, object, RawSlots, int, TrapSlot], object]:
        return self._raw_call

    def func_arg(self, func: FuncHandle) -> object:
        return func

    def bind_call(
        self,
        ctx: Ctx,
        arg: object,
        buf: RawSlots,
        n: int,
        trap: TrapSlot,
        at: tuple[int, int, int, int] | None = None,
    ) -> Callable[[], object]:
        speedups = self._speedups
        if speedups is None:
            return functools.partial(self._raw_call, ctx, arg, buf, n, trap)
        # Addresses of plugsafe's own objects only (the store's context, the function's
        # handle, its scratch slots and their trap slot): ``at`` as the Instance knows them
        # (the context's from the store, the slots' once per Linker: each address read
        # through cffi costs ~0.3 us hot, ~1.5 us on a new plugin), else read here. The
        # compiled call holds the cffi objects that own them (the context is owned by the
        # store, which the Instance keeps: the same as the partial above). It returns the
        # error's address, an int, as raw_call does.
        if at is None:
            ffi = self.ffi
            at = (
                int(ffi.cast("uintptr_t", ctx)),
                int(ffi.cast("uintptr_t", arg)),
                int(ffi.cast("uintptr_t", buf)),
                int(ffi.cast("uintptr_t", trap)),
            )
        call: Callable[[], object] = speedups.bind(
            self._target, at[0], at[1], at[2], n, at[3], (ctx, arg, buf, trap)
        )
        return call

    def trap_arg(self, buf: RawSlots, offset: int) -> TrapSlot:
        return TrapSlot(self.ffi.cast("wasm_trap_t **", self.ffi.cast("char *", buf) + offset))

    def bytes_view(self, buf: RawSlots) -> memoryview:
        return memoryview(self.ffi.buffer(buf))

    def window(self, ctx: Ctx, mem: MemHandle) -> tuple[Window, int]:
        size = int(self._size(ctx, mem))
        if not size:
            return EMPTY_WINDOW, 0
        return self.ffi.buffer(self._data(ctx, mem), size), size

    def address(self, ptr: object) -> int:
        return int(self.ffi.cast("uintptr_t", ptr)) if ptr else 0

    def call(
        self, ctx: Ctx, func: FuncHandle, buf: RawSlots, n: int, trap: TrapSlot | None = None
    ) -> None:
        # A slot for the trap pointer: one per FuncRef (its calls never overlap: re-entrant calls
        # into a plugin are refused), or a fresh one.
        slot: Any = self.ffi.new("wasm_trap_t **") if trap is None else trap
        slot[0] = self._null
        error = self._call(ctx, func, buf, n, slot)
        if error or slot[0]:
            self._raise(error, slot[0])

    def size(self, ctx: Ctx, mem: MemHandle) -> int:
        return int(self._size(ctx, mem))

    def read(self, ctx: Ctx, mem: MemHandle, pointer: int, length: int) -> bytes:
        start, end = check_span(pointer, length, int(self._size(ctx, mem)))
        if start == end:
            return b""
        out: bytes = self.ffi.buffer(self._data(ctx, mem) + start, end - start)[:]
        return out

    def write(self, ctx: Ctx, mem: MemHandle, pointer: int, data: bytes) -> None:
        start, end = check_span(pointer, len(data), int(self._size(ctx, mem)))
        if start != end:
            self.ffi.memmove(self._data(ctx, mem) + start, data, end - start)

    def set_fuel(self, ctx: Ctx, fuel: int) -> None:
        error = self.lib.wasmtime_context_set_fuel(ctx, fuel)
        if error:
            self._raise(error, self._null)

    def get_fuel(self, ctx: Ctx) -> int:
        out = self.ffi.new("uint64_t *")
        error = self.lib.wasmtime_context_get_fuel(ctx, out)
        if error:
            self._raise(error, self._null)
        return int(out[0])

    def set_deadline(self, ctx: Ctx, ticks: int) -> None:
        self._deadline(ctx, ticks)

    # -- inside host callbacks --

    def caller_ctx(self, caller: CallerPtr) -> Ctx:
        return Ctx(self.lib.wasmtime_caller_context(caller))

    def caller_export(
        self, caller: CallerPtr, name: bytes, kind: int
    ) -> FuncHandle | MemHandle | None:
        item = self.ffi.new("wasmtime_extern_t *")
        if not self.lib.wasmtime_caller_export_get(caller, name, len(name), item):
            return None
        if item.kind != kind:
            return None
        # Annotated rather than wrapped in the NewTypes: this runs inside host callbacks, and
        # a NewType call costs a Python frame.
        if kind == KIND_FUNC:
            func: FuncHandle = self.ffi.new("wasmtime_func_t *")
            func[0] = item.of.func  # type: ignore[index]
            return func
        mem: MemHandle = self.ffi.new("wasmtime_memory_t *")
        mem[0] = item.of.memory  # type: ignore[index]
        return mem

    def define_func(
        self,
        linker: int,
        module: bytes,
        name: bytes,
        ty: int,
        width: int,
        callback: HostEntry,
        spare: object,
        onerror: Callable[[object, object, object], object],
    ) -> object:
        ffi = self.ffi
        # error=/onerror=: if Python fails in the callback, cffi returns what onerror returns
        # (a fresh trap) or, if onerror fails too, the spare trap: never NULL (= "success").
        cb = ffi.callback(
            "wasmtime_func_unchecked_callback_t", callback, error=spare, onerror=onerror
        )
        error = self.lib.wasmtime_linker_define_func_unchecked(
            ffi.cast("wasmtime_linker_t *", linker),
            module, len(module), name, len(name),
            ffi.cast("wasm_functype_t *", ty),
            cb, ffi.NULL, ffi.NULL,
        )  # fmt: skip
        if error:
            self._raise(error, ffi.NULL)
        return cb
