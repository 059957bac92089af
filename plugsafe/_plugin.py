"""The public Plugin: its lifecycle (load, instances, run, close) and the calls it delegates.

How a call runs is in ``_callpath``, host functions in ``_hostfn``, WASI's host side in
``_wasi``, and what a failure means in ``_errors``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn, SupportsFloat, SupportsIndex, TypeVar

if TYPE_CHECKING:  # concurrent.futures is imported when call_async first runs (issue 14)
    from concurrent.futures import ThreadPoolExecutor

from . import _abi
from . import _runtime as rt
from ._callpath import PYTHON_FAILED, PYTHON_FAILED_MESSAGE, CallPath, CallToken
from ._closing import Closing
from ._errors import (
    AbiError,
    AbiVersionError,
    Diagnosis,
    ExportNotFoundError,
    LimitExceeded,
    MemoryAccessError,
    MemoryLimitExceeded,
    Phase,
    PluginCallError,
    PluginClosedError,
    PluginLoadError,
    PlugsafeError,
    PoolExhausted,
    fmt_bytes,
    int_text,
    raise_clean,
)
from ._hostfn import BoundFunction, HostCalls
from ._lazymodule import lazy_function, lazy_module
from ._log import logger_for
from ._nesting import thread_room, tls
from ._oncall import OnCall, reported
from ._policy import Policy
from ._runtime import _wasifork
from ._types import CallStats, ExportInfo, ImportInfo
from ._wasi import SHIM_SHAPES, check_c_text
from ._wasmshape import MemoryDecl
from ._worker import Worker

if TYPE_CHECKING:
    import json

    from ._aio import run_call
    from ._callinfo import CallInfo
    from ._runresult import RunResult
    from ._wasishims import WasiShims
else:
    # call_json's codec, when it first runs (issue 14: a cold start that never calls it paid
    # about 2 % of its instructions for json and its C accelerator).
    json = lazy_module("json", globals(), "json")
    # asyncio's helper (and contextvars), when call_async first runs (issue 14: cold start).
    run_call = lazy_function("plugsafe._aio", "run_call", globals())
    # WASI's host side, when a plugin under a Wasi grant is first loaded (issue 14: cold start).
    WasiShims = lazy_function("plugsafe._wasishims", "WasiShims", globals())
    # current_call()'s and run()'s results, when first made (issue 14: two dataclasses fewer).
    CallInfo = lazy_function("plugsafe._callinfo", "CallInfo", globals())
    RunResult = lazy_function("plugsafe._runresult", "RunResult", globals())

__all__ = ["CallInfo", "Plugin", "PluginMemory", "current_call"]

T = TypeVar("T")
_perf_counter = time.perf_counter


def current_call() -> CallInfo | None:
    """The plugin call the calling host function serves, or None outside any plugin call.

    Call it inside a host function to learn which plugin called it, in which export, and the
    ``context=`` its caller passed: one Host can then serve many tenants. In nested calls (a
    host function that calls another plugin) each host function sees its own call; once a call
    ends (returned or raised) the outer one, or None, is current again. Per thread: a call on
    another thread is never seen.
    """
    try:
        path = tls.room.call
    except AttributeError:  # this thread never called a plugin
        return None
    if path is None:
        return None
    assert isinstance(path, CallPath)
    plugin = path.plugin()
    if plugin is None:
        return None
    assert isinstance(plugin, Plugin)
    state = path.state
    return CallInfo(plugin, state.function, state.context)


def _json_in(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (call_json's input).

    Raises what ``json.dumps`` raises for a value it cannot encode (TypeError, ValueError),
    and ValueError (the RecursionError its ``__cause__``) for one nested too deeply for it:
    the encoder recurses once per level, and Python's RecursionError is no documented error.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError as exc:
        raise ValueError(
            "call_json: the value is nested too deeply for Python's JSON encoder (its "
            "recursion limit)"
        ) from exc
    return text.encode("utf-8")


class ModuleFacts:
    """What every Plugin of one module derives from its exports and imports alone (made once
    per compiled module, kept on it: ``rt.Module.facts``; issue 14: a load redid it)."""

    __slots__ = (
        "allocator",
        "diagnosis",
        "has_imports",
        "imported",
        "problem",
        "reactor",
        "versioned",
    )

    def __init__(self, module: rt.Module) -> None:
        exports = module.exports
        # The type of every export plugsafe itself calls, checked before anything runs (see
        # Plugin._check_exports): the first problem, or None.
        self.problem: str | None = None
        for name, want in (
            (_abi.VERSION_EXPORT, _abi.VERSION_TYPE),
            ("_initialize", _abi.ENTRY_TYPE),
        ):
            if name in exports and self.problem is None:
                self.problem = _abi.export_problem(exports, name, want)
        self.reactor = "_initialize" in exports
        self.versioned = _abi.VERSION_EXPORT in exports
        alloc_ok = _abi.export_problem(exports, _abi.ALLOC_EXPORT, _abi.ALLOC_TYPE) is None
        self.allocator = _abi.ALLOC_EXPORT.encode() if alloc_ok else None
        self.has_imports = bool(module.imports)
        # The type each host function is imported with (an ``int`` as i32 or i64, ...): the
        # Linker binds it so; the import check accepted that type.
        self.imported = {
            imp.name: (imp.params, imp.results)
            for imp in module.imports
            if imp.module == _abi.HOST_MODULE and imp.kind == "func"
        }
        # The last plugin's Diagnosis (frozen: plugins of the same name and policy share it).
        self.diagnosis: Diagnosis | None = None


def module_facts(module: rt.Module) -> ModuleFacts:
    """``module``'s facts, made on first use (two threads may both make them: same result)."""
    facts = module.facts
    if facts is None:
        facts = module.facts = ModuleFacts(module)
    assert isinstance(facts, ModuleFacts)
    return facts


# Plugins whose instances may reach files (a WASI grant with preopens). In a child forked while
# wasmtime's WASI I/O threads ran (rt._wasifork), such an instance's file access would wait for
# ever; the child drops the instance it inherited, so its next call makes one and is refused.
_FILE_ACCESS: weakref.WeakSet[Plugin] = weakref.WeakSet()


def _drop_inherited_file_access() -> None:
    for plugin in list(_FILE_ACCESS):
        plugin._calls.instance = None


_wasifork.on_broken(_drop_inherited_file_access)


def _closed(name: str) -> Callable[..., NoReturn]:
    """What a released plugin's call path calls instead of its short paths and instances."""

    def closed(*_args: object, **_kwargs: object) -> NoReturn:
        raise PluginClosedError(f"plugin {name!r} is closed")

    return closed


def _nothing() -> None:
    return None


# Enough tables for any toolchain seen in practice; together with max_table_elements this bounds
# what tables can cost.
_MAX_TABLES = 10
_get_ident = threading.get_ident
# Beyond any offset or length a memory could have (wasm32: 4 GiB).
_SPAN_MAX = 2**64


class PluginMemory:
    """The plugin's exported linear memory ``memory``, bounds-checked.

    Reads and writes go to the plugin's current instance; after a trap that is the fresh one.
    """

    def __init__(self, calls: CallPath, name: str) -> None:
        # The plugin's call path and name, not the Plugin: no reference cycle, so that a
        # closed plugin is freed at once, by reference counting (see Plugin._released).
        self._calls = calls
        self._name = name

    @staticmethod
    def _check(offset: int, length: int) -> tuple[int, int]:
        """``(offset, length)`` as the plain ints they hold, checked to be >= 0."""
        out = []
        for label, v in (("offset", offset), ("length", length)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{label} must be an int, got {type(v).__name__}")
            # An int subclass is the int it holds: its own comparisons and arithmetic could
            # pass every range check with another value (attack7).
            v = int.__index__(v)
            if v < 0:
                raise MemoryAccessError(f"{label} must be >= 0, got {int_text(v)}")
            if v > _SPAN_MAX:
                # No memory is that large; and past 4300 digits the message's str() of the
                # int raised a raw ValueError (fuzz9).
                raise MemoryAccessError(f"{label} {int_text(v)} is past the end of any memory")
            out.append(v)
        return out[0], out[1]

    def read(self, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes starting at ``offset``; MemoryAccessError if out of range."""
        offset, length = self._check(offset, length)

        def op(target: rt.Instance | rt.Caller) -> bytes:
            try:
                self._within(target, offset, length)
                return target.read(offset, length)
            except rt.GuestMemoryError as exc:
                raise MemoryAccessError(f"plugin {self._name!r}: {exc}") from None

        return self._calls.with_instance(op)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into memory at ``offset``; MemoryAccessError if out of range."""
        payload = _abi.plain_bytes(data)  # its buffer's own length (attack7)
        offset, _ = self._check(offset, len(payload))

        def op(target: rt.Instance | rt.Caller) -> None:
            try:
                self._within(target, offset, len(payload))
                target.write(offset, payload)
            except rt.GuestMemoryError as exc:
                raise MemoryAccessError(f"plugin {self._name!r}: {exc}") from None

        self._calls.with_instance(op)

    @staticmethod
    def _within(target: rt.Instance | rt.Caller, offset: int, length: int) -> None:
        # A Caller (the start function is running) takes pointers as unsigned 32-bit: check the
        # full span first, so that an offset past 4 GiB is refused rather than wrapped.
        if isinstance(target, rt.Caller):
            rt.check_span(offset, length, target.memory_size())

    @property
    def size(self) -> int:
        """Current size in bytes."""

        def op(target: rt.Instance | rt.Caller) -> int:
            return target.memory_size()

        return self._calls.with_instance(op)


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
        on_call: OnCall | None = None,
        linkers: rt.LinkerPool | None = None,
    ) -> None:
        self._name = name
        self._on_call = on_call
        # call_async's own worker thread (made on first use: _worker).
        self._worker = Worker(name)
        self._policy = policy
        self._engine = engine
        self._module = module
        self._on_close = on_close
        self._facts = facts = module_facts(module)
        logger = logger_for(name)

        count = max(len(memories), 1)
        memory_per = policy.memory // count
        self._memory_count = len(memories)
        self._memory_per = memory_per
        # What every new instance is made with, read once here (issue 14: an instance per call).
        self._memories_cap = count
        self._table_elements = policy.max_table_elements
        self._fuel = policy.fuel
        self._timeout = policy.timeout
        for i, decl in enumerate(memories):
            if decl.minimum > memory_per:
                split = f" (split evenly over its {count} memories)" if count > 1 else ""
                raise MemoryLimitExceeded(
                    f"plugin {name!r}: memory {i} needs {fmt_bytes(decl.minimum)} at start, "
                    f"but the policy allows {fmt_bytes(memory_per)}{split}",
                    limit="memory",
                    value=policy.memory,
                    phase="load",
                )
        self._check_exports()

        diagnosis = facts.diagnosis
        if (
            diagnosis is None
            or diagnosis.plugin != name
            or diagnosis.memory_per != memory_per
            or diagnosis.fuel != policy.fuel
            or diagnosis.timeout != policy.timeout
            or diagnosis.memory != policy.memory
        ):
            diagnosis = facts.diagnosis = Diagnosis(
                name, policy.fuel, policy.timeout, policy.memory, memory_per
            )
        self._diagnosis = diagnosis
        self._calls = calls = CallPath(
            name=name,
            policy=policy,
            diagnosis=diagnosis,
            logger=logger,
            has_imports=facts.has_imports,
            exports=module.exports,
            new_instance=self._new_instance,
            on_closed=self._released,
            max_stack=engine.max_stack,
        )
        calls.plugin = weakref.ref(self)
        self._host_calls = HostCalls(
            name=name, policy=policy, state=calls.state, diagnosis=diagnosis, logger=logger
        )
        self._host_calls.allocator = self._allocator
        self._functions = functions  # the imports the Host checked against the policy
        self._wasi: WasiShims | None = None
        if policy.wasi is not None:
            self._wasi = WasiShims(policy.wasi, policy.max_output, calls.state, diagnosis)
            _wasifork.note()  # (its instances may be bare WASI contexts: no wasi_config)
            if policy.wasi.preopens:
                _FILE_ACCESS.add(self)  # (dropped in a child forked with WASI I/O: see there)
        else:
            # _new_instance's first case directly: a frame less for every instance made for a
            # call (a fresh_instance plugin makes one per call: issue 14, goal 6).
            calls.new_instance = self._instantiate
        # The Host's pool of Linkers of closed plugins: one that defines exactly what this
        # plugin's Linker would (same engine, module, host functions, WASI or not) is taken
        # and rebound to this plugin instead of built (issue 14). The import check above
        # already refused every import this policy does not allow.
        # In a one-item list: _released takes it with one atomic list.pop, so that two threads
        # closing the plugin at once never give its Linker back twice (two later plugins would
        # then share it).
        self._linkers = [] if linkers is None else [linkers]
        self._linker_key = (
            engine,
            module,
            policy.wasi is not None,
            tuple([(name, id(bound)) for name, bound in functions.items()]) if functions else (),
        )
        self._linker = self._build_linker()
        self.memory = PluginMemory(calls, name)
        # The per-call entry points, set on the instance so that ``plugin.call(...)`` is the
        # call path's method itself, bound, with no delegating frame (the methods below document
        # them and serve calls made through the class, ``Plugin.call(plugin, ...)``; the
        # call path's read as them, see the end of this module).
        self.call = calls.call  # type: ignore[method-assign]
        self.invoke = calls.invoke  # type: ignore[method-assign]
        # Kept here as well: the call path lets go of them once the plugin is released.
        self._short_call, self._short_invoke = calls.call, calls.invoke
        if on_call is not None:
            # Only then is there a frame around the short paths (no cost for hosts without).
            short_call, short_invoke = calls.call, calls.invoke

            def call(function: str, data: Any = b"", *, context: Any = None) -> bytes:
                return self._reported(
                    function, context, lambda: short_call(function, data, context=context)
                )

            def invoke(function: str, *args: Any, context: Any = None) -> Any:
                return self._reported(
                    function, context, lambda: short_invoke(function, *args, context=context)
                )

            for fn, method in ((call, Plugin.call), (invoke, Plugin.invoke)):
                fn.__name__, fn.__qualname__, fn.__doc__ = (
                    method.__name__,
                    method.__qualname__,
                    method.__doc__,
                )
                fn.__module__ = "plugsafe"
            self.call = call  # type: ignore[method-assign]
            self.invoke = invoke  # type: ignore[method-assign]

        # Resolve and type-check the imports once; every later instance (after a trap, or per
        # call with fresh_instance) skips that work.
        try:
            self._linker.prepare(module)
        except rt.WasmFailure as failure:
            raise PluginLoadError(f"plugin {name!r}: {failure.message}") from None
        calls.linker, calls.host_record = self._linker, self._linker.record
        self._ticks = rt.NO_DEADLINE_TICKS
        self._epochs: rt.Ticker | None = None
        self._timeout_ticks: int | None = None
        loading = None
        if policy.timeout is not None:
            ticker.ensure_running()
            self._epochs = epochs = engine.ticker
            epochs.use_timeout(policy.timeout)
            # Every instance's deadline in ticks: the same for each (the period is fixed).
            self._timeout_ticks = epochs.ticks(policy.timeout)
            # The ticker stops as soon as none of the locks its timed calls hold is held: every
            # call holds the call lock; the load (instantiating, the ABI check) a lock of its own.
            epochs.watch(calls.lock)
            loading = threading.Lock()
            epochs.watch(loading)
            loading.acquire()
        try:
            # Loading runs wasm on this thread's stack: counted like a call (a host function
            # may be loading plugins), as CallPath.nested_load does (inline: no generator and
            # context manager per load).
            th = thread_room()
            room = th.room
            left = room - calls.cost
            if left < 0 or left & 8:
                raise calls.too_deep(th, "load")
            th.room = left
            try:
                inst = self._new_instance("load")
                calls.instance = inst
                self._check_abi(inst)
            finally:
                th.room = room
            if policy.fresh_instance:
                # Guest code ran in it (plugsafe_abi_version): the first call, too, gets a
                # brand-new instance, made within that call's timeout.
                calls.instance = None
        finally:
            if loading is not None:
                loading.release()

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
        """Stats of this thread's most recent call of the plugin, or None before its first.

        Per thread: calls from other threads never replace what this thread sees.
        """
        return self._calls.last_call()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._calls.closed

    def call(
        self,
        function: str,
        data: bytes | bytearray | memoryview | str = b"",
        *,
        context: Any = None,
    ) -> bytes:
        """Call ABI function ``function`` with ``data`` (str is sent as UTF-8); return its output.

        ``context`` is anything the app wants its host functions to see for this call (a
        tenant, a request): ``plugsafe.current_call().context`` inside them.

        Raises GuestError if the plugin reports a failure, AbiError for a bad pointer/length
        or an input/output over the policy's caps, PluginTrap on a trap, and LimitExceeded
        subclasses when fuel, time, memory or host calls run out; SignatureError (a TypeError)
        for data that is not bytes-like or str or cannot be read as bytes (a released
        memoryview, a str with a lone surrogate), before anything runs.
        """
        return self._short_call(function, data, context)

    def call_json(self, function: str, value: Any, *, context: Any = None) -> Any:
        """Call ``function`` with ``value`` as JSON and return the JSON it answers, decoded."""
        call = self._short_call  # not self.call: on_call reports the whole, decoding included
        return self._reported(
            function,
            context,
            lambda: self._json_out(function, call(function, _json_in(value), context)),
        )

    def _json_out(self, function: str, out: bytes) -> Any:
        try:
            return json.loads(out)
        except (UnicodeDecodeError, ValueError) as exc:
            raise AbiError(
                f"plugin {self._name!r} function {function!r} did not return valid JSON: {exc}"
            ) from None
        except RecursionError:
            # json's decoder recurses once per level: a few KiB of "[[[[" from the plugin would
            # otherwise leak Python's RecursionError (issue 12, class 6).
            raise AbiError(
                f"plugin {self._name!r} function {function!r} returned JSON nested too deeply "
                "for Python's decoder (its recursion limit)"
            ) from None

    def invoke(
        self, function: str, *args: SupportsIndex | SupportsFloat, context: Any = None
    ) -> Any:
        """Call any exported function with numeric params/results (no ABI involved).

        Integer parameters take any int in the signed or unsigned range of their type (an
        unsigned value is passed with the same bits); float parameters take any real number.
        Integer results come back signed. Returns None, one value, or a tuple for several
        results. ``context`` as for :meth:`call`.

        A wrong count, type or range is a SignatureError, and so is an argument whose own
        ``__index__`` or ``__float__`` raises (that exception is its ``__cause__``; a
        KeyboardInterrupt or other BaseException propagates as itself): no wasm runs and the
        instance is kept (docs/errors.md, "Arguments from the app").
        """
        return self._short_invoke(function, *args, context=context)

    async def call_async(
        self,
        function: str,
        data: bytes | bytearray | memoryview | str = b"",
        *,
        context: Any = None,
    ) -> bytes:
        """:meth:`call` from asyncio, on the plugin's own worker thread (never the loop's).

        Host functions see the caller's ``contextvars``. If the awaiting task is cancelled
        (or ``asyncio.wait_for`` times out), a call not yet started never runs and a running
        one is interrupted (with a policy ``timeout``; without one it runs to its end).
        """
        return await run_call(
            self._executor(), lambda token: self._call_with(token, function, data, context)
        )

    async def call_json_async(self, function: str, value: Any, *, context: Any = None) -> Any:
        """:meth:`call_json` from asyncio (as :meth:`call_async`)."""
        text = _json_in(value)
        return await run_call(
            self._executor(),
            lambda token: self._call_with(token, function, text, context, json_out=True),
        )

    async def invoke_async(
        self, function: str, *args: SupportsIndex | SupportsFloat, context: Any = None
    ) -> Any:
        """:meth:`invoke` from asyncio (as :meth:`call_async`)."""
        return await run_call(
            self._executor(), lambda token: self._invoke_with(token, function, args, context)
        )

    # -- what the asynchronous calls (and pools) run, and on_call ------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        return self._worker.executor(self._closed)

    def _closed(self) -> bool:
        return self._calls.closed

    def _call_with(
        self, token: CallToken, function: str, data: bytes | bytearray | memoryview | str,
        context: Any, *, json_out: bool = False, begun: float | None = None,
    ) -> Any:  # fmt: skip
        """:meth:`call` on the general path, stoppable through ``token`` (async calls); with
        ``json_out`` its output decoded as JSON (within what on_call reports). ``begun``: when
        the call began if before now (its timeout runs from then: a pool's wait)."""

        def op() -> Any:
            out = self._calls.call_tracked(function, data, context, token, begun)
            return self._json_out(function, out) if json_out else out

        return self._reported(function, context, op)

    def _invoke_with(
        self,
        token: CallToken,
        function: str,
        args: Sequence[object],
        context: Any,
        begun: float | None = None,
    ) -> Any:
        """:meth:`invoke` on the general path, stoppable through ``token`` (async calls);
        ``begun`` as for :meth:`_call_with`."""
        return self._reported(
            function,
            context,
            lambda: self._calls.invoke_tracked(function, args, context, token, begun),
        )

    def _reported(self, function: str, context: Any, op: Callable[[], T]) -> T:
        """Run the call ``op``; with an ``on_call`` callback, report it to it afterwards."""
        on_call = self._on_call
        if on_call is None:
            return op()
        calls = self._calls
        th = thread_room()
        return reported(
            on_call, self._name, function, context, op, lambda: calls.raw_last(th), calls.stats
        )

    def run(self, args: Sequence[str] | None = None, stdin: bytes | None = None) -> RunResult:
        """Run a WASI command's ``_start`` on a fresh instance and return its exit and output.

        ``args`` and ``stdin`` replace the policy's ``Wasi.args``/``Wasi.stdin`` for this run
        (an argument holding a NUL, or that is not UTF-8 text, is a PolicyError, as in ``Wasi``).
        ``proc_exit(n)`` ends the run with ``exit_code == n``; returning from ``_start`` is 0.
        Traps and limits raise as for :meth:`call`. The plugin's own instance (used by
        ``call``/``invoke``) is not touched. ``Host(on_call=...)`` reports it as ``_start``.
        """
        return self._reported("_start", None, lambda: self._run(args, stdin))

    def _run(self, args: Sequence[str] | None, stdin: bytes | None) -> RunResult:
        shims = self._wasi
        if shims is None:
            raise PluginCallError(
                f"plugin {self._name!r} has no WASI capability (Policy.wasi is None); "
                "run() needs it"
            )
        if args is not None and (
            isinstance(args, (str, bytes)) or not all(isinstance(a, str) for a in args)
        ):
            raise TypeError("args must be a list of str")
        if args is not None:
            # Each the text it holds, whole, as wasmtime takes it: a NUL cut an argument short
            # in C without a word, a surrogate failed with a bare UnicodeEncodeError (attack8).
            args = [str.__str__(a) for a in args]
            for i, a in enumerate(args):
                check_c_text(a, f"run() args[{i}]")
        if stdin is not None and not isinstance(stdin, (bytes, bytearray)):
            raise TypeError("stdin must be bytes")
        if stdin is not None and len(stdin) > self._policy.max_input:
            raise AbiError(
                f"plugin {self._name!r}: stdin of {len(stdin)} bytes is over the policy's "
                f"max_input of {self._policy.max_input}"
            )
        if _abi.export_problem(self._module.exports, "_start", _abi.ENTRY_TYPE) is not None:
            raise ExportNotFoundError(
                f"plugin {self._name!r} is not a WASI command: it exports no _start() function"
            )
        calls = self._calls
        if calls.closed:
            raise PluginClosedError(f"plugin {self._name!r} is closed")
        me = _get_ident()
        if calls.owner == me:
            raise PluginCallError(f"plugin {self._name!r}: run() from its own host function")
        th = thread_room()
        room = th.room
        left = room - calls.cost
        if left < 0 or left & 8:
            raise calls.too_deep(th)
        calls.acquire(me)
        # A try, not a with: a with's __enter__ is a call, at which a signal handler's
        # exception would leave the lock taken (see _nesting.Taker; attack9).
        try:
            if calls.closed:
                raise PluginClosedError(f"plugin {self._name!r} is closed")
            calls.owner = me
            th.room = left
            outer, th.call = th.call, calls  # plugsafe.current_call()
            try:
                try:
                    cfg, out, err = shims.config(
                        None if args is None else list(args),
                        None if stdin is None else _abi.plain_bytes(stdin),
                    )
                except rt.WasmFailure as exc:
                    raise self._wasi_refused(exc, "call") from None
                inst = self._instantiate("call", cfg)
                ref = inst.func("_start")
                assert ref is not None
                state = calls.state
                state.begin("_start")
                code = 0
                try:
                    inst.call(ref, [])
                except rt.WasmFailure as failure:
                    if failure.exit_code is None:
                        raise_clean(self._diagnosis.translate(failure, state, "_start", inst))
                    code = failure.exit_code
                except PlugsafeError:
                    raise
                except PYTHON_FAILED as exc:
                    self._linker.record.spent = self._linker.record.leak = True  # _instantiate
                    raise PluginCallError(PYTHON_FAILED_MESSAGE) from exc
                except BaseException:
                    self._linker.record.spent = self._linker.record.leak = True
                    raise
                finally:
                    calls.record(inst, state.start, "_start")
                    state.reset()
                return RunResult(code, out.value(), err.value(), out.truncated, err.truncated)
            finally:
                calls.owner = None
                th.room = room
                th.call = outer
        finally:
            calls.lock.release()

    def close(self) -> None:
        """Release the instance. Later use raises PluginClosedError. Idempotent."""
        if self._calls.closed:
            return
        end_worker = self._worker.take()
        if self._calls.close():
            self._released()
        end_worker()

    def __repr__(self) -> str:
        state = "closed" if self._calls.closed else "open"
        return f"<plugsafe.Plugin {self._name!r} {state}>"

    # -- instance lifecycle -------------------------------------------------------------------

    @property
    def _instance(self) -> rt.Instance | None:
        """The current instance, if any (for tests and debugging)."""
        return self._calls.instance

    def _released(self) -> None:
        try:
            linkers = self._linkers.pop()
        except IndexError:  # given back already (or no pool)
            pass
        else:
            # Closed: no call runs and none will. The pool closes every store made through
            # the Linker before another plugin may have it (Linker.retire).
            linkers.give(self._linker_key, self._linker)
        self._on_close(self)
        # Nothing runs on this plugin again: the call path lets go of everything that points
        # back at it, so that a closed plugin is freed by reference counting the moment the
        # app drops it, not by the garbage collector (issue 14: the cycles of every load and
        # close made collections run, ~10 us a load).
        # (``call``/``invoke`` are the call path's own bound methods: no cycle through them.)
        calls = self._calls
        calls.new_instance = _closed(self._name)
        calls.on_closed = _nothing

    def _build_linker(self) -> rt.Linker:
        """A Linker with this plugin's host functions (and WASI) bound to its callbacks.

        Taken from the Host's pool and rebound when a closed plugin left one that defines the
        same; else built (and prepared by the caller).
        """
        # Each function is bound with the type this module imports it with (an ``int`` as i32
        # or i64, ...); the import check accepted that type.
        imported = self._facts.imported
        host_calls = self._host_calls
        bindings = [
            host_calls.binding(bound, imported.get(bound.name))
            for bound in self._functions.values()
        ]
        wasi = self._wasi
        sink = None if wasi is None else host_calls.sink(None)
        if self._linkers:
            linker = self._linkers[0].take(self._linker_key)
            if linker is not None:
                shapes = [(b.numeric, b.module, b.name) for b in bindings]
                targets: list[Callable[..., Any]] = [b.target for b in bindings]
                sinks = [b.on_error for b in bindings]
                if wasi is not None and sink is not None:
                    # WASI's shims: their targets and sink, no Binding objects (issue 14).
                    shapes += SHIM_SHAPES
                    targets += wasi.targets()
                    sinks += [sink] * len(SHIM_SHAPES)
                if linker.retarget(shapes, targets, sinks):
                    return linker
        if wasi is not None and sink is not None:
            bindings += wasi.bindings(sink)
        linker = rt.Linker(self._engine)
        if self._wasi is not None:
            # wasmtime's WASI first: plugsafe's shims (in the bindings) shadow three of it.
            linker.define_wasi()
        for binding in bindings:
            linker.define(binding)
        return linker

    def _new_instance(self, phase: Phase) -> rt.Instance:
        """A fresh instance for calls (its WASI output, if any, is discarded: nobody reads it)."""
        wasi = self._wasi
        if wasi is None:
            return self._instantiate(phase, None)
        if wasi.bare:  # a bare WASI context, made in C (no WasiConfig: issue 14)
            return self._instantiate(phase, rt.DEFAULT_WASI)
        try:
            cfg = wasi.config(None, None, read=False)[0]
        except rt.WasmFailure as exc:
            raise self._wasi_refused(exc, phase) from None
        return self._instantiate(phase, cfg)

    def _wasi_refused(self, exc: rt.WasmFailure, phase: Phase) -> PluginLoadError | PluginCallError:
        """The error for a WASI context wasmtime would not make for a new instance (a preopened
        directory gone or unreadable since the policy checked it: attack8)."""
        text = f"plugin {self._name!r}: cannot give the plugin its WASI context: {exc.message}"
        return PluginLoadError(text) if phase == "load" else PluginCallError(text)

    def _instantiate(self, phase: Phase, wasi: object | None = None) -> rt.Instance:
        """Instantiate (start function, then a reactor's ``_initialize``) under a fresh budget,
        with the WASI context ``wasi`` (None: the plugin has no WASI)."""
        calls = self._calls
        state = calls.state
        # state.begin("(start)", phase), inline: this runs for every instance (issue 14).
        state.function = "(start)"
        state.phase = phase
        call_start = state.call_start
        state.start = _perf_counter() if call_start is None else call_start
        # Made for a call (state.call_deadline): within that call's timeout.
        timeout = state.timeout
        until = None if call_start is None or timeout is None else call_start + timeout
        # Set once the instance is made: any failure after that (its ``_initialize``) frees it
        # here, at once. Its pool slot and memory were held by the error's traceback, and an app
        # keeping errors (``gather(return_exceptions=True)``) exhausted the Host's pool (attack11).
        inst = None
        # A start function's host functions see this plugin as current_call(), not the call
        # (perhaps another tenant's) whose host function is loading or calling it.
        try:
            th = tls.room
        except AttributeError:
            th = thread_room()
        outer, th.call = th.call, calls
        # Nor the context of the call it is made for: a re-instantiation after a trap (or a
        # fresh_instance call) runs the start function inside that call (attack2 finding).
        context, state.context = state.context, None
        try:
            if self._linker.record.spent:  # (Linker.spent)
                # A host callback returned its spare trap (Python failed at the C boundary):
                # wasmtime freed it, so new callbacks with new spares serve from now on.
                linker = self._build_linker()
                linker.prepare(self._module)
                self._linker = calls.linker = linker
                calls.host_record = linker.record
            # (Positional, in Instance's order: a class called with keywords builds a dict of
            # them, on every instance made for a call.)
            inst = rt.Instance(
                self._engine,
                self._linker,
                self._module,
                self._memory_per,  # memory_size
                self._memories_cap,  # memories
                self._table_elements,  # table_elements
                _MAX_TABLES,  # tables
                self._fuel,  # fuel
                self._ticks,  # deadline_ticks
                self._epochs,  # epochs
                self._timeout,  # timeout
                wasi,
                until,
                self._timeout_ticks,  # timeout_ticks
                state.making,  # on_store: an asynchronous call's, to be cancellable
            )
            if self._reactor:  # its type was checked at load (_check_exports)
                state.function = "_initialize"
                ref = inst.func("_initialize")
                assert ref is not None
                inst.call(ref, [])
            return inst
        except PlugsafeError:
            raise
        except rt.PoolExhaustedFailure as full:
            # The Host's pooling allocator has no free slot: nothing of the plugin ran.
            kind = {"core instances": "instances"}.get(full.resource, full.resource)
            raise PoolExhausted(
                f"plugin {self._name!r}: no free slot in the Host's pooling allocator "
                f"(all {full.limit} {kind} are in use; closing plugins frees theirs)",
                limit=f"pooling.{kind}",
                value=full.limit,
                phase=phase,
            ) from None
        except rt.WasmFailure as failure:
            err: BaseException | None = self._diagnosis.translate(
                failure, state, state.function, inst
            )
            if inst is not None:
                inst.release()  # (_initialize failed: see below; after translate, which reads it)
            try:
                if phase == "load" and isinstance(err, PluginCallError):
                    raise PluginLoadError(
                        f"plugin {self._name!r} failed while being instantiated: {err}"
                    ) from err
                assert err is not None
                raise err from err.__cause__
            finally:
                err = None  # no cycle through this frame (see raise_clean)
        except PYTHON_FAILED as exc:
            # Python failed around the C calls (see _callpath.PYTHON_FAILED): plain stores
            # only (rt.HostRecord), then a documented error.
            self._linker.record.spent = self._linker.record.leak = True
            if inst is not None:
                inst.release()
            raise PluginCallError(PYTHON_FAILED_MESSAGE) from exc
        except BaseException:
            self._linker.record.spent = self._linker.record.leak = True
            if inst is not None:
                inst.release()
            raise
        finally:
            # What the start function did is no part of the next call's record; the Caller it
            # used is gone (Plugin.memory must not find it). (state.reset(), inline.)
            state.host_calls = state.log_count = state.log_dropped = 0
            state.error = None
            state.phase = "call"
            self._linker.record.caller = None
            th.call = outer
            state.context = context

    def _check_exports(self) -> None:
        """Check the type of every export plugsafe itself calls, before anything runs.

        From the module's description (its binary): ``plugsafe_abi_version`` and
        ``_initialize`` must have their one type or the load fails; ``plugsafe_alloc`` is
        handed to the host functions (to place bytes results) only if its type is right. A
        function called with a type it does not have reads and writes value slots that are not
        there (issue 12, class 1: SIGILL). ABI functions and ``invoke`` targets are checked
        when first called (``CallPath.call_abi``, ``CallPath.check_invoke``), ``_start`` by
        ``run``. The checks run once per module (``ModuleFacts``); each load raises their
        verdict.
        """
        facts = self._facts
        if facts.problem is not None:
            raise PluginLoadError(f"plugin {self._name!r}: {facts.problem}")
        self._reactor = facts.reactor
        self._allocator = facts.allocator

    def _check_abi(self, inst: rt.Instance) -> None:
        if not self._facts.versioned:
            return
        exports = self._module.exports
        ref = inst.func(_abi.VERSION_EXPORT)  # its type was checked by _check_exports
        assert ref is not None
        state = self._calls.state
        state.begin(_abi.VERSION_EXPORT, "load")
        try:
            out = inst.call(ref, [])
        except rt.WasmFailure as failure:
            err: BaseException | None = self._diagnosis.translate(
                failure, state, _abi.VERSION_EXPORT, inst
            )
            try:
                if isinstance(err, LimitExceeded):
                    raise err from err.__cause__
                raise PluginLoadError(f"plugin {self._name!r}: {err}") from err
            finally:
                err = None  # no cycle through this frame (see raise_clean)
        except PlugsafeError:
            raise
        except PYTHON_FAILED as exc:
            self._linker.record.spent = self._linker.record.leak = True  # see _instantiate
            raise PluginLoadError(PYTHON_FAILED_MESSAGE) from exc
        except BaseException:
            self._linker.record.spent = self._linker.record.leak = True
            raise
        finally:
            state.reset()
        declared = int(out[0])
        if declared != _abi.ABI_VERSION:
            raise AbiVersionError(self._name, declared, _abi.ABI_VERSION)
        problems = []
        mem = exports.get(_abi.MEMORY_EXPORT)
        if mem is None or mem.kind != "memory":
            problems.append(f"a memory export named {_abi.MEMORY_EXPORT!r}")
        if self._allocator is None:
            problems.append(f"a function export {_abi.ALLOC_EXPORT!r} of type (i32) -> i32")
        if problems:
            raise PluginLoadError(
                f"plugin {self._name!r} declares plugsafe ABI version {declared} but lacks "
                + " and ".join(problems)
            )
        self._calls.abi = True
        # What the first calls would do, done now (issue 14: a first call cost several later).
        self._calls.prepare_abi(inst)


# plugin.call and plugin.invoke are CallPath's bound methods: they read as the methods above.
for _short, _method in ((CallPath.call, Plugin.call), (CallPath.invoke, Plugin.invoke)):
    _short.__name__, _short.__qualname__, _short.__doc__ = (
        _method.__name__,
        _method.__qualname__,
        _method.__doc__,
    )
    _short.__module__ = "plugsafe"
