"""Exported functions and their call path: scratch slots, struct layouts, the invoke closure."""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ._backend import (
    Backend,
    Ctx,
    FuncHandle,
    RawSlots,
    TrapSlot,
    WasmFailure,
    failure_from_addresses,
)
from ._module import NUMERIC_TYPES
from ._ticker import Ticker

if TYPE_CHECKING:
    from dataclasses import dataclass
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from .._dataclass_code import dataclass

_perf_counter = time.perf_counter

__all__ = [
    "ArgumentsDoNotFit",
    "Budget",
    "FuncRef",
    "Results",
    "Scratch",
    "call_failed",
    "invoker",
    "make_scratch",
    "unbound",
]

# Results as ``struct`` unpacks them (ints and floats; struct's own annotation says Any).
Results = tuple[Any, ...]


class ArgumentsDoNotFit(Exception):
    """Instance.invoke could not pack the arguments as given (count, type or range)."""


_STRUCT_CODES = {"i32": ("i", 4), "i64": ("q", 8), "f32": ("f", 4), "f64": ("d", 8)}
# Typed views over the raw slots (16 bytes each) for the short path (issue 14, goal 5): the
# format and how many of its items one slot spans. An item assignment checks type and range
# as ``struct`` does (refused values go to the same general packing); f32 is left out: a
# memoryview stores a too-large f32 as infinity where struct refuses it.
# (Any: typeshed types memoryview.cast by literal formats.)
_PARAM_VIEWS: dict[str, tuple[Any, int]] = {"i32": ("i", 4), "i64": ("q", 2), "f64": ("d", 2)}
# The short path packs up to this many parameters of one such type by item assignment.
MAX_VIEW_PARAMS = 3


@functools.lru_cache(maxsize=1024)
def _slot_struct(types: tuple[str, ...], trap_slot: int | None = None) -> struct.Struct:
    """A struct layout over 16-byte raw value slots: value i of type t sits at byte 16*i.

    With ``trap_slot``, the 8-byte trap pointer kept in slot ``trap_slot`` is read last.
    Integers are signed, as wasm's raw values are; packing refuses what does not fit.
    Made once per signature (a Struct is immutable): a plugin's first call of a function then
    builds no layouts (issue 14, the first call).
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


class Scratch(NamedTuple):
    """One function's reusable call buffer and its accessors (shared per Linker, see there)."""

    buf: RawSlots
    width: int
    put: Callable[..., None] | None
    get: Callable[[], Results] | None
    view: memoryview
    trap: TrapSlot
    get_results: Callable[[], Results] | None
    trap_word: memoryview
    # The layout ``get`` unpacks with (results, then the trap pointer), or None.
    out: struct.Struct | None
    # The short path's typed views (see _PARAM_VIEWS): ``pview`` over the whole buffer when
    # every parameter has one viewable type (their count is ``arity``, else -1; 0 for no
    # parameters) and ``stride`` its items per slot; ``rview`` over the buffer with the type
    # of a single result (item 0 is the result), else None.
    pview: memoryview | None
    stride: int
    arity: int
    rview: memoryview | None
    # ``buf``'s address, then ``at[0]``: 0 until a compiled call is first bound on it
    # (Instance.fast_call), read once for every FuncRef sharing this scratch.
    at: list[int]


def make_scratch(backend: Backend, params: Sequence[str], results: Sequence[str]) -> Scratch:
    """The buffer (with its trap slot last) and struct accessors for one signature."""
    width = max(len(params), len(results), 1)
    buf = backend.buf(width + 1)  # the last slot holds the trap pointer
    view = backend.bytes_view(buf)
    trap_at = 16 * width
    put = get = get_results = out = pview = rview = None
    stride, arity = 0, -1
    if all(t in NUMERIC_TYPES for t in (*params, *results)):
        out = _slot_struct(tuple(results), width)
        put = functools.partial(_slot_struct(tuple(params)).pack_into, view, 0)
        get = functools.partial(out.unpack_from, view, 0)
        get_results = functools.partial(_slot_struct(tuple(results)).unpack_from, view, 0)
        kind = params[0] if params else None
        if kind is None:
            arity = 0
        elif kind in _PARAM_VIEWS and len(params) <= MAX_VIEW_PARAMS and len(set(params)) == 1:
            code, stride = _PARAM_VIEWS[kind]
            pview = view.cast(code)
            arity = len(params)
        if len(results) == 1:
            rcode: Any = _STRUCT_CODES[results[0]][0]
            # One view for both when the types agree (one object less per function).
            rview = pview if pview is not None and pview.format == rcode else view.cast(rcode)
    return Scratch(
        buf, width, put, get, view, backend.trap_arg(buf, trap_at), get_results,
        view[trap_at : trap_at + 8].cast("Q"), out, pview, stride, arity, rview, [0],
    )  # fmt: skip


def unbound(*_args: object) -> Any:
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
    func: FuncHandle
    # ``func`` as the C call takes it.
    arg: object
    params: tuple[str, ...]
    results: tuple[str, ...]
    buf: RawSlots
    width: int
    # ``put(*args)`` packs the parameters into ``buf``; ``get()`` unpacks the results and then
    # the trap pointer. None when a parameter or result is not a number (such a function is
    # never called from here).
    put: Callable[..., None] | None
    get: Callable[[], Results] | None
    view: memoryview
    # Where the C call stores a trap pointer: ``buf``'s last slot.
    trap: TrapSlot
    # ``get_results()`` unpacks the results alone, and ``trap_word[0]`` is the trap pointer: what
    # invoke uses, so that it returns just the results with no slicing.
    get_results: Callable[[], Results] | None
    trap_word: memoryview
    # ``out.unpack_from(view)`` is ``get()`` (the call path's short path uses it so).
    out: struct.Struct | None
    # Typed views for the call path's short path (see Scratch): parameters by item assignment
    # (``pview``, ``stride`` items per slot, ``arity`` of them, -1: use ``put``), a single
    # result as ``rview[0]`` (None: not one result).
    pview: memoryview | None
    stride: int
    arity: int
    rview: memoryview | None
    # ``at[0]``: ``buf``'s address once read (0 until then; shared with the Scratch).
    at: list[int]
    # ``call()`` makes the C call on ``buf`` (set by Instance.func; made the compiled call by
    # Instance.fast_call, which sets ``fast``).
    call: Callable[[], object] = unbound
    fast: bool = False
    # Set by the call path at this function's first ABI call on its instance: the second one
    # binds the compiled call (see CallPath._aim_abi).
    abi_seen: bool = False
    # ``invoke(args)``: Instance.invoke for this function as one closure (set by
    # Instance.prepare_invoke for numeric functions): the per-call path with no method lookups.
    invoke: Callable[[Sequence[object]], Results] = unbound
    # Set by the Plugin once it has checked the signature for invoke() / for the plugin ABI.
    invoke_ok: bool = False
    abi_ok: bool = False
    # The instance's budget, set with ``invoke``: what the call path's own short path (which
    # inlines ``invoke``) re-arms before each call.
    budget: Budget | None = None

    def failure(self, error: object, trap: int) -> WasmFailure:
        """The failure of a call on ``buf`` that returned ``error`` or stored ``trap``."""
        assert self.budget is not None
        return call_failed(self.view, 16 * self.width, self.budget.backend.address(error), trap)


def call_failed(view: memoryview, trap_at: int, address: int, trap: int) -> WasmFailure:
    """The failure of a call that returned error ``address`` or stored ``trap``."""
    # Clear the trap slot: the call path relies on it being null before every call.
    struct.pack_into("<Q", view, trap_at, 0)
    return failure_from_addresses(address, trap)


class Budget(NamedTuple):
    """An instance's per-call budget, as its invoke closures need it."""

    backend: Backend
    ctx: Ctx
    # The engine's epoch ticker (None: no deadline), and the instance's shared one-item list
    # holding the perf_counter() time its deadline was last armed.
    ticker: Ticker | None
    arming: list[float]
    ticks: int
    # Fuel to refill before every call (None: unmetered).
    fuel: int | None


def invoker(ref: FuncRef, budget: Budget) -> Callable[[Sequence[object]], Results]:
    """Instance.invoke for one function as a closure: every call's cost in one frame.

    It holds no reference to the Instance (so dropping an instance frees its store at once):
    the deadline's arming state is the instance's shared one-item list. It returns the results
    only: they are unpacked without the trap slot, which is read on its own.
    """
    name, put, get, call, view = ref.name, ref.put, ref.get_results, ref.call, ref.view
    assert put is not None and get is not None
    ref.budget = budget
    trapped, trap_at = ref.trap_word, 16 * ref.width
    backend, ctx, ticker, arming, ticks, fuel = budget
    set_deadline, set_fuel, address = backend.set_deadline, backend.set_fuel, backend.address

    if ticker is None:
        # No deadline: the far-off one set when the store was made never needs re-arming.

        def invoke(args: Sequence[object]) -> Results:
            try:
                put(*args)
            except (struct.error, TypeError, OverflowError):
                raise ArgumentsDoNotFit(name) from None
            if fuel is not None:
                set_fuel(ctx, fuel)
            error = call()
            out = get()
            if error or trapped[0]:
                raise call_failed(view, trap_at, address(error), trapped[0])
            return out

        return invoke

    period = ticker.period

    def invoke_timed(args: Sequence[object]) -> Results:
        try:
            put(*args)
        except (struct.error, TypeError, OverflowError):
            raise ArgumentsDoNotFit(name) from None
        if fuel is not None:
            set_fuel(ctx, fuel)
        # The ticker protocol (see _ticker.Ticker), inlined: stamp, arm if idle, and re-arm the
        # store's deadline when its last arming is over a period old.
        now = _perf_counter()
        ticker.last = now
        if not ticker.armed:
            ticker.arm()
        if now - arming[0] > period:
            arming[0] = now
            set_deadline(ctx, ticker.deadline(now, ticks))
        error = call()
        out = get()
        if error or trapped[0]:
            raise call_failed(view, trap_at, address(error), trapped[0])
        return out

    return invoke_timed
