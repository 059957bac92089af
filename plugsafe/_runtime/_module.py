"""Compiled modules and the plain-data description of their imports and exports.

The description comes from the binary (``_wasmbin.describe``), never from wasmtime-py's type
objects: turning a ``v128`` ValType into a string aborts the process (issue 12, class 1).
"""

from __future__ import annotations

import marshal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from .._lazymodule import lazy_module
from .._types import ExportInfo, ExternKind, ImportInfo
from ._backend import WasmFailure, failure_from_addresses
from ._forksafe import Owned
from ._lib import address, ffi, lib, take_bytes

if TYPE_CHECKING:
    from .. import _wasmbin
else:
    # The binary reader, on the first module described from its binary (a compile): a load from
    # the disk cache reads the description stored with the artifact (issue 14: cold start).
    _wasmbin = lazy_module("plugsafe._wasmbin", globals(), "_wasmbin")

__all__ = [
    "NUMERIC_TYPES",
    "VALKINDS",
    "Description",
    "Module",
    "describe_binary",
    "parse_description",
]

# The numeric value types' wasm_valkind_t codes (WASM_I32 ... WASM_F64).
VALKINDS: dict[str, int] = {"i32": 0, "i64": 1, "f32": 2, "f64": 3}
# The value types a function may have for Instance.invoke and for host functions.
NUMERIC_TYPES = frozenset(VALKINDS)

# A module's imports, and its exports by name, as plain data.
Description = tuple[tuple[ImportInfo, ...], dict[str, ExportInfo]]


def describe_binary(wasm: bytes) -> Description:
    """The imports and exports of ``wasm``, read from the binary by ``_wasmbin``.

    Never from wasmtime-py's type objects: ``str()`` of a ``v128`` ValType is a Rust panic that
    aborts the process, and every other type (references, exnref, typed references) would need
    a case of its own. The binary names every value type the same way. Raises WasmFailure if
    the reader cannot make sense of a module wasmtime accepted.
    """
    try:
        imports, exports = _wasmbin.describe(wasm)
    except _wasmbin.WasmFormatError as exc:
        raise WasmFailure(f"cannot describe its imports and exports: {exc}") from None
    return imports, {e.name: e for e in exports}


class Module:
    """A compiled module and a plain-data description of its imports and exports.

    Made by ``Engine.compile`` (described from the binary) or ``Engine.deserialize`` (with the
    description stored beside the artifact); nothing asks wasmtime for types.
    """

    def __init__(self, module: Owned, description: Description) -> None:
        # The wasmtime_module_t, freed with this object (never in a forked child).
        self._module = module
        self.imports: tuple[ImportInfo, ...] = description[0]
        self.exports: dict[str, ExportInfo] = description[1]
        # Looked up by every new instance: found once here, not per instance over every export
        # (a module of thousands of exported functions paid for them on each load).
        self.memory_exports: tuple[bytes, ...] = tuple(
            e.name.encode() for e in self.exports.values() if e.kind == "memory"
        )
        # The last import check that passed (its inputs and result): a memo owned by
        # ``_loader.check_imports`` (issue 14: it ran over every import on every load).
        self.import_check: tuple[object, object, int, dict[str, Any]] | None = None
        # What the Plugin derives from the exports and imports alone, once per module (owned
        # by ``_plugin.module_facts``; issue 14: every load derived it again).
        self.facts: object = None

    def serialize(self) -> bytes:
        """The compiled artifact, for plugsafe's own on-disk cache."""
        out = ffi.new("wasm_byte_vec_t *")
        error = lib.wasmtime_module_serialize(self._module.raw, out)
        if error:
            raise failure_from_addresses(address(error), 0)
        return take_bytes(out)

    def describe(self, extra: Mapping[str, object] | None = None) -> bytes:
        """Imports and exports as plain data, stored beside the artifact in the on-disk cache.

        A cache hit then needs neither the binary nor a parse of it. ``extra`` adds top-level
        keys of the caller's (the loader stores what the precheck measured; values of str, int,
        None and tuples of them only); ``parse_description`` ignores them. See
        ``load_description`` for the format.
        """
        return marshal.dumps(
            {
                **(extra or {}),
                "imports": tuple(
                    (i.module, i.name, i.kind, i.params, i.results, i.detail) for i in self.imports
                ),
                "exports": tuple(
                    (e.name, e.kind, e.params, e.results, e.detail) for e in self.exports.values()
                ),
            },
            _MARSHAL_VERSION,
        )


# The description is a dict of str, int, None and tuples of them in marshal's format (version 4
# is read by every Python 3 since 3.4, and written the same by all of them). Not JSON (issue 14):
# `json` is about 2 % of a cold start's instructions, for a few hundred bytes read once; marshal
# is built in, and C. marshal is not meant for hostile bytes, and these are not: the on-disk
# cache hands back only entries whose sha256 matches (ArtifactCache.get), in a directory only
# this user can write, beside the native artifact that is trusted far more. What it loads is
# still checked exactly (types and shapes) before use; anything else reads as unreadable.
_MARSHAL_VERSION = 4


def load_description(description: bytes) -> dict[str, object] | None:
    """``Module.describe``'s output as the dict it wrote; None if it is not one."""
    try:
        data = marshal.loads(description)
    except (ValueError, TypeError, EOFError):
        return None
    return data if type(data) is dict else None


_KINDS = frozenset({"func", "memory", "table", "global", "tag", "unknown"})


def parse_description(description: bytes | dict[str, object] | None) -> Description:
    """Module.describe's output back as infos; WasmFailure if it is not exactly that shape.

    ``description`` is the bytes, or what ``load_description`` made of them.
    """

    def strs(v: object) -> tuple[str, ...]:
        if type(v) is not tuple or not all(type(x) is str for x in v):
            raise ValueError("not a tuple of strings")
        return v

    def kind(v: object) -> ExternKind:
        if type(v) is not str or v not in _KINDS:
            raise ValueError(f"unknown kind {v!r}")
        return cast(ExternKind, v)

    def text(v: object) -> str:
        if type(v) is not str:
            raise ValueError("not a string")
        return v

    data = load_description(description) if isinstance(description, bytes) else description
    try:
        if data is None:
            raise ValueError("not a description")
        imports = tuple(
            ImportInfo(text(n), kind(k), strs(p), strs(r), text(d), text(m))
            for m, n, k, p, r, d in _rows(data["imports"])
        )
        exports = {
            text(n): ExportInfo(text(n), kind(k), strs(p), strs(r), text(d))
            for n, k, p, r, d in _rows(data["exports"])
        }
    except (ValueError, TypeError, KeyError) as exc:
        raise WasmFailure(f"unreadable module description: {exc}") from None
    return imports, exports


def _rows(v: object) -> tuple[tuple[object, ...], ...]:
    if type(v) is not tuple or not all(type(row) is tuple for row in v):
        raise ValueError("not a tuple of rows")
    return v
