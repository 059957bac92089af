"""The C declarations plugsafe uses of libwasmtime, and the generator of their parsed form.

``_wasmtime_cffi.py`` is generated from ``CDEF`` by ``python -m plugsafe._cdef`` (cffi's
out-of-line ABI mode: no compiler, and no C parsing when plugsafe is imported). A test checks
that the generated file is up to date.

Two parts. The per-call declarations (handles, value slots, the unchecked call, memory, fuel,
deadlines, host callbacks) involve struct layouts: ``LAYOUTS`` holds those layouts as wasmtime
48, 49 and 50 define them, checked when the cffi backend is made (``_runtime._cffi``), and a
test compares ``LAYOUTS`` with wasmtime-py's own ctypes declarations. The management
declarations (configs, engines, modules and their import and export types, linkers, WASI,
function types, errors and traps) take only opaque pointers and ``{size, data}`` vectors: what
``_runtime`` makes and frees without wasmtime-py (issue 14: a cold start never imports it).
Every signature here is copied from
wasmtime's ``crates/c-api/include`` (the same as wasmtime-py's generated ``_bindings.py``),
identical in wasmtime 48, 49 and 50.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["CDEF", "LAYOUTS", "generate"]

# wasmtime_extern_t's union is 24 bytes in wasmtime 48-50 (its largest members are the table,
# memory and global handles); the layout check refuses anything else (see LAYOUTS).
CDEF = """
typedef struct wasmtime_context wasmtime_context_t;
typedef struct wasmtime_caller wasmtime_caller_t;
typedef struct wasmtime_linker wasmtime_linker_t;
typedef struct wasm_functype_t wasm_functype_t;
typedef struct wasm_trap_t wasm_trap_t;
typedef struct wasmtime_error wasmtime_error_t;
typedef struct wasmtime_instance_pre wasmtime_instance_pre_t;
typedef struct { uint64_t store_id; void *private_; } wasmtime_func_t;
typedef struct { struct { uint64_t store_id; uint32_t private1; } a; uint32_t private2; }
    wasmtime_memory_t;
typedef union { int32_t i32; int64_t i64; float f32; double f64; uint8_t v128[16]; }
    wasmtime_val_raw_t;
typedef struct { uint64_t store_id; size_t private_; } wasmtime_instance_t;
typedef struct {
    uint8_t kind;
    union { wasmtime_func_t func; wasmtime_memory_t memory; uint8_t pad[24]; } of;
} wasmtime_extern_t;
typedef wasm_trap_t *(*wasmtime_func_unchecked_callback_t)(
    void *, wasmtime_caller_t *, wasmtime_val_raw_t *, size_t);
typedef wasm_trap_t *(*plugsafe_addr_callback_t)(void *, uintptr_t, uintptr_t, size_t);

wasmtime_error_t *wasmtime_func_call_unchecked(
    wasmtime_context_t *, const wasmtime_func_t *, wasmtime_val_raw_t *, size_t, wasm_trap_t **);
uint8_t *wasmtime_memory_data(const wasmtime_context_t *, const wasmtime_memory_t *);
size_t wasmtime_memory_data_size(const wasmtime_context_t *, const wasmtime_memory_t *);
wasmtime_error_t *wasmtime_context_set_fuel(wasmtime_context_t *, uint64_t);
wasmtime_error_t *wasmtime_context_get_fuel(const wasmtime_context_t *, uint64_t *);
void wasmtime_context_set_epoch_deadline(wasmtime_context_t *, uint64_t);
wasmtime_context_t *wasmtime_caller_context(wasmtime_caller_t *);
bool wasmtime_instance_export_get(const wasmtime_context_t *, const wasmtime_instance_t *,
    const char *, size_t, wasmtime_extern_t *);
bool wasmtime_caller_export_get(wasmtime_caller_t *, const char *, size_t, wasmtime_extern_t *);
wasm_trap_t *wasmtime_trap_new(const char *, size_t);
void wasm_trap_delete(wasm_trap_t *);
wasmtime_error_t *wasmtime_instance_pre_instantiate(
    const wasmtime_instance_pre_t *, wasmtime_context_t *, wasmtime_instance_t *, wasm_trap_t **);
wasmtime_error_t *wasmtime_linker_define_func_unchecked(
    wasmtime_linker_t *, const char *, size_t, const char *, size_t, const wasm_functype_t *,
    wasmtime_func_unchecked_callback_t, void *, void (*)(void *));

typedef struct wasm_config_t wasm_config_t;
typedef struct wasm_engine_t wasm_engine_t;
typedef struct wasmtime_module wasmtime_module_t;
typedef struct wasm_valtype_t wasm_valtype_t;
typedef struct wasi_config_t wasi_config_t;
typedef struct wasmtime_pooling_allocation_config_t wasmtime_pooling_allocation_config_t;
typedef struct { size_t size; uint8_t *data; } wasm_byte_vec_t;
typedef struct { size_t size; wasm_valtype_t **data; } wasm_valtype_vec_t;
typedef ssize_t (*plugsafe_output_callback_t)(void *, const unsigned char *, size_t);

wasm_config_t *wasm_config_new(void);
void wasm_config_delete(wasm_config_t *);
void wasmtime_config_consume_fuel_set(wasm_config_t *, bool);
void wasmtime_config_epoch_interruption_set(wasm_config_t *, bool);
void wasmtime_config_max_wasm_stack_set(wasm_config_t *, size_t);
void wasmtime_config_wasm_threads_set(wasm_config_t *, bool);
void wasmtime_config_shared_memory_set(wasm_config_t *, bool);
void wasmtime_config_wasm_memory64_set(wasm_config_t *, bool);
void wasmtime_config_wasm_gc_set(wasm_config_t *, bool);
void wasmtime_config_wasm_component_model_set(wasm_config_t *, bool);
void wasmtime_config_wasm_multi_memory_set(wasm_config_t *, bool);
void wasmtime_config_memory_may_move_set(wasm_config_t *, bool);
void wasmtime_config_parallel_compilation_set(wasm_config_t *, bool);
wasmtime_pooling_allocation_config_t *wasmtime_pooling_allocation_config_new(void);
void wasmtime_pooling_allocation_config_delete(wasmtime_pooling_allocation_config_t *);
void wasmtime_pooling_allocation_config_total_core_instances_set(
    wasmtime_pooling_allocation_config_t *, uint32_t);
void wasmtime_pooling_allocation_config_total_memories_set(
    wasmtime_pooling_allocation_config_t *, uint32_t);
void wasmtime_pooling_allocation_config_total_tables_set(
    wasmtime_pooling_allocation_config_t *, uint32_t);
void wasmtime_pooling_allocation_config_max_memories_per_module_set(
    wasmtime_pooling_allocation_config_t *, uint32_t);
void wasmtime_pooling_allocation_config_max_tables_per_module_set(
    wasmtime_pooling_allocation_config_t *, uint32_t);
void wasmtime_pooling_allocation_config_max_memory_size_set(
    wasmtime_pooling_allocation_config_t *, size_t);
void wasmtime_pooling_allocation_config_table_elements_set(
    wasmtime_pooling_allocation_config_t *, size_t);
void wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(
    wasmtime_pooling_allocation_config_t *, size_t);
void wasmtime_pooling_allocation_config_table_keep_resident_set(
    wasmtime_pooling_allocation_config_t *, size_t);
void wasmtime_pooling_allocation_config_total_component_instances_set(
    wasmtime_pooling_allocation_config_t *, uint32_t);
void wasmtime_pooling_allocation_config_total_gc_heaps_set(
    wasmtime_pooling_allocation_config_t *, uint32_t);
void wasmtime_pooling_allocation_strategy_set(
    wasm_config_t *, const wasmtime_pooling_allocation_config_t *);
wasm_engine_t *wasm_engine_new_with_config(wasm_config_t *);
void wasm_engine_delete(wasm_engine_t *);
void wasmtime_engine_increment_epoch(wasm_engine_t *);

void wasm_byte_vec_new(wasm_byte_vec_t *, size_t, const uint8_t *);
void wasm_byte_vec_delete(wasm_byte_vec_t *);
wasmtime_error_t *wasmtime_wat2wasm(const char *, size_t, wasm_byte_vec_t *);
wasmtime_error_t *wasmtime_module_new(wasm_engine_t *, const uint8_t *, size_t,
    wasmtime_module_t **);
wasmtime_error_t *wasmtime_module_deserialize(wasm_engine_t *, const uint8_t *, size_t,
    wasmtime_module_t **);
wasmtime_error_t *wasmtime_module_serialize(wasmtime_module_t *, wasm_byte_vec_t *);
void wasmtime_module_delete(wasmtime_module_t *);

typedef struct wasm_exporttype_t wasm_exporttype_t;
typedef struct wasm_importtype_t wasm_importtype_t;
typedef struct wasm_externtype_t wasm_externtype_t;
typedef struct { size_t size; wasm_exporttype_t **data; } wasm_exporttype_vec_t;
typedef struct { size_t size; wasm_importtype_t **data; } wasm_importtype_vec_t;
void wasmtime_module_exports(const wasmtime_module_t *, wasm_exporttype_vec_t *);
void wasmtime_module_imports(const wasmtime_module_t *, wasm_importtype_vec_t *);
void wasm_exporttype_vec_delete(wasm_exporttype_vec_t *);
void wasm_importtype_vec_delete(wasm_importtype_vec_t *);
const wasm_byte_vec_t *wasm_exporttype_name(const wasm_exporttype_t *);
const wasm_externtype_t *wasm_exporttype_type(const wasm_exporttype_t *);
const wasm_byte_vec_t *wasm_importtype_module(const wasm_importtype_t *);
const wasm_byte_vec_t *wasm_importtype_name(const wasm_importtype_t *);
const wasm_externtype_t *wasm_importtype_type(const wasm_importtype_t *);
uint8_t wasm_externtype_kind(const wasm_externtype_t *);
const wasm_functype_t *wasm_externtype_as_functype_const(const wasm_externtype_t *);
const wasm_valtype_vec_t *wasm_functype_params(const wasm_functype_t *);
const wasm_valtype_vec_t *wasm_functype_results(const wasm_functype_t *);
typedef struct wasm_memorytype_t wasm_memorytype_t;
typedef struct wasm_globaltype_t wasm_globaltype_t;
typedef struct wasm_tagtype_t wasm_tagtype_t;
const wasm_memorytype_t *wasm_externtype_as_memorytype_const(const wasm_externtype_t *);
uint64_t wasmtime_memorytype_minimum(const wasm_memorytype_t *);
bool wasmtime_memorytype_maximum(const wasm_memorytype_t *, uint64_t *);
bool wasmtime_memorytype_is64(const wasm_memorytype_t *);
bool wasmtime_memorytype_isshared(const wasm_memorytype_t *);
const wasm_globaltype_t *wasm_externtype_as_globaltype_const(const wasm_externtype_t *);
const wasm_valtype_t *wasm_globaltype_content(const wasm_globaltype_t *);
uint8_t wasm_globaltype_mutability(const wasm_globaltype_t *);
const wasm_tagtype_t *wasm_externtype_as_tagtype_const(const wasm_externtype_t *);
const wasm_functype_t *wasm_tagtype_functype(const wasm_tagtype_t *);
typedef struct wasm_tabletype_t wasm_tabletype_t;
typedef struct wasm_limits_t { uint32_t min; uint32_t max; } wasm_limits_t;
const wasm_tabletype_t *wasm_externtype_as_tabletype_const(const wasm_externtype_t *);
const wasm_valtype_t *wasm_tabletype_element(const wasm_tabletype_t *);
const wasm_limits_t *wasm_tabletype_limits(const wasm_tabletype_t *);

wasm_valtype_t *wasm_valtype_new(uint8_t);
bool wasmtime_wasm_valtype_equal(const wasm_valtype_t *, const wasm_valtype_t *);
void wasm_valtype_vec_new(wasm_valtype_vec_t *, size_t, wasm_valtype_t *const *);
wasm_functype_t *wasm_functype_new(wasm_valtype_vec_t *, wasm_valtype_vec_t *);
void wasm_functype_delete(wasm_functype_t *);

wasmtime_linker_t *wasmtime_linker_new(wasm_engine_t *);
void wasmtime_linker_delete(wasmtime_linker_t *);
void wasmtime_linker_allow_shadowing(wasmtime_linker_t *, bool);
wasmtime_error_t *wasmtime_linker_define_wasi(wasmtime_linker_t *);
wasmtime_error_t *wasmtime_linker_instantiate_pre(const wasmtime_linker_t *,
    const wasmtime_module_t *, wasmtime_instance_pre_t **);
void wasmtime_instance_pre_delete(wasmtime_instance_pre_t *);

void wasmtime_error_message(const wasmtime_error_t *, wasm_byte_vec_t *);
bool wasmtime_error_exit_status(const wasmtime_error_t *, int *);
void wasmtime_error_delete(wasmtime_error_t *);
void wasm_trap_message(const wasm_trap_t *, wasm_byte_vec_t *);
bool wasmtime_trap_code(const wasm_trap_t *, uint8_t *);

wasi_config_t *wasi_config_new(void);
void wasi_config_delete(wasi_config_t *);
bool wasi_config_set_argv(wasi_config_t *, size_t, const char *[]);
bool wasi_config_set_env(wasi_config_t *, size_t, const char *[], const char *[]);
void wasi_config_set_stdin_bytes(wasi_config_t *, wasm_byte_vec_t *);
void wasi_config_inherit_stdout(wasi_config_t *);
void wasi_config_inherit_stderr(wasi_config_t *);
void wasi_config_set_stdout_custom(wasi_config_t *, plugsafe_output_callback_t, void *,
    void (*)(void *));
void wasi_config_set_stderr_custom(wasi_config_t *, plugsafe_output_callback_t, void *,
    void (*)(void *));
bool wasi_config_preopen_dir(wasi_config_t *, const char *, const char *, bool);
"""

# The per-call structs as wasmtime defines them, by major version: (size, {field: offset}).
# wasmtime_extern_t.kind is a uint8 tag (WASMTIME_EXTERN_FUNC = 0, WASMTIME_EXTERN_MEMORY = 3).
# tests/test_layouts.py compares this with wasmtime-py's ctypes declarations of the installed
# version (CI runs it on 48 and on the newest): a wasmtime that changes a layout fails there.
_LAYOUT = {
    "wasmtime_func_t": (16, {"store_id": 0}),
    "wasmtime_memory_t": (24, {}),
    "wasmtime_val_raw_t": (16, {}),
    "wasmtime_extern_t": (32, {"kind": 0, "of": 8}),
    "wasmtime_instance_t": (16, {"store_id": 0}),
}
LAYOUTS: dict[int, dict[str, tuple[int, dict[str, int]]]] = {48: _LAYOUT, 49: _LAYOUT, 50: _LAYOUT}


def generate(path: str | Path) -> None:
    """Write the out-of-line cffi module for ``CDEF`` to ``path``."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("plugsafe._wasmtime_cffi", None)
    ffi.emit_python_code(str(path))


if __name__ == "__main__":  # pragma: no cover - developer tool
    generate(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("_wasmtime_cffi.py"))
