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

One small reader does live here, :func:`measure`: a disk hit believes what its entry says the
binary holds (counts, the largest body, the memories), so it checks that against the binary in
hand, walking section headers and nothing more (cache11: an entry that lies is a cache miss).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dataclasses import dataclass
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass

__all__ = [
    "COMPONENT_HEADER",
    "MEMORY_FLAGS_COMPILED",
    "WASM_MAGIC",
    "Caps",
    "MemoryDecl",
    "ModuleShape",
    "PrecheckError",
    "WasmFormatError",
    "fits",
    "measure",
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


# The memory flags a plugsafe engine compiles (bit 0: a maximum follows; bit 3: the
# custom-page-sizes proposal's page size follows). Bit 1 (shared) and bit 2 (64-bit) are
# features its engines turn off (rt._engine), so a binary that has them was never compiled.
MEMORY_FLAGS_COMPILED = 0x09
_MEMORY_FLAG_KNOWN = 0x0F


def _leb(data: bytes, pos: int, end: int, bits: int) -> tuple[int, int]:
    """(the unsigned LEB128 of at most ``bits`` bits at ``pos``, the offset after it)."""
    result = shift = 0
    while True:
        if pos >= end:
            raise WasmFormatError("truncated: unexpected end of section")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >> bits:
                raise WasmFormatError(f"malformed LEB128 number (over {bits} bits)")
            return result, pos
        shift += 7
        if shift >= bits:  # ceil(bits / 7) bytes at most
            raise WasmFormatError("malformed LEB128 number (too long)")


def measure(wasm: bytes) -> tuple[int, int, tuple[MemoryDecl, ...], int]:
    """(defined functions, the largest body's bytes, the defined memories, their flags ORed).

    What a disk entry says of the binary, read from the binary: the function section's count
    (summed over sections, as ``_wasmbin.precheck`` counts), the code section's body sizes,
    and every memory the module defines, in bytes as ``_wasmbin.parse_memories`` reads them.
    Only section headers, vector counts and body sizes are read (a body's contents are
    skipped), so the cost is linear in the number of sections, bodies and memories, each
    read at most once; every count and size is checked against the bytes left. Raises
    WasmFormatError (nothing else) on anything it cannot read.
    """
    end = len(wasm)
    if wasm[:8] != WASM_MAGIC + b"\x01\x00\x00\x00":
        raise WasmFormatError("not a WebAssembly core module")
    functions = largest = flags_seen = 0
    memories: list[MemoryDecl] = []
    pos = 8
    while pos < end:
        section_id = wasm[pos]
        size, start = _leb(wasm, pos + 1, end, 32)
        stop = start + size
        if stop > end:
            raise WasmFormatError(f"truncated: section {section_id} runs past the module")
        pos = stop
        if section_id == 3:  # functions: a type index each
            count, _ = _leb(wasm, start, stop, 32)
            functions += count
        elif section_id == 10:  # code: each body's size, then the body (skipped)
            count, at = _leb(wasm, start, stop, 32)
            if count > stop - at:  # a body takes a byte at least
                raise WasmFormatError("truncated: more bodies than bytes")
            # Sizes of one or two bytes (bodies under 16 KiB: nearly all) are read inline: a
            # cold start walks every body. A body running past the section leaves ``at``
            # past ``stop``, where the next size (_leb) or the check after the loop stops.
            two = stop - 1  # a size's first byte before this: both bytes are in the section
            for _ in range(count):
                if at < two:
                    b = wasm[at]
                    if b < 0x80:
                        length = b
                        at += 1 + b
                    elif wasm[at + 1] < 0x80:
                        length = (b & 0x7F) | wasm[at + 1] << 7
                        at += 2 + length
                    else:
                        length, at = _leb(wasm, at, stop, 32)
                        at += length
                else:
                    length, at = _leb(wasm, at, stop, 32)
                    at += length
                if length > largest:
                    largest = length
            if at > stop:
                raise WasmFormatError("truncated: a body runs past the code section")
        elif section_id == 5:  # memories: limits each
            count, at = _leb(wasm, start, stop, 32)
            if count > stop - at:
                raise WasmFormatError("truncated: more memories than bytes")
            for _ in range(count):
                if at >= stop:
                    raise WasmFormatError("truncated: unexpected end of section")
                flags = wasm[at]
                if flags & ~_MEMORY_FLAG_KNOWN:
                    raise WasmFormatError(f"unknown memory flags 0x{flags:02x}")
                flags_seen |= flags
                bits = 64 if flags & 0x04 else 32
                minimum, at = _leb(wasm, at + 1, stop, bits)
                maximum = None
                if flags & 0x01:
                    maximum, at = _leb(wasm, at, stop, bits)
                page = 65536
                if flags & 0x08:  # log2 of the page size, as _wasmbin._limits reads it
                    log2, at = _leb(wasm, at, stop, 32)
                    page = 1 << min(log2, 16)
                memories.append(
                    MemoryDecl(minimum * page, None if maximum is None else maximum * page)
                )
    return functions, largest, tuple(memories), flags_seen
