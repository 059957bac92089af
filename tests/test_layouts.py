"""plugsafe's own view of libwasmtime agrees with wasmtime-py's, for the installed version.

The runtime no longer imports wasmtime-py (issue 14: cold start), so what it used to read from
wasmtime-py at start-up is written down in plugsafe: struct layouts per wasmtime major
(``_cdef.LAYOUTS``), trap code names, extern kinds, value kinds, the library's path. Each is
compared here with wasmtime-py's own ctypes declarations (CI runs this on the oldest supported
wasmtime and the newest): a wasmtime that changes one fails here rather than in a process.
"""

from __future__ import annotations

import ctypes
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from wasmtime import _ffi as wf

from plugsafe import _cdef
from plugsafe._runtime import _backend, _cffi, _lib, _module, wat_to_wasm


def test_the_installed_major_is_known_and_read_without_importlib_metadata() -> None:
    major = int(version("wasmtime").split(".")[0])
    assert _lib.version_major() == major
    assert major in _cdef.LAYOUTS


def test_the_layouts_are_wasmtime_py_s() -> None:
    for cname, (size, offsets) in _cdef.LAYOUTS[_lib.version_major() or 0].items():
        ctype: Any = getattr(wf, cname)
        assert ctypes.sizeof(ctype) == size, cname
        for field, offset in offsets.items():
            assert getattr(ctype, field).offset == offset, (cname, field)
        assert _lib.ffi.sizeof(cname) == size, cname


def test_the_layout_check_refuses_a_wrong_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    major = _lib.version_major() or 0
    wrong = {**_cdef.LAYOUTS[major], "wasmtime_extern_t": (40, {"kind": 0, "of": 8})}
    monkeypatch.setitem(_cdef.LAYOUTS, major, wrong)
    with pytest.raises(ImportError, match="wasmtime_extern_t is 40 bytes"):
        _cffi.check_layouts(_lib.ffi, major)


def test_an_unknown_version_is_checked_against_wasmtime_py(monkeypatch: pytest.MonkeyPatch) -> None:
    _cffi.check_layouts(_lib.ffi, 47)  # not in LAYOUTS: wasmtime-py's declarations agree

    class Wrong(ctypes.Structure):
        _fields_ = [("x", ctypes.c_uint8 * 7)]

    monkeypatch.setattr(wf, "wasmtime_func_t", Wrong)
    with pytest.raises(ImportError, match="wasmtime_func_t is 7 bytes in wasmtime-py"):
        _cffi.check_layouts(_lib.ffi, 47)


def test_trap_codes_are_wasmtime_py_s() -> None:
    assert {c.value: c.name for c in wasmtime.TrapCode} == dict(enumerate(_lib.TRAP_CODES))


def test_kinds_are_wasmtime_py_s() -> None:
    assert wf.WASMTIME_EXTERN_FUNC.value == _backend.KIND_FUNC
    assert wf.WASMTIME_EXTERN_MEMORY.value == _backend.KIND_MEMORY
    expected = {"i32": wf.WASM_I32, "i64": wf.WASM_I64, "f32": wf.WASM_F32, "f64": wf.WASM_F64}
    assert {k: v.value for k, v in expected.items()} == _module.VALKINDS


def test_the_library_is_wasmtime_py_s() -> None:
    assert Path(_lib.PATH).resolve() == Path(wf.filename).resolve()


def test_errors_and_traps_read_as_wasmtime_py_reads_them() -> None:
    # The same C objects, read by plugsafe's helpers and by wasmtime-py's classes.
    message = "plugsafe: a trap's message"
    data = message.encode()
    trap = _lib.lib.wasmtime_trap_new(data, len(data))
    assert _lib.trap_text(_lib.address(trap)) == (message, None)
    ours = _lib.lib.wasmtime_trap_new(data, len(data))
    theirs = wasmtime.Trap._from_ptr(
        ctypes.cast(_lib.address(ours), ctypes.POINTER(wf.wasm_trap_t))
    )
    assert theirs.message == message and theirs.trap_code is None
    with pytest.raises(_backend.WasmFailure, match="expected") as info:
        wat_to_wasm("(module (func (result i32) i32.const)")
    reference = None
    try:
        wasmtime.wat2wasm("(module (func (result i32) i32.const)")
    except wasmtime.WasmtimeError as exc:
        reference = str(exc)
    assert info.value.message == reference
