"""PluginPool: several instances of one plugin for parallel calls, and asyncio helpers."""

from __future__ import annotations

import functools
import operator
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, SupportsFloat, SupportsIndex, TypeVar

from ._aio import run_call
from ._callpath import CallToken
from ._closing import Closing
from ._component import is_component_source
from ._errors import (
    ImportNotAllowedError,
    PluginCallError,
    PluginClosedError,
    PluginLoadError,
    PlugsafeError,
    PolicyError,
    int_text,
)
from ._host import Host
from ._lazymodule import import_now
from ._loader import Source
from ._nesting import Taker, Units, bounded_wait, inside_call
from ._oncall import OnCall
from ._plugin import Plugin, _json_in
from ._policy import Policy
from ._public import rehome

__all__ = ["PluginPool"]

T = TypeVar("T")
_get_ident = threading.get_ident
_perf_counter = time.perf_counter

# How often a cancellable (asynchronous) call waiting for a free instance looks at its token.
_CANCEL_POLL = 0.05

# What close() puts in the idle queue: whoever takes it puts it back (for the next waiter) and
# raises PluginClosedError, so no thread waits for an instance of a closed pool.
_CLOSED = -1


def _hint_host(exc: PolicyError | ImportNotAllowedError, missing: list[str]) -> None:
    """Say to pass ``host=`` when a pool's private Host lacks the app's functions.

    The private Host has only the built-in functions, so a plugin that imports the app's is
    refused; the error as Host.load words it (not a host function of this host / unknown) does
    not say where the app's functions should have come from.
    """
    if isinstance(exc, ImportNotAllowedError):
        missing = [p.name for p in exc.problems if p.reason == "unknown" and p.module == "plugsafe"]
    elif exc.field != "allow":
        return
    if not missing:
        return
    names = ", ".join(repr(n) for n in missing)
    exc.args = (
        f"{exc}\n(this PluginPool has no host=, so it made a Host of its own, which has only the "
        f"built-in host functions: to give its plugins {names}, pass host= a Host on which "
        "the app registered them)",
    )


class PluginPool(Closing):
    """``size`` independent instances of one plugin, for calls from many threads at once.

    A single :class:`Plugin` serializes its calls; a pool runs up to ``size`` of them in parallel
    (wasm runs without the GIL), each on its own instance with its own memory. A call waits for
    a free instance. The module is compiled once.

    A call's policy ``timeout`` covers its wait for a free instance (DeadlineExceeded saying
    so), as a Plugin's covers waiting for its lock; the wait is also bounded by the deadlines
    of the calls the thread is inside (a host function calling a pool). A wait that could never
    end (every instance held by this thread, or by threads waiting through host functions for
    what this thread holds) is refused at once with PluginCallError, with or without timeouts.

    Args:
        source: as for :meth:`Host.load`.
        policy: the policy every instance runs under.
        size: how many instances (and so how many calls at once).
        host: the Host to load into; a private one is created (and closed with the pool) if None.
        name: the plugins' name (each instance's logger is ``plugsafe.plugin.<name>``).
        on_call: for the private Host (``host=None``): called after every call with its
            :class:`CallStats` (see :class:`Host`). With ``host=``, the Host's own ``on_call``
            reports the pool's calls.
    """

    # ``self._free`` takes a free instance's index (``self._get(False)``; queue.Empty if none)
    # as an attribute read: a signal handler's exception raised as ``get`` returned lost the
    # index, and the pool an instance for good (attack9; see _nesting.Taker). The code after
    # it, up to the ``try`` that gives the index back, makes no call.
    _free = property(operator.methodcaller("_get", False))

    def __init__(
        self,
        source: Source,
        policy: Policy | None = None,
        *,
        size: int = 4,
        host: Host | None = None,
        name: str | None = None,
        on_call: OnCall | None = None,
    ) -> None:
        # The int it holds: a subclass's own comparisons could pass the range with any size
        # (attack7; as Host's max_stack).
        if (
            not isinstance(size, int)
            or isinstance(size, bool)
            or not 1 <= (size := int.__index__(size)) <= 1024
        ):
            got = int_text(size) if isinstance(size, int) else repr(size)
            raise ValueError(f"size must be an int from 1 to 1024, got {got}")
        if host is not None and on_call is not None:
            raise TypeError(
                "PluginPool(on_call=...) is for the pool's private Host; with host=, pass "
                "on_call to that Host (Host(on_call=...)): it reports the pool's calls"
            )
        if is_component_source(source):
            # A pool's instances are Plugins (call, call_json, context=, call tokens), which a
            # component has none of: say so rather than fail to parse it as a module.
            what = (
                repr(name)
                if name
                else (
                    f"{os.fspath(source)!r}"
                    if isinstance(source, (str, os.PathLike))
                    else "the source"
                )
            )
            raise PluginLoadError(
                f"PluginPool takes core WebAssembly modules only, and {what} is a component: "
                "load it with Host.load_component (a ComponentPlugin serializes its calls; for "
                "calls in parallel, load several from one Host: it compiles the component once)"
            )
        self._own_host = host is None
        self._host = Host(on_call=on_call) if host is None else host
        # Free instances, by their index in _plugins (or _CLOSED); _units.held says which
        # thread holds each of the others (the wait-for check, _nesting.start_wait).
        self._idle: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._get, self._put = self._idle.get, self._idle.put
        self._plugins: list[Plugin] = []
        self._closed = False
        self._shut = False  # close() went to its end
        try:
            # Read, checked and compiled once (see _loader); each instance from the same bytes.
            loaded = self._host._prepare(source, policy=policy, name=name)
            for i in range(size):
                plugin = self._host._instantiate(loaded)
                self._plugins.append(plugin)
                self._idle.put(i)
        except (PolicyError, ImportNotAllowedError) as exc:
            self.close()
            if self._own_host:
                allowed = policy.allow if isinstance(policy, Policy) else frozenset()
                _hint_host(exc, sorted(allowed - set(self._host.functions)))
            raise
        except BaseException:
            self.close()
            raise
        # Imported here (issue 14): concurrent.futures costs every import of plugsafe otherwise;
        # never half done across a fork (_lazymodule).
        ThreadPoolExecutor = import_now("concurrent.futures").ThreadPoolExecutor

        # The pool's own threads, known so that close() never waits for the thread it runs on.
        self._threads: set[int] = set()
        self._executor = ThreadPoolExecutor(
            size, thread_name_prefix="plugsafe-pool", initializer=self._started
        )
        self.size = size
        self._units = Units(self._plugins[0].name, size)
        self._held = self._units.held

    def _started(self) -> None:
        self._threads.add(threading.get_ident())

    @property
    def name(self) -> str:
        """The plugins' name."""
        return self._plugins[0].name

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def _with_plugin(
        self,
        function: str,
        context: Any,
        fast: Callable[[Plugin], T],
        slow: Callable[[Plugin, float], T],
        token: CallToken | None = None,
    ) -> T:
        """Run one call on a free instance: ``fast(plugin)`` if one was free at once, else
        ``slow(plugin, begun)`` after waiting (the call's timeout runs from ``begun``).
        ``token``: an asynchronous call's, whose cancellation ends the wait.

        ``call`` and ``invoke`` inline the first case (no closure made per call)."""
        try:
            slot: int = self._free  # (see _free)
        except queue.Empty:
            return self._after_wait(function, context, slow, token)
        held = self._held
        try:
            held[slot] = _get_ident()
            if self._closed:
                raise self._closed_error()
            return fast(self._plugins[slot])
        finally:
            try:
                held.pop(slot, None)
            finally:
                # (Even if a signal handler raised as pop returned: attack9, see _free.)
                self._put(slot)

    def _after_wait(
        self,
        function: str,
        context: Any,
        slow: Callable[[Plugin, float], T],
        token: CallToken | None = None,
    ) -> T:
        """The rest of a call that found no free instance: wait, then ``slow(plugin, begun)``."""
        begun = _perf_counter()
        try:
            slot = self._wait(function, begun, token)
        except PlugsafeError as exc:
            # Reported like a Plugin call whose wait for its lock failed (on_call sees every
            # call, including those that never got to run).
            error = exc

            def failed() -> NoReturn:
                raise error

            self._plugins[0]._reported(function, context, failed)
            raise
        held = self._held
        try:
            # Set after the wait ended (_nesting.Units): a thread is never seen holding what it
            # waits for. A closed pool's waiters are woken with _CLOSED (or get a closed
            # instance): either way the call is refused here.
            held[slot] = _get_ident()
            if self._closed:
                raise self._closed_error()
            return slow(self._plugins[slot], begun)
        finally:
            # Out of ``held`` before it is free again (Units): in between it is "on its way".
            try:
                held.pop(slot, None)
            finally:
                self._put(slot)  # (see _free)

    def _closed_error(self) -> PluginClosedError:
        return PluginClosedError(f"pool {self.name!r} is closed")

    def _wait(self, function: str, begun: float, token: CallToken | None = None) -> int:
        """Wait for a free instance, no longer than this call's own timeout (from ``begun``)
        and the calls this thread is inside may last; refused if it could never end.

        From a host function of one of the pool's own plugins (or of a plugin a thread holding
        the pool's instances waits for), every instance may be busy for good: that is refused
        at once (PluginCallError); an ordinary wait ends at a deadline, typed. An
        asynchronous call's wait (``token``) also ends when its task is cancelled, so that
        its worker thread is not kept waiting for an instance the call will never use.
        """
        timeout = self._plugins[0].policy.timeout
        idle = self._idle

        # The index a wait took, kept with no call in between (see _free): given back if the
        # wait raises after it took one.
        got: list[int | None] = [None]

        def take(wait: float | None) -> int | None:
            if token is None:
                try:
                    got[0] = Taker(functools.partial(idle.get, True, wait)).taken
                    return got[0]
                except queue.Empty:
                    return None
            # Looks at the token between short waits (only a cancellable call that found the
            # pool busy pays this; a SimpleQueue cannot be woken for one waiter).
            end = None if wait is None else _perf_counter() + wait
            while True:
                step = _CANCEL_POLL if end is None else min(_CANCEL_POLL, end - _perf_counter())
                try:
                    got[0] = Taker(functools.partial(idle.get, True, max(step, 0.0))).taken
                    return got[0]
                except queue.Empty:
                    if token.cancelled:
                        raise PluginCallError(
                            f"pool {self.name!r}: the call was cancelled while it waited for "
                            "a free instance"
                        ) from None
                    if end is not None and _perf_counter() >= end:
                        return None

        def own_deadline() -> Exception:
            return self._plugins[0]._calls.diagnosis.deadline(
                function,
                "call",
                f" (all of it spent waiting for a free instance of pool {self.name!r}, all "
                f"{self.size} busy)",
            )

        try:
            return bounded_wait(
                threading.get_ident(),
                self._units,
                None if timeout is None else begun + timeout,
                take,
                own_deadline,
            )
        except BaseException:
            if got[0] is not None:
                self._put(got[0])
            raise

    def call(
        self,
        function: str,
        data: bytes | bytearray | memoryview | str = b"",
        *,
        context: Any = None,
    ) -> bytes:
        """:meth:`Plugin.call` on a free instance."""
        try:  # _with_plugin's first case, inlined
            slot: int = self._free  # (see _free)
        except queue.Empty:
            out: bytes = self._after_wait(
                function,
                context,
                lambda p, begun: p._call_with(CallToken(), function, data, context, begun=begun),
            )
            return out
        held = self._held
        try:
            held[slot] = _get_ident()
            if self._closed:
                raise self._closed_error()
            return self._plugins[slot].call(function, data, context=context)
        finally:
            try:
                held.pop(slot, None)
            finally:
                # (Even if a signal handler raised as pop returned: attack9, see _free.)
                self._put(slot)

    def call_json(self, function: str, value: Any, *, context: Any = None) -> Any:
        """:meth:`Plugin.call_json` on a free instance."""
        return self._with_plugin(
            function,
            context,
            lambda p: p.call_json(function, value, context=context),
            lambda p, begun: p._call_with(
                CallToken(), function, _json_in(value), context, json_out=True, begun=begun
            ),
        )

    def invoke(
        self, function: str, *args: SupportsIndex | SupportsFloat, context: Any = None
    ) -> Any:
        """:meth:`Plugin.invoke` on a free instance."""
        try:  # _with_plugin's first case, inlined
            slot: int = self._free  # (see _free)
        except queue.Empty:
            return self._after_wait(
                function,
                context,
                lambda p, begun: p._invoke_with(CallToken(), function, args, context, begun),
            )
        held = self._held
        try:
            held[slot] = _get_ident()
            if self._closed:
                raise self._closed_error()
            return self._plugins[slot].invoke(function, *args, context=context)
        finally:
            try:
                held.pop(slot, None)
            finally:
                # (Even if a signal handler raised as pop returned: attack9, see _free.)
                self._put(slot)

    async def call_async(
        self,
        function: str,
        data: bytes | bytearray | memoryview | str = b"",
        *,
        context: Any = None,
    ) -> bytes:
        """:meth:`call` from asyncio, on the pool's own threads; never blocks the event loop.

        As :meth:`Plugin.call_async`: the caller's ``contextvars`` are visible to host
        functions, and a cancelled call does not start or is interrupted.
        """

        def run(token: CallToken) -> bytes:
            out: bytes = self._with_plugin(
                function,
                context,
                lambda p: p._call_with(token, function, data, context),
                lambda p, begun: p._call_with(token, function, data, context, begun=begun),
                token,
            )
            return out

        out: bytes = await self._run_async(run)
        return out

    async def call_json_async(self, function: str, value: Any, *, context: Any = None) -> Any:
        """:meth:`call_json` from asyncio."""
        text = _json_in(value)

        def run(token: CallToken) -> Any:
            return self._with_plugin(
                function,
                context,
                lambda p: p._call_with(token, function, text, context, json_out=True),
                lambda p, begun: p._call_with(
                    token, function, text, context, json_out=True, begun=begun
                ),
                token,
            )

        return await self._run_async(run)

    async def invoke_async(
        self, function: str, *args: SupportsIndex | SupportsFloat, context: Any = None
    ) -> Any:
        """:meth:`invoke` from asyncio."""

        def run(token: CallToken) -> Any:
            return self._with_plugin(
                function,
                context,
                lambda p: p._invoke_with(token, function, args, context),
                lambda p, begun: p._invoke_with(token, function, args, context, begun),
                token,
            )

        return await self._run_async(run)

    async def _run_async(self, run: Callable[[CallToken], T]) -> T:
        """``run`` on the pool's threads (_aio.run_call); PluginClosedError once closed."""
        if self._closed:
            raise self._closed_error()
        try:
            return await run_call(self._executor, run)
        except RuntimeError:
            # The executor refuses new work once close() shut it down (between the check
            # above and here): "cannot schedule new futures after shutdown", untyped.
            if self._closed:
                raise self._closed_error() from None
            raise

    def close(self) -> None:
        """Close every instance and the pool's threads.

        Waits for running calls, except one that waits in turn (through host functions) for
        what this thread holds (close() from a host function): that instance is closed as its
        call ends. Threads waiting for a free instance raise PluginClosedError at once.
        """
        # No lock making the first close() the only one (tidy10): an exception a signal
        # handler raised inside it (a Ctrl-C, then the app's ``finally: pool.close()``) left
        # a pool marked closed whose instances and threads no later close() would touch (and
        # a lock taken by ``with`` has its own window, see _nesting.Taker). Every step below
        # may run twice, or in two threads at once: each is idempotent.
        if self._shut:
            return
        self._closed = True
        # Wakes every thread waiting for a free instance (each puts it back for the next; a
        # second _CLOSED, from a second close(), is passed on the same way).
        self._idle.put(_CLOSED)
        executor = getattr(self, "_executor", None)
        if executor is not None:
            # From one of the pool's threads (a host function of an async call closing the
            # pool), waiting would join that very thread: RuntimeError, and the plugins below
            # never closed, for good (attack2 finding). From inside any plugin call, an async
            # call may be waiting for what this thread holds (attack finding). Then its calls
            # end as each plugin's close() makes them: the running one finishes, queued ones
            # raise PluginClosedError.
            executor.shutdown(wait=not inside_call() and threading.get_ident() not in self._threads)
        # Plugin.close waits for a running call unless that would deadlock (CallPath.close);
        # an instance given back after this is closed again by its holder (harmless).
        for plugin in self._plugins:
            plugin.close()
        if self._own_host:
            self._host.close()
        self._shut = True

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        name = self._plugins[0].name if self._plugins else "?"
        return f"<plugsafe.PluginPool {name!r} x{len(self._plugins)} {state}>"


# plugsafe imports this module when PluginPool is first used (issue 14): it is plugsafe.PluginPool.
rehome(PluginPool)
