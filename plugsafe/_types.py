"""Small public value types: what a plugin exports and imports, and what a call cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CallStats", "ExportInfo", "ExternKind", "ImportInfo"]

ExternKind = Literal["func", "memory", "table", "global", "tag", "unknown"]


def _signature(params: tuple[str, ...], results: tuple[str, ...]) -> str:
    res = ", ".join(results)
    if len(results) != 1:
        res = f"({res})"
    return f"({', '.join(params)}) -> {res}"


@dataclass(frozen=True)
class _ExternInfo:
    name: str
    kind: ExternKind
    params: tuple[str, ...] = ()
    results: tuple[str, ...] = ()
    detail: str = ""

    def _label(self) -> str:
        return self.name

    def __str__(self) -> str:
        if self.kind == "func":
            return f"func {self._label()}{_signature(self.params, self.results)}"
        return f"{self.kind} {self._label()} {self.detail}".rstrip()


@dataclass(frozen=True)
class ExportInfo(_ExternInfo):
    """One export of a plugin.

    For functions ``params`` and ``results`` are wasm value types (``"i32"``, ``"i64"``, ``"f32"``,
    ``"f64"``, and also ``"v128"``, ``"funcref"``, ``"externref"``, ``"exnref"``, ``"(ref null 0)"``
    ...: names read from the module's binary); for other kinds they are empty and ``detail``
    describes the item. A function with a type other than the four numbers is listed, but
    ``invoke`` refuses it with a SignatureError.
    """


@dataclass(frozen=True)
class ImportInfo(_ExternInfo):
    """One import a plugin declares: ``module.name`` and its type (fields as in ExportInfo)."""

    module: str = ""

    def _label(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class CallStats:
    """What the last call cost.

    Attributes:
        fuel_consumed: wasm instructions executed, or ``None`` when the policy is unmetered.
        duration: wall-clock seconds the call took inside plugsafe.
        memory_bytes: linear memory the plugin held when the call ended (exported memories).
        host_calls: host-function calls the plugin made during the call.
    """

    fuel_consumed: int | None
    duration: float
    memory_bytes: int
    host_calls: int
