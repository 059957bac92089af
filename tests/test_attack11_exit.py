"""attack11: the process exiting while a WASI command writes on a NON-daemon thread.

docs/wasi.md warns that a call still running on a *daemon* thread at exit can abort the process
in wasmtime's writer thread. A non-daemon thread is joined before the interpreter finalizes, so
a plain exit is safe (tested here: 0 aborts). But a Ctrl-C while Python waits for it at exit
(``threading._shutdown``: "Exception ignored ... KeyboardInterrupt") lets finalization start
with the thread still in the guest's ``fd_write``: wasmtime's writer thread (``tokio-rt-worker``)
then calls plugsafe's capture, CPython ends that thread by a forced unwind through Rust, and
Rust aborts: "panic in a function that cannot unwind" (9 of 10 runs here; the exit status is
then 0 or SIGABRT, whichever thread gets there first). The plugin's part: it keeps writing
until its timeout. A host function called in a loop the same way did not abort (0 of 6).
Fixed by lead11: captures are kept in C (``_runtime.NativeCapture``, plugsafe._speedups), so
wasmtime's writer thread runs no Python (tests/test_lead11_capture.py); without the extension
the Python capture can still abort that way (docs/wasi.md), so the test needs it.
"""

from __future__ import annotations

import pytest

from plugsafe._runtime import _cffi

from helpers import run_script

_SCENARIO = """
import os, signal, threading
import plugsafe
from plugsafe import Policy, Wasi

WAT = '''(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const 64))
    (loop $l
      (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $l))))'''
host = plugsafe.Host()
p = host.load(WAT.encode(), policy=Policy(wasi=Wasi(), timeout=1.0, max_output=1 << 30))


def go():
    try:
        p.run()
    except plugsafe.PlugsafeError as exc:
        print(type(exc).__name__, flush=True)


for _ in range(2):
    threading.Thread(target=go).start()  # NOT daemon threads
if INTERRUPT:
    # Ctrl-C while the interpreter waits for them at exit.
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
"""


def _runs(interrupt: bool, n: int) -> list[str]:
    """The failures of ``n`` runs of the scenario: a signal exit or a Rust panic."""
    bad = []
    for _ in range(n):
        done = run_script(f"INTERRUPT = {interrupt}\n" + _SCENARIO, timeout=60)
        if done.returncode < 0 or "panicked" in done.stderr:
            bad.append(f"exit {done.returncode}: {done.stderr[-600:]}")
    return bad


def test_exiting_while_non_daemon_threads_write_waits_for_them_and_never_aborts() -> None:
    assert _runs(False, 2) == []


@pytest.mark.skipif(
    _cffi.SPEEDUPS is None,
    reason=f"captures in C need plugsafe._speedups ({_cffi.SPEEDUPS_PROBLEM})",
)
def test_a_ctrl_c_while_exit_waits_for_a_writing_thread_never_aborts() -> None:
    assert _runs(True, 2) == []
