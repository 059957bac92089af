"""WAT guests for the benchmarks: the same work written against plugsafe's ABI and Extism's.

Nothing here is copied from another project. The Extism guests are written by hand against the
Extism kernel's documented imports (module ``extism:host/env``: ``input_length``,
``input_offset``, ``output_set``); Extism exports are ``() -> i32`` with 0 meaning success.
"""

from __future__ import annotations

# Host calls made by one call of a ``hostloop`` export; the report divides by this.
HOST_CALLS_PER_RUN = 1000
# Iterations of the compute loop (an xorshift PRNG summed up): a few milliseconds per call.
COMPUTE_ITERATIONS = 1_000_000

# The input buffer as the SDKs declare it (docs/abi.md, "The input buffer"): 4 KiB, here at
# 1024..5120, below the bump allocator's heap. Inputs up to 4 KiB then take one wasm call, not
# two (plugsafe_alloc, then the function); larger ones go through plugsafe_alloc as before.
INPUT_BUFFER_AT = 1024
INPUT_BUFFER_SIZE = 4096
_HEAP_AT = INPUT_BUFFER_AT + INPUT_BUFFER_SIZE
_INPUT_BUFFER = f"""
  (func (export "plugsafe_input_buffer") (result i64)
    (i64.const {(INPUT_BUFFER_AT << 32) | INPUT_BUFFER_SIZE}))
"""

_ALLOC_AND_OK = f"""
  (global $bump (mut i32) (i32.const {_HEAP_AT}))
  (func (export "plugsafe_abi_version") (result i32) i32.const 1)
  (func $alloc (export "plugsafe_alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (global.get $bump))
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
    (local.get $p))
  (func $ok (param $p i32) (param $n i32) (result i64)
    (global.set $bump (i32.const {_HEAP_AT}))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))
"""

_COMPUTE = f"""
  (func (export "compute") (result i64)
    (local $x i64) (local $sum i64) (local $i i32)
    (local.set $x (i64.const 88172645463325252))
    (loop $l
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
      (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
      (local.set $sum (i64.add (local.get $sum) (local.get $x)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {COMPUTE_ITERATIONS}))))
    (local.get $sum))
"""

# The plugsafe-ABI guest (also driven by hand through wasmtime-py, which sees the same exports).
PLUGSAFE_GUEST = f"""
(module
  (import "plugsafe" "bump" (func $bump_host (param i64) (result i64)))
  (memory (export "memory") 1)
  {_ALLOC_AND_OK}
  {_INPUT_BUFFER}
  (func (export "echo") (param $p i32) (param $n i32) (result i64)
    (call $ok (local.get $p) (local.get $n)))
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1)))
  (func (export "hostloop") (result i64)
    (local $i i32) (local $acc i64)
    (loop $l
      (local.set $acc (call $bump_host (local.get $acc)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {HOST_CALLS_PER_RUN}))))
    (local.get $acc))
  {_COMPUTE}
)
"""

# The same guest without the host import: for loads and compute loops that need no host.
PLUGSAFE_PURE_GUEST = f"""
(module
  (memory (export "memory") 1)
  {_ALLOC_AND_OK}
  {_INPUT_BUFFER}
  (func (export "echo") (param $p i32) (param $n i32) (result i64)
    (call $ok (local.get $p) (local.get $n)))
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1)))
  {_COMPUTE}
)
"""

# The same without the input buffer: a plain v1 guest (every input through plugsafe_alloc), for
# what guests built before the input buffer (or by hand without it) measure.
PLUGSAFE_V1_GUEST = PLUGSAFE_PURE_GUEST.replace(_INPUT_BUFFER, "")

# Extism echo: Extism's cheapest echo, zero-copy: the output is the input's own kernel block
# (``output_set(input_offset(), input_length())``), no byte copied inside the guest. (Until
# issue 14 this guest copied the input into a new block 8 bytes per kernel call, which made
# Extism look slower than it is: the comparison flattered plugsafe.)
EXTISM_GUEST = """
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_offset" (func $input_offset (result i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "extism:host/user" "bump" (func $bump_host (param i64) (result i64)))
  (memory (export "memory") 1)
  (func (export "echo") (result i32)
    (call $output_set (call $input_offset) (call $input_length))
    (i32.const 0))
  (func (export "hostloop") (result i32)
    (local $i i32) (local $acc i64)
    (loop $l
      (local.set $acc (call $bump_host (local.get $acc)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {HOST_CALLS_PER_RUN}))))
    (i32.const 0))
)
""".replace("{HOST_CALLS_PER_RUN}", str(HOST_CALLS_PER_RUN))

# Extism without the user host import, for load and fresh-instance figures.
EXTISM_PURE_GUEST = (
    EXTISM_GUEST.replace(
        '(import "extism:host/user" "bump" (func $bump_host (param i64) (result i64)))', ""
    ).split('  (func (export "hostloop")')[0]
    + ")\n"
)
