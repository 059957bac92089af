"""The plugin ABI, version 1: names, the result word, and host-function signatures.

``docs/abi.md`` is the specification; this module is its single implementation on the host side.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ABI_VERSION",
    "ALLOC_EXPORT",
    "HOST_MODULE",
    "HostSignature",
    "MEMORY_EXPORT",
    "NONE_WORD",
    "VERSION_EXPORT",
    "decode_result",
    "encode_result",
    "signature_from_annotations",
]

ABI_VERSION = 1
HOST_MODULE = "plugsafe"
MEMORY_EXPORT = "memory"
ALLOC_EXPORT = "plugsafe_alloc"
VERSION_EXPORT = "plugsafe_abi_version"

_ERROR_BIT = 0x8000_0000
_LENGTH_MASK = 0x7FFF_FFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
# A host function returning ``None`` where ``bytes | None`` is declared answers with -1.
NONE_WORD = -1

ParamKind = Literal["int", "float", "bool", "bytes", "str"]
ResultKind = Literal["none", "int", "float", "bool", "bytes", "str", "bytes?", "str?"]

_WASM_PARAMS: dict[str, tuple[str, ...]] = {
    "int": ("i64",),
    "float": ("f64",),
    "bool": ("i32",),
    "bytes": ("i32", "i32"),
    "str": ("i32", "i32"),
}
_WASM_RESULTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "int": ("i64",),
    "float": ("f64",),
    "bool": ("i32",),
    "bytes": ("i64",),
    "str": ("i64",),
    "bytes?": ("i64",),
    "str?": ("i64",),
}
_SCALARS: dict[Any, str] = {int: "int", float: "float", bool: "bool", bytes: "bytes", str: "str"}


def decode_result(word: int) -> tuple[int, int, bool]:
    """Split a plugin function's i64 result into (pointer, length, is_error), all unsigned."""
    word &= _U64
    low = word & _U32
    return word >> 32, low & _LENGTH_MASK, bool(low & _ERROR_BIT)


def encode_result(pointer: int, length: int, *, error: bool = False) -> int:
    """Build the i64 result word (as a signed 64-bit value, the way wasm sees it)."""
    if not (0 <= pointer <= _U32 and 0 <= length <= _LENGTH_MASK):
        raise ValueError("pointer or length out of range for the ABI result word")
    word = (pointer << 32) | length | (_ERROR_BIT if error else 0)
    return word - (1 << 64) if word >= 1 << 63 else word


@dataclass(frozen=True)
class HostSignature:
    """How a Python host function maps onto wasm: its parameter and result kinds."""

    params: tuple[ParamKind, ...]
    result: ResultKind

    @property
    def wasm_params(self) -> tuple[str, ...]:
        """The wasm parameter types, in order."""
        return tuple(t for p in self.params for t in _WASM_PARAMS[p])

    @property
    def wasm_results(self) -> tuple[str, ...]:
        """The wasm result types (zero or one)."""
        return _WASM_RESULTS[self.result]


def _result_kind(annotation: Any, where: str) -> ResultKind:
    if annotation is None or annotation is type(None):
        return "none"
    if annotation in _SCALARS:
        return typing.cast(ResultKind, _SCALARS[annotation])
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2 and args[0] in (bytes, str):
            return typing.cast(ResultKind, _SCALARS[args[0]] + "?")
    raise TypeError(
        f"{where}: return annotation {annotation!r} is not supported "
        "(use int, float, bool, bytes, str, bytes | None, str | None or None)"
    )


def signature_from_annotations(fn: Callable[..., Any], name: str) -> HostSignature:
    """Derive the wasm signature of host function ``fn`` from its type annotations."""
    where = f"host function {name!r}"
    try:
        hints = typing.get_type_hints(fn)
        sig = inspect.signature(fn)
    except (NameError, TypeError, ValueError) as exc:
        raise TypeError(f"{where}: cannot read its annotations: {exc}") from exc
    params: list[ParamKind] = []
    for p in sig.parameters.values():
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            raise TypeError(f"{where}: parameter {p.name!r} must be positional (no *args/**kw)")
        if p.name not in hints:
            raise TypeError(f"{where}: parameter {p.name!r} has no type annotation")
        ann = hints[p.name]
        if ann not in _SCALARS:
            raise TypeError(
                f"{where}: parameter {p.name!r} is annotated {ann!r}; "
                "use int, float, bool, bytes or str"
            )
        params.append(typing.cast(ParamKind, _SCALARS[ann]))
    if "return" not in hints:
        raise TypeError(
            f"{where}: it has no return annotation (write '-> None' if it returns none)"
        )
    return HostSignature(tuple(params), _result_kind(hints["return"], where))
