"""Compiled modules and the plain-data description of their imports and exports."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import cast

import wasmtime

from .._types import ExportInfo, ExternKind, ImportInfo
from ._backend import WasmFailure

__all__ = ["NUMERIC_TYPES", "VALTYPE_FACTORIES", "Module"]

VALTYPE_FACTORIES: dict[str, Callable[[], wasmtime.ValType]] = {
    "i32": wasmtime.ValType.i32,
    "i64": wasmtime.ValType.i64,
    "f32": wasmtime.ValType.f32,
    "f64": wasmtime.ValType.f64,
}
# The value types a function may have for Instance.invoke and for host functions.
NUMERIC_TYPES = frozenset(VALTYPE_FACTORIES)


def _kind_and_detail(ty: object) -> tuple[ExternKind, tuple[str, ...], tuple[str, ...], str]:
    if isinstance(ty, wasmtime.FuncType):
        return "func", tuple(map(str, ty.params)), tuple(map(str, ty.results)), ""
    if isinstance(ty, wasmtime.MemoryType):
        lim = ty.limits
        top = "" if lim.max is None else f" max {lim.max}"
        return "memory", (), (), f"min {lim.min}{top} pages"
    if isinstance(ty, wasmtime.TableType):
        lim = ty.limits
        top = "" if lim.max is None else f" max {lim.max}"
        return "table", (), (), f"{ty.element} min {lim.min}{top}"
    if isinstance(ty, wasmtime.GlobalType):
        return "global", (), (), f"{'mut ' if ty.mutable else ''}{ty.content}"
    return "unknown", (), (), type(ty).__name__


class Module:
    """A compiled module and a plain-data description of its imports and exports."""

    def __init__(self, module: wasmtime.Module, description: bytes | None = None) -> None:
        self._module = module
        self.imports: tuple[ImportInfo, ...]
        self.exports: dict[str, ExportInfo]
        if description is not None:
            self.imports, self.exports = _parse_description(description)
            return
        imports = []
        for imp in module.imports:
            kind, params, results, detail = _kind_and_detail(imp.type)
            imports.append(ImportInfo(imp.name or "", kind, params, results, detail, imp.module))
        exports = []
        for exp in module.exports:
            kind, params, results, detail = _kind_and_detail(exp.type)
            exports.append(ExportInfo(exp.name, kind, params, results, detail))
        self.imports = tuple(imports)
        self.exports = {e.name: e for e in exports}

    def serialize(self) -> bytes:
        """The compiled artifact, for plugsafe's own on-disk cache."""
        return bytes(self._module.serialize())

    def describe(self) -> bytes:
        """Imports and exports as JSON, stored beside the artifact in the on-disk cache.

        Asking wasmtime for them costs a fresh process far more than deserializing the module
        does (hundreds of microseconds of type objects); reading them back costs microseconds.
        """
        return json.dumps(
            {
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


def _parse_description(
    description: bytes,
) -> tuple[tuple[ImportInfo, ...], dict[str, ExportInfo]]:
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
