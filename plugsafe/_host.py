"""The Host: engines, the epoch ticker, the host-function registry, and loading plugins."""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _runtime as rt
from ._cache import default_cache_dir
from ._closing import Closing
from ._component import ComponentLoader, check_component_function_name, is_component_source
from ._errors import PluginClosedError, PolicyError, int_text
from ._hostfn import (
    BUILTIN_FUNCTIONS,
    BoundFunction,
    annotated_target,
    signature_from_annotations,
)
from ._lazymodule import import_now, lazy_function
from ._lazyre import lazy_re
from ._loader import LoadedModule, ModuleLoader, Source, check_imports
from ._oncall import OnCall
from ._plugin import Plugin
from ._policy import Policy

if TYPE_CHECKING:
    from ._componentplugin import ComponentPlugin, load_component
    from ._config import load_config
    from ._pooling import Pooling
else:  # host-config files (and the policy-file parser), when first read (issue 14: cold start)
    load_config = lazy_function("plugsafe._config", "load_config", globals())
    # The loaded component and its load, when a component is first loaded (issue 14).
    load_component = lazy_function("plugsafe._componentplugin", "load_component", globals())

# The first 8 bytes of every core module binary (magic, version 1): never a component's.
_CORE_PREAMBLE = b"\x00asm\x01\x00\x00\x00"

__all__ = ["BUILTIN_FUNCTIONS", "Host", "Source"]

F = TypeVar("F", bound=Callable[..., Any])
P = TypeVar("P", "Plugin", "ComponentPlugin")

_NAME = lazy_re(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MIN_STACK = 16 * 1024
_MAX_STACK = 2 * 1024 * 1024


_DEFAULT: list[Policy] = []


def _default_policy() -> Policy:
    """The one ``Policy()`` of loads given none: frozen, so shared (checking a new one's fields
    cost more than a whole load of a small module, and the import-check memo needs the same
    object)."""
    if not _DEFAULT:
        _DEFAULT.append(Policy())
    return _DEFAULT[0]


class Host(Closing):
    """Owns the wasm engines, the epoch ticker thread and the host functions plugins may import.

    Args:
        max_stack: bytes of native stack wasm code may use per call; deeper recursion traps
            with ``STACK_OVERFLOW`` instead of crashing the process.
        cache_dir: a directory for compiled modules, so later processes load plugins without
            compiling them again (``True`` for ``~/.cache/plugsafe``, None for no disk cache).
            It must be owned by this user and writable by no one else; entries are checked
            before use and only entries plugsafe wrote are ever loaded.
        on_call: called after every call of every plugin this host loads (``call``,
            ``call_json``, ``invoke``, their ``*_async`` forms, PluginPool calls, a component's
            ``invoke`` and ``invoke_async``) with its :class:`CallStats`, including ``plugin``,
            ``function``, ``error`` and ``context``: the place for metrics. It runs on the
            calling thread after the call released its plugin; an exception it raises is
            logged (logger ``plugsafe``) and never changes what the call returns or raises.
        pooling: instances from wasmtime's pooling allocator, with these explicit limits
            (:class:`Pooling`); None (the default) maps memory per instance. PolicyError
            (``field="instances"``) if this process cannot reserve the pool's address space.

    A Host is safe to use from many threads. Use it as a context manager, or call
    :meth:`close` to stop its ticker thread and close every plugin it loaded.
    """

    def __init__(
        self,
        *,
        max_stack: int = 512 * 1024,
        cache_dir: str | os.PathLike[str] | bool | None = None,
        on_call: OnCall | None = None,
        pooling: Pooling | None = None,
    ) -> None:
        if not isinstance(max_stack, int) or isinstance(max_stack, bool):
            raise TypeError("max_stack must be an int")
        # The int it holds: a subclass's own comparisons could pass the range check below with
        # any value, and the engine made from it aborts the process (attack7).
        max_stack = int.__index__(max_stack)
        # wasmtime aborts the whole process (a Rust panic) on a max_wasm_stack above its 2 MiB
        # async stack size, so the range is checked here, where it can still be an exception.
        if not _MIN_STACK <= max_stack <= _MAX_STACK:
            raise ValueError(
                f"max_stack must be from {_MIN_STACK} (16 KiB) to {_MAX_STACK} (2 MiB) bytes, "
                f"got {int_text(max_stack)}"
            )
        if on_call is not None and not callable(on_call):
            raise TypeError(f"on_call must be callable, got {type(on_call).__name__}")
        self._on_call = on_call
        self._max_stack = max_stack
        # Pooling's module is imported with its first user (issue 14: cold start).
        if pooling is not None and not isinstance(pooling, import_now("plugsafe._pooling").Pooling):
            raise TypeError(f"pooling must be a plugsafe.Pooling, got {type(pooling).__name__}")
        self._pooling = pooling
        # Re-entrant: a signal handler may close a plugin (docs/api.md) while its thread holds
        # this lock in load() or close(), and closing a plugin takes it again to forget it
        # (with a plain Lock the thread waited on itself for ever: attack9).
        self._lock = threading.RLock()
        self._engines: dict[bool, rt.Engine] = {}
        self._functions: dict[str, BoundFunction] = dict(BUILTIN_FUNCTIONS)
        self._ticker = rt.EpochTicker([], self)
        # Linkers of closed plugins, for the next plugin of the same module (issue 14).
        self._linkers = rt.LinkerPool()
        self._plugins: weakref.WeakSet[Plugin | ComponentPlugin] = weakref.WeakSet()
        self._closed = False
        if cache_dir is True:
            cache_dir = default_cache_dir()
        # Reading, checking, compiling and caching modules: the one load pipeline (_loader).
        self._loader = ModuleLoader(
            max_stack=max_stack,
            cache_dir=None if cache_dir is None or cache_dir is False else Path(cache_dir),
        )
        # Components: compiled and cached apart (their own engines, see _component), and the
        # functions their imports may use, by "ns:pkg/iface#func".
        self._component_functions: dict[str, Callable[..., Any]] = {}
        self._components = ComponentLoader(
            None if cache_dir is None or cache_dir is False else Path(cache_dir)
        )
        # The unmetered engine (what most policies use) is made now, as part of the Host, the
        # way a wasmtime user makes an Engine once; the metered one when a policy first needs it.
        self._engine(metered=False)

    # -- host functions -----------------------------------------------------------------------

    @overload
    def function(self, fn: F, *, name: str | None = None) -> F: ...

    @overload
    def function(self, fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...

    def function(self, fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
        """Register ``fn`` as a host function plugins may import as ``plugsafe.<name>``.

        Use as ``@host.function``, ``@host.function(name="kv_get")`` or
        ``host.function(fn, name="kv_get")``. ``fn`` may be any callable with annotations: a
        function, a bound method, a ``functools.partial`` (its remaining parameters are the
        wasm ones) or an object with an annotated ``__call__``; ``async def`` is refused
        (``TypeError``: host functions are synchronous). The wasm signature comes from the
        annotations (docs/host-functions.md): int → i32 or i64 and float → f32 or f64 (the
        width each plugin imports; ``Annotated[int, plugsafe.I32]`` pins one), bool → i32,
        bytes/str → pointer and length. A plugin still needs its policy to ``allow`` the name.
        Returns ``fn`` unchanged. The name defaults to the function's ``__name__`` (a
        partial's: its function's); a callable object needs ``name=``.
        """
        if fn is None:
            return lambda f: self.function(f, name=name)
        if not callable(fn):
            raise TypeError(f"host function must be callable, got {type(fn).__name__}")
        fname = name if name is not None else getattr(annotated_target(fn), "__name__", "")
        if (
            name is None
            and annotated_target(fn) is not fn
            and not isinstance(fn, functools.partial)
        ):
            fname = ""  # a callable object: its class's "__call__" is no name for it
        if fname == "" and name is None:
            raise ValueError(
                f"host function {fn!r} has no name of its own: pass name=, as in "
                "host.function(fn, name='kv_get')"
            )
        if not isinstance(fname, str) or not _NAME.match(fname):
            raise ValueError(
                f"host function name {fname!r} is not valid (letters, digits and _, not "
                "starting with a digit)"
            )
        if fname in BUILTIN_FUNCTIONS:
            raise ValueError(f"host function name {fname!r} is built in and cannot be replaced")
        signature = signature_from_annotations(fn, fname)
        with self._lock:
            if fname in self._functions:
                raise ValueError(f"a host function named {fname!r} is already registered")
            self._functions[fname] = BoundFunction(fname, fn, signature)
        return fn

    def component_function(self, name: str) -> Callable[[F], F]:
        """Register a decorated function for components that import ``name``.

        ``name`` is a WIT interface function, ``"test:host/logging#host-log"`` (with the
        interface's version if it has one: ``"ns:pkg/iface@1.0.0#func"``), or ``"#log"`` for
        a function the world imports itself (``import log: func(...)``). The function gets
        the arguments converted as ``invoke`` returns values (records as Record, ...) and
        returns a value of the WIT result type. A component still needs its policy to
        ``allow`` the function or its interface. Returns the function unchanged.
        """
        check_component_function_name(name)

        def register(fn: F) -> F:
            if not callable(fn):
                raise TypeError(f"host function must be callable, got {type(fn).__name__}")
            with self._lock:
                if name in self._component_functions:
                    raise ValueError(f"a component function named {name!r} is already registered")
                self._component_functions[name] = fn
            return fn

        return register

    @property
    def functions(self) -> tuple[str, ...]:
        """Names of every host function (built-in and registered), sorted."""
        return tuple(sorted(self._functions))

    # -- loading ------------------------------------------------------------------------------

    def _engine(self, metered: bool) -> rt.Engine:
        engine = self._engines.get(metered)  # made once, never replaced: no lock to read it
        if engine is not None:
            return engine
        with self._lock:
            engine = self._engines.get(metered)
            if engine is None:
                # Process-wide: hosts share engines and their tickers (see rt.shared_engine).
                try:
                    engine = rt.shared_engine(
                        metered=metered,
                        max_stack=self._max_stack,
                        pooling=None if self._pooling is None else self._pooling.limits(),
                    )
                except rt.PoolUnreservable as exc:
                    # Limits valid one by one, impossible together here (attack8).
                    raise PolicyError(
                        f"Host(pooling=...): {exc.message}", field="instances"
                    ) from None
                self._engines[metered] = engine
                self._ticker.add(engine)
            return engine

    def load(
        self, source: Source, *, policy: Policy | None = None, name: str | None = None
    ) -> Plugin:
        """Load a plugin under ``policy`` (``Policy()`` if omitted: nothing allowed).

        Args:
            source: a path (``str`` or ``os.PathLike``) to a ``.wasm`` or ``.wat`` file, or the
                module itself as ``bytes`` (wasm binary or WAT text).
            policy: what the plugin may import and how much it may use per call.
            name: used in errors and the plugin's logger; defaults to the file's stem, or
                ``plugin-<first 8 hex digits of sha256>`` for bytes.

        Raises:
            InvalidModuleError: empty, not wasm, truncated, invalid, over max_module_size, or
                over one of the structural caps checked before compiling (max_functions,
                max_imports, max_exports, max_function_size, max_nesting).
            ImportNotAllowedError: imports the host lacks or the policy does not allow (all of
                them are listed).
            PolicyError: ``policy.allow`` names a function this host does not have.
            AbiVersionError: the plugin declares an ABI version this plugsafe does not speak.
            LimitExceeded: a limit bit while instantiating (e.g. a start function that loops),
                or compiling in a child process ran over compile_timeout or compile_memory.

        A WebAssembly component (binary, or ``(component ...)`` text) loads as a
        :class:`ComponentPlugin` instead (see :meth:`load_component`, typed as such).
        """
        # A core module's binary preamble settles it at once (no 4 KiB copy to sniff).
        if not (type(source) is bytes and source[:8] == _CORE_PREAMBLE) and is_component_source(
            source
        ):
            return self.load_component(source, policy=policy, name=name)  # type: ignore[return-value]
        return self._instantiate(self._prepare(source, policy=policy, name=name))

    def load_component(
        self, source: Source, *, policy: Policy | None = None, name: str | None = None
    ) -> ComponentPlugin:
        """Load a WebAssembly component under ``policy``: what :meth:`load` does for one.

        Raises as :meth:`load` does; also PluginLoadError for a component whose exports use
        types plugsafe cannot pass (resources, futures, streams), and InvalidModuleError for
        one that is not a valid component.
        """
        if self._closed:
            raise PluginClosedError("this Host is closed")
        policy = Policy() if policy is None else policy
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a plugsafe.Policy, got {type(policy).__name__}")
        plugin = load_component(
            source,
            policy,
            name=name,
            engine=self._component_engine,
            loader=self._components,
            on_close=self._forget,
            functions=dict(self._component_functions),
            on_call=self._on_call,
        )
        return self._adopt(plugin)

    def _adopt(self, plugin: P) -> P:
        """Keep ``plugin`` (closed with the host), or close it if the host was closed while
        it loaded: a PluginClosedError then."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._plugins.add(plugin)
        if closed:
            # Closed outside the lock: closing takes it again (to forget the plugin), and a
            # host function of the start function, or another thread, may have closed the host
            # (attack9: the load hung for ever).
            plugin.close()
            raise PluginClosedError("this Host was closed while the plugin loaded")
        return plugin

    def _component_engine(self, metered: bool) -> rt.Engine:
        return rt.shared_engine(metered=metered, max_stack=self._max_stack, components=True)

    def _instantiate(self, loaded: LoadedModule) -> Plugin:
        """The import check, then a new Plugin (instance) of a module ``_prepare`` gave.

        A PluginPool prepares once and instantiates ``size`` times: one read of the file, so
        every instance runs the same bytes.
        """
        if self._closed:
            raise PluginClosedError("this Host is closed")
        functions = check_imports(loaded.module, self._functions, loaded.policy, loaded.name)
        if self._pooling is not None:
            why = self._pooling.refuses(loaded.policy.memory // max(len(loaded.memories), 1))
            if why is not None:
                raise PolicyError(f"plugin {loaded.name!r}: {why}", field="memory")
        plugin = Plugin(
            name=loaded.name,
            policy=loaded.policy,
            engine=loaded.engine,
            module=loaded.module,
            memories=list(loaded.memories),
            functions=functions,
            ticker=self._ticker,
            on_close=self._forget,
            on_call=self._on_call,
            linkers=self._linkers,
        )
        return self._adopt(plugin)

    def load_config(self, path: str | os.PathLike[str]) -> dict[str, Plugin]:
        """Load every plugin a host config file (TOML) describes; return them by name.

        The file gives a default policy and, per plugin, its ``source`` (relative to the file),
        an optional ``sha256`` pin, and policy overrides; ``docs/policy.md`` has the layout.
        The whole file is checked before anything loads, and if any plugin fails the ones
        already loaded are closed again.

        Raises:
            PolicyError: the file is unreadable or invalid; ``.path`` names the key.
            PluginLoadError: a plugin cannot be read, does not match its sha256 pin (both
                hashes are named), or fails to load as in :meth:`load`.
            LimitExceeded: a limit bit while a plugin was instantiated.
        """
        return load_config(self, path)

    def _prepare(
        self, source: Source, *, policy: Policy | None, name: str | None = None
    ) -> LoadedModule:
        """Everything up to the import check: read, precheck, compile (see ``_loader``).

        The command line uses this to inspect a module without instantiating it.
        """
        if self._closed:
            raise PluginClosedError("this Host is closed")
        policy = _default_policy() if policy is None else policy
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a plugsafe.Policy, got {type(policy).__name__}")
        allow = policy.allow
        missing = sorted(allow - self._functions.keys()) if allow else ()
        if missing:
            raise PolicyError(
                f"allow: {', '.join(map(repr, missing))} "
                f"{'is not a host function' if len(missing) == 1 else 'are not host functions'} "
                f"of this host (it has: {', '.join(self.functions)})",
                field="allow",
            )
        engine = self._engine(metered=policy.fuel is not None)
        return self._loader.load(source, policy, engine, name)

    # -- lifecycle ----------------------------------------------------------------------------

    def _forget(self, plugin: Plugin | ComponentPlugin) -> None:
        with self._lock:
            if self._closed:
                # close() lists the plugins and closes each: nothing to forget, and changing
                # the set while a signal handler interrupted that listing (on this thread,
                # which holds the lock) would break it (attack9).
                return
            self._plugins.discard(plugin)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def close(self) -> None:
        """Close every plugin this host loaded. Idempotent.

        Nothing shared stops: a call still running (say, the one whose host function closes
        the host) keeps its deadline.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            plugins = list(self._plugins)
        for plugin in plugins:
            plugin.close()
        self._ticker.stop()
        self._linkers.clear()
        self._loader.clear()
        self._components.clear()

    def __repr__(self) -> str:
        return f"<plugsafe.Host {'closed' if self._closed else 'open'}>"
