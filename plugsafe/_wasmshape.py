"""What plugsafe keeps about a module's binary, without reading one.

``_wasmbin`` reads the binary (the precheck, the memories, the imports and exports). What it
measured is kept with the compiled module in both caches (``_loader``), so a load from a cache,
a fresh process's cold start included, needs these shapes but not the reader: the structural
caps (:class:`Caps`), what the precheck measured (:class:`ModuleShape`) and whether that
certainly fits a policy's caps (:func:`fits`), the memories a module defines
(:class:`MemoryDecl`), the reader's error (:class:`WasmFormatError`) and the preambles.
Issue 14 (cold start): the reader, its decoding tables and its patterns were 2.5 M of the
instructions of a fresh process that loads from the disk cache; ``_loader`` imports it on the
first compile. ``_wasmbin`` exports every name here as its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dataclasses import dataclass
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass

__all__ = [
    "COMPONENT_HEADER",
    "WASM_MAGIC",
    "Caps",
    "MemoryDecl",
    "ModuleShape",
    "PrecheckError",
    "WasmFormatError",
    "fits",
]

WASM_MAGIC = b"\x00asm"
# A component's preamble: the magic, version 0x0d, layer 1 (a core module's is version 1, layer 0).
COMPONENT_HEADER = b"\0asm\x0d\x00\x01\x00"


class WasmFormatError(ValueError):
    """The bytes are not a module this reader can make sense of, or break a cap.

    ``cap`` names the policy field a precheck failure is about; None means unreadable.
    """

    def __init__(self, message: str, *, cap: str | None = None) -> None:
        super().__init__(message)
        self.cap = cap


# The precheck's name for the same error (tests and older code import it by this name).
PrecheckError = WasmFormatError


@dataclass(frozen=True)
class Caps:
    """The structural caps a module must stay within (``Policy`` fields of the same names)."""

    max_functions: int
    max_imports: int
    max_exports: int
    max_function_size: int
    max_nesting: int


@dataclass(frozen=True)
class ModuleShape:
    """What the precheck measured: counts as declared, the largest body, the deepest nesting.

    ``max_nesting`` counts the function body itself as level 1 (an empty function has depth 1);
    bodies that could not be too deep are not decoded, so it is a lower bound for them.
    ``nesting_bound`` is an upper bound over every body (exact where a body was decoded, its
    count of opener bytes + 1 elsewhere): what :func:`fits` compares a later policy's cap with.
    """

    functions: int = 0
    imports: int = 0
    exports: int = 0
    largest_function: int = 0
    max_nesting: int = 0
    nesting_bound: int = 0


def fits(shape: ModuleShape, caps: Caps) -> bool:
    """Whether a module of ``shape`` (what ``_wasmbin.precheck`` measured) is within ``caps``.

    False means "not certain" (the nesting bound may be loose): run ``_wasmbin.precheck`` again
    for ``caps``, which decides exactly and names the cap in its error. The loader keeps the
    shape with the compiled module, so a module loaded again skips the precheck.
    """
    return (
        shape.functions <= caps.max_functions
        and shape.imports <= caps.max_imports
        and shape.exports <= caps.max_exports
        and shape.largest_function <= caps.max_function_size
        and shape.nesting_bound <= caps.max_nesting
    )


@dataclass(frozen=True)
class MemoryDecl:
    """A memory the module defines itself: sizes in bytes (``maximum`` None if unbounded)."""

    minimum: int
    maximum: int | None
