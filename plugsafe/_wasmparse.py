"""A small, defensive reader of WebAssembly binary section headers.

wasmtime reports a module's imports and exports, but not its *unexported* memories, and plugsafe
needs all of them to split the memory cap fairly. This reader walks the section list and decodes
the memory section only. It runs on bytes wasmtime has already validated, but it still refuses
anything malformed with ``ValueError`` rather than trusting a length.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MemoryDecl", "WASM_MAGIC", "parse_memories"]

WASM_MAGIC = b"\x00asm"
_MEMORY_SECTION = 5
_PAGE = 65536


@dataclass(frozen=True)
class MemoryDecl:
    """A memory the module defines itself: sizes in bytes (``maximum`` None if unbounded)."""

    minimum: int
    maximum: int | None


def _uleb(data: bytes, pos: int, limit: int) -> tuple[int, int]:
    """Decode an unsigned LEB128 number (at most 10 bytes) starting at ``pos``."""
    result = 0
    shift = 0
    for _ in range(10):
        if pos >= limit:
            raise ValueError("truncated LEB128 number")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise ValueError("LEB128 number too long")


def parse_memories(wasm: bytes) -> list[MemoryDecl]:
    """Return the memories a module defines (not imports), in order."""
    if wasm[:4] != WASM_MAGIC or len(wasm) < 8:
        raise ValueError("not a WebAssembly binary")
    pos = 8
    end = len(wasm)
    memories: list[MemoryDecl] = []
    while pos < end:
        section_id = wasm[pos]
        size, pos = _uleb(wasm, pos + 1, end)
        body_end = pos + size
        if body_end > end:
            raise ValueError("section runs past the end of the module")
        if section_id == _MEMORY_SECTION:
            count, p = _uleb(wasm, pos, body_end)
            for _ in range(count):
                if p >= body_end:
                    raise ValueError("truncated memory section")
                flags = wasm[p]
                p += 1
                minimum, p = _uleb(wasm, p, body_end)
                maximum: int | None = None
                if flags & 0x01:
                    maximum, p = _uleb(wasm, p, body_end)
                page = _PAGE
                if flags & 0x08:  # custom-page-sizes proposal: log2 of the page size follows
                    log2, p = _uleb(wasm, p, body_end)
                    page = 1 << min(log2, 16)
                memories.append(
                    MemoryDecl(minimum * page, None if maximum is None else maximum * page)
                )
        pos = body_end
    return memories
