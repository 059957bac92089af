"""The ctypes backend: wasmtime-py's own ctypes bindings, used directly.

The fallback when cffi is missing or its declarations do not match this wasmtime (and what
``PLUGSAFE_BACKEND=ctypes`` forces). Slower per call than cffi, but needs nothing beyond
wasmtime-py.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from ctypes import POINTER, byref
from typing import TYPE_CHECKING, cast

import wasmtime
from wasmtime import _ffi as wf

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
from ._cffi import CffiTraps

if TYPE_CHECKING:
    from ._forksafe import Owned

__all__ = ["CtypesBackend"]

_TrapPtr = POINTER(wf.wasm_trap_t)
_CallerPtr = POINTER(wf.wasmtime_caller_t)
_ContextPtr = POINTER(wf.wasmtime_context_t)
_PrePtr = POINTER(wf.wasmtime_instance_pre_t)
_LinkerPtr = POINTER(wf.wasmtime_linker_t)
_FuncTypePtr = POINTER(wf.wasm_functype_t)


def _raise(error: object, trap: object) -> None:
    """Raise the WasmFailure for ctypes pointers (either may be a null pointer)."""
    raise failure_from_addresses(address(error), address(trap))


class CtypesBackend(CffiTraps):
    """The Backend over ctypes. Handles are wasmtime-py's ctypes structs and pointers."""

    name = "ctypes"
    # Its calls go through ctypes (plugsafe._speedups binds the cffi backend's only).
    compiled = False

    def __init__(self) -> None:
        self._call = wf.wasmtime_func_call_unchecked
        self._data = wf.wasmtime_memory_data
        self._size = wf.wasmtime_memory_data_size
        self._deadline = wf.wasmtime_context_set_epoch_deadline
        self._null_finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()
        # cffi for the host callbacks only (see define_func): their declarations involve no
        # struct layout, so they hold whatever made the cffi backend unusable.
        self._ffi = _lib.ffi
        self._traps = _lib.lib
        # What a host callback returns when it succeeded: a null trap pointer.
        self.ok: object = self._ffi.NULL

    def ctx(self, store: wasmtime.Store) -> Ctx:
        return Ctx(store._context())

    def ctx_at(self, address: int) -> Ctx:
        return Ctx(ctypes.cast(address, _ContextPtr))

    def buf(self, n: int) -> RawSlots:
        return cast(RawSlots, (wf.wasmtime_val_raw_t * n)())

    def pre(self, pre: Owned) -> PreHandle:
        # A ctypes pointer, kept with the object that owns it.
        return PreHandle((ctypes.cast(_lib.address(pre.raw), _PrePtr), pre))

    def instantiate(self, pre: PreHandle, ctx: Ctx) -> InstanceHandle:
        instance = wf.wasmtime_instance_t()
        trap = _TrapPtr()
        held: tuple[object, Owned] = pre  # type: ignore[assignment]  # what pre() made
        error = wf.wasmtime_instance_pre_instantiate(held[0], ctx, byref(instance), byref(trap))
        if error or trap:
            _raise(error, trap)
        return InstanceHandle(instance)

    def export(self, ctx: Ctx, instance: InstanceHandle, name: bytes) -> Extern | None:
        item = wf.wasmtime_extern_t()
        found = wf.wasmtime_instance_export_get(ctx, byref(instance), name, len(name), byref(item))  # type: ignore[arg-type]
        if not found:
            return None
        kind = int(item.kind)
        if kind == KIND_FUNC:
            return kind, FuncHandle(item.of.func)
        if kind == KIND_MEMORY:
            return kind, MemHandle(item.of.memory)
        return kind, None

    # -- the fast path: raw calls on scratch buffers --

    @property
    def raw_call(self) -> Callable[[Ctx, object, RawSlots, int, TrapSlot], object]:
        return self._call

    def func_arg(self, func: FuncHandle) -> object:
        return byref(func)  # type: ignore[arg-type]

    def bind_call(
        self,
        ctx: Ctx,
        arg: object,
        buf: RawSlots,
        n: int,
        trap: TrapSlot,
        at: tuple[int, int, int, int] | None = None,
    ) -> Callable[[], object]:
        return functools.partial(self._call, ctx, arg, buf, n, trap)

    def trap_arg(self, buf: RawSlots, offset: int) -> TrapSlot:
        return TrapSlot(ctypes.cast(ctypes.addressof(buf) + offset, POINTER(_TrapPtr)))  # type: ignore[arg-type]

    def bytes_view(self, buf: RawSlots) -> memoryview:
        return memoryview(buf).cast("B")  # type: ignore[arg-type]

    def window(self, ctx: Ctx, mem: MemHandle) -> tuple[Window, int]:
        size = int(self._size(ctx, byref(mem)))  # type: ignore[arg-type]
        if not size:
            return EMPTY_WINDOW, 0
        base = ctypes.addressof(self._data(ctx, byref(mem)).contents)  # type: ignore[arg-type]
        # A c_char array: slices read as bytes, slice assignment writes.
        window = (ctypes.c_char * size).from_address(base)
        return cast(Window, window), size

    def address(self, ptr: object) -> int:
        return address(ptr)

    def call(
        self, ctx: Ctx, func: FuncHandle, buf: RawSlots, n: int, trap: TrapSlot | None = None
    ) -> None:
        out = _TrapPtr()
        error = self._call(ctx, byref(func), buf, n, byref(out))  # type: ignore[arg-type]
        if error or out:
            _raise(error, out)

    def size(self, ctx: Ctx, mem: MemHandle) -> int:
        return int(self._size(ctx, byref(mem)))  # type: ignore[arg-type]

    def read(self, ctx: Ctx, mem: MemHandle, pointer: int, length: int) -> bytes:
        start, end = check_span(pointer, length, int(self._size(ctx, byref(mem))))  # type: ignore[arg-type]
        if start == end:
            return b""
        base = ctypes.addressof(self._data(ctx, byref(mem)).contents)  # type: ignore[arg-type]
        return ctypes.string_at(base + start, end - start)

    def write(self, ctx: Ctx, mem: MemHandle, pointer: int, data: bytes) -> None:
        start, end = check_span(pointer, len(data), int(self._size(ctx, byref(mem))))  # type: ignore[arg-type]
        if start != end:
            base = ctypes.addressof(self._data(ctx, byref(mem)).contents)  # type: ignore[arg-type]
            ctypes.memmove(base + start, data, end - start)

    def set_fuel(self, ctx: Ctx, fuel: int) -> None:
        error = wf.wasmtime_context_set_fuel(ctx, fuel)
        if error:
            _raise(error, None)

    def get_fuel(self, ctx: Ctx) -> int:
        out = ctypes.c_uint64()
        error = wf.wasmtime_context_get_fuel(ctx, byref(out))
        if error:
            _raise(error, None)
        return out.value

    def set_deadline(self, ctx: Ctx, ticks: int) -> None:
        self._deadline(ctx, ticks)

    # -- inside host callbacks --

    def caller_ctx(self, caller: CallerPtr) -> Ctx:
        # The cffi callback passes the caller as an address.
        return Ctx(wf.wasmtime_caller_context(ctypes.cast(caller, _CallerPtr)))  # type: ignore[arg-type]

    def caller_export(
        self, caller: CallerPtr, name: bytes, kind: int
    ) -> FuncHandle | MemHandle | None:
        item = wf.wasmtime_extern_t()
        ptr = ctypes.cast(caller, _CallerPtr)  # type: ignore[arg-type]
        if not wf.wasmtime_caller_export_get(ptr, name, len(name), byref(item)):
            return None
        if int(item.kind) != kind:
            return None
        # Annotated rather than wrapped in the NewTypes: this runs inside host callbacks, and
        # a NewType call costs a Python frame.
        handle: FuncHandle | MemHandle = item.of.func if kind == KIND_FUNC else item.of.memory  # type: ignore[assignment]
        return handle

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
        # A cffi callback, not a ctypes one: a ctypes callback that raises returns an undefined
        # pointer (NULL, "success", in practice), where cffi returns onerror's trap or the spare.
        # Its pointers arrive as integers: the argument slots become a ctypes array here (the
        # host callbacks' code is the same on both backends), the caller is cast when used.
        slots = wf.wasmtime_val_raw_t * width
        from_address = slots.from_address

        def entry(env: object, caller: CallerPtr, raw: int, n: int) -> object:
            return callback(env, caller, from_address(raw), n)

        cb = self._ffi.callback("plugsafe_addr_callback_t", entry, error=spare, onerror=onerror)
        fn = wf.wasmtime_func_unchecked_callback_t(int(self._ffi.cast("uintptr_t", cb)))
        error = wf.wasmtime_linker_define_func_unchecked(
            ctypes.cast(linker, _LinkerPtr), module, len(module), name, len(name),
            ctypes.cast(ty, _FuncTypePtr), fn, None,
            self._null_finalizer,
        )  # fmt: skip
        if error:
            _raise(error, None)
        return cb, fn
