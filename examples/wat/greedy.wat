;; Asks for far more than any policy should give: WASI, a made-up host function, and env.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (import "plugsafe" "exec_shell" (func (param i32 i32)))
  (import "plugsafe" "lookup" (func (param i32 i32) (result i64)))
  (import "env" "memory" (memory 1)))
