"""A loaded plugin: calls, limits, the instance lifecycle and the host-function bindings."""

from __future__ import annotations

import functools
import json
import math
import operator
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn, SupportsFloat, SupportsIndex, TypeVar

from . import _abi
from . import _runtime as rt
from ._aio import run_in_thread
from ._closing import Closing
from ._errors import (
    AbiError,
    AbiVersionError,
    DeadlineExceeded,
    ExportNotFoundError,
    FuelExhausted,
    GuestError,
    HostCallLimitExceeded,
    HostFunctionError,
    LimitExceeded,
    MemoryAccessError,
    MemoryLimitExceeded,
    Phase,
    PluginCallError,
    PluginClosedError,
    PluginExitError,
    PluginLoadError,
    PluginTrap,
    SignatureError,
)
from ._log import LEVELS, escape, logger_for
from ._policy import Policy
from ._types import CallStats, ExportInfo, ImportInfo
from ._wasi import OutputSink, RunResult
from ._wasmparse import MemoryDecl

__all__ = ["BoundFunction", "Plugin", "PluginMemory"]

T = TypeVar("T")

_PAGE = 65536
# Enough tables for any toolchain seen in practice; together with max_table_elements this bounds
# what tables can cost.
_MAX_TABLES = 10
WASI_MODULE = "wasi_snapshot_preview1"
_WASI_EINVAL = 28
_WASI_EPERM = 63
_I32 = (-(2**31), 2**32 - 1)
_I64 = (-(2**63), 2**64 - 1)
_NUMERIC_PY = (int, float)
_F32_MAX = 3.4028234663852886e38
_perf_counter = time.perf_counter
_get_ident = threading.get_ident


@dataclass(frozen=True)
class BoundFunction:
    """A host function as a plugin sees it (built by the Host)."""

    name: str
    fn: Callable[..., Any]
    signature: _abi.HostSignature
    builtin: bool = False
    # The wasm (params, results); derived from ``signature`` unless a built-in fixes its own.
    wasm_override: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    @property
    def wasm(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The wasm parameter and result types the import must have."""
        if self.wasm_override is not None:
            return self.wasm_override
        return self.signature.wasm_params, self.signature.wasm_results


class _CallState:
    """What happened during one call; host callbacks write here, the caller reads it.

    The counters are zero at the start of every call: whoever ends a call that made host calls
    resets them (Plugin._settle), so calls that make none never touch them.
    """

    __slots__ = ("error", "function", "host_calls", "log_count", "log_dropped", "start", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.start = time.perf_counter()
        self.error: BaseException | None = None
        self.function = ""
        self.host_calls = 0
        self.log_count = 0
        self.log_dropped = 0

    @property
    def deadline(self) -> float | None:
        """When the call runs out of time (``time.perf_counter`` seconds), or None."""
        return None if self.timeout is None else self.start + self.timeout


class _AppError(Exception):
    """Wraps an exception an app-defined host function raised, to tell it from plugsafe's own."""

    def __init__(self, function: str, exc: BaseException) -> None:
        super().__init__(function)
        self.function = function
        self.exc = exc


def _raise(err: BaseException) -> NoReturn:
    """Raise ``err`` from its own ``__cause__``, keeping no reference to it in any frame.

    A frame that holds, as a local, the exception it raises makes a reference cycle (exception,
    traceback, frame, exception): every local of the frames in between, the discarded instance
    and its store among them, would then live until the garbage collector ran. Call this with
    the exception as an expression, never bound to a local.
    """
    try:
        raise err from err.__cause__
    finally:
        del err


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def _short_trap(message: str) -> str:
    """wasmtime's trap text ends with the reason after a backtrace; keep the reason."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "trap"
    last = lines[-1]
    return last.removeprefix("wasm trap: ")


class PluginMemory:
    """The plugin's exported linear memory ``memory``, bounds-checked.

    Reads and writes go to the plugin's current instance; after a trap that is the fresh one.
    """

    def __init__(self, plugin: Plugin) -> None:
        self._plugin = plugin

    @staticmethod
    def _check(offset: int, length: int) -> None:
        for label, v in (("offset", offset), ("length", length)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{label} must be an int, got {type(v).__name__}")
            if v < 0:
                raise MemoryAccessError(f"{label} must be >= 0, got {v}")

    def read(self, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes starting at ``offset``; MemoryAccessError if out of range."""
        self._check(offset, length)

        def op(inst: rt.Instance) -> bytes:
            try:
                return inst.read(offset, length)
            except rt.GuestMemoryError as exc:
                raise MemoryAccessError(f"plugin {self._plugin.name!r}: {exc}") from None

        return self._plugin._with_instance(op)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into memory at ``offset``; MemoryAccessError if out of range."""
        payload = bytes(data)
        self._check(offset, len(payload))

        def op(inst: rt.Instance) -> None:
            try:
                inst.write(offset, payload)
            except rt.GuestMemoryError as exc:
                raise MemoryAccessError(f"plugin {self._plugin.name!r}: {exc}") from None

        self._plugin._with_instance(op)

    @property
    def size(self) -> int:
        """Current size in bytes."""
        return self._plugin._with_instance(lambda inst: inst.memory_size())


class Plugin(Closing):
    """A loaded plugin. Create with :meth:`Host.load`.

    Safe to share between threads: calls on one plugin are serialized, and every caller gets its
    own result or exception. Different plugins run in parallel (the GIL is released while wasm
    runs). After any trap the instance is thrown away and the next call runs on a fresh one.
    """

    def __init__(
        self,
        *,
        name: str,
        policy: Policy,
        engine: rt.Engine,
        module: rt.Module,
        memories: list[MemoryDecl],
        functions: Mapping[str, BoundFunction],
        ticker: rt.EpochTicker,
        on_close: Callable[[Plugin], None],
    ) -> None:
        self._name = name
        self._policy = policy
        self._engine = engine
        self._module = module
        self._ticker = ticker
        self._on_close = on_close
        self._logger = logger_for(name)
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._closed = False
        self._close_pending = False
        self._instance: rt.Instance | None = None
        self._state = _CallState(policy.timeout)
        # Stats of the last call as a plain tuple; CallStats is built only when asked for.
        # The memory size is read when asked for: memory changes only during calls, and the
        # instance is kept only while it is the current one (a discarded one is measured now).
        self._last: tuple[int | None, float, int | rt.Instance, int] | None = None
        self._abi = False
        self.memory = PluginMemory(self)

        count = max(len(memories), 1)
        self._memory_per = policy.memory // count
        self._memory_count = len(memories)
        for i, decl in enumerate(memories):
            if decl.minimum > self._memory_per:
                split = f" (split evenly over its {count} memories)" if count > 1 else ""
                raise MemoryLimitExceeded(
                    f"plugin {name!r}: memory {i} needs {_fmt_bytes(decl.minimum)} at start, "
                    f"but the policy allows {_fmt_bytes(self._memory_per)}{split}",
                    limit="memory",
                    value=policy.memory,
                    phase="load",
                )

        self._has_imports = bool(module.imports)
        self._idle_state = _CallState(policy.timeout)
        self._call_state = _CallState(policy.timeout)
        self._timeout = policy.timeout
        self._fuel_budget = policy.fuel
        self._max_input = policy.max_input
        self._host_call_quota = 2**64 if policy.max_host_calls is None else policy.max_host_calls
        self._max_output = policy.max_output
        # Unmetered and reusing its instance: stats need no fuel read and no eager memory size.
        self._lean = policy.fuel is None and not policy.fresh_instance
        self._linker = rt.Linker(engine)
        for bound in functions.values():  # the imports the Host checked against the policy
            self._bind(bound)
        if policy.wasi is not None:
            self._linker.define_wasi()
            # wasmtime's poll_oneoff sleeps in the host, where no epoch can interrupt it; ours
            # sleeps only until the call's deadline.
            self._linker.define_func(
                WASI_MODULE, "poll_oneoff", ("i32",) * 4, ("i32",), self._poll_oneoff(),
                self._on_error,
            )  # fmt: skip
            # The guest's monotonic clock is ours (so "sleep until T" agrees with poll_oneoff),
            # starting near 0 (it learns nothing of the host's uptime); CPU-time clocks are
            # refused.
            self._linker.define_func(
                WASI_MODULE, "clock_time_get", ("i32", "i64", "i32"), ("i32",),
                self._clock_time_get(), self._on_error,
            )  # fmt: skip
            # Refuse creating symlinks: wasmtime never follows one out of a preopen, but a link
            # planted in a writable preopen (say to ../secret) waits for the host app to follow.
            self._linker.define_func(
                WASI_MODULE, "path_symlink", ("i32",) * 5, ("i32",),
                lambda _caller, _args: [_WASI_EPERM], self._on_error,
            )  # fmt: skip
        self._clock_base = time.monotonic_ns()
        self._out: OutputSink | None = None
        self._err: OutputSink | None = None

        # Resolve and type-check the imports once; every later instance (after a trap, or per
        # call with fresh_instance) skips that work.
        try:
            self._linker.prepare(module)
        except rt.WasmFailure as failure:
            raise PluginLoadError(f"plugin {name!r}: {failure.message}") from None
        self._ticks = self._deadline_ticks()
        if policy.timeout is not None:
            ticker.ensure_running()
        inst = self._new_instance("load")
        self._instance = inst
        self._check_abi(inst)

    # -- public surface -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The plugin's name (used in errors and its logger ``plugsafe.plugin.<name>``)."""
        return self._name

    @property
    def policy(self) -> Policy:
        """The policy the plugin was loaded with."""
        return self._policy

    @property
    def exports(self) -> Mapping[str, ExportInfo]:
        """The module's exports by name."""
        return MappingProxyType(self._module.exports)

    @property
    def imports(self) -> tuple[ImportInfo, ...]:
        """The module's imports (all of them were allowed by the policy)."""
        return self._module.imports

    @property
    def last_call(self) -> CallStats | None:
        """Stats of the most recent call (from any thread), or None before the first."""
        last = self._last
        if last is None:
            return None
        fuel, duration, memory, host_calls = last
        if not isinstance(memory, int):
            memory = memory.memory_total()
        return CallStats(fuel, duration, memory, host_calls)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def call(self, function: str, data: bytes | bytearray | memoryview | str = b"") -> bytes:
        """Call ABI function ``function`` with ``data`` (str is sent as UTF-8); return its output.

        Raises GuestError if the plugin reports a failure, AbiError for a bad pointer/length
        or an input/output over the policy's caps, PluginTrap on a trap, and LimitExceeded
        subclasses when fuel, time, memory or host calls run out.
        """
        payload = data if type(data) is bytes else self._payload(data)
        if len(payload) > self._max_input:
            raise AbiError(
                f"plugin {self._name!r}: input of {len(payload)} bytes is over the policy's "
                f"max_input of {self._max_input}"
            )
        lock = self._lock
        # The common case (uncontended, a live instance, a function already checked) goes
        # straight to the round trip; anything else takes the general path, _guarded.
        if lock.acquire(False):
            inst = self._instance
            ref = None if inst is None else inst.funcs.get(function)
            if ref is not None and ref.abi_ok:
                assert inst is not None
                start = _perf_counter()
                state = self._begin(function, start) if self._has_imports else self._idle_state
                try:
                    return self._round_trip(inst, ref, function, payload)
                except rt.WasmFailure as failure:
                    _raise(self._call_failed(failure, state, function, inst))
                finally:
                    self._settle(inst, state, start)
                    lock.release()
            lock.release()
        return self._guarded(function, lambda inst: self._call_abi(inst, function, payload))

    @staticmethod
    def _payload(data: object) -> bytes:
        if isinstance(data, str):
            return data.encode("utf-8")
        if isinstance(data, (bytes, bytearray, memoryview)):
            return bytes(data)
        raise TypeError(f"call() data must be bytes or str, not {type(data).__name__}")

    def call_json(self, function: str, value: Any) -> Any:
        """Call ``function`` with ``value`` as JSON and return the JSON it answers, decoded."""
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        out = self.call(function, text.encode("utf-8"))
        try:
            return json.loads(out)
        except (UnicodeDecodeError, ValueError) as exc:
            raise AbiError(
                f"plugin {self._name!r} function {function!r} did not return valid JSON: {exc}"
            ) from None

    def invoke(self, function: str, *args: SupportsIndex | SupportsFloat) -> Any:
        """Call any exported function with numeric params/results (no ABI involved).

        Integer parameters take any int in the signed or unsigned range of their type (an
        unsigned value is passed with the same bits); float parameters take any real number.
        Integer results come back signed. Returns None, one value, or a tuple for several
        results.
        """
        lock = self._lock
        # The common case in as few steps as possible (this is the per-call cost users see):
        # an uncontended lock, a live instance, a function whose type was already checked.
        # Anything else (first call, contention, re-entrance, closed, fresh instances) takes
        # the general path. The bookkeeping at the end is _settle's, inlined.
        if lock.acquire(False):
            inst = self._instance
            ref = None if inst is None else inst.funcs.get(function)
            if ref is not None and ref.invoke_ok:
                assert inst is not None
                start = _perf_counter()
                if self._has_imports:  # _begin, inlined
                    self._owner = _get_ident()
                    self._state = state = self._call_state
                    state.function = function
                    state.start = start
                else:
                    state = self._idle_state
                try:
                    try:
                        out = ref.invoke(args)
                    except rt.ArgumentsDoNotFit:
                        out = ref.invoke(self._convert_args(ref, function, args))
                except rt.WasmFailure as failure:
                    _raise(self._call_failed(failure, state, function, inst))
                finally:
                    if inst is self._instance and self._lean and not state.host_calls:
                        self._last = (None, _perf_counter() - start, inst, 0)
                        self._owner = None
                        if self._close_pending:
                            self._complete_close()
                    else:
                        self._settle(inst, state, start)
                    lock.release()
                n = len(out)
                return None if n == 0 else out[0] if n == 1 else out
            lock.release()

        def op(inst: rt.Instance) -> Any:
            ref = inst.func(function)
            if ref is None or not ref.invoke_ok:
                ref = self._check_invoke(inst, function)
            try:
                out = inst.invoke(ref, args)
            except rt.ArgumentsDoNotFit:
                out = inst.invoke(ref, self._convert_args(ref, function, args))
            n = len(out)
            return None if n == 0 else out[0] if n == 1 else out

        return self._guarded(function, op)

    async def call_async(
        self, function: str, data: bytes | bytearray | memoryview | str = b""
    ) -> bytes:
        """:meth:`call` from asyncio: runs on the loop's default executor, never blocking it."""
        return await run_in_thread(None, functools.partial(self.call, function, data))

    async def call_json_async(self, function: str, value: Any) -> Any:
        """:meth:`call_json` from asyncio."""
        return await run_in_thread(None, functools.partial(self.call_json, function, value))

    async def invoke_async(self, function: str, *args: SupportsIndex | SupportsFloat) -> Any:
        """:meth:`invoke` from asyncio."""
        return await run_in_thread(None, functools.partial(self.invoke, function, *args))

    def close(self) -> None:
        """Release the instance. Later use raises PluginClosedError. Idempotent."""
        if self._closed:
            return
        if self._owner == threading.get_ident():
            # Called from one of this plugin's own host functions: finish when the call ends.
            self._closed = True
            self._close_pending = True
            return
        with self._lock:
            self._closed = True
            self._instance = None
        self._on_close(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<plugsafe.Plugin {self._name!r} {state}>"

    # -- instance lifecycle -------------------------------------------------------------------

    def _deadline_ticks(self) -> int:
        t = self._policy.timeout
        if t is None:
            return rt.NO_DEADLINE_TICKS
        # +1: the first tick may come at once, so one more guarantees at least `timeout`.
        return math.ceil(t / rt.TICK_SECONDS) + 1

    def _new_instance(
        self, phase: Phase, *, args: Sequence[str] | None = None, stdin: bytes | None = None
    ) -> rt.Instance:
        """Instantiate (start function, then a reactor's ``_initialize``) under a fresh budget."""
        self._state = state = self._fresh_state()
        state.function = "(start)"
        wasi = None
        if self._policy.wasi is not None:
            wasi = self._wasi_config(args, stdin)
        inst = None
        try:
            inst = rt.Instance(
                self._engine,
                self._linker,
                self._module,
                memory_size=self._memory_per,
                memories=max(self._memory_count, 1),
                table_elements=self._policy.max_table_elements,
                tables=_MAX_TABLES,
                fuel=self._policy.fuel,
                deadline_ticks=self._ticks,
                epochs=None if self._policy.timeout is None else self._ticker,
                wasi=wasi,
            )
            init = self._module.exports.get("_initialize")
            if init is not None and init.kind == "func" and not init.params and not init.results:
                state.function = "_initialize"
                ref = inst.func("_initialize")
                assert ref is not None
                inst.call(ref, [])
            return inst
        except rt.WasmFailure as failure:
            err: BaseException | None = self._translate(failure, state, state.function, inst, phase)
            try:
                if phase == "load" and isinstance(err, PluginCallError):
                    raise PluginLoadError(
                        f"plugin {self._name!r} failed while being instantiated: {err}"
                    ) from err
                assert err is not None
                raise err from err.__cause__
            finally:
                err = None  # no cycle through this frame (see _raise)

    def _wasi_config(self, args: Sequence[str] | None, stdin: bytes | None) -> object:
        """A WasiConfig for one new instance, with fresh output sinks (kept as _out/_err)."""
        w = self._policy.wasi
        assert w is not None
        cap = self._policy.max_output
        self._out = out = OutputSink(w.stdout, cap)
        self._err = err = OutputSink(w.stderr, cap)
        return rt.wasi_config(
            args=w.args if args is None else args,
            env=dict(w.env),
            stdin=w.stdin if stdin is None else stdin,
            stdout=(w.stdout, out.write),
            stderr=(w.stderr, err.write),
            preopens=[(os.fspath(p.host), p.guest, p.writable) for p in w.preopens],
        )

    def run(self, args: Sequence[str] | None = None, stdin: bytes | None = None) -> RunResult:
        """Run a WASI command's ``_start`` on a fresh instance and return its exit and output.

        ``args`` and ``stdin`` replace the policy's ``Wasi.args``/``Wasi.stdin`` for this run.
        ``proc_exit(n)`` ends the run with ``exit_code == n``; returning from ``_start`` is 0.
        Traps and limits raise as for :meth:`call`. The plugin's own instance (used by
        ``call``/``invoke``) is not touched.
        """
        if self._policy.wasi is None:
            raise PluginCallError(
                f"plugin {self._name!r} has no WASI capability (Policy.wasi is None); "
                "run() needs it"
            )
        if args is not None and (
            isinstance(args, (str, bytes)) or not all(isinstance(a, str) for a in args)
        ):
            raise TypeError("args must be a list of str")
        if stdin is not None and not isinstance(stdin, (bytes, bytearray)):
            raise TypeError("stdin must be bytes")
        if stdin is not None and len(stdin) > self._policy.max_input:
            raise AbiError(
                f"plugin {self._name!r}: stdin of {len(stdin)} bytes is over the policy's "
                f"max_input of {self._policy.max_input}"
            )
        start = self._module.exports.get("_start")
        if start is None or start.kind != "func" or start.params or start.results:
            raise ExportNotFoundError(
                f"plugin {self._name!r} is not a WASI command: it exports no _start() function"
            )
        if self._closed:
            raise PluginClosedError(f"plugin {self._name!r} is closed")
        if self._owner == threading.get_ident():
            raise PluginCallError(f"plugin {self._name!r}: run() from its own host function")
        with self._lock:
            if self._closed:
                raise PluginClosedError(f"plugin {self._name!r} is closed")
            self._owner = threading.get_ident()
            saved = (self._out, self._err)
            try:
                inst = self._new_instance(
                    "call", args=None if args is None else list(args),
                    stdin=None if stdin is None else bytes(stdin),
                )  # fmt: skip
                out, err = self._out, self._err
                assert out is not None and err is not None
                ref = inst.func("_start")
                assert ref is not None
                self._state = state = self._fresh_state()
                state.function = "_start"
                t0 = time.perf_counter()
                code = 0
                try:
                    inst.call(ref, [])
                except rt.WasmFailure as failure:
                    if failure.exit_code is None:
                        _raise(self._translate(failure, state, "_start", inst, "call"))
                    code = failure.exit_code
                finally:
                    self._finish(inst, state, t0)
                return RunResult(code, out.value(), err.value(), out.truncated, err.truncated)
            finally:
                self._out, self._err = saved
                self._owner = None

    def _clock_time_get(self) -> rt.HostCallback:
        """WASI clock_time_get: realtime, and a monotonic clock shared with our poll_oneoff."""

        def clock(caller: rt.Caller, args: list[Any]) -> list[Any]:
            clock_id, _precision, out_ptr = args
            if clock_id == 0:
                now = time.time_ns()
            elif clock_id == 1:
                now = time.monotonic_ns() - self._clock_base
            else:  # process or thread CPU time: not offered
                return [_WASI_EINVAL]
            caller.write(out_ptr, now.to_bytes(8, "little"))
            return [0]

        return clock

    def _poll_oneoff(self) -> rt.HostCallback:
        """WASI poll_oneoff that never sleeps past the call's deadline.

        Clock subscriptions sleep (in Python, releasing the GIL) until the earliest one is due,
        or the deadline, whichever comes first; fd subscriptions are always ready (stdin is an
        in-memory buffer and outputs never block), so they end the poll at once.
        """

        def poll(caller: rt.Caller, args: list[Any]) -> list[Any]:
            state = self._state
            sub_ptr, out_ptr, n, nevents_ptr = (a & 0xFFFF_FFFF for a in args)
            if n == 0 or n > 4096:
                return [_WASI_EINVAL]
            subs = caller.read(sub_ptr, 48 * n)
            clocks: list[tuple[int, float]] = []  # (index, seconds from now)
            fds: list[int] = []
            # Deadlines are on the perf_counter clock (monotonic), like the call's start time.
            now_mono = time.perf_counter()
            for i in range(n):
                rec = subs[48 * i : 48 * (i + 1)]
                tag = rec[8]
                if tag == 0:
                    clock_id = int.from_bytes(rec[16:20], "little")
                    timeout = int.from_bytes(rec[24:32], "little") / 1e9
                    if rec[40] & 1:  # absolute time, on the clocks clock_time_get reports
                        if clock_id == 0:
                            timeout -= time.time()
                        else:
                            timeout -= (time.monotonic_ns() - self._clock_base) / 1e9
                    clocks.append((i, max(timeout, 0.0)))
                elif tag in (1, 2):
                    fds.append(i)
                else:
                    return [_WASI_EINVAL]
            ready: list[int] = list(fds)
            if not fds and clocks:
                wait = min(t for _, t in clocks)
                if state.deadline is not None and now_mono + wait > state.deadline:
                    time.sleep(max(state.deadline - now_mono, 0.0))
                    raise self._deadline_error(state.function, "call", " (while it slept)")
                time.sleep(wait)
                ready = [i for i, t in clocks if t <= wait]
            events = bytearray()
            for i in ready:
                rec = subs[48 * i : 48 * (i + 1)]
                event = bytearray(32)
                event[0:8] = rec[0:8]  # userdata
                event[10] = rec[8]  # type
                if rec[8] in (1, 2):
                    event[16:24] = (0).to_bytes(8, "little")
                events += event
            caller.write(out_ptr, bytes(events))
            caller.write(nevents_ptr, len(ready).to_bytes(4, "little"))
            return [0]

        return poll

    def _fresh_state(self) -> _CallState:
        return _CallState(self._timeout)

    def _check_abi(self, inst: rt.Instance) -> None:
        exports = self._module.exports
        version = exports.get(_abi.VERSION_EXPORT)
        if version is None:
            return
        if version.kind != "func" or version.params or version.results != ("i32",):
            raise PluginLoadError(
                f"plugin {self._name!r}: export {_abi.VERSION_EXPORT!r} must be a function "
                f"() -> i32, found {version}"
            )
        ref = inst.func(_abi.VERSION_EXPORT)
        assert ref is not None
        self._state = state = self._fresh_state()
        try:
            out = inst.call(ref, [])
        except rt.WasmFailure as failure:
            err: BaseException | None = self._translate(
                failure, state, _abi.VERSION_EXPORT, inst, "load"
            )
            try:
                if isinstance(err, LimitExceeded):
                    raise err from err.__cause__
                raise PluginLoadError(f"plugin {self._name!r}: {err}") from err
            finally:
                err = None  # no cycle through this frame (see _raise)
        declared = int(out[0])
        if declared != _abi.ABI_VERSION:
            raise AbiVersionError(self._name, declared, _abi.ABI_VERSION)
        problems = []
        mem = exports.get(_abi.MEMORY_EXPORT)
        if mem is None or mem.kind != "memory":
            problems.append(f"a memory export named {_abi.MEMORY_EXPORT!r}")
        alloc = exports.get(_abi.ALLOC_EXPORT)
        if (
            alloc is None
            or alloc.kind != "func"
            or alloc.params != ("i32",)
            or alloc.results != ("i32",)
        ):
            problems.append(f"a function export {_abi.ALLOC_EXPORT!r} of type (i32) -> i32")
        if problems:
            raise PluginLoadError(
                f"plugin {self._name!r} declares plugsafe ABI version {declared} but lacks "
                + " and ".join(problems)
            )
        self._abi = True

    def _with_instance(self, op: Callable[[rt.Instance], T]) -> T:
        """Run ``op`` on the current instance under the plugin's lock (no wasm call budget)."""
        if self._closed:
            raise PluginClosedError(f"plugin {self._name!r} is closed")
        if self._owner == threading.get_ident():
            inst = self._instance
            assert inst is not None
            return op(inst)
        with self._lock:
            if self._closed:
                raise PluginClosedError(f"plugin {self._name!r} is closed")
            inst = self._instance
            if inst is None:
                inst = self._instance = self._new_instance("call")
            return op(inst)

    def _guarded(self, function: str, op: Callable[[rt.Instance], T]) -> T:
        """Run one call the general way: wait for the lock, make an instance if there is none.

        ``call`` and ``invoke`` come here only when their fast path does not apply; ``op`` does
        the lookups and checks that the fast path finds already done.
        """
        me = threading.get_ident()
        if self._closed or self._owner == me:
            self._refuse(me)
        lock = self._lock
        lock.acquire()
        try:
            if self._closed:
                raise PluginClosedError(f"plugin {self._name!r} is closed")
            inst = self._instance
            if inst is None:
                self._owner = me  # the start function may call host functions
                try:
                    inst = self._instance = self._new_instance("call")
                finally:
                    self._owner = None
            start = _perf_counter()
            state = self._begin(function, start) if self._has_imports else self._idle_state
            try:
                return op(inst)
            except rt.WasmFailure as failure:
                _raise(self._call_failed(failure, state, function, inst))
            finally:
                self._settle(inst, state, start)
        finally:
            if self._close_pending:
                self._complete_close()
            lock.release()

    def _begin(self, function: str, start: float) -> _CallState:
        """Start a call of a plugin with imports: host callbacks write the per-call record.

        Calls never overlap, so one record serves them all (its counters are zero: see
        _CallState). The owner is recorded so that a host function calling back into this
        plugin is refused rather than deadlocked (plugins without imports run no Python during
        a call).
        """
        self._owner = threading.get_ident()
        self._state = state = self._call_state
        state.function = function
        state.start = start
        return state

    def _call_failed(
        self, failure: rt.WasmFailure, state: _CallState, function: str, inst: rt.Instance
    ) -> BaseException:
        # After any trap the instance may be in any state: throw it away.
        self._instance = None
        # The caller raises it from its __cause__: a host function's exception stays visible,
        # wasmtime's internals do not.
        return self._translate(failure, state, function, inst, "call")

    def _settle(self, inst: rt.Instance, state: _CallState, start: float) -> None:
        """End a call (lock still held): record its stats, drop what must not outlive it."""
        if inst is self._instance and self._lean and not state.log_dropped:
            # The common case: memory is read lazily from the live instance.
            self._last = (None, time.perf_counter() - start, inst, state.host_calls)
        else:
            self._finish(inst, state, start)
            if self._policy.fresh_instance:
                # Nothing of this call may reach the next one: drop the instance.
                self._instance = None
        state.host_calls = state.log_count = state.log_dropped = 0
        state.error = None
        self._owner = None
        if self._close_pending:
            self._complete_close()

    def _complete_close(self) -> None:
        # close() was called from a host function during the call that is ending now.
        self._instance = None
        self._close_pending = False
        self._on_close(self)

    def _refuse(self, me: int) -> NoReturn:
        if self._closed:
            raise PluginClosedError(f"plugin {self._name!r} is closed")
        raise PluginCallError(
            f"plugin {self._name!r} was called again from inside one of its own host "
            "functions; re-entrant calls are not allowed"
        )

    def _finish(self, inst: rt.Instance, state: _CallState, start: float) -> None:
        duration = time.perf_counter() - start
        fuel = self._fuel_budget
        consumed = None if fuel is None else max(fuel - inst.fuel_left(), 0)
        memory: int | rt.Instance = inst
        if inst is not self._instance or self._policy.fresh_instance:
            memory = inst.memory_total()
        self._last = (consumed, duration, memory, state.host_calls)
        if state.log_dropped:
            self._logger.warning(
                "plugin %s dropped %d log message(s) beyond its limit of %d per call",
                self._name,
                state.log_dropped,
                self._policy.log_messages,
            )

    # -- the ABI call -------------------------------------------------------------------------

    def _check_invoke(self, inst: rt.Instance, function: str) -> rt.FuncRef:
        if function in ("_start", "_initialize"):
            # WASI entry points: _start runs only through run() (with its own args, stdin and a
            # fresh instance), and _initialize only once per instance, by plugsafe.
            raise SignatureError(
                f"plugin {self._name!r}: {function} is a WASI entry point; "
                + ("use run()" if function == "_start" else "plugsafe calls it itself")
            )
        ref = self._lookup(inst, function)
        for t in (*ref.params, *ref.results):
            if t not in rt.NUMERIC_TYPES:
                raise SignatureError(
                    f"plugin {self._name!r} export {function!r} uses type {t}; invoke() "
                    "handles only i32, i64, f32 and f64"
                )
        inst.prepare_invoke(ref)  # the short path calls ref.invoke directly
        ref.invoke_ok = True
        return ref

    def _lookup(self, inst: rt.Instance, function: str) -> rt.FuncRef:
        ref = inst.func(function)
        if ref is None:
            info = self._module.exports.get(function)
            if info is None:
                names = sorted(n for n, e in self._module.exports.items() if e.kind == "func")
                raise ExportNotFoundError(
                    f"plugin {self._name!r} has no export {function!r} "
                    f"(its functions: {', '.join(names) or 'none'})"
                )
            raise ExportNotFoundError(
                f"plugin {self._name!r} export {function!r} is a {info.kind}, not a function"
            )
        return ref

    def _call_abi(self, inst: rt.Instance, function: str, payload: bytes) -> bytes:
        if not self._abi:
            raise AbiError(
                f"plugin {self._name!r} does not implement the plugsafe ABI (it exports no "
                f"{_abi.VERSION_EXPORT!r}); use invoke() for plain numeric exports"
            )
        ref = self._lookup(inst, function)
        if ref.params != ("i32", "i32") or ref.results != ("i64",):
            raise SignatureError(
                f"plugin {self._name!r} export {function!r} has type "
                f"({', '.join(ref.params)}) -> ({', '.join(ref.results)}); an ABI function "
                "must be (i32, i32) -> i64"
            )
        # The allocator is looked up too, so that the fast path finds both in inst.funcs.
        alloc = inst.func(_abi.ALLOC_EXPORT)
        assert alloc is not None
        ref.abi_ok = True
        return self._round_trip(inst, ref, function, payload)

    def _round_trip(
        self, inst: rt.Instance, ref: rt.FuncRef, function: str, payload: bytes
    ) -> bytes:
        """Input in, call, output out, for an ABI function already checked (``abi_ok``)."""
        alloc = inst.funcs[_abi.ALLOC_EXPORT]
        try:
            word = inst.abi_call(alloc, ref, payload)
        except rt.GuestAllocError:
            self._raise_alloc_failure(inst, len(payload))
            raise
        except rt.GuestMemoryError as exc:
            raise AbiError(
                f"plugin {self._name!r}: {_abi.ALLOC_EXPORT} returned a bad buffer for "
                f"{len(payload)} input bytes: {exc}"
            ) from None
        out_ptr, out_len, is_error = _abi.decode_result(word)
        if out_len > self._max_output:
            what = "error message" if is_error else "output"
            raise AbiError(
                f"plugin {self._name!r} function {function!r} returned a {out_len}-byte {what}, "
                f"over the policy's max_output of {self._policy.max_output}"
            )
        try:
            # docs/abi.md: an empty output may use any pointer, as for host-function arguments.
            out = inst.read(out_ptr, out_len) if out_len else b""
        except rt.GuestMemoryError as exc:
            what = "error message" if is_error else "output"
            raise AbiError(
                f"plugin {self._name!r} function {function!r} returned a bad {what} pointer: {exc}"
            ) from None
        if is_error:
            raise GuestError(self._name, function, out.decode("utf-8", "replace"))
        return out

    def _raise_alloc_failure(self, inst: rt.Instance, n: int) -> None:
        if inst.memory_size() + n > self._memory_per:
            raise MemoryLimitExceeded(
                f"plugin {self._name!r} could not allocate {n} input bytes: its memory "
                f"({_fmt_bytes(inst.memory_size())}) cannot grow past the policy's "
                f"{_fmt_bytes(self._memory_per)}",
                limit="memory",
                value=self._policy.memory,
                phase="call",
            )
        raise AbiError(f"plugin {self._name!r}: {_abi.ALLOC_EXPORT}({n}) returned 0")

    def _convert_args(
        self, ref: rt.FuncRef, function: str, args: Sequence[object]
    ) -> list[int | float]:
        """The arguments as the call path packs them, or SignatureError saying which is wrong."""
        params = ref.params
        if len(args) != len(params):
            raise SignatureError(
                f"plugin {self._name!r} export {function!r} takes {len(params)} "
                f"argument(s) ({', '.join(params)}), got {len(args)}"
            )
        return [
            self._convert_arg(function, i, t, a)
            for i, (t, a) in enumerate(zip(params, args, strict=True))
        ]

    def _convert_arg(self, function: str, i: int, t: str, a: object) -> int | float:
        where = f"plugin {self._name!r} export {function!r} argument {i}"
        if t in ("i32", "i64"):
            try:
                # Any integer, including numpy's: what operator.index accepts (not floats).
                v = operator.index(a)  # type: ignore[arg-type]
            except TypeError:
                raise SignatureError(f"{where} is {t}; got {type(a).__name__}") from None
            lo, hi = _I32 if t == "i32" else _I64
            if not lo <= v <= hi:
                raise SignatureError(f"{where} ({t}) is out of range: {v}")
            bits = 32 if t == "i32" else 64
            return v - (1 << bits) if v >= 1 << (bits - 1) else v
        # Any real number: what struct packs as a double (__float__, or __index__).
        if isinstance(a, (str, bytes, bytearray)) or not (
            hasattr(a, "__float__") or hasattr(a, "__index__")
        ):
            raise SignatureError(f"{where} is {t}; got {type(a).__name__}")
        try:
            x = float(a)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError) as exc:
            raise SignatureError(
                f"{where} is {t}; {type(a).__name__} did not convert: {exc}"
            ) from None
        if t == "f32" and math.isfinite(x) and abs(x) > _F32_MAX:
            raise SignatureError(f"{where} (f32) is out of range: {x!r}")
        return x

    # -- failures -----------------------------------------------------------------------------

    def _translate(
        self,
        failure: rt.WasmFailure,
        state: _CallState,
        function: str,
        inst: rt.Instance | None,
        phase: Phase,
    ) -> BaseException:
        """Decide what a failed wasm call means, from our own per-call record first.

        wasmtime-py keeps host exceptions in a module-global; we never rely on it: whatever a
        host function of *this* plugin raised is in ``state.error``, which only this call sees.
        """
        recorded = state.error
        if recorded is not None:
            state.error = None
            if isinstance(recorded, _AppError):
                exc = recorded.exc
                if not isinstance(exc, Exception):
                    return exc  # KeyboardInterrupt, SystemExit: propagate unchanged
                err = HostFunctionError(
                    f"host function {recorded.function!r} raised {type(exc).__name__}: {exc} "
                    f"(called by plugin {self._name!r} in {function!r})",
                    function=recorded.function,
                )
                err.__cause__ = exc
                return err
            if isinstance(recorded, rt.WasmFailure):
                return self._translate(recorded, state, function, inst, phase)
            return recorded
        code = failure.trap_code
        where = f"plugin {self._name!r} in {function!r}"
        if failure.exit_code is not None:
            return PluginExitError(
                f"{where} called proc_exit({failure.exit_code})", exit_code=failure.exit_code
            )
        if code == "OUT_OF_FUEL":
            return FuelExhausted(
                f"{where} used all {self._policy.fuel} units of fuel the policy allows per call",
                limit="fuel",
                value=self._policy.fuel,
                phase=phase,
            )
        if code == "INTERRUPT":
            return self._deadline_error(function, phase)
        reason = _short_trap(failure.message)
        if code is None:
            if "memory" in reason and ("limit" in reason or "minimum" in reason):
                return MemoryLimitExceeded(
                    f"{where}: {reason}", limit="memory", value=self._policy.memory, phase=phase
                )
            if phase == "load":
                return PluginLoadError(f"{where}: {reason}")
        if code is not None and inst is not None and self._memory_exhausted(inst, code):
            return MemoryLimitExceeded(
                f"{where} trapped ({reason}) with its memory at "
                f"{_fmt_bytes(inst.memory_total())} of the policy's "
                f"{_fmt_bytes(self._policy.memory)}: a memory.grow was refused",
                limit="memory",
                value=self._policy.memory,
                phase=phase,
            )
        return PluginTrap(f"{where} trapped: {reason}\n{failure.message}", trap_code=code)

    def _deadline_error(self, function: str, phase: Phase, detail: str = "") -> DeadlineExceeded:
        return DeadlineExceeded(
            f"plugin {self._name!r} in {function!r} ran past the policy's timeout of "
            f"{self._policy.timeout:g} s{detail}",
            limit="timeout",
            value=self._policy.timeout,
            phase=phase,
        )

    def _memory_exhausted(self, inst: rt.Instance, code: str) -> bool:
        """Guess whether a trap followed a refused ``memory.grow``.

        WebAssembly reports a refused growth only to the guest (``memory.grow`` returns -1), and
        wasmtime's C API cannot make it trap. Allocators then trap (``unreachable``). So: a trap
        with a memory less than a page from its cap, or an ``unreachable`` with a memory that
        could not have doubled, is reported as the memory limit. docs/errors.md explains this.
        """
        limit = self._memory_per
        size = inst.memory_size()
        if size == 0 or limit == 0:
            return False
        if size + _PAGE > limit:
            return True
        return code == "UNREACHABLE" and size * 2 > limit

    # -- host functions -----------------------------------------------------------------------

    def _on_error(self, exc: BaseException) -> str:
        state = self._state
        if state.error is None:
            state.error = exc
        if isinstance(exc, _AppError):
            return f"plugsafe: host function {exc.function!r} raised {type(exc.exc).__name__}"
        return f"plugsafe: {type(exc).__name__}"

    def _enter_host(self, state: _CallState, function: str) -> None:
        state.host_calls += 1
        if state.host_calls > self._host_call_quota:
            raise self._too_many_host_calls(state, function)
        # wasm checks its deadline only at function entries and loop back-edges: without this,
        # a run of host calls in straight-line code could stretch the call far past it.
        timeout = self._timeout
        if timeout is not None and _perf_counter() > state.start + timeout:
            raise self._late_host_call(state, function)

    def _late_host_call(self, state: _CallState, function: str) -> DeadlineExceeded:
        return self._deadline_error(
            state.function, "call", f" (noticed when it called {function!r})"
        )

    def _too_many_host_calls(self, state: _CallState, function: str) -> HostCallLimitExceeded:
        quota = self._policy.max_host_calls
        return HostCallLimitExceeded(
            f"plugin {self._name!r} in {state.function!r} made more than {quota} host "
            f"function calls (policy max_host_calls); the last was {function!r}",
            limit="max_host_calls",
            value=quota,
            phase="call",
        )

    def _bind(self, bound: BoundFunction) -> None:
        params, results = bound.wasm
        sig = bound.signature
        if (
            not bound.builtin
            and all(k in ("int", "float") for k in sig.params)
            and (sig.result in ("int", "float", "none"))
        ):
            # Numbers in, a number (or nothing) out: the common shape for counters and lookups
            # by id, called with no Caller and no conversion.
            self._linker.define_numeric(
                _abi.HOST_MODULE, bound.name, params, results[0] if results else None,
                self._numeric_callback(bound), self._on_error,
            )  # fmt: skip
            return
        if bound.builtin and bound.name == "log":
            callback = self._log_callback()
        else:
            callback = self._app_callback(bound)
        self._linker.define_func(
            _abi.HOST_MODULE, bound.name, params, results, callback, self._on_error
        )

    def _numeric_callback(self, bound: BoundFunction) -> Callable[..., Any]:
        name = bound.name
        fn = bound.fn
        kind = bound.signature.result
        want: Any = int if kind == "int" else float if kind == "float" else type(None)
        # The checks of _enter_host, inlined: this runs on every host call.
        quota = self._host_call_quota
        timeout = self._timeout

        def numeric(*args: Any) -> Any:
            state = self._state
            n = state.host_calls = state.host_calls + 1
            if n > quota:
                raise self._too_many_host_calls(state, name)
            if timeout is not None and _perf_counter() > state.start + timeout:
                raise self._late_host_call(state, name)
            try:
                result: Any = fn(*args)
            except BaseException as exc:
                raise _AppError(name, exc) from exc
            if type(result) is want and (want is not int or -(2**63) <= result < 2**63):
                return result
            if kind == "none":
                return None
            encoded = self._encode_result(None, name, kind, result)
            assert encoded is not None
            return encoded[0]

        return numeric

    def _log_callback(self) -> rt.HostCallback:
        policy = self._policy
        logger = self._logger

        def log(caller: rt.Caller, args: list[Any]) -> None:
            state = self._state
            self._enter_host(state, "log")
            level, pointer, length = args
            if not 0 <= level < len(LEVELS):
                raise AbiError(
                    f"plugin {self._name!r} called log with level {level}; levels are 0 (trace) "
                    "to 4 (error)"
                )
            length &= 0xFFFF_FFFF
            try:
                # The whole span must be valid even though only a prefix is kept.
                caller.read(pointer + length - 1 if length else pointer, 1 if length else 0)
            except rt.GuestMemoryError as exc:
                raise AbiError(
                    f"plugin {self._name!r} called log with a bad message: {exc}"
                ) from None
            if state.log_count >= policy.log_messages:
                state.log_dropped += 1
                return None
            state.log_count += 1
            keep = min(length, policy.log_message_size)
            raw = caller.read(pointer, keep)
            text = escape(raw.decode("utf-8", "replace"))
            if keep < length:
                text += f"... [cut: {length} bytes in all]"
            logger.log(LEVELS[level], "%s", text, extra={"plugsafe_plugin": self._name})
            return None

        return log

    def _app_callback(self, bound: BoundFunction) -> rt.HostCallback:
        sig = bound.signature
        name = bound.name
        fn = bound.fn
        arg_cap = self._policy.max_host_arg_size

        def call(caller: rt.Caller, args: list[Any]) -> list[Any] | None:
            state = self._state
            self._enter_host(state, name)
            py_args: list[Any] = []
            i = 0
            for kind in sig.params:
                if kind == "int":
                    py_args.append(int(args[i]))
                    i += 1
                elif kind == "float":
                    py_args.append(float(args[i]))
                    i += 1
                elif kind == "bool":
                    py_args.append(args[i] != 0)
                    i += 1
                else:
                    size = args[i + 1] & 0xFFFF_FFFF
                    if size > arg_cap:
                        raise AbiError(
                            f"plugin {self._name!r} passed a {size}-byte {kind} argument to host "
                            f"function {name!r}, over the policy's max_host_arg_size of {arg_cap}"
                        )
                    try:
                        raw = caller.read(args[i], args[i + 1])
                    except rt.GuestMemoryError as exc:
                        raise AbiError(
                            f"plugin {self._name!r} passed a bad {kind} argument to host "
                            f"function {name!r}: {exc}"
                        ) from None
                    i += 2
                    if kind == "str":
                        try:
                            py_args.append(raw.decode("utf-8"))
                        except UnicodeDecodeError as exc:
                            raise AbiError(
                                f"plugin {self._name!r} passed invalid UTF-8 to host function "
                                f"{name!r}: {exc}"
                            ) from None
                    else:
                        py_args.append(raw)
            try:
                result = fn(*py_args)
            except BaseException as exc:
                raise _AppError(name, exc) from exc
            return self._encode_result(caller, name, sig.result, result)

        return call

    def _encode_result(
        self, caller: rt.Caller | None, name: str, kind: str, result: Any
    ) -> list[Any] | None:
        """The wasm results for a host function's ``result`` (``caller`` only for str/bytes)."""

        def wrong(expected: str) -> _AppError:
            return _AppError(
                name,
                TypeError(
                    f"host function {name!r} returned {type(result).__name__}; its annotation "
                    f"says {expected}"
                ),
            )

        if kind == "none":
            return None
        if kind == "int":
            if not isinstance(result, int) or isinstance(result, bool):
                raise wrong("int")
            if not _I64[0] <= result <= 2**63 - 1:
                raise _AppError(
                    name,
                    OverflowError(
                        f"host function {name!r} returned {result}, which does not fit in i64"
                    ),
                )
            return [result]
        if kind == "float":
            if not isinstance(result, (int, float)) or isinstance(result, bool):
                raise wrong("float")
            return [float(result)]
        if kind == "bool":
            if not isinstance(result, bool):
                raise wrong("bool")
            return [1 if result else 0]
        optional = kind.endswith("?")
        base = kind.rstrip("?")
        if result is None:
            if optional:
                return [_abi.NONE_WORD]
            raise wrong(base)
        if base == "str":
            if not isinstance(result, str):
                raise wrong("str")
            data = result.encode("utf-8")
        else:
            if not isinstance(result, (bytes, bytearray, memoryview)):
                raise wrong("bytes")
            data = bytes(result)
        if len(data) > 0x7FFF_FFFF:
            raise _AppError(name, OverflowError(f"host function {name!r} returned over 2 GiB"))
        assert caller is not None
        try:
            pointer = caller.place(data, _abi.ALLOC_EXPORT.encode())
        except rt.GuestAllocError:
            raise MemoryLimitExceeded(
                f"plugin {self._name!r} could not allocate {len(data)} bytes for the result "
                f"of host function {name!r}",
                limit="memory",
                value=self._policy.memory,
                phase="call",
            ) from None
        except rt.GuestMemoryError as exc:
            raise AbiError(f"plugin {self._name!r}: {exc}") from None
        return [_abi.encode_result(pointer, len(data))]
