"""Inline WAT guests for the input buffer (docs/abi.md, ``plugsafe_input_buffer``).

Each guest counts its ``plugsafe_alloc`` calls and its input-buffer queries (exports ``allocs``
and ``queries``), so a test sees which way the host placed each input.
"""

from __future__ import annotations

# The buffer the well-behaved guests declare: 256 bytes at 1024 (inside the first page).
BUF_AT = 1024
BUF_CAP = 256
# Where plugsafe_alloc hands out memory: far from the buffer, so ``where`` tells them apart.
HEAP_AT = 8192


def word(pointer: int, capacity: int) -> int:
    """The i64 ``plugsafe_input_buffer`` returns, as a signed WAT literal."""
    w = ((pointer & 0xFFFF_FFFF) << 32) | (capacity & 0xFFFF_FFFF)
    return w - (1 << 64) if w >= 1 << 63 else w


PRELUDE = f"""
  (global $bump (mut i32) (i32.const {HEAP_AT}))
  (global $allocs (mut i32) (i32.const 0))
  (global $queries (mut i32) (i32.const 0))
  (func (export "plugsafe_abi_version") (result i32) i32.const 1)
  (func (export "plugsafe_alloc") (param $n i32) (result i32) (local $p i32)
    (global.set $allocs (i32.add (global.get $allocs) (i32.const 1)))
    (local.set $p (global.get $bump))
    (if (i32.gt_u (i32.add (local.get $p) (local.get $n))
                  (i32.mul (memory.size) (i32.const 65536)))
      (then (return (i32.const 0))))
    (global.set $bump (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "allocs") (result i32) (global.get $allocs))
  (func (export "queries") (result i32) (global.get $queries))
  (func $ok (param $p i32) (param $n i32) (result i64)
    (global.set $bump (i32.const {HEAP_AT}))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))
  (func (export "echo") (param $p i32) (param $n i32) (result i64)
    (call $ok (local.get $p) (local.get $n)))
  ;; Its output: the input's pointer, 4 bytes little-endian (stored at 64).
  (func (export "where") (param $p i32) (param $n i32) (result i64)
    (i32.store (i32.const 64) (local.get $p))
    (call $ok (i32.const 64) (i32.const 4)))
"""


def guest(
    query: str | None = f"(i64.const {word(BUF_AT, BUF_CAP)})",
    *,
    body: str = "",
    imports: str = "",
    memory: str = '(memory (export "memory") 1)',
) -> str:
    """A counting ABI guest whose ``plugsafe_input_buffer`` body is ``query`` (None: no such
    export: a plain v1 guest)."""
    export = (
        ""
        if query is None
        else f"""(func (export "plugsafe_input_buffer") (result i64)
    (global.set $queries (i32.add (global.get $queries) (i32.const 1)))
    {query})"""
    )
    return f"(module {imports} {memory} {PRELUDE} {export} {body})"


def where(data: bytes) -> int:
    """Decode ``where``'s output: the pointer the input was passed at."""
    return int.from_bytes(data, "little")
