"""The plugin ABI, version 1: the export and module names, the result word.

``docs/abi.md`` is the specification. How host functions' Python types map onto wasm is in
``_hostfn`` (``HostSignature``).
"""

from __future__ import annotations

from collections.abc import Mapping

from ._types import ExportInfo

__all__ = [
    "ABI_VERSION",
    "ALLOC_EXPORT",
    "ALLOC_TYPE",
    "ENTRY_TYPE",
    "FUNCTION_TYPE",
    "HOST_MODULE",
    "INPUT_BUFFER_EXPORT",
    "INPUT_BUFFER_TYPE",
    "MEMORY_EXPORT",
    "NONE_WORD",
    "VERSION_EXPORT",
    "VERSION_TYPE",
    "Signature",
    "decode_result",
    "encode_result",
    "export_problem",
    "fmt_signature",
    "plain_bytes",
]

ABI_VERSION = 1
HOST_MODULE = "plugsafe"
MEMORY_EXPORT = "memory"
ALLOC_EXPORT = "plugsafe_alloc"
VERSION_EXPORT = "plugsafe_abi_version"
# Optional (a v1 addition, docs/abi.md "The input buffer"): where the host may place small
# inputs without calling plugsafe_alloc.
INPUT_BUFFER_EXPORT = "plugsafe_input_buffer"

# A function type as (params, results), value types named as ``_wasmbin`` names them.
Signature = tuple[tuple[str, ...], tuple[str, ...]]
# The one type plugsafe calls each of these exports with: never call one without checking it
# (export_problem) first. A guest function called with a type it does not have reads and writes
# raw value slots that are not there (SIGILL and worse; issue 12, class 1).
VERSION_TYPE: Signature = ((), ("i32",))
ALLOC_TYPE: Signature = (("i32",), ("i32",))
FUNCTION_TYPE: Signature = (("i32", "i32"), ("i64",))  # every ABI function
ENTRY_TYPE: Signature = ((), ())  # WASI's _start and _initialize
INPUT_BUFFER_TYPE: Signature = ((), ("i64",))

_ERROR_BIT = 0x8000_0000
_LENGTH_MASK = 0x7FFF_FFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
# A host function returning ``None`` where ``bytes | None`` is declared answers with -1.
NONE_WORD = -1


def plain_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """``bytes(data)`` as plain bytes, exactly what the buffer holds: what may be copied into
    guest memory.

    Copies into the guest are measured with ``len()``, which a bytes subclass answers itself,
    and ``bytes(x)`` returns whatever bytes subclass ``x.__bytes__`` made (as ``encode`` of a
    str subclass is its own): attack7, a 1-byte buffer saying it was 4096 bytes long had 4095
    bytes of the host's heap copied after it into the plugin's memory. (For a str: its UTF-8,
    ``str.encode(s, "utf-8")``, never ``s.encode``.)
    """
    out = bytes(data)
    return out if type(out) is bytes else bytes(memoryview(out))


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


def fmt_signature(sig: Signature) -> str:
    """``(i32, i32) -> i64``: a signature as error messages print it."""
    params, results = sig
    res = ", ".join(results)
    return f"({', '.join(params)}) -> {res if len(results) == 1 else f'({res})'}"


def export_problem(exports: Mapping[str, ExportInfo], name: str, want: Signature) -> str | None:
    """Why plugsafe may not call export ``name`` as a function of type ``want`` (None: it may).

    The one check every export goes through before plugsafe calls it: the ABI's version and
    allocator, WASI's entry points, ABI functions. The types come from the module's binary, so
    this costs a dictionary lookup and a tuple comparison, once per plugin (or function).
    """
    info = exports.get(name)
    if info is None:
        return f"it exports no {name!r}"
    if info.kind != "func":
        return f"its export {name!r} is a {info.kind}, not a function {fmt_signature(want)}"
    have = (info.params, info.results)
    if have != want:
        return f"its export {name!r} has type {fmt_signature(have)}, not {fmt_signature(want)}"
    return None
