"""Compiled modules and the plain-data description of their imports and exports.

The description comes from the binary (``_wasmbin.describe``), never from wasmtime-py's type
objects: turning a ``v128`` ValType into a string aborts the process (issue 12, class 1).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, cast

import wasmtime

from .. import _wasmbin
from .._types import ExportInfo, ExternKind, ImportInfo
from ._backend import WasmFailure

__all__ = [
    "NUMERIC_TYPES",
    "VALTYPE_FACTORIES",
    "Description",
    "Module",
    "describe_binary",
    "parse_description",
]

VALTYPE_FACTORIES: dict[str, Callable[[], wasmtime.ValType]] = {
    "i32": wasmtime.ValType.i32,
    "i64": wasmtime.ValType.i64,
    "f32": wasmtime.ValType.f32,
    "f64": wasmtime.ValType.f64,
}
# The value types a function may have for Instance.invoke and for host functions.
NUMERIC_TYPES = frozenset(VALTYPE_FACTORIES)

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

    def __init__(self, module: wasmtime.Module, description: Description) -> None:
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
        return bytes(self._module.serialize())

    def describe(self, extra: Mapping[str, object] | None = None) -> bytes:
        """Imports and exports as JSON, stored beside the artifact in the on-disk cache.

        A cache hit then needs neither the binary nor a parse of it: reading the JSON back costs
        microseconds. ``extra`` adds top-level keys of the caller's (the loader stores what the
        precheck measured); ``parse_description`` ignores them.
        """
        return json.dumps(
            {
                **(extra or {}),
                "imports": [
                    [i.module, i.name, i.kind, i.params, i.results, i.detail] for i in self.imports
                ],
                "exports": [
                    [e.name, e.kind, e.params, e.results, e.detail] for e in self.exports.values()
                ],
            },
            separators=(",", ":"),
        ).encode()


_KINDS = frozenset({"func", "memory", "table", "global", "tag", "unknown"})


def parse_description(description: bytes) -> Description:
    """Module.describe's output back as infos; WasmFailure if it is not exactly that shape."""

    def strs(v: object) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ValueError("not a list of strings")
        return tuple(v)

    def kind(v: object) -> ExternKind:
        if v not in _KINDS:
            raise ValueError(f"unknown kind {v!r}")
        return cast(ExternKind, v)

    def text(v: object) -> str:
        if not isinstance(v, str):
            raise ValueError("not a string")
        return v

    try:
        data = json.loads(description)
        imports = tuple(
            ImportInfo(text(n), kind(k), strs(p), strs(r), text(d), text(m))
            for m, n, k, p, r, d in data["imports"]
        )
        exports = {
            text(n): ExportInfo(n, kind(k), strs(p), strs(r), text(d))
            for n, k, p, r, d in data["exports"]
        }
    except (ValueError, TypeError, KeyError) as exc:
        raise WasmFailure(f"unreadable module description: {exc}") from None
    return imports, exports
