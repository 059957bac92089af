"""The Host: engines, the epoch ticker, the host-function registry, and loading plugins."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

from . import _abi
from . import _runtime as rt
from ._cache import ArtifactCache, default_cache_dir
from ._closing import Closing
from ._errors import (
    ImportNotAllowedError,
    ImportProblem,
    InvalidModuleError,
    PluginClosedError,
    PolicyError,
)
from ._files import read_plugin_file
from ._hostfn import BUILTIN_FUNCTIONS, BoundFunction, signature_from_annotations
from ._isolate import compile_isolated
from ._plugin import Plugin
from ._policy import Policy
from ._precheck import Caps, PrecheckError, precheck
from ._version import __version__
from ._wasmparse import WASM_MAGIC, parse_memories

__all__ = ["BUILTIN_FUNCTIONS", "Host", "Source"]

F = TypeVar("F", bound=Callable[..., Any])
Source = str | os.PathLike[str] | bytes | bytearray | memoryview

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_CACHE_SIZE = 64
WASI_MODULE = "wasi_snapshot_preview1"
_MIN_STACK = 16 * 1024
_MAX_STACK = 2 * 1024 * 1024
_BINARY_JUNK = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _check_shape(wasm: bytes, policy: Policy, name: str) -> None:
    """Enforce the policy's structural caps before anything compiles (see ``_precheck``).

    Runs on every load, cache hits included: the caps belong to the policy, and a module another
    policy let through must not skip this one's.
    """
    caps = Caps(
        max_functions=policy.max_functions,
        max_imports=policy.max_imports,
        max_exports=policy.max_exports,
        max_function_size=policy.max_function_size,
        max_nesting=policy.max_nesting,
    )
    try:
        precheck(wasm, caps)
    except PrecheckError as exc:
        if exc.cap is None:  # unreadable: wasmtime would refuse it as well
            raise InvalidModuleError(
                f"plugin {name!r} is not a valid WebAssembly module: {exc}"
            ) from None
        raise InvalidModuleError(f"plugin {name!r}: {exc}") from None


def _fmt_sig(sig: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    params, results = sig
    return f"({', '.join(params)}) -> ({', '.join(results)})"


class Host(Closing):
    """Owns the wasm engines, the epoch ticker thread and the host functions plugins may import.

    Args:
        max_stack: bytes of native stack wasm code may use per call; deeper recursion traps
            with ``STACK_OVERFLOW`` instead of crashing the process.
        cache_dir: a directory for compiled modules, so later processes load plugins without
            compiling them again (``True`` for ``~/.cache/plugsafe``, None for no disk cache).
            It must be owned by this user and writable by no one else; entries are checked
            before use and only entries plugsafe wrote are ever loaded.

    A Host is safe to use from many threads. Use it as a context manager, or call
    :meth:`close` to stop its ticker thread and close every plugin it loaded.
    """

    def __init__(
        self,
        *,
        max_stack: int = 512 * 1024,
        cache_dir: str | os.PathLike[str] | bool | None = None,
    ) -> None:
        if not isinstance(max_stack, int) or isinstance(max_stack, bool):
            raise TypeError("max_stack must be an int")
        # wasmtime aborts the whole process (a Rust panic) on a max_wasm_stack above its 2 MiB
        # async stack size, so the range is checked here, where it can still be an exception.
        if not _MIN_STACK <= max_stack <= _MAX_STACK:
            raise ValueError(
                f"max_stack must be from {_MIN_STACK} (16 KiB) to {_MAX_STACK} (2 MiB) bytes, "
                f"got {max_stack}"
            )
        self._max_stack = max_stack
        self._lock = threading.Lock()
        self._engines: dict[bool, rt.Engine] = {}
        self._functions: dict[str, BoundFunction] = dict(BUILTIN_FUNCTIONS)
        self._ticker = rt.EpochTicker([], self)
        self._plugins: weakref.WeakSet[Plugin] = weakref.WeakSet()
        self._modules: OrderedDict[tuple[bool, bytes], tuple[rt.Module, list[Any]]] = OrderedDict()
        self._closed = False
        if cache_dir is True:
            cache_dir = default_cache_dir()
        self._cache_dir = None if cache_dir is None or cache_dir is False else Path(cache_dir)
        self._disk: dict[bool, ArtifactCache] = {}
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
        ``host.function(fn, name="kv_get")``. The wasm signature comes from the annotations
        (see docs/abi.md): int → i64, float → f64, bool → i32, bytes/str → pointer and length.
        A plugin still needs its policy to ``allow`` the name. Returns ``fn`` unchanged.
        """
        if fn is None:
            return lambda f: self.function(f, name=name)
        if not callable(fn):
            raise TypeError(f"host function must be callable, got {type(fn).__name__}")
        fname = name if name is not None else getattr(fn, "__name__", "")
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

    @property
    def functions(self) -> tuple[str, ...]:
        """Names of every host function (built-in and registered), sorted."""
        return tuple(sorted(self._functions))

    # -- loading ------------------------------------------------------------------------------

    def _engine(self, metered: bool) -> rt.Engine:
        with self._lock:
            engine = self._engines.get(metered)
            if engine is None:
                engine = rt.Engine(metered=metered, max_stack=self._max_stack)
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
        """
        if self._closed:
            raise PluginClosedError("this Host is closed")
        policy = Policy() if policy is None else policy
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a plugsafe.Policy, got {type(policy).__name__}")
        wasm, default_name = self._read_source(source, policy.max_module_size)
        if name is None:
            name = default_name
        elif not isinstance(name, str) or not name:
            raise TypeError("name must be a non-empty str")
        missing = sorted(policy.allow - self._functions.keys())
        if missing:
            raise PolicyError(
                f"allow: {', '.join(map(repr, missing))} "
                f"{'is not a host function' if len(missing) == 1 else 'are not host functions'} "
                f"of this host (it has: {', '.join(self.functions)})",
                field="allow",
            )
        _check_shape(wasm, policy, name)
        engine = self._engine(metered=policy.fuel is not None)
        module, memories = self._compile(engine, wasm, name, policy)
        functions = self._check_imports(module, policy, name)
        plugin = Plugin(
            name=name,
            policy=policy,
            engine=engine,
            module=module,
            memories=memories,
            functions=functions,
            ticker=self._ticker,
            on_close=self._forget,
        )
        with self._lock:
            if self._closed:
                plugin.close()
                raise PluginClosedError("this Host was closed while the plugin loaded")
            self._plugins.add(plugin)
        return plugin

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
        from ._config import load_config

        return load_config(self, path)

    def _read_source(self, source: Source, max_size: int) -> tuple[bytes, str]:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if len(data) > max_size:
                raise InvalidModuleError(
                    f"module is {len(data)} bytes, over the policy's max_module_size of {max_size}"
                )
            digest = hashlib.sha256(data).hexdigest()[:8]
            return self._to_wasm(data, "module", max_size), f"plugin-{digest}"
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            data = read_plugin_file(path, max_size)
            return self._to_wasm(data, repr(str(path)), max_size), path.stem or "plugin"
        raise TypeError(
            "source must be a path (str or os.PathLike) or the module as bytes, "
            f"not {type(source).__name__}"
        )

    @staticmethod
    def _to_wasm(data: bytes, what: str, max_size: int) -> bytes:
        if not data:
            raise InvalidModuleError(f"{what} is empty")
        if data.startswith(WASM_MAGIC):
            return data
        try:
            text = data.decode("utf-8")
            # WAT is text: control characters other than white space mean binary junk.
            if _BINARY_JUNK.search(text):
                raise UnicodeDecodeError("utf-8", data, 0, 1, "control characters")
        except UnicodeDecodeError:
            raise InvalidModuleError(
                f"{what} is not a WebAssembly module: it does not start with \\0asm "
                f"(starts with {data[:4]!r}) and is not WAT text"
            ) from None
        try:
            wasm = rt.wat_to_wasm(text)
        except rt.WasmFailure as exc:
            raise InvalidModuleError(
                f"{what} is neither a wasm binary (no \\0asm header) nor valid WAT: {exc.message}"
            ) from None
        if len(wasm) > max_size:
            raise InvalidModuleError(
                f"{what} compiles to {len(wasm)} bytes, over the policy's max_module_size"
            )
        return wasm

    def _compile(
        self, engine: rt.Engine, wasm: bytes, name: str, policy: Policy
    ) -> tuple[rt.Module, list[Any]]:
        # Compiled modules are immutable and shareable between stores of one engine, so loading
        # the same bytes again (another tenant, a pool) skips the compiler.
        key = (engine.metered, hashlib.sha256(wasm).digest())
        with self._lock:
            hit = self._modules.get(key)
            if hit is not None:
                self._modules.move_to_end(key)
                return hit
        module = self._from_disk(engine, key[1])
        if module is None:
            try:
                if policy.compile_timeout is not None or policy.compile_memory is not None:
                    module = compile_isolated(
                        engine,
                        wasm,
                        max_stack=self._max_stack,
                        timeout=policy.compile_timeout,
                        memory=policy.compile_memory,
                        name=name,
                    )
                else:
                    module = engine.compile(wasm)
            except rt.WasmFailure as exc:
                raise InvalidModuleError(
                    f"plugin {name!r} is not a valid WebAssembly module: {exc.message}"
                ) from None
            self._to_disk(engine, key[1], module)
        try:
            memories = parse_memories(wasm)
        except ValueError as exc:  # wasmtime accepted it, so this would be our bug; say so
            raise InvalidModuleError(
                f"plugin {name!r}: cannot read its memory section: {exc}"
            ) from exc
        entry: tuple[rt.Module, list[Any]] = (module, list(memories))
        with self._lock:
            self._modules[key] = entry
            while len(self._modules) > _MODULE_CACHE_SIZE:
                self._modules.popitem(last=False)
        return entry

    def _disk_cache(self, engine: rt.Engine) -> ArtifactCache | None:
        if self._cache_dir is None:
            return None
        with self._lock:
            cache = self._disk.get(engine.metered)
            if cache is None:
                salt = f"{__version__}|{rt.library_fingerprint()}|{engine.settings}"
                cache = self._disk[engine.metered] = ArtifactCache(self._cache_dir, salt=salt)
            return cache

    def _from_disk(self, engine: rt.Engine, digest: bytes) -> rt.Module | None:
        cache = self._disk_cache(engine)
        if cache is None:
            return None
        key = cache.key(digest)
        entry = cache.get(key)
        if entry is None:
            return None
        description, artifact = entry
        try:
            # Safe only because ArtifactCache returns nothing but intact entries it wrote itself.
            return engine.deserialize(artifact, description)
        except rt.WasmFailure:
            cache.discard(key)
            return None

    def _to_disk(self, engine: rt.Engine, digest: bytes, module: rt.Module) -> None:
        cache = self._disk_cache(engine)
        if cache is not None:
            cache.put(cache.key(digest), module.serialize(), module.describe())

    def _check_imports(
        self, module: rt.Module, policy: Policy, name: str
    ) -> dict[str, BoundFunction]:
        problems: list[ImportProblem] = []
        bound: dict[str, BoundFunction] = {}
        for imp in module.imports:
            if imp.module == WASI_MODULE and policy.wasi is not None and imp.kind == "func":
                # Granted as a whole by the policy's Wasi; wasmtime checks names and types when
                # the plugin is linked (an unknown one is a PluginLoadError then).
                continue
            if imp.module != _abi.HOST_MODULE:
                if imp.module.startswith("wasi"):
                    detail = (
                        "WASI is not enabled for this plugin"
                        if policy.wasi is None
                        else f"plugsafe offers WASI preview 1 ({WASI_MODULE}) only"
                    )
                else:
                    detail = f"the host offers imports only from the {_abi.HOST_MODULE!r} module"
                problems.append(ImportProblem(imp.module, imp.name, "unknown", detail))
                continue
            if imp.kind != "func":
                problems.append(
                    ImportProblem(
                        imp.module, imp.name, "unknown", f"the host offers no {imp.kind} imports"
                    )
                )
                continue
            fn = self._functions.get(imp.name)
            if fn is None:
                problems.append(
                    ImportProblem(
                        imp.module, imp.name, "unknown", "the host has no function by that name"
                    )
                )
                continue
            if imp.name not in policy.allow:
                problems.append(
                    ImportProblem(
                        imp.module,
                        imp.name,
                        "not allowed",
                        "the host has it, but the policy's allow list does not include it",
                    )
                )
                continue
            want = fn.wasm
            have = (imp.params, imp.results)
            if want != have:
                problems.append(
                    ImportProblem(
                        imp.module,
                        imp.name,
                        "wrong type",
                        f"the host defines {_fmt_sig(want)}, the plugin imports {_fmt_sig(have)}",
                    )
                )
                continue
            bound[imp.name] = fn
        if problems:
            raise ImportNotAllowedError(name, problems)
        return bound

    # -- lifecycle ----------------------------------------------------------------------------

    def _forget(self, plugin: Plugin) -> None:
        with self._lock:
            self._plugins.discard(plugin)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def close(self) -> None:
        """Close every plugin this host loaded and stop the ticker thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            plugins = list(self._plugins)
        for plugin in plugins:
            plugin.close()
        self._ticker.stop()
        with self._lock:
            self._modules.clear()

    def __repr__(self) -> str:
        return f"<plugsafe.Host {'closed' if self._closed else 'open'}>"
