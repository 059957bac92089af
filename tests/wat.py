"""Inline WAT fixtures shared by the tests: a minimal plugsafe-ABI guest written by hand."""

from __future__ import annotations

# A bump allocator over memory 0 that grows the memory when needed and returns 0 when it
# cannot. Each ABI function resets the bump pointer when it returns: its output has been copied
# out by the host before the next call allocates anything.
ABI_PRELUDE = """
  (global $bump (mut i32) (i32.const 1024))
  (func (export "plugsafe_abi_version") (result i32) i32.const 1)
  (func $alloc (export "plugsafe_alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    global.get $bump
    local.set $p
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (local.get $have))
                                               (i32.const 16))
                                    (i32.const 1)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $bump (local.get $end))
    local.get $p)
  (func $ok (param $p i32) (param $n i32) (result i64)
    (global.set $bump (i32.const 1024))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))
  (func $err (param $p i32) (param $n i32) (result i64)
    (global.set $bump (i32.const 1024))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.or (i64.const 0x80000000) (i64.extend_i32_u (local.get $n)))))
"""


def abi_module(body: str, imports: str = "", memory: str = '(memory (export "memory") 1)') -> str:
    """A complete ABI guest: ``imports``, a memory, the prelude, then ``body``."""
    return f"(module {imports} {memory} {ABI_PRELUDE} {body})"


# echo returns its input; fail returns its input as an error message.
ECHO = abi_module(
    """
  (func (export "echo") (param $p i32) (param $n i32) (result i64)
    (call $ok (local.get $p) (local.get $n)))
  (func (export "fail") (param $p i32) (param $n i32) (result i64)
    (call $err (local.get $p) (local.get $n)))
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1)))
  (func (export "spin") (loop $l (br $l)))
  (func (export "trap") unreachable)
"""
)


# A WASI guest: ``_start`` (a command) and ``write`` (a function returning 0) each write "hello"
# to stdout and "oops" to stderr with fd_write.
WASI_WRITER = b"""(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello")
  (data (i32.const 32) "oops")
  (func $both
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 100)))
    (i32.store (i32.const 0) (i32.const 32))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 100))))
  (func (export "_start") (call $both))
  (func (export "write") (result i32) (call $both) (i32.const 0)))"""
