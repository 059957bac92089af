"""The one way bytes become a checked, compiled module.

Every loader of plugins (``Host.load``, ``Host.load_config`` through it, ``PluginPool``, and the
command line's ``run``, ``check`` and ``inspect``) goes through :class:`ModuleLoader`, so they
refuse the same modules with the same errors at the same speed. The steps, in order:

1. read: a file by its size (never more than the policy's ``max_module_size`` + 1 bytes), or
   the caller's bytes;
2. WAT: text is translated to a binary (and the binary capped again);
3. caches: an in-memory LRU of compiled modules per loader (one per Host), keyed by the
   binary itself, then the optional on-disk :class:`ArtifactCache`, keyed by its sha256 (the
   one hash a load computes, and none on a memory hit);
4. precheck: the policy's structural caps, read from the binary before anything compiles
   (``_wasmbin.precheck``; compiling is outside wasmtime's threat model). What it measured
   (the :class:`~._wasmbin.ModuleShape`) is kept with the compiled module in both caches, so a
   cache hit checks the policy's caps against the stored shape instead of running the precheck
   again (a disk hit first reads back the counts and memories it keeps, section headers only:
   ``_tells_the_truth``); a shape that does not certainly fit (``_wasmbin.fits``) runs the
   precheck in full;
5. compile: in-process, or in a child process killed at ``compile_timeout`` /
   ``compile_memory`` when the policy sets either (``_isolate``);
6. the import check against the host's functions and the policy (:func:`check_imports`).

Steps 1-5 give a :class:`LoadedModule`, which the command line can inspect without
instantiating anything; step 6 is separate because the command line reports every import's
verdict rather than stopping at the first refusal.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from . import _abi
from . import _runtime as rt
from . import _sha as hashlib  # hashlib.sha256 without OpenSSL at start-up (see _sha)
from ._cache import ArtifactCache, CacheShelf
from ._errors import ImportNotAllowedError, ImportProblem, InvalidModuleError, PluginLoadError
from ._files import read_plugin_file
from ._lazymodule import lazy_function, lazy_module
from ._lazyre import lazy_re
from ._policy import Policy
from ._runtime._module import MAX_DESCRIPTION
from ._version import __version__
from ._wasi import WASI_MODULE
from ._wasmshape import (
    MEMORY_FLAGS_COMPILED,
    WASM_MAGIC,
    Caps,
    MemoryDecl,
    ModuleShape,
    WasmFormatError,
    fits,
    measure,
)

if TYPE_CHECKING:
    import dataclasses
    from dataclasses import dataclass

    from ._isolate import compile_isolated
    from ._wasmbin import parse_memories, precheck
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass

    dataclasses = lazy_module("dataclasses", globals(), "dataclasses")
    # The compiler child's module, when a policy first asks for one (issue 14: cold start).
    compile_isolated = lazy_function("plugsafe._isolate", "compile_isolated", globals())
    # The binary reader, on the first module compiled: a load from a cache runs no precheck
    # (what it measured is kept with the module, and a disk hit checks that with the small
    # _wasmshape.measure; issue 14: cold start).
    precheck = lazy_function("plugsafe._wasmbin", "precheck", globals())
    parse_memories = lazy_function("plugsafe._wasmbin", "parse_memories", globals())

__all__ = [
    "Format",
    "LoadedModule",
    "ModuleLoader",
    "Source",
    "check_imports",
    "import_problems",
    "read_source",
    "to_wasm",
]

Source = str | os.PathLike[str] | bytes | bytearray | memoryview
Format = Literal["wasm", "wat"]

# The WASI module plugsafe offers (preview 1); the one definition on this side of the merge.
# WAT sources whose translation is kept (per Host), beside the modules they compile to.
_WAT_CACHE_SIZE = 32
_MODULE_CACHE_SIZE = 64
_WASI_TYPES = frozenset({"i32", "i64"})
_BINARY_JUNK = lazy_re("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class LoadedModule:
    """A module that passed every check up to instantiation.

    Attributes:
        name: the plugin's name (given, or derived from the file or the bytes' hash).
        module: the compiled module, for the engine the policy asked for.
        memories: the memories the module defines itself (imports excluded), in bytes.
        wasm: the binary that was compiled (WAT already translated).
        format: what the source was: ``"wasm"`` or ``"wat"``.
        source: the source as read (the WAT text for WAT; the same object as ``wasm`` else).
        policy: the policy it was checked against.
        engine: the engine it was compiled for (metered or not, as the policy asks).
    """

    name: str
    module: rt.Module
    memories: tuple[MemoryDecl, ...]
    wasm: bytes
    format: Format
    source: bytes
    policy: Policy
    engine: rt.Engine

    @property
    def source_size(self) -> int:
        """Bytes of the source as read."""
        return len(self.source)

    @property
    def source_sha256(self) -> str:
        """Hex sha256 of the source as read (what a host config pins).

        Computed when asked, not on every load: only the command line wants it.
        """
        return hashlib.sha256(self.source).hexdigest()


def read_source(source: Source, max_size: int) -> tuple[bytes, str | None, str]:
    """(the source's bytes, its default plugin name, what to call it in errors).

    A file is read by its size, never more than ``max_size`` + 1 bytes. Bytes have no default
    name here (None): theirs is ``plugin-`` and the first hex digits of their sha256, which the
    loader takes from its cache rather than hashing the bytes again (:func:`default_name`).

    Raises InvalidModuleError if over ``max_size``, PluginLoadError if a file cannot be read,
    TypeError for anything that is neither a path nor bytes.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_size:
            raise InvalidModuleError(
                f"module is {len(data)} bytes, over the policy's max_module_size of {max_size}"
            )
        return data, None, "module"
    if isinstance(source, str) and source.lstrip().startswith("(") and not os.path.exists(source):
        # WAT text given as a str: a str is a path, and text is never taken for one (an app
        # passing a file name it got from elsewhere must not load code instead).
        shown = source.strip()[:40] + ("..." if len(source.strip()) > 40 else "")
        raise PluginLoadError(
            f"cannot read plugin file {shown!r}: a str is a path, and this looks like "
            "WebAssembly text: pass the text as bytes (text.encode())"
        )
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return read_plugin_file(path, max_size), path.stem or "plugin", repr(str(path))
    raise TypeError(
        "source must be a path (str or os.PathLike) or the module as bytes, "
        f"not {type(source).__name__}"
    )


def to_wasm(data: bytes, what: str, max_size: int) -> tuple[bytes, Format]:
    """(the wasm binary, ``"wasm"`` or ``"wat"``) for a source's bytes; ``what`` names it."""
    if not data:
        raise InvalidModuleError(f"{what} is empty")
    if data.startswith(WASM_MAGIC):
        return data, "wasm"
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
    return wasm, "wat"


def default_name(digest: bytes) -> str:
    """The name of a plugin loaded from bytes without one: ``plugin-`` + 8 hex digits of sha256."""
    return f"plugin-{digest.hex()[:8]}"


def caps_of(policy: Policy) -> Caps:
    """The policy's structural caps."""
    return Caps(
        max_functions=policy.max_functions,
        max_imports=policy.max_imports,
        max_exports=policy.max_exports,
        max_function_size=policy.max_function_size,
        max_nesting=policy.max_nesting,
    )


def check_shape(wasm: bytes, policy: Policy | Caps, name: str) -> ModuleShape:
    """Enforce the policy's structural caps before anything compiles (see ``_wasmbin``).

    The caps belong to the policy: a module another policy let through must not skip this
    one's. The loader runs this on a module it has not seen, and on a cached one whose stored
    shape does not certainly fit these caps. Returns what was measured.
    """
    caps = policy if isinstance(policy, Caps) else caps_of(policy)
    try:
        return precheck(wasm, caps)
    except WasmFormatError as exc:
        if exc.cap is None:  # unreadable: wasmtime would refuse it as well
            raise InvalidModuleError(
                f"plugin {name!r} is not a valid WebAssembly module: {exc}"
            ) from None
        raise InvalidModuleError(f"plugin {name!r}: {exc}") from None


@dataclass(frozen=True)
class _Entry:
    """A compiled module and what the loader learnt about its binary (kept in both caches)."""

    module: rt.Module
    memories: tuple[MemoryDecl, ...]
    # What the precheck measured; None for a disk entry written without it (then the precheck
    # runs again on that load).
    shape: ModuleShape | None
    digest: bytes  # sha256 of the binary


# The loader's own part of a disk entry's description (besides imports and exports).
_META = "plugsafe_load"


def _meta(shape: ModuleShape, memories: tuple[MemoryDecl, ...]) -> dict[str, object]:
    return {
        _META: (
            (
                shape.functions,
                shape.imports,
                shape.exports,
                shape.largest_function,
                shape.max_nesting,
                shape.nesting_bound,
            ),
            tuple((m.minimum, m.maximum) for m in memories),
        )
    }


def _nat(v: object) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"not a count: {v!r}")
    return v


def _read_meta(
    description: bytes | dict[str, object] | None,
) -> tuple[ModuleShape, tuple[MemoryDecl, ...]] | None:
    """The loader's part of a disk entry's description; None if absent or not that shape.

    ``description`` is the bytes, or what ``rt.load_description`` made of them.
    """
    data = rt.load_description(description) if isinstance(description, bytes) else description
    try:
        if data is None:
            return None
        meta = data.get(_META)
        if type(meta) is not tuple or len(meta) != 2:
            return None
        shape_counts, memories_sizes = meta
        counts = [_nat(v) for v in shape_counts]
        if len(counts) != 6:
            return None
        shape = ModuleShape(*counts)
        memories = tuple(
            MemoryDecl(_nat(lo), None if hi is None else _nat(hi)) for lo, hi in memories_sizes
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return shape, memories


def _tells_the_truth(meta: tuple[ModuleShape, tuple[MemoryDecl, ...]], wasm: bytes) -> bool:
    """Whether a disk entry's part (``_read_meta``) says what the binary ``wasm`` holds.

    A hit believes it: the functions and the largest body decide the policy's max_functions
    and max_function_size, the memories how the policy's memory is split and whether the
    store can hold them. ``measure`` reads them from the binary (section headers only: the
    cost of a hit stays small, and no ``_wasmbin``). Imports and exports are compared with
    wasmtime's after deserializing; the nesting bound is not compared (it needs every body
    decoded: the precheck's work). Unreadable bytes, or memories no plugsafe engine compiles
    (shared, 64-bit): not what was compiled, so False.
    """
    try:
        functions, largest, memories, flags = measure(wasm)
    except WasmFormatError:
        return False
    shape = meta[0]
    return (
        shape.functions == functions
        and shape.largest_function == largest
        and meta[1] == memories
        and not flags & ~MEMORY_FLAGS_COMPILED
    )


class ModuleLoader:
    """Reads, checks, compiles and caches modules for one Host (see the module docstring).

    Args:
        max_stack: the engines' ``max_stack`` (the compiler child builds the same engine).
        cache_dir: the on-disk cache's directory, or None for none.

    Safe to use from many threads.
    """

    def __init__(self, *, max_stack: int, cache_dir: Path | None) -> None:
        self._max_stack = max_stack
        self._lock = threading.Lock()
        # Keyed by the binary itself: a dict lookup compares the bytes exactly, and hashes a
        # bytes object only once in its life (loading the same bytes object again costs no
        # hash at all). The cost is the binaries held, at most _MODULE_CACHE_SIZE of them,
        # beside compiled modules that are larger still.
        self._modules: OrderedDict[tuple[bool, bytes], _Entry] = OrderedDict()
        self._disk = CacheShelf(cache_dir)
        # WAT text already translated, by the text itself (translating is a pure function of
        # it, and cost ~0.1-1 ms on every load of a .wat plugin: issue 14).
        self._wat: OrderedDict[bytes, bytes] = OrderedDict()
        # The last policy's caps (a policy is frozen: loads under one policy share them).
        self._caps: tuple[Policy | None, Caps] = (None, caps_of(Policy()))
        # The last load that needed no precheck (_Entry, policy, name argument, result): one
        # app loading the same bytes again and again gets the same result without redoing it
        # (the entry is kept too: the module stays usable even if the LRU has dropped it).
        self._last: tuple[object, object, object, LoadedModule | None] = (None, None, None, None)

    def load(
        self, source: Source, policy: Policy, engine: rt.Engine, name: str | None = None
    ) -> LoadedModule:
        """Steps 1-5: read, translate WAT, precheck, compile (or hit a cache) for ``engine``.

        Raises:
            InvalidModuleError: empty, not wasm, truncated, invalid, too big, or over a
                structural cap.
            PluginLoadError: the file cannot be read, or the compiler child failed.
            LimitExceeded: the compiler child ran over compile_timeout or compile_memory.
            TypeError: ``source`` or ``name`` of the wrong type.
        """
        data, fallback, what = read_source(source, policy.max_module_size)
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError("name must be a non-empty str")
        last = self._last
        if (
            last[3] is not None
            and last[3].source is data
            and last[1] is policy
            and last[2] is name
            and last[3].engine is engine
        ):
            # The very load before this one again: the same bytes object (so the same module),
            # policy object (frozen) and name argument. Its checks hold as they did (the size
            # cap was checked again above), and its result is immutable.
            return last[3]
        wasm, fmt = self._to_wasm(data, what, policy.max_module_size)
        memo = self._caps
        if memo[0] is policy:  # the same (frozen) policy as the last load: its caps
            caps = memo[1]
        else:
            caps = caps_of(policy)
            self._caps = (policy, caps)
        key = (engine.metered, wasm)
        with self._lock:
            entry = self._modules.get(key)
            if entry is not None:
                self._modules.move_to_end(key)
        if entry is None:
            entry = self._compile(engine, wasm, caps, policy, name or fallback)
            with self._lock:
                self._modules[key] = entry
                while len(self._modules) > _MODULE_CACHE_SIZE:
                    self._modules.popitem(last=False)
        name_arg = name
        if name is None:
            name = fallback or default_name(entry.digest)
        settled = entry.shape is not None and fits(entry.shape, caps)
        if not settled:
            # A cached module this policy's caps may refuse: decide exactly, as on a first load.
            shape = check_shape(wasm, caps, name)
            if entry.shape is not None:
                # Both bounds hold for every body: keep the tighter, so that this policy's
                # next load of the module is settled by ``fits``.
                bound = min(entry.shape.nesting_bound, shape.nesting_bound)
                shape = dataclasses.replace(entry.shape, nesting_bound=bound)
            with self._lock:
                if key in self._modules:
                    self._modules[key] = dataclasses.replace(entry, shape=shape)
        loaded = LoadedModule(
            name=name,
            module=entry.module,
            memories=entry.memories,
            wasm=wasm,
            format=fmt,
            source=data,
            policy=policy,
            engine=engine,
        )
        if settled:  # remembered only when the stored shape settled it (as before the check)
            self._last = (entry, policy, name_arg, loaded)
        return loaded

    def _to_wasm(self, data: bytes, what: str, max_size: int) -> tuple[bytes, Format]:
        """``to_wasm``, remembering the translation of WAT text (the same checks every time)."""
        if data.startswith(WASM_MAGIC):
            return data, "wasm"
        with self._lock:
            wasm = self._wat.get(data)
        if wasm is None:
            wasm, fmt = to_wasm(data, what, max_size)
            if fmt == "wat":
                with self._lock:
                    self._wat[data] = wasm
                    while len(self._wat) > _WAT_CACHE_SIZE:
                        self._wat.popitem(last=False)
            return wasm, fmt
        if len(wasm) > max_size:  # this policy's own cap, as to_wasm checks it
            raise InvalidModuleError(
                f"{what} compiles to {len(wasm)} bytes, over the policy's max_module_size"
            )
        return wasm, "wat"

    def clear(self) -> None:
        """Forget every module held in memory (the disk cache stays)."""
        with self._lock:
            self._modules.clear()
            self._wat.clear()
            self._last = (None, None, None, None)

    def _compile(
        self, engine: rt.Engine, wasm: bytes, caps: Caps, policy: Policy, name: str | None
    ) -> _Entry:
        # Compiled modules are immutable and shareable between stores of one engine, so loading
        # the same bytes again (another tenant, a pool) skips the compiler.
        digest = hashlib.sha256(wasm).digest()
        name = name or default_name(digest)
        hit = self._from_disk(engine, digest, wasm)
        if hit is not None:
            return hit
        shape = check_shape(wasm, caps, name)
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
        try:
            memories = tuple(parse_memories(wasm))
        except ValueError as exc:  # wasmtime accepted it, so this would be our bug; say so
            raise InvalidModuleError(
                f"plugin {name!r}: cannot read its memory section: {exc}"
            ) from exc
        entry = _Entry(module, memories, shape, digest)
        self._to_disk(engine, entry)
        return entry

    def _disk_cache(self, engine: rt.Engine) -> ArtifactCache | None:
        # "desc=bin": the stored description is _wasmbin's (entries written when it was
        # wasmtime's named externref "anyref"); such entries are never read back.
        # "shape": it carries the precheck's measurements and the memories as well.
        # "marshal": the description is in marshal's format, no longer JSON (rt.describe).
        return self._disk.get(
            f"{__version__}|{rt.library_fingerprint()}|{engine.settings}|desc=bin;shape;marshal"
        )

    def _from_disk(self, engine: rt.Engine, digest: bytes, wasm: bytes) -> _Entry | None:
        cache = self._disk_cache(engine)
        if cache is None:
            return None
        key = cache.key(digest)
        stored = cache.get(key)
        if stored is None:
            return None
        description, artifact = stored
        data = rt.load_description(description)
        meta = _read_meta(data)
        if meta is None:  # written without the loader's part: compile again, rewrite it
            return None
        if not _tells_the_truth(meta, wasm):
            cache.discard(key)
            return None
        try:
            # Safe only because ArtifactCache returns nothing but intact entries it wrote itself.
            # An entry whose description does not match its artifact (written on purpose: the
            # digest is no secret) is refused by deserialize (rt.check_description), like one
            # wasmtime refuses: deleted, and the module compiled again (tests/test_tidy9_cache).
            module = engine.deserialize(artifact, rt.parse_description(data))
        except rt.WasmFailure:
            cache.discard(key)
            return None
        shape = meta[0]
        if shape.imports != len(module.imports) or shape.exports != len(module.exports):
            # The stored shape disagrees with the counts just checked against wasmtime: it is
            # not the precheck's, and the policy's caps would be checked against a lie.
            cache.discard(key)
            return None
        return _Entry(module, meta[1], shape, digest)

    def _to_disk(self, engine: rt.Engine, entry: _Entry) -> None:
        cache = self._disk_cache(engine)
        if cache is not None and entry.shape is not None:
            module = entry.module
            description = module.describe(_meta(entry.shape, entry.memories))
            if len(description) <= MAX_DESCRIPTION:  # larger: never read back (rt.load_description)
                cache.put(cache.key(entry.digest), module.serialize(), description)


if TYPE_CHECKING:  # typing only (issue 14: a Protocol class costs ~0.4 M instructions to create)

    class HostFunction(Protocol):
        """What the import check needs of a host function: which wasm types it accepts."""

        def accepts(self, have: tuple[tuple[str, ...], tuple[str, ...]]) -> bool: ...

        def describe(self) -> str: ...


F = TypeVar("F", bound="HostFunction")  # a string: HostFunction is typing only


def _fmt_sig(sig: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    params, results = sig
    return f"({', '.join(params)}) -> ({', '.join(results)})"


def import_problems(
    module: rt.Module, functions: Mapping[str, F], policy: Policy
) -> tuple[dict[str, F], list[ImportProblem]]:
    """Step 6 without raising: (the host functions the imports bind, every refused import)."""
    problems: list[ImportProblem] = []
    bound: dict[str, F] = {}
    for imp in module.imports:
        if imp.module == WASI_MODULE and policy.wasi is not None and imp.kind == "func":
            # Granted as a whole by the policy's Wasi; wasmtime checks names and exact types
            # when the plugin is linked (an unknown one is a PluginLoadError then). Every WASI
            # preview 1 function takes and returns only i32/i64: anything else is refused here.
            if not all(t in _WASI_TYPES for t in (*imp.params, *imp.results)):
                problems.append(
                    ImportProblem(
                        imp.module,
                        imp.name,
                        "wrong type",
                        "WASI preview 1 functions take and return only i32 and i64; the plugin "
                        f"imports {_fmt_sig((imp.params, imp.results))}",
                    )
                )
            continue
        if imp.module != _abi.HOST_MODULE:
            if imp.module.startswith("wasi"):
                detail = (
                    "WASI is not enabled for this plugin"
                    if policy.wasi is None
                    else f"WASI preview 1 has no {imp.kind} imports"
                    if imp.module == WASI_MODULE
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
        fn = functions.get(imp.name)
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
        have = (imp.params, imp.results)
        if not fn.accepts(have):  # an int binds to i32 or i64, a float to f32 or f64
            problems.append(
                ImportProblem(
                    imp.module,
                    imp.name,
                    "wrong type",
                    f"the host defines {fn.describe()}, the plugin imports {_fmt_sig(have)}",
                )
            )
            continue
        bound[imp.name] = fn
    return bound, problems


def check_imports(
    module: rt.Module, functions: Mapping[str, F], policy: Policy, name: str
) -> dict[str, F]:
    """Step 6: the host functions the imports bind; ImportNotAllowedError lists every refusal.

    A check that passed is remembered on the module with what it depended on: the very same
    policy object (frozen), the very same registry of host functions and its size (a Host only
    ever adds functions, never replaces one). Loading the same module again under the same
    policy then skips the walk over its imports; anything else checks afresh.
    """
    memo = module.import_check
    if (
        memo is not None
        and memo[0] is policy
        and memo[1] is functions
        and memo[2] == len(functions)
    ):
        return dict(memo[3])
    bound, problems = import_problems(module, functions, policy)
    if problems:
        raise ImportNotAllowedError(name, problems)
    module.import_check = (policy, functions, len(functions), dict(bound))
    return bound
