;; A hostile plugin: every export attacks the host in a different way. plugsafe must stop each
;; one with a typed error and keep the host process healthy.
(module
  (import "plugsafe" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  ;; what the flood sends (the rest of its 64 KiB memory is zeros; the log cap cuts it short)
  (data (i32.const 0) "BUY CHEAP FUEL! BUY CHEAP FUEL! BUY CHEAP FUEL! ")
  (func (export "plugsafe_abi_version") (result i32) i32.const 1)
  (func (export "plugsafe_alloc") (param i32) (result i32) i32.const 1024)

  ;; loops forever (stopped by the timeout, or by fuel)
  (func (export "spin") (param i32 i32) (result i64)
    (loop $l (br $l)) i64.const 0)

  ;; grows memory until refused, then aborts
  (func (export "bomb") (param i32 i32) (result i64)
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable)

  ;; recurses without end
  (func $deep (export "deep") (param i32 i32) (result i64)
    (call $deep (local.get 0) (local.get 1)))

  ;; claims its output is 1 MiB at the very end of its 64 KiB memory
  (func (export "liar") (param i32 i32) (result i64)
    i64.const 0x0000FFF000100000)

  ;; floods the log with messages pointing at its whole memory
  (func (export "flood") (param i32 i32) (result i64)
    (local $i i32)
    (loop $l
      (call $log (i32.const 4) (i32.const 0) (i32.const 65536))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))
    i64.const 0)
)
