"""lead11: WASI output captured in C, so wasmtime's writer thread never runs Python.

wasmtime 50 writes a guest's stdout/stderr from a thread of its own
(tests/test_tidy9_wasi_thread.py). A Python sink there must take the GIL, and taking it while
the interpreter finalizes ends the thread with pthread_exit, whose forced unwind through
wasmtime's Rust frames aborts the process. A plugin writing on a daemon thread when the app
exited printed "panic in a function that cannot unwind" at every exit and died of SIGABRT in 1
of 30 (measured before the fix). Where ``plugsafe._speedups`` is in use, captures are now kept
in C (``_runtime.NativeCapture``).
"""

from __future__ import annotations

import threading

import pytest

import plugsafe
from plugsafe import Policy, Wasi, _wasishims
from plugsafe._runtime import _cffi, _linker

from helpers import run_script

NATIVE = _cffi.SPEEDUPS is not None
needs_native = pytest.mark.skipif(
    not NATIVE, reason=f"captures in C need plugsafe._speedups ({_cffi.SPEEDUPS_PROBLEM})"
)

# Writes the `size` bytes at 1024 to fd 1 `times` times, then "!" to fd 2; returns 0.
WRITER = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 40)
  (data (i32.const 64) "!")
  (func $write (param $fd i32) (param $at i32) (param $size i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $size))
    (drop (call $w (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (local $i i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (i32.const TIMES)))
      (call $write (i32.const 1) (i32.const 1024) (i32.const SIZE))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (call $write (i32.const 2) (i32.const 64) (i32.const 1))))
"""


def _writer(size: int, times: int) -> bytes:
    return WRITER.replace("SIZE", str(size)).replace("TIMES", str(times)).encode()


def _python_sinks(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    if not native:
        monkeypatch.setattr("plugsafe._runtime.native_capture", lambda limit: None)
    elif not NATIVE:
        pytest.skip(f"captures in C need plugsafe._speedups ({_cffi.SPEEDUPS_PROBLEM})")


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize(
    ("size", "times", "cap"),
    [
        (0, 3, 100),  # empty writes
        (5, 1, 100),
        (5, 20, 100),  # exactly the cap
        (5, 21, 100),  # one write over: dropped, said
        (7, 20, 100),  # a write split by the cap
        (65536, 24, 1 << 20),  # 1.5 MiB written, 1 MiB kept
        (300, 3, 0),  # a cap of nothing
    ],
)
def test_captured_output_is_kept_up_to_the_cap_and_truncation_said(
    monkeypatch: pytest.MonkeyPatch, native: bool, size: int, times: int, cap: int
) -> None:
    _python_sinks(monkeypatch, native)
    before = _linker.outputs_alive()
    with plugsafe.Host() as host:
        plugin = host.load(_writer(size, times), policy=Policy(wasi=Wasi(), max_output=cap))
        for _ in range(2):  # each run its own capture
            result = plugin.run()
            written = size * times
            assert result.exit_code == 0
            assert result.stdout == bytes(min(written, cap))  # memory at 1024 is zeros
            assert result.stdout_truncated is (written > cap)
            assert result.stderr == (b"!" if cap else b"")
            assert result.stderr_truncated is (cap == 0)
    assert _linker.outputs_alive() == before


@needs_native
def test_no_python_runs_on_wasmtimes_writer_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    write = _wasishims.OutputSink.write

    def spy(self: _wasishims.OutputSink, data: bytes) -> int:
        calls.append(threading.get_ident())
        return write(self, data)

    monkeypatch.setattr(_wasishims.OutputSink, "write", spy)
    dummies = {t.ident for t in threading.enumerate() if isinstance(t, threading._DummyThread)}  # type: ignore[attr-defined]
    with plugsafe.Host() as host:
        plugin = host.load(_writer(5, 4), policy=Policy(wasi=Wasi()))
        assert plugin.run().stdout == bytes(20)
    assert calls == []
    # No thread of wasmtime's became known to Python (a Python sink makes it a "Dummy").
    now = {t.ident for t in threading.enumerate() if isinstance(t, threading._DummyThread)}  # type: ignore[attr-defined]
    assert now <= dummies


@needs_native
def test_a_write_to_a_closed_capture_is_an_io_error_never_a_crash() -> None:
    speedups = _cffi.SPEEDUPS
    assert speedups is not None
    ffi = _linker.ffi
    capture = _linker.NativeCapture(speedups, 8)
    write = capture.callback
    data = ffi.cast("void *", capture.key)
    assert write(data, b"abcdefghij", 10) == 10  # all of it reported, 8 kept
    assert capture.value() == (b"abcdefgh", True)
    key = capture.key
    del capture  # closed (its C buffer freed) with the object
    assert write(data, b"x", 1) == -5  # EIO: found by key, not a dangling pointer
    with pytest.raises(KeyError):
        speedups.capture_value(key)
    speedups.capture_close(key)  # idempotent
    # Keys are never reused: an unknown one is EIO too.
    assert write(ffi.cast("void *", 2**62), b"x", 1) == -5


@needs_native
def test_concurrent_runs_keep_their_own_captures() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with plugsafe.Host() as host:
        plugins = [
            host.load(
                WRITER.replace(
                    "(i32.const 1024) (i32.const SIZE)", f"(i32.const {64}) (i32.const 1)"
                )
                .replace("TIMES", str(n))
                .encode(),
                policy=Policy(wasi=Wasi()),
            )
            for n in (1, 2, 3, 4)
        ]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(5):
                outs = list(pool.map(lambda p: p.run().stdout, plugins))
                assert outs == [b"!" * n for n in (1, 2, 3, 4)]


# The scenarios' guest: a WASI command writing "hello" to stdout without end.
ENDLESS = r"""
WAT = b'''(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 5))
    (loop $l (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l))))'''
"""

# A process whose daemon threads run WASI plugins writing without end when it exits.
EXITING = (
    r"""
import sys, threading, time
import plugsafe
"""
    + ENDLESS
    + r"""
host = plugsafe.Host()
plugin = host.load(WAT, policy=plugsafe.Policy(wasi=plugsafe.Wasi(), timeout=30))
for _ in range(2):
    threading.Thread(target=plugin.run, daemon=True).start()
time.sleep(0.3)
print("exiting", flush=True)
"""
)


@needs_native
def test_a_plugin_writing_on_a_daemon_thread_at_exit_never_aborts_the_process() -> None:
    # Before: the panic on stderr at every exit (the exit status mostly still 0: the process
    # was already ending), SIGABRT in 1 exit of 30.
    for _ in range(4):
        done = run_script(EXITING)
        assert (done.returncode, "exiting" in done.stdout) == (0, True), done.stderr[-3000:]
        assert "panicked" not in done.stderr and "unwind" not in done.stderr, done.stderr[-3000:]


# A child forked while another thread's plugin writes without pause: its own WASI plugins'
# captured output is refused at once (wasmtime's I/O threads are gone:
# tests/test_lead11_fork_wasi.py), never hung (the capture's lock, held by the writer at the
# fork, is made anew in the child), and discarded output works.
FORKING = (
    r"""
import os, sys, threading, time
import plugsafe
"""
    + ENDLESS
    + r"""
ONCE = WAT.replace(b"(loop $l (drop", b"(block $l (drop")
host = plugsafe.Host()
busy = host.load(WAT, policy=plugsafe.Policy(wasi=plugsafe.Wasi(), timeout=1.0, max_output=64))
def run():
    try:
        busy.run()
    except plugsafe.DeadlineExceeded:
        pass
threading.Thread(target=run, daemon=True).start()
time.sleep(0.1)
bad = 0
for _ in range(10):
    pid = os.fork()
    if pid == 0:
        import signal
        signal.alarm(20)
        with plugsafe.Host() as h:
            try:
                h.load(ONCE, policy=plugsafe.Policy(wasi=plugsafe.Wasi())).run()
                refused = False
            except plugsafe.PluginCallError as exc:
                refused = "fork" in str(exc)
            w = plugsafe.Wasi(stdout="discard", stderr="discard")
            ok = h.load(ONCE, policy=plugsafe.Policy(wasi=w)).run().exit_code == 0
        os._exit(0 if ok and refused else 3)
    _, status = os.waitpid(pid, 0)
    bad += status != 0
print("bad", bad, flush=True)
"""
)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_child_forked_while_a_capture_is_written_is_refused_never_hung() -> None:
    done = run_script(FORKING, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bad 0" in done.stdout, done.stdout + done.stderr[-3000:]
