"""What a backend is, and what every backend shares: failures, handles, the one bounds check.

A *backend* does the per-call work in C (calls, memory access, fuel, deadlines, host callbacks)
through one foreign-function library: ``_cffi.CffiBackend`` or ``_ctypes.CtypesBackend``.
:class:`Backend` is the interface both implement; mypy proves it (``_select.select_backend``
returns either as a ``Backend``). The rest of ``_runtime`` only ever talks to a ``Backend``.

Handles are opaque: a backend hands them out and takes them back, and nothing else looks inside.
They are ``NewType``s of ``object`` so that mypy keeps them apart (a memory handle is not a
function handle) at no cost at run time.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import POINTER, byref
from typing import NewType, Protocol, cast

import wasmtime
from wasmtime import _ffi as wf

__all__ = [
    "Backend",
    "CallerPtr",
    "Ctx",
    "EMPTY_WINDOW",
    "Extern",
    "FuncHandle",
    "GuestAllocError",
    "GuestMemoryError",
    "HostEntry",
    "InstanceHandle",
    "KIND_FUNC",
    "KIND_MEMORY",
    "MemHandle",
    "PreHandle",
    "RawSlot",
    "RawSlots",
    "TrapSlot",
    "U32",
    "WasmFailure",
    "Window",
    "address",
    "check_span",
    "failure_from_addresses",
]

U32 = 0xFFFF_FFFF
_I32_WRAP = 0x1_0000_0000
KIND_FUNC: int = wf.WASMTIME_EXTERN_FUNC.value
KIND_MEMORY: int = wf.WASMTIME_EXTERN_MEMORY.value

# A store context (wasmtime_context_t *).
Ctx = NewType("Ctx", object)
# A function (wasmtime_func_t) in the form the backend's calls take it.
FuncHandle = NewType("FuncHandle", object)
# A memory (wasmtime_memory_t) in the form the backend's calls take it.
MemHandle = NewType("MemHandle", object)
# An instance (wasmtime_instance_t) of one store.
InstanceHandle = NewType("InstanceHandle", object)
# A type-checked, ready-to-instantiate module (wasmtime_instance_pre_t), kept with its owner.
PreHandle = NewType("PreHandle", object)
# The wasmtime_caller_t * a host callback receives.
CallerPtr = NewType("CallerPtr", object)
# Where a call stores its trap pointer (wasm_trap_t **).
TrapSlot = NewType("TrapSlot", object)
# An export: its kind code and, for a function or memory, its handle.
Extern = tuple[int, FuncHandle | MemHandle | None]


class RawSlot(Protocol):
    """One wasmtime_val_raw_t: a 16-byte slot read and written as any numeric type."""

    i32: int
    i64: int
    f32: float
    f64: float


class RawSlots(Protocol):
    """An array of wasmtime_val_raw_t (arguments in, results out)."""

    def __getitem__(self, i: int, /) -> RawSlot: ...


class Window(Protocol):
    """A view on a whole linear memory: slices read as bytes, slice assignment writes."""

    def __getitem__(self, span: slice, /) -> bytes: ...

    def __setitem__(self, span: slice, data: bytes, /) -> None: ...


# What ``window`` gives for a memory of size 0 (nothing in it can be read or written).
EMPTY_WINDOW = cast(Window, b"")


# A host function as the C API calls it: (env, caller, args_and_results, count) -> the backend's
# ``ok`` or ``trap(message)``. It must not raise: nothing may unwind through wasmtime's frames.
HostEntry = Callable[[object, CallerPtr, RawSlots, int], object]


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


def check_span(pointer: int, length: int, size: int) -> tuple[int, int]:
    """``(start, end)`` of ``length`` bytes at ``pointer`` if they lie within ``size`` bytes.

    The one bounds check for guest pointers and lengths. Both are unsigned 32-bit numbers: an
    i32 argument arrives signed, so a negative one (down to -2**31) stands for itself plus 2**32.
    Nothing wraps: ``start + length`` is compared as a Python int, so a span running past 2**32
    fails rather than coming back round to address 0. Anything else negative, or past the end,
    raises GuestMemoryError.
    """
    if pointer < 0:
        pointer += _I32_WRAP
    if length < 0:
        length += _I32_WRAP
    end = pointer + length
    if pointer < 0 or length < 0 or end > size:
        raise GuestMemoryError(
            f"guest pointer {pointer} with length {length} runs past the end of its "
            f"{size}-byte memory"
        )
    return pointer, end


_TrapPtr = POINTER(wf.wasm_trap_t)
_ErrorPtr = POINTER(wf.wasmtime_error_t)


def failure_from_addresses(error: int, trap: int) -> WasmFailure:
    """Wrap an owned wasmtime error or trap (given as addresses) into a WasmFailure."""
    if error:
        ptr = ctypes.cast(error, _ErrorPtr)
        status = ctypes.c_int()
        exit_code = status.value if wf.wasmtime_error_exit_status(ptr, byref(status)) else None
        return WasmFailure(str(wasmtime.WasmtimeError._from_ptr(ptr)), exit_code=exit_code)
    t = wasmtime.Trap._from_ptr(ctypes.cast(trap, _TrapPtr))
    code = t.trap_code
    return WasmFailure(t.message, None if code is None else code.name)


def address(ptr: object) -> int:
    """The address held by a ctypes pointer (0 for a null one)."""
    if not ptr:
        return 0
    return ctypes.cast(ptr, ctypes.c_void_p).value or 0  # type: ignore[arg-type]


class Backend(Protocol):
    """The per-call C work, over one foreign-function library.

    Implementations turn wasmtime-py objects into their own handles once, then make the
    per-call C calls with as little Python as possible. Raw values are read and written as
    ``slots[i].i32`` etc., or through ``bytes_view(buf)`` with struct layouts on the hot path.
    """

    @property
    def name(self) -> str:
        """``"cffi"`` or ``"ctypes"``."""

    @property
    def ok(self) -> object:
        """What a host callback returns when it succeeded (else ``trap(message)``)."""

    # -- setting up an instance --

    def ctx(self, store: wasmtime.Store) -> Ctx:
        """The store's context."""

    def buf(self, n: int) -> RawSlots:
        """A fresh, zeroed array of ``n`` raw value slots."""

    def pre(self, pre: wasmtime.InstancePre) -> PreHandle:
        """``pre`` as ``instantiate`` takes it (keeping ``pre`` alive)."""

    def instantiate(self, pre: PreHandle, ctx: Ctx) -> InstanceHandle:
        """A new instance in ``ctx``'s store; WasmFailure if instantiation traps or fails."""

    def export(self, ctx: Ctx, instance: InstanceHandle, name: bytes) -> Extern | None:
        """The instance's export ``name`` (None if there is none)."""

    # -- the fast path: raw calls on scratch buffers --

    @property
    def raw_call(self) -> Callable[[Ctx, object, RawSlots, int, TrapSlot], object]:
        """``wasmtime_func_call_unchecked`` itself: (ctx, func_arg, buf, n, trap) -> error."""

    def func_arg(self, func: FuncHandle) -> object:
        """``func`` as ``raw_call`` takes it."""

    def trap_arg(self, buf: RawSlots, offset: int) -> TrapSlot:
        """A trap slot inside ``buf``, ``offset`` bytes in."""

    def bytes_view(self, buf: RawSlots) -> memoryview:
        """``buf``'s bytes (for struct-packed arguments and results)."""

    def window(self, ctx: Ctx, mem: MemHandle) -> tuple[Window, int]:
        """A sliceable, slice-assignable view on all of ``mem`` now, and its size."""

    def address(self, ptr: object) -> int:
        """The address a pointer ``raw_call`` returned holds (0 for null)."""

    def call(
        self, ctx: Ctx, func: FuncHandle, buf: RawSlots, n: int, trap: TrapSlot | None = None
    ) -> None:
        """Call ``func`` on ``buf``; WasmFailure if it traps or fails."""

    def size(self, ctx: Ctx, mem: MemHandle) -> int:
        """``mem``'s size in bytes."""

    def read(self, ctx: Ctx, mem: MemHandle, pointer: int, length: int) -> bytes:
        """Copy a span out of ``mem`` (checked by ``check_span``)."""

    def write(self, ctx: Ctx, mem: MemHandle, pointer: int, data: bytes) -> None:
        """Copy ``data`` into ``mem`` (checked by ``check_span``)."""

    def set_fuel(self, ctx: Ctx, fuel: int) -> None:
        """Set the store's fuel."""

    def get_fuel(self, ctx: Ctx) -> int:
        """The store's remaining fuel."""

    def set_deadline(self, ctx: Ctx, ticks: int) -> None:
        """Trap with INTERRUPT ``ticks`` epochs from now."""

    # -- inside host callbacks --

    def caller_ctx(self, caller: CallerPtr) -> Ctx:
        """The context of the store a host callback runs in."""

    def caller_export(
        self, caller: CallerPtr, name: bytes, kind: int
    ) -> FuncHandle | MemHandle | None:
        """The calling instance's export ``name`` if it is of ``kind``."""

    def trap(self, message: str) -> object:
        """A new trap for a host callback to return."""

    def define_func(
        self,
        linker: wasmtime.Linker,
        module: bytes,
        name: bytes,
        ty: wasmtime.FuncType,
        callback: HostEntry,
    ) -> object:
        """Define ``module.name`` as ``callback``; returns what must outlive every store."""
