;; Uses one instruction of (nearly) every immediate shape the precheck decodes; see
;; test_sec_compile.py. Nesting depths: $id 1, f 4 (body, block, loop, if), g 4 (body, block, block, try_table).
(module
  (type $t (func (param i32) (result i32)))
  (memory $m0 1) (memory $m1 1)
  (table $tab 4 funcref) (table $tab2 2 externref)
  (elem declare func $id)
  (data $d "abc")
  (elem $e func $id)
  (func $id (param i32) (result i32) local.get 0)
  (func (export "f") (param $x i32) (result i32) (local v128) (local f32 f64 i64)
    (block $b (result i32)
      (loop $l
        (if (i32.const 2) (then (nop)) (else (nop))))
      (v128.const i32x4 2 3 4 11)
      (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 (local.get 1))
      (i32x4.extract_lane 2)
      drop
      (v128.load8_lane 3 (i32.const 0) (local.get 1)) drop
      (v128.store64_lane 1 (i32.const 0) (local.get 1))
      (v128.load32_zero (i32.const 2)) drop
      (v128.load offset=3 align=1 (i32.const 0)) drop
      (f32x4.relaxed_madd (local.get 1) (local.get 1) (local.get 1)) drop
      (i32.load $m1 offset=11 (i32.const 2)) drop
      (i64.store $m1 (i32.const 0) (i64.const 0x0203040b0203040b))
      (memory.copy $m0 $m1 (i32.const 0) (i32.const 2) (i32.const 3))
      (memory.fill $m1 (i32.const 0) (i32.const 2) (i32.const 3))
      (memory.init $d (i32.const 0) (i32.const 0) (i32.const 1))
      (data.drop $d)
      (table.init $tab $e (i32.const 0) (i32.const 0) (i32.const 1))
      (elem.drop $e)
      (table.copy $tab $tab (i32.const 0) (i32.const 1) (i32.const 1))
      (drop (table.grow $tab2 (ref.null extern) (i32.const 1)))
      (drop (table.size $tab2))
      (table.fill $tab2 (i32.const 0) (ref.null extern) (i32.const 1))
      (drop (table.get $tab2 (i32.const 0)))
      (drop (ref.is_null (ref.func $id)))
      (drop (i32.trunc_sat_f32_s (f32.const 2.5)))
      (drop (i64.trunc_sat_f64_u (f64.const 3.0e300)))
      (drop (select (result i32) (i32.const 2) (i32.const 3) (local.get $x)))
      (drop (i32.extend8_s (i32.const 0x02)))
      (drop (call_indirect $tab (type $t) (i32.const 4) (i32.const 0)))
      (drop (memory.grow $m1 (i32.const 0)))
      (drop (memory.size $m1))
      (br_table 0 0 0 (i32.const 2) (local.get $x)))
    (return_call $id))
  (tag $ex (param i32))
  (func (export "g") (result i32)
    (block $outer
      (block $h (result i32)
        (try_table (result i32) (catch $ex $h) (catch_all $outer)
          (throw $ex (i32.const 2))))
      drop)
    (i32.const 3))
)
