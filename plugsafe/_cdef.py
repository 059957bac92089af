"""The C declarations plugsafe's cffi call path uses, and the generator of their parsed form.

``_wasmtime_cffi.py`` is generated from ``CDEF`` by ``python -m plugsafe._cdef`` (cffi's
out-of-line ABI mode: no compiler, and no C parsing when plugsafe is imported). A test checks
that the generated file is up to date. The layouts declared here are checked against
wasmtime-py's own ctypes declarations every time plugsafe starts (see ``_runtime._cffi``).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["CDEF", "generate"]

# wasmtime_extern_t's union is 24 bytes in wasmtime 50 (its largest members are the table,
# memory and global handles); the import-time layout check refuses anything else.
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
"""


def generate(path: str | Path) -> None:
    """Write the out-of-line cffi module for ``CDEF`` to ``path``."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("plugsafe._wasmtime_cffi", None)
    ffi.emit_python_code(str(path))


if __name__ == "__main__":  # pragma: no cover - developer tool
    generate(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("_wasmtime_cffi.py"))
