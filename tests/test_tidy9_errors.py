"""tidy9: one home for turning wasmtime's errors and traps into text.

``_lib.error_text`` and ``_lib.trap_text`` read (and free) one ``wasmtime_error_t`` or
``wasm_trap_t``; ``_backend.failure_from_addresses`` is the one place a core call's error or trap
becomes a ``WasmFailure`` (host-function markers, exit status, trap code), through them. They
are layers, not duplicates. The second home was the component path, which read its errors
through wasmtime-py's ``WasmtimeError``: it now reads them through ``error_text`` too.
"""

from __future__ import annotations

import re
from pathlib import Path

from wasmtime import _ffi as wf

from plugsafe._runtime import _component, _lib

_RUNTIME = Path(_lib.__file__).parent
_READERS = re.compile(
    r"wasmtime_error_message|wasm_trap_message|wasmtime_trap_code|wasmtime_error_exit_status"
    r"|WasmtimeError\._from_ptr|Trap\._from_ptr"
)


def test_only_lib_reads_wasmtime_errors_and_traps() -> None:
    readers = {
        path.name
        for path in Path(_RUNTIME).parent.rglob("*.py")
        if path.name not in ("_cdef.py", "_wasmtime_cffi.py")
        and _READERS.search(path.read_text(encoding="utf-8"))
    }
    assert readers == {"_lib.py"}


def test_a_component_error_reads_as_error_text_reads_it() -> None:
    for message, code in [
        ("boom \u00e9", None),
        ("wasm trap: interrupt", "INTERRUPT"),
        (
            "error while executing at wasm backtrace:\n    0: 0x1 - <unknown>!f\n\n"
            "Caused by:\n    wasm trap: all fuel consumed by WebAssembly",
            "OUT_OF_FUEL",
        ),
    ]:
        raw = message.encode()
        expected = _lib.error_text(_address(raw))
        failure = _component._failure(wf.wasmtime_error_new(raw))
        assert (failure.message, failure.trap_code) == (expected[0], code)
        assert failure.message == message


def _address(raw: bytes) -> int:
    """A fresh ``wasmtime_error_t`` with message ``raw``, as an address (the caller frees it)."""
    import ctypes

    return ctypes.cast(wf.wasmtime_error_new(raw), ctypes.c_void_p).value or 0
