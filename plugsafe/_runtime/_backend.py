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
import itertools
import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, NewType, Protocol, cast

from .._lazyre import lazy_re
from ._forksafe import Owned
from ._lib import error_text, trap_text
from ._ticker import prompt_off

if TYPE_CHECKING:
    import wasmtime

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
    "HostRecord",
    "HostSink",
    "InstanceHandle",
    "KIND_FUNC",
    "KIND_MEMORY",
    "MemHandle",
    "PreHandle",
    "RawSlot",
    "RawSlots",
    "TrapSlot",
    "U32",
    "PoolExhaustedFailure",
    "WasmFailure",
    "Window",
    "address",
    "check_span",
    "pool_exhausted",
    "failure_from_addresses",
]

U32 = 0xFFFF_FFFF
_I32_WRAP = 0x1_0000_0000
# wasmtime_extern_t's kind tags (WASMTIME_EXTERN_FUNC, WASMTIME_EXTERN_MEMORY).
KIND_FUNC = 0
KIND_MEMORY = 3

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


if TYPE_CHECKING:  # typing only (issue 14: a Protocol class costs ~0.4 M instructions to create)

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

else:  # at run time the names need only exist: cast() and imports mention them, no check
    RawSlot = RawSlots = Window = Backend = object


# What ``window`` gives for a memory of size 0 (nothing in it can be read or written).
EMPTY_WINDOW = cast(Window, b"")


# A host function as the C API calls it: (env, caller, args_and_results, count) -> the backend's
# ``ok`` or a new trap. It must not raise: nothing may unwind through wasmtime's frames (and if
# Python fails even so, the callback's spare trap is returned: see HostRecord).
HostEntry = Callable[[object, CallerPtr, RawSlots, int], object]
# Receives what a host callback raised once its trap has come back out of wasm; returns the
# message of the WasmFailure that trap becomes.
HostSink = Callable[[BaseException], str]


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


class PoolExhaustedFailure(WasmFailure):
    """Instantiating failed because the engine's pooling allocator has no free slot.

    ``resource`` is what ran out (``"core instances"``, ``"memories"``, ``"tables"``, as
    wasmtime names it) and ``limit`` how many there are.
    """

    def __init__(self, message: str, resource: str, limit: int) -> None:
        super().__init__(message)
        self.resource = resource
        self.limit = limit


# wasmtime's message when a pool has no free slot (wasmtime 48-50).
_POOL_FULL = lazy_re(r"maximum concurrent limit of (\d+) for (.+?) reached")


def pool_exhausted(failure: WasmFailure) -> PoolExhaustedFailure | None:
    """The same failure as a PoolExhaustedFailure if it says a pool is full, else None."""
    found = _POOL_FULL.search(failure.message)
    if found is None:
        return None
    return PoolExhaustedFailure(failure.message, found.group(2), int(found.group(1)))


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


class HostCallbackFailed(RuntimeError):
    """A host callback failed before it could record why (it returned its spare trap).

    Python could not run the callback at all (the recursion limit reached at its first frame, or
    an exception raised asynchronously on entry), nor its error hook.
    """


class HostRecord:
    """The C-boundary side of one Linker's host callbacks: pending failure, spares, the Caller.

    A host callback that fails records the exception in ``pending`` with plain attribute stores
    (no call that could itself fail) and returns a new trap whose message carries this record's
    marker ``[plugsafe-host#<secret>.<id>.<function>]`` (the secret: see ``_SECRET``). When that
    trap has unwound out of wasm, the one conversion of traps into WasmFailures
    (:func:`failure_from_addresses`) finds the marker,
    takes ``pending`` and hands it to the function's sink, in ordinary Python, outside any C
    frame.

    If Python cannot run the callback at all, cffi returns the callback's *spare*: a trap made up
    front (``error=`` of the cffi callback), marked ``spare``. wasmtime frees a trap it is
    given, so each spare serves once: the conversion marks it used and sets ``spent``, and the
    Plugin rebuilds its Linker (new callbacks, new spares) before it makes its next instance.

    Why a spare can never be returned twice before that happens: a returned trap unwinds every
    wasm frame up to the nearest host frame, and every host frame that calls into wasm is
    plugsafe's own code, which converts the trap at once (the top-level call, or ``Caller.place``
    inside an outer host call). A callback active further out on the stack that fails in turn
    is shallower than the one that could not start, so its ``except`` path, and failing that its
    error hook (``onerror``, which makes a fresh trap), run; the spare is returned only if both
    fail. And a plugin's own host functions may not call back into that plugin (refused), so
    nothing re-enters a spent Linker's callbacks through a new call before it is rebuilt.
    """

    __slots__ = (
        "__weakref__",
        "_free",
        "caller",
        "ident",
        "leak",
        "names",
        "pending",
        "sinks",
        "spares",
        "spent",
        "used",
    )  # fmt: skip

    def __init__(self, free: Callable[[object], None]) -> None:
        self.ident = next(_IDS)
        # What the failing callback raised, until its trap is converted.
        self.pending: BaseException | None = None
        # The wasmtime_caller_t of the host call running now (or the last one): Plugin.memory
        # reads through it while the plugin's start function runs (there is no instance yet).
        self.caller: object = None
        self.names: list[str] = []
        self.sinks: list[HostSink] = []
        self.spares: list[object] = []
        self.used: set[int] = set()
        self.spent = False
        # Set when Python failed somewhere around a call into wasm (the recursion limit, an
        # exception raised asynchronously): a spare may have been used without its trap being
        # converted. The record is then spent, and its spares are never freed (a few hundred
        # bytes each) rather than risk freeing one wasmtime already freed.
        self.leak = False
        self._free = free
        _RECORDS[self.ident] = self

    def marker(self, function: int, spare: bool = False) -> str:
        """The text that ties a trap to this record and function (and says if it is a spare)."""
        return f"{_PREFIX}{self.ident}.{function}{' spare' if spare else ''}]"

    def distrust(self) -> None:
        """Python failed around a call into wasm: never reuse these callbacks, never free."""
        self.spent = True
        self.leak = True

    def __del__(self) -> None:
        # Spares wasmtime never received are still ours to free (every callback that could
        # return them is gone: the record lives as long as the Linker's callbacks).
        try:
            if self.leak:
                return
            free, spares, used = self._free, self.spares, self.used
        except AttributeError:  # __init__ interrupted (a signal handler's exception): no spares
            return
        # Each is forgotten before it is freed, and the loop goes on after a signal handler's
        # exception (then reported): at worst the spare it interrupted is never freed, never
        # one freed twice (tidy12).
        interrupted: BaseException | None = None
        while spares:
            try:
                while spares:
                    i = len(spares) - 1
                    spare = spares.pop()
                    if i not in used:
                        free(spare)
            except BaseException as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted


_IDS = itertools.count(1)
_RECORDS: weakref.WeakValueDictionary[int, HostRecord] = weakref.WeakValueDictionary()
# Every marker holds this process's secret (attack8): a plugin writes text into the messages
# wasmtime makes (its function names are in a trap's backtrace, its text in a WAT error, its
# export names in a validation error) and could otherwise forge another plugin's marker, whose
# counters are easy to guess: its trap read as that plugin's host failure (its recorded
# exception taken, its sink fed, its Linker spent), or a bare IndexError from a marker naming no
# function. No plugin ever sees a marker: a trap it caused never comes back into it.
_SECRET = os.urandom(8).hex()
_PREFIX = f"[plugsafe-host#{_SECRET}."
_MARKER = lazy_re(r"\[plugsafe-host#" + _SECRET + r"\.(\d+)\.(\d+)( spare)?\]")


def _host_failure(message: str, code: str | None) -> WasmFailure:
    """The WasmFailure for a trap a host callback returned (its marker is in ``message``)."""
    m = _MARKER.search(message)
    record, function = (None, -1) if m is None else (_RECORDS.get(int(m[1])), int(m[2]))
    if m is None or record is None or not 0 <= function < len(record.names):
        # (Its record is gone: the secret is not for the app's logs either.)
        return WasmFailure(_MARKER.sub("[plugsafe-host]", message), code)
    exc, record.pending = record.pending, None
    if exc is not None and (
        isinstance(exc, (RecursionError, MemoryError, ctypes.ArgumentError))
        or not isinstance(exc, Exception)
    ):
        # Python itself failed inside the callback (a nested conversion may have been cut
        # short with it): see HostRecord.leak.
        record.distrust()
    if m.group(3):
        record.used.add(function)
        record.spent = True
        if exc is None:
            exc = HostCallbackFailed(
                f"host function {record.names[function]!r} could not run: Python failed on "
                "entering it (recursion limit, or an exception raised on entry)"
            )
    if exc is None:  # cannot happen: a fresh trap is made only after recording
        exc = HostCallbackFailed(f"host function {record.names[function]!r} failed")
    try:
        text = record.sinks[function](exc)
    except BaseException:  # the sink must not fail; if it does, the trap still says what failed
        text = f"plugsafe: host function {record.names[function]!r} failed"
    return WasmFailure(text, code)


def failure_from_addresses(error: int, trap: int) -> WasmFailure:
    """Wrap an owned wasmtime error or trap (given as addresses) into a WasmFailure.

    The one place a trap becomes a WasmFailure: a trap returned by a host callback is matched
    with what that callback recorded (see HostRecord). The text and codes are read by
    ``_lib.error_text``/``trap_text`` (the only readers of wasmtime's errors and traps).
    """
    # The call is back on this thread: a switch interval its deadline lowered goes back now.
    prompt_off()
    if error:
        message, exit_code = error_text(error)  # (freed: both were the caller's)
        if exit_code is None and _PREFIX in message:
            return _host_failure(message, None)
        return WasmFailure(message, exit_code=exit_code)
    message, name = trap_text(trap)
    if _PREFIX in message:
        return _host_failure(message, name)
    return WasmFailure(message, name)


def address(ptr: object) -> int:
    """The address held by a ctypes pointer (0 for a null one)."""
    if not ptr:
        return 0
    return ctypes.cast(ptr, ctypes.c_void_p).value or 0  # type: ignore[arg-type]


if TYPE_CHECKING:

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

        @property
        def compiled(self) -> bool:
            """True if ``bind_call`` makes compiled calls (``plugsafe._speedups``)."""

        # -- setting up an instance --

        def ctx(self, store: wasmtime.Store) -> Ctx:
            """The store's context."""

        def ctx_at(self, address: int) -> Ctx:
            """The context at ``address`` (a ``wasmtime_context_t *``: ``_store.Store.ctx``)."""

        def buf(self, n: int) -> RawSlots:
            """A fresh, zeroed array of ``n`` raw value slots."""

        def pre(self, pre: Owned) -> PreHandle:
            """``pre`` (an owned ``wasmtime_instance_pre_t``) as ``instantiate`` takes it
            (keeping ``pre`` alive)."""

        def instantiate(self, pre: PreHandle, ctx: Ctx) -> InstanceHandle:
            """A new instance in ``ctx``'s store; WasmFailure if instantiation traps or fails."""

        def export(self, ctx: Ctx, instance: InstanceHandle, name: bytes) -> Extern | None:
            """The instance's export ``name`` (None if there is none)."""

        # -- the fast path: raw calls on scratch buffers --

        @property
        def raw_call(self) -> Callable[[Ctx, object, RawSlots, int, TrapSlot], object]:
            """``wasmtime_func_call_unchecked`` itself: (ctx, func_arg, buf, n, trap) -> error
            (a pointer, or its address as an int: false when null, ``address`` reads either)."""

        def func_arg(self, func: FuncHandle) -> object:
            """``func`` as ``raw_call`` takes it."""

        def bind_call(
            self,
            ctx: Ctx,
            arg: object,
            buf: RawSlots,
            n: int,
            trap: TrapSlot,
            at: tuple[int, int, int, int] | None = None,
        ) -> Callable[[], object]:
            """``raw_call`` with every argument bound: () -> error, as ``raw_call`` returns it.

            The cffi backend's is compiled (``plugsafe._speedups``) where it was built and not
            turned off (``compiled``); else a ``functools.partial`` of ``raw_call``. ``at``:
            the addresses of ``ctx``, ``arg``, ``buf`` and ``trap`` where the caller knows them
            already (a compiled call then reads none itself)."""

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

        @property
        def trap_new(self) -> Callable[[bytes, int], object]:
            """``wasmtime_trap_new`` itself: (message, length) -> a trap a host callback returns."""

        def free_trap(self, trap: object) -> None:
            """Delete a trap made by ``trap_new`` that was never handed to wasmtime."""

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
            """Define ``module.name`` as ``callback`` in the linker at address ``linker``, of the
            function type at address ``ty`` (``width``: max(params, results, 1) value slots);
            returns what must outlive every store.

            The callback is a cffi callback on both backends (ctypes callbacks have no error value:
            one that raises returns an undefined pointer): if Python fails in it, ``onerror`` gets
            (type, exception, traceback) and its result is returned; if that fails too, ``spare``.
            """
