"""Small public value types: what a plugin exports and imports, what a call cost, and the width
markers of host-function annotations (``I32`` ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, final

if TYPE_CHECKING:
    from dataclasses import dataclass, field
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass, field

__all__ = [
    "F32",
    "F64",
    "I32",
    "I64",
    "CallStats",
    "ExportInfo",
    "ExternKind",
    "ImportInfo",
    "Width",
]

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
    """What a call cost, and which call it was.

    Attributes:
        fuel_consumed: wasm instructions executed, or ``None`` when the policy is unmetered.
        duration: wall-clock seconds the call took inside plugsafe.
        memory_bytes: linear memory the plugin held when the call ended (exported memories).
        host_calls: host-function calls the plugin made during the call.
        plugin: the plugin's name.
        function: the export that was called.
        error: the class of the exception the call raised, or ``None`` if it returned. Filled in
            the stats given to ``Host(on_call=...)``; ``Plugin.last_call`` leaves it ``None``.
        context: the ``context=`` the call was made with, only in the stats given to
            ``Host(on_call=...)``: ``Plugin.last_call`` never keeps it (it would outlive the
            call and could reach the next tenant's code on the same thread).
    """

    fuel_consumed: int | None
    duration: float
    memory_bytes: int
    host_calls: int
    plugin: str = ""
    function: str = ""
    error: type[BaseException] | None = None
    context: Any = field(default=None, compare=False)


@final
class Width:
    """A wasm width for a host function's ``int`` or ``float``: ``Annotated[int, plugsafe.I32]``.

    Without one, ``int`` binds to whichever of ``i32``/``i64`` the plugin imports and ``float``
    to ``f32``/``f64``; with one, only that type is accepted.
    """

    __slots__ = ("wasm",)

    def __init__(self, wasm: str) -> None:
        self.wasm = wasm

    @property
    def python(self) -> type:
        """The Python type it applies to: ``int`` or ``float``."""
        return int if self.wasm[0] == "i" else float

    def __repr__(self) -> str:
        return f"plugsafe.{self.wasm.upper()}"

    def __reduce__(self) -> str:
        return self.wasm.upper()


I32 = Width("i32")
I64 = Width("i64")
F32 = Width("f32")
F64 = Width("f64")
