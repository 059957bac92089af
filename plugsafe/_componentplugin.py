"""Component plugins: WIT-typed plugins (WebAssembly components) under the same policies.

Imported when a component is first loaded (issue 14: cold start); what every Host needs of
components (is this source one? the compile cache) is ``_component``.

``Host.load`` hands a source here when its bytes start with the component preamble (version
0x0d, layer 1) or it is component text (``(component ...)``). The steps mirror a module's
(``_loader``): read (capped by ``max_module_size``), translate text, compile or hit a cache (the
Host's in-memory LRU, then the disk cache, under a salt of their own), check the imports, then
make the first instance. :class:`ComponentPlugin` is the plugin: ``invoke(name, *args)`` with
WIT-typed values (``docs/components.md`` has the mapping), ``exports``, ``close``.

Names: a world-level function by its name (``"greet"``), a function of an exported interface
as ``"iface/func"`` (the interface's short name: ``"processor/grayscale"``), or fully qualified
(``"ns:pkg/iface@1.0.0#func"``, always accepted). A short name two interfaces share is refused.

One Store per instance: any trap poisons a component Store (every instance in it), so the
instance is discarded after any failed call and the next call makes a new one.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _nesting
from . import _runtime as rt
from . import _sha as hashlib  # hashlib.sha256 without OpenSSL at start-up (see _sha)
from ._component import ComponentLoader
from ._errors import (
    AbiError,
    DeadlineExceeded,
    Diagnosis,
    ExportNotFoundError,
    GuestError,
    HostCallLimitExceeded,
    HostFunctionError,
    ImportNotAllowedError,
    ImportProblem,
    InvalidModuleError,
    Phase,
    PluginCallError,
    PluginClosedError,
    PluginLoadError,
    PlugsafeError,
    SignatureError,
    StackLimitExceeded,
    fmt_bytes,
    raise_clean,
    short_trap,
    text_of,
    type_name,
)
from ._lazymodule import lazy_function, lazy_module
from ._loader import Source, read_source
from ._loader import default_name as loader_default_name
from ._oncall import OnCall, reported
from ._policy import Policy
from ._public import rehome
from ._types import CallStats
from ._worker import Worker

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from ._aio import run_call
    from ._callpath import CallToken
    from ._runtime import _component as rc
else:
    # wasmtime-py's component API and the value marshalling: imported when a component is first
    # loaded, not at import plugsafe (issue 14; see _lazymodule).
    rc = lazy_module("plugsafe._runtime._component", globals(), "rc")
    # asyncio's helper, when invoke_async first runs (as for Plugin.call_async).
    run_call = lazy_function("plugsafe._aio", "run_call", globals())

__all__ = [
    "ComponentPlugin",
    "check_component_imports",
    "import_problems",
    "load_component",
    "prepare_component",
]

# Exports toolchains add for themselves, not part of the plugin's world: hidden from
# ``exports`` (still callable by their qualified name). componentize-py exports an interface
# named plainly "exports" whose "init" its runtime calls at build time.
_TOOLCHAIN_EXPORTS = frozenset({"exports#init"})
_WASI_PREFIX = "wasi:"
# The WASI preview 2 packages a Wasi(...) grant covers: what preview 1 gives a module (arguments,
# environment, clocks, random, stdio, preopened directories). Network packages (sockets, http)
# are never linked in, whatever the policy says.
_WASI_GRANTED = ("wasi:cli/", "wasi:clocks/", "wasi:filesystem/", "wasi:io/", "wasi:random/")


def _short_interface(name: str) -> str:
    """``ns:pkg/iface@1.0.0`` → ``iface``; a plain name stays as it is."""
    return name.split("/")[-1].split("@")[0]


def load_component(
    source: Source,
    policy: Policy,
    *,
    name: str | None,
    engine: Callable[[bool], rt.Engine],
    loader: ComponentLoader,
    on_close: Callable[[Any], None] | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    on_call: OnCall | None = None,
) -> ComponentPlugin:
    """Read, compile (or hit a cache), check the imports and instantiate a component.

    ``engine(metered)`` gives the Host's component engine; ``functions`` the Host's functions
    for component imports, by ``interface#function``; ``on_call`` the Host's.
    """
    functions = functions or {}
    name, compiled = prepare_component(source, policy, name=name, engine=engine, loader=loader)
    check_component_imports(compiled.world, policy, name, functions)
    return ComponentPlugin(
        name, policy, compiled, on_close=on_close, functions=functions, on_call=on_call
    )


def prepare_component(
    source: Source,
    policy: Policy,
    *,
    name: str | None,
    engine: Callable[[bool], rt.Engine],
    loader: ComponentLoader,
) -> tuple[str, rc.CompiledComponent]:
    """Read and compile (or hit a cache): the plugin's name and its compiled component."""
    if not rc.AVAILABLE:
        raise PluginLoadError(
            "this wasmtime-py has no component support (wasmtime.component): "
            "install wasmtime>=48 to load components"
        )
    data, default_name, what = read_source(source, policy.max_module_size)
    if name is None:
        # Bytes have no name of their own: plugin- and the first hex digits of their sha256,
        # as for core modules.
        name = default_name or loader_default_name(hashlib.sha256(data).digest())
    elif not isinstance(name, str) or not name:
        raise TypeError("name must be a non-empty str")
    wasm = data
    if not rc.is_component(data):
        try:
            wasm = rt.wat_to_wasm(data.decode("utf-8"))
        except (UnicodeDecodeError, rt.WasmFailure) as exc:
            detail = exc.message if isinstance(exc, rt.WasmFailure) else "not UTF-8 text"
            raise InvalidModuleError(f"{what} is not a valid component text: {detail}") from None
        if len(wasm) > policy.max_module_size:
            raise InvalidModuleError(
                f"{what} compiles to {len(wasm)} bytes, over the policy's max_module_size"
            )
    return name, loader.compile(engine(policy.fuel is not None), wasm, name)


def import_problems(
    world: rc.World, policy: Policy, functions: Mapping[str, object] | None = None
) -> list[ImportProblem]:
    """Every import of ``world`` this policy (and the Host's ``functions``) does not grant:
    all of them, not the first."""
    functions = functions or {}
    problems: list[ImportProblem] = []
    for imp in world.imports:
        if imp.name.startswith(_WASI_PREFIX):
            if not imp.name.startswith(_WASI_GRANTED):
                problems.append(
                    ImportProblem(imp.name, "*", "not allowed", "plugsafe grants no network access")
                )
            elif policy.wasi is None:
                problems.append(
                    ImportProblem(
                        imp.name, "*", "not allowed", "WASI needs the policy to grant Wasi(...)"
                    )
                )
            continue
        if imp.kind == "instance":
            for func in imp.functions:
                qualified = f"{imp.name}#{func.name}"
                if func.unsupported:
                    problems.append(
                        ImportProblem(imp.name, func.name, "wrong type", func.unsupported)
                    )
                elif qualified not in functions:
                    problems.append(
                        ImportProblem(
                            imp.name,
                            func.name,
                            "unknown",
                            f"{func.wit()}: the host registers no such component function",
                        )
                    )
                elif not _allowed(policy, imp.name, func.name):
                    problems.append(
                        ImportProblem(
                            imp.name,
                            func.name,
                            "not allowed",
                            f"the policy's allow names neither {imp.name!r} nor {qualified!r}",
                        )
                    )
            if not imp.functions:
                problems.append(
                    ImportProblem(imp.name, "*", "unknown", "the host offers no such interface")
                )
        elif imp.kind == "func":
            # A function the world imports itself: registered and allowed as "#name".
            func = imp.functions[0]
            key = f"#{imp.name}"
            if func.unsupported:
                problems.append(ImportProblem("(world)", imp.name, "wrong type", func.unsupported))
            elif key not in functions:
                problems.append(
                    ImportProblem(
                        "(world)",
                        imp.name,
                        "unknown",
                        f"{func.wit()}: the host registers no such component function",
                    )
                )
            elif key not in policy.allow:
                problems.append(
                    ImportProblem(
                        "(world)", imp.name, "not allowed", f"the policy's allow lacks {key!r}"
                    )
                )
        else:
            problems.append(
                ImportProblem(
                    "(world)", imp.name, "unknown", f"the host offers no {imp.kind} import"
                )
            )
    return problems


def _allowed(policy: Policy, interface: str, func: str) -> bool:
    return interface in policy.allow or f"{interface}#{func}" in policy.allow


def check_component_imports(
    world: rc.World, policy: Policy, name: str, functions: Mapping[str, object] | None = None
) -> None:
    """Raise ImportNotAllowedError listing every import the policy does not grant."""
    problems = import_problems(world, policy, functions)
    if problems:
        raise ImportNotAllowedError(name, problems)


_perf_counter = time.perf_counter


class _Lock:
    """A component's lock as the wait-for cycle check and the deadlines of nested waits see it
    (``_nesting``): the thread inside its call (``owner``) and that call's deadline."""

    __slots__ = ("__weakref__", "deadline", "diagnosis", "function", "name", "owner")

    # (For CallToken: a component's host functions may call other plugins on the call's
    # thread, and those must stop with it.)
    has_imports = True

    def __init__(self, name: str, diagnosis: Diagnosis) -> None:
        self.name = name
        self.diagnosis = diagnosis
        self.owner: int | None = None
        self.function = ""
        self.deadline: float | None = None

    @property
    def active_deadline(self) -> float | None:
        """The deadline of the call running now (read only by the thread it owns)."""
        return self.deadline

    def interrupt(self, inst: rc.ComponentInstance) -> None:
        """Stop the call running on ``inst`` (``CallToken``'s cancel, under its lock, while the
        call runs): its next host call and its next step in wasm fail with DeadlineExceeded
        (only with a policy ``timeout``), as ``CallPath.interrupt`` does for modules."""
        if self.deadline is not None:
            # The host functions' entry check (ComponentPlugin._host_impl) and nested waits
            # (_nesting) read it: a call stopped in straight-line code makes no further host
            # call, and a host function waiting for a busy plugin stops waiting.
            self.deadline = -math.inf
        inst.interrupt()

    def waited(self, detail: str) -> DeadlineExceeded:
        """The DeadlineExceeded of the running call, for a wait nested in it (a host function
        waiting for a busy plugin) that reached the call's deadline."""
        return self.diagnosis.deadline(self.function, "call", detail)


class ComponentPlugin:
    """A loaded component: call its exported functions with WIT-typed values.

    Use as a context manager, or call :meth:`close`. Safe to share between threads (calls are
    serialized). Made by :meth:`Host.load`, never directly.
    """

    def __init__(
        self,
        name: str,
        policy: Policy,
        compiled: rc.CompiledComponent,
        *,
        on_close: Callable[[Any], None] | None = None,
        functions: Mapping[str, Callable[..., Any]] | None = None,
        on_call: OnCall | None = None,
    ) -> None:
        self._name = name
        self._policy = policy
        self._compiled = compiled
        self._on_close = on_close
        self._on_call = on_call
        # invoke_async's own worker thread (made on first use: _worker).
        self._worker = Worker(name)
        self._lock = threading.Lock()
        # ``_nesting.Taker(self._try).taken`` is ``self._lock.acquire(False)``, as an attribute
        # read (see _locked).
        self._try = functools.partial(self._lock.acquire, False)
        self._closed = False
        self._diagnosis = Diagnosis(
            plugin=name,
            fuel=policy.fuel,
            timeout=policy.timeout,
            memory=policy.memory,
            memory_per=policy.memory,
        )
        world = compiled.world
        refused = [f"{f.qualified} ({f.unsupported})" for f in world.exports if f.unsupported]
        if refused:
            raise PluginLoadError(
                f"plugin {name!r} exports functions plugsafe cannot call: {'; '.join(refused)}"
            )
        self._by_name: dict[str, rc.FuncDesc] = {}
        ambiguous: dict[str, list[str]] = {}
        listed: dict[str, str] = {}
        for f in world.exports:
            self._by_name[f.qualified] = f
            short = f.name if f.interface is None else f"{_short_interface(f.interface)}/{f.name}"
            if short != f.qualified:
                ambiguous.setdefault(short, []).append(f.qualified)
            hidden = f.qualified in _TOOLCHAIN_EXPORTS
            if not hidden:
                listed[short] = f.wit()
        self._ambiguous: dict[str, tuple[str, ...]] = {}
        for short, full in ambiguous.items():
            if len(full) == 1:
                self._by_name.setdefault(short, self._by_name[full[0]])
            else:
                self._ambiguous[short] = tuple(full)
                for q in full:  # listed under their qualified names instead
                    listed.pop(short, None)
                    listed[q] = self._by_name[q].wit()
        self._exports = MappingProxyType(dict(sorted(listed.items())))
        self._timeout = policy.timeout
        # The native stack a call may use, in a thread's room (_nesting): a component can be
        # called from another plugin's host function, on top of that plugin's stack.
        self._max_stack = compiled.engine.max_stack
        self._cost = _nesting.call_cost(self._max_stack)
        self._ticker: rt.Ticker | None = None
        if policy.timeout is not None:
            self._ticker = compiled.engine.ticker
            self._ticker.use_timeout(policy.timeout)
            self._ticker.watch(self._lock)
        # Host functions for the imports (checked against the policy already), per interface;
        # functions the world imports itself under "" (the linker's root).
        self._host: dict[str, dict[str, tuple[rc.FuncDesc, rc.HostImpl]]] = {}
        for imp in world.imports:
            for f in imp.functions:
                if imp.kind == "instance":
                    fn = (functions or {}).get(f"{imp.name}#{f.name}")
                    if fn is not None:
                        self._host.setdefault(imp.name, {})[f.name] = (f, self._host_impl(f, fn))
                elif imp.kind == "func":
                    fn = (functions or {}).get(f"#{imp.name}")
                    if fn is not None:
                        self._host.setdefault("", {})[imp.name] = (f, self._host_impl(f, fn))
        # The call in progress: which thread runs it (re-entry from its own host function is
        # refused, not deadlocked), its host calls, and what a host function raised.
        self._path = _Lock(name, self._diagnosis)
        if self._host:
            # Host functions run app code mid-call: a wait for a busy plugin there is bounded by
            # this call's deadline, and cycles of such waits are refused (_nesting).
            _nesting.register(self._path)
        # A forked child must know whether a thread gone at the fork held the lock (_nesting).
        _nesting.track(self._path, self._lock)
        self._host_calls = 0
        self._host_error: BaseException | None = None
        self._function = ""
        # Per thread, as Plugin.last_call: (fuel, duration, memory, host calls, function) of the
        # thread's last call, made into a CallStats only when asked for.
        self._last = threading.local()
        self._inst: rc.ComponentInstance | None = None
        with self._lock:
            self._path.owner = threading.get_ident()
            try:
                self._inst = self._new_instance("load")
            finally:
                self._path.owner = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The plugin's name (used in errors)."""
        return self._name

    @property
    def policy(self) -> Policy:
        """The policy the plugin runs under."""
        return self._policy

    @property
    def exports(self) -> Mapping[str, str]:
        """The callable functions by short name, each with its WIT signature as text.

        A short name two exported interfaces share is listed by both qualified names instead.
        Exports toolchains add for themselves (componentize-py's) are not listed.
        """
        return self._exports

    @property
    def imports(self) -> tuple[str, ...]:
        """The names of what the component imports (interfaces and functions)."""
        return tuple(i.name for i in self._compiled.world.imports)

    @property
    def last_call(self) -> CallStats | None:
        """Stats of this thread's most recent call (:meth:`invoke`), or None before its first.

        As :attr:`Plugin.last_call`: ``memory_bytes`` is the size of the instance's memories
        (all of them) when the call ended, as plugsafe's memory creator counts them (0 on hosts
        without it: wasmtime's C API cannot read a component's memory). A failed call has stats
        too (a call stopped by ``fuel`` used all of it).
        """
        last = getattr(self._last, "stats", None)
        if last is None:
            return None
        fuel, duration, memory, host_calls, function = last
        return CallStats(fuel, duration, memory, host_calls, self._name, function)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    # -- calls --------------------------------------------------------------------------------

    def _resolve(self, function: str) -> rc.FuncDesc:
        # As for modules (docs/errors.md): the plain str a str subclass holds, and anything
        # else a SignatureError decided by its class, never by asking the object (attack13:
        # a bare TypeError, or the name's own __hash__/__class__ error).
        if not issubclass(type(function), str):
            raise SignatureError(
                f"plugin {self._name!r}: a function name is a str, not {type_name(type(function))}"
            )
        function = str.__str__(function)
        desc = self._by_name.get(function)
        if desc is not None:
            return desc
        both = self._ambiguous.get(function)
        if both is not None:
            raise ExportNotFoundError(
                f"plugin {self._name!r}: {function!r} is ambiguous: it could be "
                f"{' or '.join(map(repr, both))}; use the full name"
            )
        raise ExportNotFoundError(
            f"plugin {self._name!r} has no function {function!r} (it exports: "
            f"{', '.join(self._exports) or 'nothing'})"
        )

    def invoke(self, function: str, *args: Any) -> Any:
        """Call the exported ``function`` with ``args``; its result converted to Python.

        Values are converted as ``docs/components.md`` describes (records from a dict or any
        object with the fields as snake_case attributes; records come back as :class:`Record`).
        A function returning ``result<T, E>`` returns ``T``, or raises :class:`GuestError`
        whose ``value`` is ``E``.

        Raises:
            ExportNotFoundError: no such function, or an ambiguous short name.
            SignatureError: the arguments do not fit (checked before anything runs).
            GuestError: the function returned ``result``'s error case.
            FuelExhausted, DeadlineExceeded, MemoryLimitExceeded, PluginTrap: as for modules.
            PluginClosedError: after :meth:`close`.
        """
        if self._on_call is None:
            return self._invoke_with(None, function, args)
        return self._reported(None, function, args)

    async def invoke_async(self, function: str, *args: Any) -> Any:
        """:meth:`invoke` from asyncio, on the plugin's own worker thread (never the loop's).

        If the awaiting task is cancelled (or ``asyncio.wait_for`` times out), a call not yet
        started never runs and a running one is interrupted (with a policy ``timeout``, of any
        length: it ends within milliseconds, its instance replaced; without one it runs to its
        end and its result is dropped), as :meth:`Plugin.call_async` does. Host functions see
        the caller's ``contextvars``.
        """
        if self._on_call is None:
            return await run_call(
                self._executor(), lambda token: self._invoke_with(token, function, args)
            )
        return await run_call(self._executor(), lambda token: self._reported(token, function, args))

    def _reported(self, token: CallToken | None, function: str, args: tuple[Any, ...]) -> Any:
        """:meth:`_invoke_with`, reported to the Host's ``on_call`` (with no ``context``:
        a component call takes none)."""
        assert self._on_call is not None
        name, last = self._name, self._last

        def stats(
            record: tuple[int | None, float, int, int, str],
            error: type[BaseException] | None,
            context: Any,
        ) -> CallStats:
            return CallStats(*record[:4], name, record[4], error, context)

        return reported(
            self._on_call,
            name,
            function if isinstance(function, str) else repr(function),
            None,
            lambda: self._invoke_with(token, function, args),
            lambda: getattr(last, "stats", None),
            stats,
        )

    def _executor(self) -> ThreadPoolExecutor:
        return self._worker.executor(lambda: self._closed)

    def _invoke_with(self, token: CallToken | None, function: str, args: tuple[Any, ...]) -> Any:
        """:meth:`invoke`; stoppable through ``token`` (an asynchronous call's), if given."""
        desc = self._resolve(function)
        if len(args) != len(desc.params):
            raise SignatureError(
                f"plugin {self._name!r} function {function!r} takes {len(desc.params)} "
                f"argument(s) ({desc.wit()}), got {len(args)}"
            )
        values = []
        for (pname, ty), a in zip(desc.params, args, strict=True):
            try:
                values.append(rc.normalise(a, ty, rc.snake(pname)))
            except rc.ValueMismatch as exc:
                raise SignatureError(
                    f"plugin {self._name!r} function {function!r} ({desc.wit()}): {exc}"
                ) from None
            except PlugsafeError:
                raise  # a plugin call the argument made: its own error (docs/errors.md)
            except Exception as exc:
                # The app's object raised as it was read (a property, an iterator, __class__,
                # __hash__): the argument's, as for modules; never the bare exception
                # (attack13). A BaseException that is not an Exception goes as itself.
                raise SignatureError(
                    f"plugin {self._name!r} function {function!r} ({desc.wit()}): argument "
                    f"{rc.snake(pname)!r}: its conversion raised {type_name(type(exc))}"
                ) from exc
        th = _nesting.thread_room()
        left = th.room - self._cost
        if left < 0 or left & 8:
            raise self._too_deep(th)
        me = threading.get_ident()
        if self._path.owner == me:
            raise PluginCallError(
                f"plugin {self._name!r} was called again from one of its own host functions "
                f"(while in {self._function!r}); a component call cannot re-enter itself"
            )
        # The call's timeout runs from here: waiting for the plugin (busy in another thread)
        # and making a new instance count, as for modules.
        begun = _perf_counter()
        end = None if self._timeout is None else begun + self._timeout
        self._locked(me, end, function)
        # A try, not a with: a with's Python __exit__ could fail at its first line (a signal
        # handler's exception) before it released the lock (attack9; see _nesting.Taker).
        try:
            if self._closed:
                raise PluginClosedError(f"plugin {self._name!r} is closed")
            # Read before the owner is set: from there to the try that unsets it, no call (a
            # signal handler's exception raised at the clock's call left this thread the
            # owner, and every later call from it was refused as a re-entry: attack9).
            start = time.perf_counter()
            self._path.owner = me
            self._path.function = function
            self._path.deadline = end
            self._function = function
            self._host_calls = 0
            self._host_error = None
            if self._host:
                th.room = left  # host functions may call plugins: they nest on this thread
            inst = None
            try:
                inst = self._inst
                if inst is None:
                    inst = self._new_instance("call", end, token)
                    # Unless a start function's host call closed the plugin meanwhile (attack
                    # finding: the closed plugin kept this instance, and its memory, for as long
                    # as the app kept the plugin): the call still runs on it, as any call a
                    # close() from inside does, and it goes when the call ends.
                    if not self._closed:
                        self._inst = inst
                if end is not None and _perf_counter() >= end:
                    raise self._diagnosis.deadline(
                        function, "call", " (waiting for the plugin and instantiating it)"
                    )
                if token is None:
                    result = inst.call(desc, values, until=end, max_output=self._policy.max_output)
                else:
                    # Marked running on this instance (PluginCallError if cancelled already:
                    # a queued call never starts), so that a cancel interrupts exactly this
                    # call, again and again until it ends (CallToken's re-sender).
                    token.begin(self._path, inst)
                    try:
                        result = inst.call(
                            desc, values, until=end, max_output=self._policy.max_output
                        )
                    finally:
                        token.end()
            except PluginCallError:
                raise  # (a cancelled call refused before it began: the instance is untouched)
            except rc.LiftRefused as exc:
                self._inst = None  # its post-return function has not run: start afresh
                raise self._refused(exc, function) from None
            except rt.WasmFailure as exc:
                # A trap poisons the Store: the next call gets a fresh instance.
                self._inst = None
                recorded, self._host_error = self._host_error, None
                raise_clean(self._translate(exc, recorded, function, "call"))
            except BaseException:
                # A KeyboardInterrupt a memory callback caught, raised once wasmtime returned
                # (rc._reraise_interrupt): the instance may be mid-call, so start afresh.
                self._inst = None
                raise
            finally:
                self._path.owner = None
                if self._host:  # (before the calls below, at which a handler may raise)
                    th.room = left + self._cost
                if token is not None:
                    # Marked running while its instance was made (CallToken.making; an
                    # instantiation that failed never reached begin): ended before the lock
                    # goes, so that no interrupt of it reaches a later call.
                    token.end()
                self._last.stats = (
                    None if inst is None else inst.fuel_used(),
                    time.perf_counter() - start,
                    0 if inst is None else inst.memory_bytes(),
                    self._host_calls,
                    function,
                )
        finally:
            self._lock.release()
        if desc.result is not None and desc.result.kind == "result":
            if result.tag == "err":
                err = GuestError(self._name, function, _describe_err(result.value))
                err.value = result.value  # type: ignore[attr-defined]
                raise err
            return result.value
        return result

    def _locked(self, me: int, end: float | None, function: str) -> None:
        """Take the plugin's lock, for a call of ``function`` that must end by ``end`` (the
        caller releases it, in the finally of the try that follows at once).

        As ``CallPath.acquire`` does for modules: a wait is bounded by ``end`` and by the
        deadlines of the calls this thread is inside (a host function calling this component
        while another thread keeps it busy), and refused at once if it would close a cycle of
        threads waiting for each other's plugins. Without the bound, a call with a 0.2 s
        timeout waited as long as the other thread's call took.
        """
        lock = self._lock
        # Taken by an attribute read, no call until the caller's try (see _nesting.Taker).
        if not _nesting.Taker(self._try).taken:
            self._wait(lock, me, end, function)

    def _wait(self, lock: threading.Lock, me: int, end: float | None, function: str) -> None:
        # The one way a call waits for a busy plugin (bounded, cycles refused): _nesting.wait_for.
        _nesting.wait_for(
            lock,
            me,
            self._path,
            end,
            lambda: self._diagnosis.deadline(
                function,
                "call",
                " (all of it spent waiting for the plugin, busy in another thread)",
            ),
        )

    def _refused(
        self, exc: rc.LiftRefused, function: str, argument: bool = False
    ) -> AbiError | DeadlineExceeded:
        """The error for a result (or a host function's ``argument``) whose lifting stopped
        (too big, or past the deadline)."""
        if argument:
            if exc.deadline:
                return self._diagnosis.deadline(
                    function, "call", " (converting a host function's argument)"
                )
            return AbiError(
                f"plugin {self._name!r} in {function!r} passed a host function an argument "
                f"that takes at least {exc.size} bytes once converted (32 bytes per value, plus "
                f"the bytes of strings and byte lists), over the policy's max_host_arg_size of "
                f"{self._policy.max_host_arg_size}"
            )
        if exc.deadline:
            return self._diagnosis.deadline(function, "call", " (converting its result)")
        return AbiError(
            f"plugin {self._name!r} function {function!r} returned a result that takes at "
            f"least {exc.size} bytes once converted (32 bytes per value, plus the bytes of "
            f"strings and byte lists), over the policy's max_output of "
            f"{self._policy.max_output}"
        )

    def _host_impl(self, desc: rc.FuncDesc, fn: Callable[..., Any]) -> rc.HostImpl:
        """The runtime's view of one host function: the quota, the app's call, its result
        checked against the WIT type (a mismatch is the app's bug: a HostFunctionError)."""
        quota = self._policy.max_host_calls
        result_type = desc.result

        def impl(values: list[Any]) -> Any:
            # wasm checks its deadline only at function entries and loop back-edges: a run of
            # host calls in straight-line code would go on past it, and past a cancel (which
            # sets the deadline to -inf: _Lock.interrupt). Host calls of modules check too.
            end = self._path.deadline
            if end is not None and _perf_counter() >= end:
                raise self._diagnosis.deadline(
                    self._function, "call", f" (noticed when it called {desc.qualified!r})"
                )
            self._host_calls += 1
            if quota is not None and self._host_calls > quota:
                raise HostCallLimitExceeded(
                    f"plugin {self._name!r} in {self._function!r} made more than {quota} host "
                    f"function calls (policy max_host_calls); the last was {desc.qualified!r}",
                    limit="max_host_calls",
                    value=quota,
                    phase="call",
                )
            try:
                out = fn(*values)
                return None if result_type is None else rc.normalise(out, result_type, "result")
            except BaseException as exc:
                end = self._path.deadline
                if (
                    isinstance(exc, DeadlineExceeded)
                    and end is not None
                    and time.perf_counter() >= end
                ):
                    # A wait in the host function (for a plugin busy in another thread) ended
                    # at this call's deadline, saying so: the call ran out of time.
                    raise
                raise HostFunctionError(
                    f"plugin {self._name!r} in {self._function!r}: host function "
                    f"{desc.qualified!r} raised {type_name(type(exc))}: {text_of(exc)}",
                    function=desc.qualified,
                ) from exc

        return impl

    def _record(self, exc: BaseException) -> None:
        # The first failure of the call decides its error (later ones follow from it).
        if self._host_error is None:
            if isinstance(exc, rc.LiftRefused):
                exc = self._refused(exc, self._function, argument=True)
            self._host_error = exc

    def _too_deep(self, th: _nesting.ThreadRoom) -> StackLimitExceeded:
        # A component imports no host functions, so its calls never nest further: it only needs
        # room for itself (the room is not taken while it runs).
        size, levels = _nesting.room_left(th.room)
        if levels == 0:
            return StackLimitExceeded(
                f"plugin {self._name!r} was called {_nesting.NESTING_CAP} plugin calls deep on "
                "one thread (host functions calling plugins); plugsafe allows no deeper nesting",
                limit="nesting",
                value=_nesting.NESTING_CAP,
                phase="call",
            )
        return StackLimitExceeded(
            f"plugin {self._name!r} may use {fmt_bytes(self._max_stack)} of stack (Host "
            f"max_stack), but this thread ({fmt_bytes(th.size)} of stack) has only "
            f"{fmt_bytes(size)} left for plugin calls; call it from a thread with a larger "
            "stack (threading.stack_size) or nest fewer plugin calls",
            limit="max_stack",
            value=self._max_stack,
            phase="call",
        )

    def _new_instance(
        self, phase: Phase, until: float | None = None, token: CallToken | None = None
    ) -> rc.ComponentInstance:
        p = self._policy
        try:
            return rc.ComponentInstance(
                self._compiled,
                memory_size=p.memory,
                table_elements=p.max_table_elements,
                fuel=p.fuel,
                epochs=self._ticker,
                timeout=p.timeout,
                wasi=_wasi_config(p),
                host=self._host,
                sink=self._record,
                until=until,
                max_host_arg=p.max_host_arg_size,
                # An asynchronous call's instance is cancellable while it is made (the caller
                # ends the token whatever happens).
                on_store=None if token is None else functools.partial(token.making, self._path),
            )
        except rt.WasmFailure as exc:
            recorded, self._host_error = self._host_error, None
            raise_clean(self._translate(exc, recorded, "(instantiation)", phase))

    def _translate(
        self, exc: rt.WasmFailure, recorded: BaseException | None, function: str, phase: Phase
    ) -> BaseException:
        """The error for a failed instantiation or call: the memory limit when plugsafe's memory
        creator refused a memory during it (``rc.MemoryRefused``) and no host function failed
        first, else what the Diagnosis makes of it."""
        if isinstance(exc, rc.MemoryRefused) and recorded is None:
            where = f"plugin {self._name!r} in {function!r}"
            if exc.trap_code is None:  # instantiation failed: an initial size over the cap
                what = f"could not be instantiated: its memories need {fmt_bytes(exc.asked)}"
            else:
                what = (
                    f"trapped ({short_trap(exc.message)}) after a memory.grow to "
                    f"{fmt_bytes(exc.asked)} in all (from {fmt_bytes(exc.size)}) was refused"
                )
            return self._diagnosis.memory_error(
                f"{where} {what}, over the policy's memory of {fmt_bytes(exc.cap)}", phase
            )
        return self._diagnosis._translate(exc, recorded, function, None, phase)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the instance. Idempotent; later calls raise PluginClosedError."""
        end_worker = self._worker.take()
        me = threading.get_ident()
        lock = self._lock
        if self._path.owner == me or (not lock.acquire(False) and not self._wait_to_close(me)):
            # From one of its own host functions (its call holds the lock), or the call holding
            # it waits in turn for this thread (_nesting): waiting for the lock would never end
            # (attack finding: it hung). Closed without it: the running call keeps its instance
            # to its end, and no call starts after.
            if self._closed:
                return
            self._closed = True
            self._inst = None
        else:
            try:
                if self._closed:
                    return
                self._closed = True
                self._inst = None
            finally:
                lock.release()
        end_worker()
        if self._on_close is not None:
            self._on_close(self)

    def _wait_to_close(self, me: int) -> bool:
        """Take the lock for close(), a wait registered like a call's (_nesting.start_wait);
        False, without it, if that wait could never end."""
        if _nesting.start_wait(me, self._path) is not None:
            return False
        try:
            self._lock.acquire()
        finally:
            _nesting.end_wait(me)
        return True

    def __enter__(self) -> ComponentPlugin:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<plugsafe.ComponentPlugin {self._name!r} ({len(self._exports)} exports, {state})>"


def _describe_err(value: Any) -> str:
    if value is None:
        return "error"
    if isinstance(value, str):
        return value
    return repr(value)


def _wasi_config(policy: Policy) -> Any:
    """A WasiConfig granting what ``policy.wasi`` grants, or None without WASI."""
    w = policy.wasi
    if w is None:
        return None

    # Nothing reads a component's captured output: wasmtime drops it (no sink to call).
    return rt.wasi_config(
        args=list(w.args),
        env=dict(w.env),
        stdin=w.stdin,
        stdout=(w.stdout if w.stdout == "inherit" else "discard", None),
        stderr=(w.stderr if w.stderr == "inherit" else "discard", None),
        preopens=[(p.checked_host(), p.guest, p.writable) for p in w.preopens],
    )


# plugsafe.ComponentPlugin however it is reached first (see _public).
rehome(ComponentPlugin)
