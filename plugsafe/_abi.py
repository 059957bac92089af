"""The plugin ABI, version 1: the export and module names, and the result word.

``docs/abi.md`` is the specification. How host functions' Python types map onto wasm is in
``_hostfn`` (``HostSignature``).
"""

from __future__ import annotations

__all__ = [
    "ABI_VERSION",
    "ALLOC_EXPORT",
    "HOST_MODULE",
    "MEMORY_EXPORT",
    "NONE_WORD",
    "VERSION_EXPORT",
    "decode_result",
    "encode_result",
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
