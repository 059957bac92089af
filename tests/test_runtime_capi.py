"""The C objects the runtime makes itself (issue 14: no wasmtime-py on the cold path).

Owned pointers are freed once and handed over once; a WASI configuration's custom outputs never
let a Python exception reach wasmtime, and are forgotten when their store (or the configuration)
is deleted, by Python: wasmtime is given no finalizer to call (it called it on a thread of its
own, which aborted a process exiting at that moment).
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


class _Recording:
    """``_linker.lib`` seen through: records the arguments of the custom-output setters."""

    def __init__(self, lib: Any, seen: list[tuple[Any, ...]]) -> None:
        self._lib, self._seen = lib, seen

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._lib, name)
        if not name.endswith("_custom"):
            return real

        def record(*args: Any) -> Any:
            self._seen.append(args)
            return real(*args)

        return record


def test_wasmtime_is_given_no_finalizer_to_call_for_a_custom_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # wasmtime drops an output stream on a tokio worker thread, after the store is deleted. A
    # finalizer written in Python takes the GIL there; when the interpreter is finalizing,
    # CPython ends such a thread with pthread_exit, whose forced unwind through Rust's frames
    # aborts the process: `plugsafe run` of a WASI command exited with SIGABRT in 9 of 150
    # runs on a busy machine (0 of 150 with no finalizer). So there is none to call.
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(_linker, "lib", _Recording(_lib.lib, seen))
    cfg = rt.wasi_config(
        args=[], env={}, stdin=b"", stdout=("capture", len), stderr=("capture", len), preopens=[]
    )
    cfg.close()
    assert len(seen) == 2
    assert all(args[3] == _lib.ffi.NULL for args in seen)


def test_a_runs_outputs_are_forgotten_when_it_returns_without_the_collector() -> None:
    import plugsafe

    # Python sinks and native captures (plugsafe._speedups) alike.
    before = _linker.outputs_alive()
    gc.disable()
    try:
        with plugsafe.Host() as host:
            plugin = host.load(RUNNER.encode(), policy=plugsafe.Policy(wasi=plugsafe.Wasi()))
            for _ in range(3):
                ran = plugin.run()
                assert (ran.stdout, ran.exit_code) == (b"hello", 4)
                assert _linker.outputs_alive() == before
    finally:
        gc.enable()


def test_a_sink_forgotten_before_a_write_is_an_io_error_for_the_guest() -> None:
    seen: list[bytes] = []
    inst = _writer(seen.append)
    for key in list(_linker._OUTPUTS):
        if _linker._OUTPUTS[key] == seen.append:
            del _linker._OUTPUTS[key]
    assert _invoke(inst, "write") == WASI_EIO
    assert seen == []


# A WASI command: writes "hello" to stdout, then exits with code 4.
RUNNER = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1) (data (i32.const 16) "hello")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 5))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 4))))"""


def test_a_process_that_ran_wasi_commands_exits_cleanly(tmp_path: Any) -> None:
    # The scenario that aborted (see above), a few times at once: `plugsafe run` of a WASI
    # command whose output is captured, exiting right after. A regression shows as SIGABRT in
    # some of them (about 1 in 16 runs each, when it was there), not in every one.
    import subprocess
    import sys

    module = tmp_path / "cmd.wat"
    module.write_text(RUNNER)
    policy = tmp_path / "policy.toml"
    policy.write_text("[wasi]\n")
    cmd = [sys.executable, "-m", "plugsafe", "run", str(module), "_start", "--policy", str(policy)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 5, err.decode(errors="replace")[-2000:]
        assert out == b"hello"
        assert b"exited with code 4" in err


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
