;; A well-behaved plugin, written by hand against the plugsafe ABI v1 (docs/abi.md).
;; Plugins are normally written with the Rust or C SDK in plugins-sdk/; this one needs no compiler.
(module
  (import "plugsafe" "log" (func $log (param i32 i32 i32)))
  (import "plugsafe" "lookup" (func $lookup (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Hello, ")
  (data (i32.const 32) "greeting someone")

  ;; A bump allocator that starts over at every call: the host copies each output out before
  ;; it makes the next call, so nothing needs freeing.
  (global $bump (mut i32) (i32.const 1024))
  (func (export "plugsafe_abi_version") (result i32) i32.const 1)
  (func $alloc (export "plugsafe_alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (global.get $bump))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $n) (i32.const 16)) (i32.const 1)))
                    (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $bump (local.get $end))
    (local.get $p))
  (func $result (param $p i32) (param $n i32) (result i64)
    (global.set $bump (i32.const 1024))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))

  ;; greet(name) -> "Hello, <name>!"
  (func (export "greet") (param $p i32) (param $n i32) (result i64)
    (local $out i32)
    (call $log (i32.const 2) (i32.const 32) (i32.const 16))
    (local.set $out (call $alloc (i32.add (local.get $n) (i32.const 8))))
    (memory.copy (local.get $out) (i32.const 16) (i32.const 7))
    (memory.copy (i32.add (local.get $out) (i32.const 7)) (local.get $p) (local.get $n))
    (i32.store8 (i32.add (local.get $out) (i32.add (local.get $n) (i32.const 7))) (i32.const 33))
    (call $result (local.get $out) (i32.add (local.get $n) (i32.const 8))))

  ;; describe(key) -> whatever the host's lookup(key) answers, or an error if it has nothing.
  (func (export "describe") (param $p i32) (param $n i32) (result i64)
    (local $r i64)
    (local.set $r (call $lookup (local.get $p) (local.get $n)))
    (if (i64.eq (local.get $r) (i64.const -1))
      (then
        ;; report the key itself as the error message (error bit set)
        (return (i64.or (call $result (local.get $p) (local.get $n)) (i64.const 0x80000000)))))
    (global.set $bump (i32.const 1024))
    (local.get $r))
)
