"""The C objects the runtime makes itself (issue 14: no wasmtime-py on the cold path).

Owned pointers are freed once and handed over once; a WASI configuration's custom outputs never
let a Python exception reach wasmtime, and are forgotten when wasmtime drops them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest

from plugsafe import _runtime as rt
from plugsafe._runtime import _forksafe, _lib, _linker
from plugsafe._runtime._store import Store

PAGE = 65536

# fd_write of the 5 bytes at 16 to stdout; returns the errno and stores nwritten at 8.
WRITER = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1) (data (i32.const 16) "hello")
  (func (export "write") (result i32)
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 5))
    (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
  (func (export "written") (result i32) (i32.load (i32.const 8))))"""

WASI_EIO = 29  # WASI's errno for an I/O error


def _writer(sink: Callable[[bytes], Any]) -> Any:
    engine = rt.Engine(metered=False, max_stack=512 * 1024)
    linker = rt.Linker(engine)
    linker.define_wasi()
    cfg = rt.wasi_config(
        args=["w"], env={}, stdin=b"", stdout=("capture", sink), stderr=("discard", sink),
        preopens=[],
    )  # fmt: skip
    return rt.Instance(
        engine, linker, engine.compile(rt.wat_to_wasm(WRITER)), memory_size=PAGE, memories=1,
        table_elements=10, tables=1, fuel=None, deadline_ticks=1 << 40, wasi=cfg,
    )  # fmt: skip


def _invoke(inst: Any, name: str) -> int:
    ref = inst.func(name)
    assert ref is not None
    return int(inst.invoke(ref, ())[0])


def test_a_custom_output_gets_the_guest_s_bytes() -> None:
    seen: list[bytes] = []
    inst = _writer(lambda data: seen.append(data) or len(data))
    assert _invoke(inst, "write") == 0
    assert seen == [b"hello"] and _invoke(inst, "written") == 5


@pytest.mark.parametrize("count", [2, 0, -1, 1 << 40, None])
def test_a_write_is_always_reported_whole(count: int | None) -> None:
    # Telling wasmtime that fewer bytes were written aborts the process inside its output
    # stream (measured): whatever a sink answers, the guest is told its write was taken.
    inst = _writer(lambda data: count)
    assert _invoke(inst, "write") == 0
    assert _invoke(inst, "written") == 5


@pytest.mark.parametrize("exc", [RuntimeError("sink broke"), KeyboardInterrupt()])
def test_a_failing_sink_is_an_io_error_for_the_guest_never_an_exception(
    exc: BaseException,
) -> None:
    def sink(_data: bytes) -> int:
        raise exc

    inst = _writer(sink)
    assert _invoke(inst, "write") == WASI_EIO
    assert _invoke(inst, "write") == WASI_EIO  # and again: nothing was left half done


def test_custom_outputs_are_forgotten_with_their_store() -> None:
    gc.collect()
    before = len(_linker._OUTPUTS)
    inst = _writer(lambda data: len(data))
    assert len(_linker._OUTPUTS) == before + 1
    inst.release()
    del inst
    gc.collect()
    assert len(_linker._OUTPUTS) == before
    # A configuration never given to a store forgets its outputs when it is freed.
    cfg = rt.wasi_config(
        args=[], env={}, stdin=b"", stdout=("capture", len), stderr=("capture", len), preopens=[]
    )
    assert len(_linker._OUTPUTS) == before + 2
    cfg.close()
    assert len(_linker._OUTPUTS) == before


def test_an_owned_pointer_is_freed_once_and_handed_over_once() -> None:
    freed: list[object] = []
    data = b"t"
    trap = _lib.lib.wasmtime_trap_new(data, 1)
    owned = _forksafe.Owned(trap, lambda p: (freed.append(p), _lib.lib.wasm_trap_delete(p)))
    owned.close()
    owned.close()
    del owned
    assert len(freed) == 1
    taken = _forksafe.Owned(_lib.lib.wasmtime_trap_new(data, 1), freed.append)
    raw = taken.take()
    with pytest.raises(ValueError, match="after it was freed or handed over"):
        taken.take()
    del taken
    assert len(freed) == 1  # handed over: its new owner frees it
    _lib.lib.wasm_trap_delete(raw)
    with pytest.raises(MemoryError):
        _forksafe.Owned(_lib.ffi.NULL, freed.append)


def test_a_wasi_configuration_serves_one_store() -> None:
    cfg = rt.wasi_config(
        args=[], env={}, stdin=b"", stdout=("discard", len), stderr=("discard", len), preopens=[]
    )
    engine = rt.Engine(metered=False, max_stack=512 * 1024)
    first, second = Store(engine.address), Store(engine.address)
    assert first.set_wasi(cfg) == 0
    with pytest.raises(ValueError, match="handed over"):
        second.set_wasi(cfg)
    first.close()
    second.close()
