"""Components: what every Host knows of them (is this source a component? the component cache).

``Host.load`` hands a source to ``_componentplugin`` when its bytes start with the component
preamble (version 0x0d, layer 1) or it is component text (``(component ...)``). That module,
the loaded component (:class:`~plugsafe.ComponentPlugin`), its load and its import checks, is
imported when a component is first loaded (issue 14: a cold start that loads a module never
needs it); so is its runtime half, ``_runtime._component``. Here: :func:`is_component_source`,
the compile cache (:class:`ComponentLoader`: the Host's in-memory LRU, then the disk cache,
under a salt of its own) and the check of a component host function's name.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from . import _runtime as rt
from . import _sha as hashlib  # hashlib.sha256 without OpenSSL at start-up (see _sha)
from ._cache import ArtifactCache, CacheShelf
from ._errors import InvalidModuleError
from ._lazymodule import lazy_module
from ._lazyre import lazy_re
from ._version import __version__
from ._wasmshape import COMPONENT_HEADER

if TYPE_CHECKING:
    from ._runtime import _component as rc
else:
    # wasmtime-py's component API and the value marshalling: imported when a component is first
    # loaded, not at import plugsafe (issue 14; see _lazymodule).
    rc = lazy_module("plugsafe._runtime._component", globals(), "rc")

__all__ = [
    "COMPONENT_HEADER",
    "ComponentLoader",
    "check_component_function_name",
    "is_component_source",
]


_CACHE_SIZE = 16
# What a component's disk-cache entry stores as its description (modules store theirs):
# b"component", then ";data_fuel=" and the fuel its data segments cost (_hostmem.data_fuel). A
# hit counts them again from the binary and compares (tidy12: an entry's word decided a start
# function's fuel): ~11 ms of CPU for an 18 MB componentize-py component, whose hit costs ~240
# ms and whose compile ~30 s. A bare b"component" (written before the count was kept) is
# counted the same, and used.
_DESCRIPTION = b"component"
# At most 13 digits (under 10**13, far over any real component's data): added to a policy's
# fuel (at most 2**63 - 1), it stays inside wasmtime's u64; a longer count is no entry of ours.
_DATA_FUEL = lazy_re(rb"component;data_fuel=([0-9]{1,13})")
_TEXT = lazy_re(rb"^\s*(?:;;[^\n]*\n\s*|\(;.*?;\)\s*)*\(\s*component\b", re.S)


def is_component_source(source: object) -> bool:
    """Whether ``source`` (bytes or a path) holds a component: its binary preamble, or text
    that starts with ``(component``. Reads at most 4 KiB of a file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[:4096])
    elif isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                head = f.read(4096)
        except (OSError, ValueError):  # ValueError: a NUL in the path
            return False  # the module loader reports unreadable files
    else:
        return False
    # _TEXT matches only text that starts with whitespace, a comment or "(": a core module's
    # binary (b"\0asm") is told apart without compiling the pattern (issue 14: cold start).
    if head[:8] == COMPONENT_HEADER:
        return True
    return head[:1] in b" \t\n\r\f\v;(" and bool(_TEXT.match(head))


class ComponentLoader:
    """Compiles and caches components for one Host (in memory, and on disk if the Host has a
    cache directory). Safe to use from many threads."""

    def __init__(self, cache_dir: Path | None) -> None:
        self._lock = threading.Lock()
        self._compiled: OrderedDict[tuple[bool, bytes], rc.CompiledComponent] = OrderedDict()
        self._disk = CacheShelf(cache_dir)

    def clear(self) -> None:
        """Forget every component held in memory."""
        with self._lock:
            self._compiled.clear()

    def compile(self, engine: rt.Engine, wasm: bytes, name: str) -> rc.CompiledComponent:
        """The compiled component for ``wasm`` (a cache hit, or compiled now).

        Policies that differ only in limits share the entry: the key is the engine's
        configuration (metered or not) and the bytes' hash.
        """
        key = (engine.metered, hashlib.sha256(wasm).digest())
        with self._lock:
            hit = self._compiled.get(key)
            if hit is not None:
                self._compiled.move_to_end(key)
                return hit
        compiled = self._from_disk(engine, key[1], wasm)
        if compiled is None:
            try:
                compiled = rc.compile_component(engine, wasm)
            except rt.WasmFailure as exc:
                raise InvalidModuleError(
                    f"plugin {name!r} is not a valid WebAssembly component: {exc.message}"
                ) from None
            cache = self._disk_cache(engine)
            if cache is not None:
                description = b"%s;data_fuel=%d" % (_DESCRIPTION, compiled.data_fuel)
                cache.put(cache.key(key[1]), compiled.serialize(), description)
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > _CACHE_SIZE:
                self._compiled.popitem(last=False)
        return compiled

    def _disk_cache(self, engine: rt.Engine) -> ArtifactCache | None:
        return self._disk.get(
            f"{__version__}|{rt.library_fingerprint()}|{engine.settings}|component"
        )

    def _from_disk(
        self, engine: rt.Engine, digest: bytes, wasm: bytes
    ) -> rc.CompiledComponent | None:
        cache = self._disk_cache(engine)
        if cache is None:
            return None
        key = cache.key(digest)
        entry = cache.get(key)
        if entry is None:
            return None
        description, artifact = entry
        kept = _DATA_FUEL.fullmatch(description)
        if kept is None and description != _DESCRIPTION:
            cache.discard(key)  # not an entry of ours: never deserialize it
            return None
        try:
            # The count is read again from the binary in hand, never believed: it is what a
            # start function gets on top of the policy's fuel (an entry saying 10**13 gave it
            # that), and what spares the policy's fuel the copy (one saying 0 charged it).
            compiled = rc.deserialize_component(engine, artifact, wasm)
        except rt.WasmFailure:
            cache.discard(key)  # written by another build of wasmtime: compile again
            return None
        if kept is not None and int(kept[1]) != compiled.data_fuel:
            cache.discard(key)  # an entry that lies is corrupt: compile again (tidy12)
            return None
        return compiled


_FUNCTION_NAME = lazy_re(
    r"^[a-z][a-z0-9-]*:[a-z][a-z0-9-]*/[a-z][a-z0-9-]*(@[0-9A-Za-z.+-]+)?#[a-z][a-z0-9-]*$"
)
# A function the world imports itself (``import log: func(msg: string);``): ``#log``, the
# interface form without an interface. (A bare ``log`` is refused: it is far more often an
# interface function written without its interface.)
_WORLD_FUNCTION_NAME = lazy_re(r"^#[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def check_component_function_name(name: object) -> None:
    """Raise ValueError unless ``name`` is ``ns:pkg/iface[@version]#func`` (a function of an
    imported interface) or ``#func`` (a function the world imports itself)."""
    if not isinstance(name, str) or not (
        _FUNCTION_NAME.match(name) or _WORLD_FUNCTION_NAME.match(name)
    ):
        raise ValueError(
            f"component function name {name!r} is not valid: expected "
            "'namespace:package/interface#function' (e.g. 'test:host/logging#host-log'), or "
            "'#function' for a function the world imports itself (e.g. '#log')"
        )
