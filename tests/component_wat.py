"""Inline component fixtures (component text, compiled by wasmtime's own parser: no toolchain).

Each core function implements its WIT signature by hand under the canonical ABI: flat
parameters, results over one flat value returned through a pointer into linear memory, and a
bump ``realloc`` for the lists and strings the host passes in.
"""

from __future__ import annotations

_CORE = r"""
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 4096))
    (data (i32.const 200) "negative")
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      ;; round the bump pointer up to the alignment asked for
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
    (func (export "double") (param i32) (result i32) (i32.mul (local.get 0) (i32.const 2)))
    (func (export "triple") (param i32) (result i32) (i32.mul (local.get 0) (i32.const 3)))
    (func (export "pair-ptr") (param i32 i32) (result i32)
      (i32.store (i32.const 64) (local.get 0))
      (i32.store (i32.const 68) (local.get 1))
      (i32.const 64))
    (func (export "swap") (param i32 i32 i32 i32) (result i32)
      (i32.store (i32.const 64) (local.get 1))
      (i32.store (i32.const 68) (local.get 0))
      (i32.store (i32.const 72) (local.get 2))
      (i32.store (i32.const 76) (local.get 3))
      (i32.const 64))
    (func (export "opt") (param i32 i32) (result i32)
      (if (local.get 0)
        (then (i32.store8 (i32.const 64) (i32.const 1))
              (i32.store (i32.const 68) (i32.add (local.get 1) (i32.const 1))))
        (else (i32.store8 (i32.const 64) (i32.const 0))))
      (i32.const 64))
    (func (export "res") (param i32) (result i32)
      (if (i32.lt_s (local.get 0) (i32.const 0))
        (then (i32.store8 (i32.const 64) (i32.const 1))
              (i32.store (i32.const 68) (i32.const 200))
              (i32.store (i32.const 72) (i32.const 8)))
        (else (i32.store8 (i32.const 64) (i32.const 0))
              (i32.store (i32.const 68) (i32.mul (local.get 0) (i32.const 2)))))
      (i32.const 64))
    (func (export "color") (param i32) (result i32)
      (i32.rem_u (i32.add (local.get 0) (i32.const 1)) (i32.const 3)))
    (func (export "perms") (param i32) (result i32) (i32.xor (local.get 0) (i32.const 7)))
    (func (export "shape") (param i32 i32 i32) (result i32)
      (i32.store8 (i32.const 64) (local.get 0))
      (i32.store (i32.const 68) (local.get 1))
      (i32.store (i32.const 72) (local.get 2))
      (i32.const 64))
    (func (export "pair") (param i32 i64) (result i32)
      (i64.store (i32.const 64) (local.get 1))
      (i32.store8 (i32.const 72) (local.get 0))
      (i32.const 64))
    (func (export "next-char") (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
    (func (export "mix") (param f32 f64) (result f64)
      (f64.add (f64.promote_f32 (local.get 0)) (local.get 1)))
    (func (export "neg") (param i32) (result i32) (i32.sub (i32.const 0) (local.get 0)))
    (func (export "big") (param i64) (result i64) (i64.add (local.get 0) (i64.const 1)))
    (func (export "not") (param i32) (result i32) (i32.eqz (local.get 0)))
    (func (export "sum") (param i32 i32) (result i64)
      (local $acc i64)
      (block $done
        (loop $next
          (br_if $done (i32.eqz (local.get 1)))
          (local.set $acc (i64.add (local.get $acc) (i64.extend_i32_u (i32.load (local.get 0)))))
          (local.set 0 (i32.add (local.get 0) (i32.const 4)))
          (local.set 1 (i32.sub (local.get 1) (i32.const 1)))
          (br $next)))
      (local.get $acc))
    (func (export "size") (param i32 i32) (result i32) (local.get 1))
    (func (export "boom") unreachable)
    (func (export "spin") (loop br 0))
    (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  )
  (core instance $i (instantiate $m))
"""


def _lift(core: str, sig: str, name: str | None = None) -> str:
    return (
        f'(func ${name or core} {sig} (canon lift (core func $i "{core}") '
        '(memory (core memory $i "memory")) (realloc (core func $i "realloc"))))'
    )


# Named types (records, enums, flags, variants) must be exported before an exported function may
# use them: each is defined, exported under its WIT name, and used by its exported index.
TYPES = """
  (type $image-def (record (field "width" u32) (field "height" u32) (field "data" (list u8))))
  (export $image "image" (type $image-def))
  (type $color-def (enum "red" "green" "blue"))
  (export $color "color" (type $color-def))
  (type $perms-def (flags "read" "write" "exec"))
  (export $perms "perms" (type $perms-def))
  (type $shape-def (variant (case "num" u32) (case "txt" string) (case "nothing")))
  (export $shape "shape" (type $shape-def))
"""
IMAGE = "$image"

FUNCS = [
    ("add", '(param "a" u32) (param "b" u32) (result u32)'),
    ("echo", '(param "s" string) (result string)', "pair-ptr"),
    ("echo-bytes", '(param "data" (list u8)) (result (list u8))', "pair-ptr"),
    ("swap", f'(param "img" {IMAGE}) (result {IMAGE})'),
    ("opt", '(param "x" (option u32)) (result (option u32))'),
    ("res", '(param "x" s32) (result (result s32 (error string)))'),
    ("next-color", '(param "c" $color) (result $color)', "color"),
    ("flip", '(param "f" $perms) (result $perms)', "perms"),
    ("same-shape", '(param "v" $shape) (result $shape)', "shape"),
    ("pair", '(param "t" (tuple u8 s64)) (result (tuple s64 u8))'),
    ("next-char", '(param "c" char) (result char)'),
    ("mix", '(param "a" float32) (param "b" float64) (result float64)'),
    ("neg", '(param "x" s8) (result s8)'),
    ("big", '(param "x" u64) (result u64)'),
    ("not", '(param "b" bool) (result bool)'),
    ("sum", '(param "xs" (list u32)) (result u64)'),
    ("size", '(param "data" (list u8)) (result u32)'),
    ("boom", ""),
    ("spin", ""),
    ("grow", '(param "pages" u32) (result s32)'),
]


def _world() -> str:
    parts = ["(component", _CORE, TYPES]
    for entry in FUNCS:
        name, sig = entry[0], entry[1]
        core = entry[2] if len(entry) > 2 else name
        parts.append(_lift(core, sig, name))
        parts.append(f'(export "{name}" (func ${name}))')
    # Interfaces: two share the short name "math" (so "math/double" is ambiguous).
    parts.append(_lift("double", '(param "x" u32) (result u32)', "d1"))
    parts.append(_lift("triple", '(param "x" u32) (result u32)', "t1"))
    parts.append(_lift("double", '(param "x" u32) (result u32)', "d2"))
    parts.append(
        '(instance $math (export "double" (func $d1)) (export "triple" (func $t1)))'
        '(export "test:demo/math@1.0.0" (instance $math))'
        '(instance $math2 (export "double" (func $d2)))'
        '(export "test:other/math" (instance $math2))'
    )
    parts.append(_lift("triple", '(param "x" u32) (result u32)', "t3"))
    parts.append('(instance $util (export "triple" (func $t3)))')
    parts.append('(export "test:demo/util@0.1.0" (instance $util))')
    parts.append(")")
    return "\n".join(parts)


#: A component exercising every value kind, limits and interface names.
WORLD = _world()

#: Imports two host interfaces and one WASI interface (nothing else).
IMPORTS = r"""
(component
  (import "test:host/logging" (instance (export "host-log" (func (param "msg" string)))))
  (import "test:host/clock" (instance (export "now" (func (result u64)))))
  (import "wasi:cli/environment@0.2.0"
    (instance (export "get-arguments" (func (result (list string))))))
  (core module $m (func (export "f") (result i32) i32.const 7))
  (core instance $i (instantiate $m))
  (func $seven (result u32) (canon lift (core func $i "f")))
  (export "seven" (func $seven))
)
"""

#: Imports only WASI (granted by Wasi(...)).
WASI_ONLY = r"""
(component
  (import "wasi:cli/environment@0.2.0"
    (instance (export "get-arguments" (func (result (list string))))))
  (core module $m (func (export "f") (result i32) i32.const 7))
  (core instance $i (instantiate $m))
  (func $seven (result u32) (canon lift (core func $i "f")))
  (export "seven" (func $seven))
)
"""

#: Exports a function taking a resource handle (refused at load).
RESOURCE = r"""
(component
  (type $r-def (resource (rep i32)))
  (export $r "thing" (type $r-def))
  (core module $m (func (export "f") (param i32) (result i32) local.get 0))
  (core instance $i (instantiate $m))
  (func $use (param "h" (own $r)) (result u32) (canon lift (core func $i "f")))
  (export "use" (func $use))
)
"""

#: Calls wasi:cli/environment.get-arguments (lowered through the canonical ABI) and returns how
#: many arguments it got.
WASI_ARGS = r"""
(component
  (import "wasi:cli/environment@0.2.0"
    (instance $env (export "get-arguments" (func (result (list string))))))
  (core module $mem
    (memory (export "memory") 1)
    (global $b (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $b) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $b (i32.add (local.get $p) (local.get 3)))
      (local.get $p)))
  (core instance $mi (instantiate $mem))
  (core func $ga (canon lower (func $env "get-arguments") (memory (core memory $mi "memory"))
                  (realloc (core func $mi "realloc"))))
  (core module $m
    (import "host" "ga" (func $ga (param i32)))
    (import "mem" "memory" (memory 1))
    (func (export "count") (result i32) (call $ga (i32.const 16)) (i32.load (i32.const 20))))
  (core instance $i (instantiate $m (with "host" (instance (export "ga" (func $ga))))
                                    (with "mem" (instance $mi))))
  (func (export "count-args") (result u32) (canon lift (core func $i "count")))
)
"""

#: Imports a network interface (never granted).
SOCKETS = r"""
(component
  (import "wasi:sockets/instance-network@0.2.0" (instance))
  (import "wasi:cli/environment@0.2.0"
    (instance (export "get-arguments" (func (result (list string))))))
)
"""

#: Imports test:host/logging#host-log and test:host/clock#now; run(msg) logs msg ``times``
#: times and returns now().
HOST_CALLS = r"""
(component
  (import "test:host/logging" (instance $log (export "host-log" (func (param "msg" string)))))
  (import "test:host/clock" (instance $clock (export "now" (func (result u64)))))
  (core module $mem
    (memory (export "memory") 1)
    (global $b (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $b) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $b (i32.add (local.get $p) (local.get 3)))
      (local.get $p)))
  (core instance $mi (instantiate $mem))
  (core func $host-log (canon lower (func $log "host-log") (memory (core memory $mi "memory"))))
  (core func $now (canon lower (func $clock "now")))
  (core module $m
    (import "host" "log" (func $log (param i32 i32)))
    (import "host" "now" (func $now (result i64)))
    (import "mem" "memory" (memory 1))
    (func (export "run") (param $p i32) (param $n i32) (param $times i32) (result i64)
      (block $done
        (loop $next
          (br_if $done (i32.eqz (local.get $times)))
          (call $log (local.get $p) (local.get $n))
          (local.set $times (i32.sub (local.get $times) (i32.const 1)))
          (br $next)))
      (call $now)))
  (core instance $i (instantiate $m
    (with "host" (instance (export "log" (func $host-log)) (export "now" (func $now))))
    (with "mem" (instance $mi))))
  (func (export "run") (param "msg" string) (param "times" u32) (result u64)
    (canon lift (core func $i "run") (memory (core memory $mi "memory"))
      (realloc (core func $mi "realloc"))))
)
"""
