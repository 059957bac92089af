"""Generators of wasm binaries built to be expensive to compile (tests only).

They write the binary format directly: WAT text for a million functions would itself be slow to
produce and translate, and the point is to hand plugsafe exactly the bytes an attacker would.
"""

from __future__ import annotations

from collections.abc import Sequence

HEADER = b"\x00asm\x01\x00\x00\x00"


def uleb(n: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def section(section_id: int, payload: bytes) -> bytes:
    """One section: id, size, payload."""
    return bytes([section_id]) + uleb(len(payload)) + payload


def vec(items: Sequence[bytes]) -> bytes:
    """A wasm vector: count, then the items."""
    return uleb(len(items)) + b"".join(items)


def name(text: str) -> bytes:
    """A wasm name: length-prefixed UTF-8."""
    data = text.encode()
    return uleb(len(data)) + data


def module(
    bodies: Sequence[bytes],
    *,
    imports: Sequence[tuple[str, str]] = (),
    exports: Sequence[str] = (),
) -> bytes:
    """A module of ``() -> ()`` functions with the given code (without locals or final end).

    ``imports`` are ``(module, name)`` pairs of ``() -> ()`` functions; ``exports`` name the first
    defined functions in order.
    """
    out = HEADER + section(1, vec([b"\x60\x00\x00"]))
    if imports:
        out += section(2, vec([name(m) + name(n) + b"\x00\x00" for m, n in imports]))
    out += section(3, vec([b"\x00"] * len(bodies)))
    if exports:
        first = len(imports)
        out += section(7, vec([name(e) + b"\x00" + uleb(first + i) for i, e in enumerate(exports)]))
    code = [b"\x00" + body + b"\x0b" for body in bodies]
    out += section(10, vec([uleb(len(c)) + c for c in code]))
    return out


def many_functions(n: int) -> bytes:
    """``n`` empty functions: the 1M-function bomb took 92 s and 4.8 GiB to compile."""
    # Built with one join: the vectors are repetitive, so build them without a Python loop.
    body = b"\x02\x00\x0b"  # size 2, no locals, end
    out = HEADER + section(1, vec([b"\x60\x00\x00"]))
    out += section(3, uleb(n) + b"\x00" * n)
    out += section(10, uleb(n) + body * n)
    return out


def deep_nesting(depth: int, opener: bytes = b"\x02\x40") -> bytes:
    """One function of ``depth`` nested empty blocks (``block`` by default)."""
    return module([opener * depth + b"\x0b" * depth])
