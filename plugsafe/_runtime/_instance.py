"""Instances: one store each, with their budget (fuel, deadline), functions and memory."""

from __future__ import annotations

import functools
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .._abi import ALLOC_EXPORT, INPUT_BUFFER_EXPORT
from ._backend import (
    EMPTY_WINDOW,
    KIND_FUNC,
    KIND_MEMORY,
    U32,
    FuncHandle,
    GuestAllocError,
    GuestMemoryError,
    MemHandle,
    PoolExhaustedFailure,
    WasmFailure,
    Window,
    check_span,
    failure_from_addresses,
    pool_exhausted,
)
from ._engine import Engine
from ._funcref import (
    ArgumentsDoNotFit,
    Budget,
    FuncRef,
    Results,
    call_failed,
    invoker,
    make_scratch,
    unbound,
)
from ._linker import Linker
from ._module import Module
from ._store import Store
from ._ticker import MAX_DEADLINE_TICKS, Ticker, guard, limit, unlimit

__all__ = ["InputBufferError", "Instance", "Interruptible"]

_perf_counter = time.perf_counter
INPUT_BUFFER_BYTES = INPUT_BUFFER_EXPORT.encode()
# Orders Instance.release against memory_total read from another thread (Plugin.last_call).
_RELEASING = threading.Lock()


def _after_fork_in_child() -> None:
    # Another thread of the parent may have held it at the fork: held forever in the child,
    # where closing a plugin then hung (measured). Only this thread runs here now.
    global _RELEASING
    _RELEASING = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class InputBufferError(GuestMemoryError):
    """The guest's ``plugsafe_input_buffer`` named a buffer the host may not write."""


# Epoch increments Instance.interrupt makes on the calling thread (more go to a helper thread,
# one for a storm of them: up to MAX_DEADLINE_TICKS + 2, a millisecond each on an event loop).
_INLINE_BUMP = 256


def _bump(increment: Any, engine: int, n: int) -> None:
    """Advance ``engine``'s epoch ``n`` times (``increment`` is the ticker's C function)."""
    for _ in range(n):
        increment(engine)


def interrupt_store(ticker: Ticker, arming: list[float], ticks: int) -> None:
    """Interrupt the call running in a guarded store (``Instance.interrupt``, and a component
    instance's): its ``arming`` (the list given to ``_ticker.guard``) says the deadline passed
    long ago, and the engine's epoch is moved past its epoch deadline, ``ticks`` (its timeout's)
    at most, so that the guard runs and traps."""
    arming[0] = -math.inf
    # No epoch deadline is set further ahead than MAX_DEADLINE_TICKS (attack11: a whole
    # timeout's ticks, 1.8 M for an hour, took a cancelled call 16 s to reach).
    n = (ticks if ticks < MAX_DEADLINE_TICKS else MAX_DEADLINE_TICKS) + 2
    if n <= _INLINE_BUMP:
        _bump(ticker._increment, ticker._ptr, n)
    else:
        # ~1 us an increment: a long timeout's ticks (15,000 for 30 s) would hold up the
        # caller (an event loop) for milliseconds. Whoever runs next re-arms its own
        # deadline, so the increments need not be done before this returns; the ticker's
        # helper makes them, one for all interrupts at once.
        ticker.bump(n)


class Interruptible:
    """What a guarded store's instance can be told from any thread: stop the call running on
    it. A module's ``Instance`` and a component's ``ComponentInstance`` are both one: the same
    guard (``_ticker.guard`` over ``_arming``), the same epoch moves."""

    # Set by the instance: its engine's ticker (None: no timeout, no guard), the guard's
    # arming list, and its timeout's ticks.
    _ticker: Ticker | None
    _arming: list[float]
    _ticks: int

    @property
    def ticker(self) -> Ticker | None:
        """The engine's ticker that guards this store (None: no timeout)."""
        return self._ticker

    def interrupt(self) -> bool:
        """Stop the call running on this instance as soon as it is in wasm (from any thread).

        Only for a store with a deadline guard (a ``timeout``): the guard is told the deadline
        passed long ago and the engine's epoch is moved past the store's epoch deadline, so the
        guard runs and traps with ``INTERRUPT``. Other stores of the engine reach their epoch
        deadline too, and their guards find it early by the wall clock and go on. The caller
        must know the call is still running on this instance (the call's lock is held, or a
        ``CallToken`` is between its begin and end): a later call re-arms and would clear it.
        False if the store has no guard.
        """
        ticker = self._ticker
        if ticker is None:
            return False
        interrupt_store(ticker, self._arming, self._ticks)
        return True

    def interrupt_stands(self) -> bool:
        """Whether the last :meth:`interrupt` still stands: nothing armed this store's deadline
        since (an arming, or a limit, overwrites it: ``Instance.set_budget`` and the
        component's; read from any thread)."""
        return self._arming[0] == -math.inf


class Instance(Interruptible):
    """One store holding one instance of a module.

    Not thread-safe: the owning Plugin serializes every use. A store is never shared between
    instances, so a function is always called with the store it belongs to (mixing them up
    aborts the process in wasmtime). The backend is the linker's.
    """

    def __init__(
        self,
        engine: Engine,
        linker: Linker,
        module: Module,
        memory_size: int,
        memories: int,
        table_elements: int,
        tables: int,
        fuel: int | None,
        deadline_ticks: int,
        epochs: Ticker | None = None,
        timeout: float | None = None,
        wasi: object = None,
        until: float | None = None,
        timeout_ticks: int | None = None,
        on_store: Callable[[Instance], None] | None = None,
    ) -> None:
        self._b = b = linker.backend
        # Bound once: abi_call, the plugin ABI's hot path, calls it on every call.
        self._set_fuel = b.set_fuel
        self._metered = engine.metered
        # Made through the C API directly (_store: ~20 us less than wasmtime-py's Store,
        # set_limits, WasiConfig and set_wasi) and limited as it is made; never deleted in a
        # forked child (_forksafe).
        slots = engine.slots
        if slots is not None:
            try:
                slots.free.pop()  # (PoolSlots: one slot of the pool, over all its engines)
            except IndexError:
                try:
                    slots.reclaim()  # (slots a signal handler's exception lost: attack11)
                    slots.free.pop()
                except IndexError:
                    # Every slot is taken: as wasmtime says it of one engine's pool.
                    raise PoolExhaustedFailure(
                        f"maximum concurrent limit of {slots.limit} for core instances reached",
                        "core instances",
                        slots.limit,
                    ) from None
        # (The slot is the store's now: given back when it is deleted, or if it fails.)
        self._store = store = Store(
            engine.address, (memory_size, table_elements, 1, tables, memories), slots
        )
        self._ctx = ctx = b.ctx_at(store.ctx)
        if wasi is not None:
            # DEFAULT_WASI, or what wasi_config made (the Plugin keeps it as a plain object).
            error = store.set_wasi(wasi)
            if error:
                store.close()
                raise failure_from_addresses(error, 0)
        # Set by release(): the store is gone, and the memory and fuel readers answer these.
        self._final: int | None = None
        self._fuel_final = 0
        # Every top-level entry (invoke, call, abi_call) refills fuel and makes sure the deadline
        # is at least ``deadline_ticks`` away (see _arm).
        self._fuel = 0 if fuel is None else fuel
        # ``epochs``: the engine's ticker when calls have a ``timeout`` (then the deadline, in
        # ticks, is the ticker's for it, and ``deadline_ticks`` is unused); None for a fixed
        # ``deadline_ticks`` (the far-off NO_DEADLINE_TICKS, or a test's).
        # (``timeout_ticks``: ``epochs.ticks(timeout)`` as the caller computed it once.)
        self._ticker = epochs
        # When (perf_counter) the deadline was last armed, shared with every invoker of this
        # instance (a list, so the invokers need no reference back to the instance), and a
        # limit to one call's end (see _ticker.limit).
        self._arming = arming = [-math.inf, -math.inf, math.inf]
        if epochs is None:
            self._ticks = deadline_ticks
            self._period = 0.0
        else:
            assert timeout is not None
            self._ticks = epochs.ticks(timeout) if timeout_ticks is None else timeout_ticks
            self._period = epochs.period
        # When abi_call last set the epoch deadline itself, and how long such a deadline stays
        # far enough ahead (half its ticks): see abi_call.
        self._set_at = -math.inf
        self._horizon = self._ticks * self._period / 2
        # set_budget, inline (a load or fresh instance makes one call fewer).
        if self._metered:
            self._set_fuel(ctx, self._fuel)
        if epochs is None:
            b.set_deadline(ctx, deadline_ticks)  # _arm without a ticker
        else:
            assert timeout is not None
            # The store checks the wall clock when its epoch deadline comes (never early).
            guard(self, store.ptr, arming, timeout, epochs)
            # _arm, or (``until`` given) limit_deadline, inline: one or two frames fewer for
            # every instance made for a call (issue 14, goal 6).
            now = _perf_counter()
            epochs.last = now
            if not epochs.armed:
                epochs.arm()
            if until is None:
                arming[0] = now
                # (Ticker.deadline's case once the ticker ticks, inline; before: it says.)
                ticks = self._ticks
                if now < epochs.start:
                    ticks = epochs.deadline(now, ticks)
                elif ticks > MAX_DEADLINE_TICKS:
                    ticks = MAX_DEADLINE_TICKS
            else:
                # Made for a call that started earlier (``until`` is its deadline): the start
                # function runs on what is left of that call's time, not on a timeout of its
                # own; held until the call path lifts it (limit_deadline(None)). (_ticker.limit,
                # inline: every fresh_instance call comes here.)
                arming[1] = now
                arming[2] = until
                arming[0] = math.inf
                ticks = epochs.deadline_within(now, until - now)
            b.set_deadline(ctx, ticks)
        if linker._pre is None:
            linker.prepare(module)
        assert linker._pre is not None
        try:
            if on_store is not None:
                # The store and its deadline are ready, nothing ran: a call this instance is
                # made for becomes interruptible here (CallToken.making), before the start
                # function runs on its timeout.
                on_store(self)
            self._instance = instance = b.instantiate(linker._pre, ctx)
        except WasmFailure as failure:
            # The store goes now, not when the garbage collector finds it: whatever it holds of
            # the pool (a slot, a count in PoolSlots) is free at once.
            self._final = 0
            store.close()
            full = pool_exhausted(failure)
            if full is not None:
                raise full from None
            raise
        self._exports = module.exports
        self._scratch = linker.scratch
        self._raw_call = linker.raw_call
        # The host callbacks must outlive this store: freeing them while it can still call
        # them would send wasm to freed code. Held here too, so dropping the Linker is safe.
        self._callbacks = linker._keep
        # Exported functions looked up so far, by name (read directly by the Plugin's hot path).
        self.funcs: dict[str, FuncRef] = {}
        self._memories: list[MemHandle] = []
        self.memory: MemHandle | None = None
        # A window on ``memory`` and a size it is known to have: memories never shrink and, on
        # our engines, never move (Engine sets memory_may_move=False), so both stay valid and
        # wasmtime is asked again only when an access reaches past ``_known``.
        self._window: Window = EMPTY_WINDOW
        self._known = 0
        # The guest's input buffer (docs/abi.md, plugsafe_input_buffer): ``_in_cap`` bytes at
        # ``_in_at`` (``_in_raw`` as the i32 the guest is passed), checked inside ``memory``
        # when asked for (memories never shrink: it stays inside); 0 bytes until then, and
        # for a guest without one. ``_in_query`` is the export, asked once (use_input_buffer).
        self._in_at = self._in_raw = self._in_cap = 0
        self._in_query: FuncRef | None = None
        self._in_wanted = False
        # The exported memories.
        for name in module.memory_exports:
            found = b.export(ctx, instance, name)
            if found is not None and found[0] == KIND_MEMORY:
                mem: MemHandle = found[1]  # type: ignore[assignment]  # a memory's handle
                self._memories.append(mem)
                if name == b"memory":
                    self.memory = mem
        # The Linker closes every store made through it before serving another plugin.
        # (Linker.made, inline: a fresh_instance plugin makes an instance per call.)
        refs = linker._instances
        if len(refs) >= 8:
            # A plugin with fresh_instance makes one per call: forget the collected ones.
            refs[:] = [r for r in refs if r() is not None]
        refs.append(weakref.ref(self))

    # -- budget -------------------------------------------------------------------------------

    def set_budget(self) -> None:
        """Refill fuel (metered engines only) and arm the epoch deadline afresh."""
        if self._metered:
            self._set_fuel(self._ctx, self._fuel)
        self._arm()

    def _arm(self) -> None:
        """Set the deadline ``_ticks`` epochs from now (and start the ticker if it sleeps).

        Calls then re-arm only when the last arming is over a period old (see _ticker.Ticker):
        the ticks count from the arming, and the store's guard checks the wall clock.
        """
        ticker = self._ticker
        ticks = self._ticks
        if ticker is not None:
            now = _perf_counter()
            ticker.last = now
            if not ticker.armed:
                ticker.arm()
            self._arming[0] = now
            ticks = ticker.deadline(now, ticks)
        self._b.set_deadline(self._ctx, ticks)

    def limit_deadline(self, until: float | None) -> None:
        """Make the deadline ``until`` (``perf_counter`` seconds): the end of a call that
        started before this instance was made, or before it got the plugin. It holds, with no
        re-arm, until lifted with None, which the caller must do when that call ends
        (``_ticker.limit``). No-op without a timeout.
        """
        ticker = self._ticker
        if ticker is None:
            return
        if until is None:
            unlimit(self._arming)
            return
        now = _perf_counter()
        ticker.last = now
        if not ticker.armed:
            ticker.arm()
        limit(self._arming, now, until)
        self._b.set_deadline(self._ctx, ticker.deadline(now, ticker.ticks(max(until - now, 0.0))))

    def fuel_left(self) -> int:
        """Fuel remaining in the store (0 for an unmetered engine; what was left at release)."""
        if self._final is not None:
            return self._fuel_final
        return self._b.get_fuel(self._ctx) if self._metered else 0

    # -- functions ----------------------------------------------------------------------------

    def func(self, name: str) -> FuncRef | None:
        """The exported function ``name``, or None if there is none."""
        ref = self.funcs.get(name)
        if ref is not None:
            return ref
        info = self._exports.get(name)
        if info is None or info.kind != "func":
            return None
        b = self._b
        found = b.export(self._ctx, self._instance, name.encode())
        if found is None or found[0] != KIND_FUNC:
            return None
        scratch = self._scratch.get(name)
        if scratch is None:
            scratch = self._scratch[name] = make_scratch(b, info.params, info.results)
        func: FuncHandle = found[1]  # type: ignore[assignment]  # KIND_FUNC: a function's handle
        arg = b.func_arg(func)
        ref = FuncRef(name, func, arg, info.params, info.results, *scratch)
        # The C call with every argument bound: one attribute load on the hot path, not five.
        ref.call = functools.partial(self._raw_call, self._ctx, arg, ref.buf, ref.width, ref.trap)
        self.funcs[name] = ref
        return ref

    def fast_call(self, ref: FuncRef) -> Callable[[], object]:
        """``ref.call``, made the backend's compiled call first if it has one (once per
        function and instance: ``plugsafe._speedups``, see Backend.bind_call).

        The call path asks for it when a short path aims at a function, i.e. from its second
        call on this instance: binding costs about what three compiled calls save (~10,000
        instructions, cold on a new instance: the one address read through cffi and ``bind``),
        which a function called once on its instance (``fresh_instance``, the first call) would
        pay without getting it back (docs/performance.md, "4.", fifth pass).
        """
        if not ref.fast:
            b = self._b
            if b.compiled:
                # The addresses it binds, read as cheaply as they can be (issue 14, goal 4:
                # binding was most of a plugin's second call): the context's is the store's
                # own int, the slots' is read once per scratch (shared by every instance of the
                # Linker) and the trap slot is the slots' last (make_scratch); only the
                # function's handle, new with each instance, is read here.
                at = ref.at
                slots = at[0]
                if not slots:
                    slots = at[0] = b.address(ref.buf)
                ref.call = b.bind_call(
                    self._ctx, ref.arg, ref.buf, ref.width, ref.trap,
                    (self._store.ctx, b.address(ref.arg), slots, slots + 16 * ref.width),
                )  # fmt: skip
            ref.fast = True
        return ref.call

    def warm(self, names: Sequence[str]) -> None:
        """Look up the functions ``names`` and the memory window ahead of the first call.

        For work the first call would do anyway (issue 14: the first call on a new plugin cost
        several later ones): the Plugin passes the ABI's allocator once it knows the plugin
        speaks the ABI. Names that are not function exports are skipped.
        """
        for name in names:
            self.func(name)
        if self.memory is not None and not self._known:
            self._window, self._known = self._b.window(self._ctx, self.memory)

    def use_input_buffer(self, query: FuncRef) -> None:
        """Let ``abi_call`` place inputs in the guest's input buffer, once ``query`` (its
        checked ``plugsafe_input_buffer``) has said where it is.

        Only the first use on an instance counts: the buffer is asked for once per instance
        (at its first call whose input is not empty), never carried over to another.
        """
        if not self._in_wanted:
            self._in_wanted = True
            self._in_query = query

    def ask_input_buffer(self) -> None:
        """Ask for the input buffer now (once: see use_input_buffer), under the budget the
        instance has (at load: the load's). Raises as ``_ask_input_buffer``."""
        query = self._in_query
        if query is not None:
            self._ask_input_buffer(query)

    def _ask_input_buffer(self, query: FuncRef) -> None:
        """Call ``query`` (under the budget abi_call armed) and check the buffer it names.

        Raises WasmFailure if it traps, InputBufferError if the buffer is not wholly inside
        ``memory`` or sits at address 0 (the ABI's null). Capacity 0 means no buffer.
        """
        self._in_query = None  # asked once, whatever the answer
        query.put()  # type: ignore[misc]
        error = query.call()
        word, trap = query.get()  # type: ignore[misc]
        if error or trap:
            raise self._failed(query, error, trap)
        self._take_input_buffer(word)

    def _failed(self, ref: FuncRef, error: object, trap: int) -> WasmFailure:
        return call_failed(ref.view, 16 * ref.width, self._b.address(error), trap)

    def invoke(self, ref: FuncRef, args: Sequence[object]) -> Results:
        """Call a numeric function under a fresh budget; its results.

        Integers go in as signed values: anything ``struct`` packs as one (ints, objects with
        ``__index__``; for floats also objects with ``__float__``). Raises ArgumentsDoNotFit
        (before calling anything) if the arguments are not exactly the parameters in number,
        type and signed range, and WasmFailure if the call traps or fails. ``ref.invoke(args)``
        is the same without this method's frame.
        """
        invoke = ref.invoke
        if invoke is unbound:
            invoke = self.prepare_invoke(ref)
        return invoke(args)

    def prepare_invoke(self, ref: FuncRef) -> Callable[[Sequence[object]], Results]:
        """Build ``ref.invoke`` (on first use: a fresh instance used only through the ABI never
        pays for it)."""
        if ref.put is None or ref.get is None:
            raise ArgumentsDoNotFit(f"{ref.name} has parameters or results that are not numbers")
        fuel = self._fuel if self._metered else None
        budget = Budget(self._b, self._ctx, self._ticker, self._arming, self._ticks, fuel)
        ref.invoke = invoker(ref, budget)
        return ref.invoke

    def call(self, ref: FuncRef, args: Sequence[object]) -> list[int | float]:
        """Call with already-checked numeric arguments under a fresh budget; the results."""
        return list(self.invoke(ref, args))

    def abi_call(self, alloc: FuncRef | None, ref: FuncRef, payload: bytes) -> int:
        """The plugin ABI's hot path: place the input (one copy), call; the result word.

        The input goes into the guest's input buffer when it fits (see use_input_buffer), else
        into what ``alloc`` returns. The budget (fuel, deadline) is re-armed once and covers
        the buffer query, the allocation and the call.

        Raises GuestAllocError if the guest's allocator returned 0, GuestMemoryError if it
        returned a buffer outside its memory, InputBufferError for a bad input buffer.
        """
        ctx = self._ctx
        if self._metered:
            self._set_fuel(ctx, self._fuel)
        ticker = self._ticker
        if ticker is not None:  # the ticker protocol, as in _funcref.invoker
            now = _perf_counter()
            ticker.last = now
            if not ticker.armed:
                ticker.arm()
            if now - self._arming[0] > self._period:
                self._arming[0] = now
                # Stamped, and the epoch deadline set again only once the one set here last
                # is half its ticks old, as invoke's short path does (CallPath.rearm): every
                # epoch deadline a store gets is at most its own ticks from when it was set,
                # so one not set again is an earlier one, which the guard extends by the wall
                # clock (never early). ABI calls round-robin over many plugins re-armed on
                # every call (issue 14, goal 7).
                if now - self._set_at > self._horizon:
                    self._set_at = now
                    self._b.set_deadline(ctx, ticker.deadline(now, self._ticks))
        n = len(payload)
        # Both go to the guest as i32: signed, as the slot layout packs them.
        raw_n = n if n <= 0x7FFF_FFFF else n - 0x1_0000_0000
        raw_pointer = 0
        if n:
            query = self._in_query
            if query is not None and n > self._in_cap:
                # The first input on this instance: where is the guest's buffer, if any?
                self._ask_input_buffer(query)
            if n <= self._in_cap:
                # Inside the buffer the guest named (checked inside memory when asked; the
                # window covers it since, and a released instance's capacity is 0).
                at = self._in_at
                self._window[at : at + n] = payload
                raw_pointer = self._in_raw
            else:
                # Through the guest's allocator (v1 guests, and inputs over the buffer); None:
                # not looked up yet on this instance (its inputs fitted the buffer so far).
                if alloc is None:
                    alloc = self.func(ALLOC_EXPORT)
                    if alloc is None:  # a plugin speaking the ABI exports it (checked at load)
                        raise GuestAllocError(f"the plugin exports no {ALLOC_EXPORT!r}")
                if ref.fast and not alloc.fast:
                    # The function is called again and again on this instance (the call
                    # path compiled its call): so is the allocator, for its inputs.
                    self.fast_call(alloc)
                alloc.put(raw_n)  # type: ignore[misc]
                error = alloc.call()
                raw_pointer, trap = alloc.get()  # type: ignore[misc]
                if error or trap:
                    raise self._failed(alloc, error, trap)
                pointer = raw_pointer & U32
                if pointer == 0:
                    raise GuestAllocError(f"the plugin's allocator returned 0 for {n} input bytes")
                end = pointer + n
                if end > self._known:
                    self._span(pointer, n)
                self._window[pointer:end] = payload
        ref.put(raw_pointer, raw_n)  # type: ignore[misc]
        error = ref.call()
        word, trap = ref.get()  # type: ignore[misc]
        if error or trap:
            raise self._failed(ref, error, trap)
        return word  # type: ignore[no-any-return]

    def abi_once(self, name: str, payload: bytes, buffered: bool) -> int | None:
        """``abi_call`` for an instance called once (made for this call: ``fresh_instance``).

        The ABI function ``name`` (the caller checked the module's export: a function of the
        ABI's type) and, if ``buffered``, the guest's ``plugsafe_input_buffer`` (checked at
        load) are looked up and called on their scratch slots directly: no FuncRef, no bound
        call, no entry in ``funcs`` for a function nobody calls again on this instance (issue
        14, goal 6). The budget, the input buffer's checks, the allocator's and the failures
        are abi_call's; raises as it does. None (nothing called): no such function (released).
        """
        if self._final is not None:
            return None  # released: its store is gone (abi_call finds no function either)
        ctx = self._ctx
        found = self._b.export(ctx, self._instance, name.encode())
        if found is None or found[0] != KIND_FUNC:  # (the module exports it: never)
            return None
        func = self._b.func_arg(found[1])  # type: ignore[arg-type]
        if self._metered:
            self._set_fuel(ctx, self._fuel)
        ticker = self._ticker
        if ticker is not None:  # the ticker protocol, as in abi_call
            now = _perf_counter()
            ticker.last = now
            if not ticker.armed:
                ticker.arm()
            if now - self._arming[0] > self._period:
                self._arming[0] = now
                if now - self._set_at > self._horizon:
                    self._set_at = now
                    self._b.set_deadline(ctx, ticker.deadline(now, self._ticks))
        b = self._b
        instance = self._instance
        scratch = self._scratch
        raw_call = self._raw_call
        n = len(payload)
        raw_n = n if n <= 0x7FFF_FFFF else n - 0x1_0000_0000
        raw_pointer = 0
        if n:
            if buffered and not self._in_cap:
                # plugsafe_input_buffer, asked as _ask_input_buffer asks it: once (asked
                # already, by abi_call or here, or released: not again), whatever the answer.
                if self._in_wanted:
                    query = self._in_query
                    if query is not None:
                        self._ask_input_buffer(query)
                else:
                    self._in_wanted = True
                    found = b.export(ctx, instance, INPUT_BUFFER_BYTES)
                    if found is not None and found[0] == KIND_FUNC:
                        qs = scratch.get(INPUT_BUFFER_EXPORT)
                        if qs is None:
                            qs = scratch[INPUT_BUFFER_EXPORT] = make_scratch(b, (), ("i64",))
                        error = raw_call(ctx, b.func_arg(found[1]), qs.buf, qs.width, qs.trap)  # type: ignore[arg-type]
                        word, trap = qs.get()  # type: ignore[misc]
                        if error or trap:
                            raise call_failed(qs.view, 16 * qs.width, b.address(error), trap)
                        self._take_input_buffer(word)
            if n <= self._in_cap:
                at = self._in_at
                self._window[at : at + n] = payload
                raw_pointer = self._in_raw
            else:
                raw_pointer = self._alloc_input(n, raw_n, payload)
        fs = scratch.get(name)
        if fs is None:
            fs = scratch[name] = make_scratch(b, ("i32", "i32"), ("i64",))
        fs.put(raw_pointer, raw_n)  # type: ignore[misc]
        error = raw_call(ctx, func, fs.buf, fs.width, fs.trap)
        word, trap = fs.get()  # type: ignore[misc]
        if error or trap:
            raise call_failed(fs.view, 16 * fs.width, b.address(error), trap)
        return word  # type: ignore[no-any-return]

    def _take_input_buffer(self, word: int) -> None:
        """Check the buffer ``plugsafe_input_buffer`` answered (its result word) and use it.

        Raises InputBufferError if it is not wholly inside ``memory`` or sits at address 0 (the
        ABI's null). Capacity 0 means no buffer.
        """
        # Unsigned, as every guest pointer and length: pointer high, capacity low.
        word &= 0xFFFF_FFFF_FFFF_FFFF
        at, cap = word >> 32, word & U32
        if cap == 0:
            return
        if at == 0:
            raise InputBufferError(f"a buffer of {cap} bytes at address 0 (the ABI's null)")
        # Python integers: at + cap cannot wrap.
        if at + cap > self._known:
            # The window on all of memory (_span's first step, inline: a new instance is asked
            # here at its first input, every fresh_instance call); _span then says what is wrong.
            memory = self.memory
            if memory is not None:
                self._window, self._known = self._b.window(self._ctx, memory)
            if at + cap > self._known:
                try:
                    self._span(at, cap)  # (raises: not all of it is inside)
                except GuestMemoryError as exc:
                    raise InputBufferError(str(exc)) from None
        self._in_at, self._in_cap = at, cap
        self._in_raw = at if at <= 0x7FFF_FFFF else at - 0x1_0000_0000

    def _alloc_input(self, n: int, raw_n: int, payload: bytes) -> int:
        """Place ``payload`` (``n`` bytes) where the guest's ``plugsafe_alloc`` says: abi_once's
        way for an input over the input buffer (or with none). The pointer, as an i32."""
        alloc = self.func(ALLOC_EXPORT)
        if alloc is None:  # a plugin speaking the ABI exports it (checked at load)
            raise GuestAllocError(f"the plugin exports no {ALLOC_EXPORT!r}")
        alloc.put(raw_n)  # type: ignore[misc]
        error = alloc.call()
        raw_pointer, trap = alloc.get()  # type: ignore[misc]
        if error or trap:
            raise self._failed(alloc, error, trap)
        pointer = raw_pointer & U32
        if pointer == 0:
            raise GuestAllocError(f"the plugin's allocator returned 0 for {n} input bytes")
        end = pointer + n
        if end > self._known:
            self._span(pointer, n)
        self._window[pointer:end] = payload
        return raw_pointer  # type: ignore[no-any-return]

    # -- memory -------------------------------------------------------------------------------

    def _span(self, pointer: int, length: int) -> tuple[int, int]:
        """check_span against ``memory``'s current size (fetching a window covering all of it).

        The slow path of every access: the fast one only compares with ``_known``.
        """
        if self.memory is None:
            raise GuestMemoryError("the plugin exports no memory named 'memory'")
        self._window, self._known = self._b.window(self._ctx, self.memory)
        return check_span(pointer, length, self._known)

    def memory_size(self) -> int:
        """Current size in bytes of the ``memory`` export (0 if none, or once released)."""
        return 0 if self.memory is None else self._b.size(self._ctx, self.memory)

    def memory_total(self) -> int:
        """Bytes held by all exported memories (what they held at release, once released).

        Safe from any thread even while another releases the instance: ``Plugin.last_call``
        reads it lazily, without the plugin's lock.
        """
        with _RELEASING:
            if self._final is not None:
                return self._final
            return self._total()

    def _total(self) -> int:
        mems = self._memories
        if len(mems) == 1:
            return self._b.size(self._ctx, mems[0])
        return sum(self._b.size(self._ctx, m) for m in mems)

    # -- release ------------------------------------------------------------------------------

    def release(self) -> tuple[int, int]:
        """Free the store now, guest memory and all, instead of whenever the GC finds it.

        The instance is part of reference cycles (its functions' bound calls, the deadline
        guard), so without this a closed plugin's memory stayed mapped until a collection ran.
        Only for an instance nothing will call again (``Plugin.close`` holds the call lock and
        has already detached it): afterwards it has no functions, no memory and no window, and
        ``memory_total`` answers the size it had. Idempotent. Returns what the instance held
        at release: the bytes of its exported memories and its fuel left (0 unmetered), as
        ``memory_total`` and ``fuel_left`` answer from then on.
        """
        with _RELEASING:
            if self._final is not None:
                return self._final, self._fuel_final
            mems = self._memories
            # (_total, inline: a fresh instance per call releases one on every call.)
            if len(mems) == 1:
                self._final = self._b.size(self._ctx, mems[0])
            else:
                self._final = sum(self._b.size(self._ctx, m) for m in mems)
            self._fuel_final = self._b.get_fuel(self._ctx) if self._metered else 0
            # Everything that could still reach the store's memory or functions goes first:
            # the window points into the linear memory, the bound calls at the store's context.
            self._window = EMPTY_WINDOW
            self._known = 0
            self._in_cap = 0
            self._in_query = None
            self.memory = None
            self._memories = []
            self.funcs = {}
            self._exports = {}
            self._store.close()
            return self._final, self._fuel_final

    def read(self, pointer: int, length: int) -> bytes:
        """Copy bytes out of ``memory`` (bounds-checked against its current size, one copy)."""
        end = pointer + length
        if pointer < 0 or length < 0 or end > self._known:
            pointer, end = self._span(pointer, length)
        if pointer == end:
            return b""
        return self._window[pointer:end]

    def write(self, pointer: int, data: bytes) -> None:
        """Copy bytes into ``memory`` (bounds-checked against its current size, one copy)."""
        end = pointer + len(data)
        if pointer < 0 or end > self._known:
            pointer, end = self._span(pointer, len(data))
        if pointer != end:
            self._window[pointer:end] = data
