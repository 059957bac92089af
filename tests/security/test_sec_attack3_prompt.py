"""Attack pass 3: "Prompt returns" (``_runtime/_ticker.py``) never hangs a call nor keeps the
GIL switch interval lowered for good.

The bookkeeping of the lowered interval is under one lock, taken by the store's deadline guard
(inside wasm) and by a stopped call's failure. A Python signal handler runs on the main thread
between any two bytecodes, also while that thread holds the lock; a handler making a timed call
that reaches its deadline then took the lock again on the same thread, inside wasm: a plain
lock hung the process for ever. Each scenario runs in a child process (a hang fails one test).
"""

from __future__ import annotations

import time

from plugsafe._runtime import _ticker

from child import run_child

_SETUP = """
from plugsafe._runtime import _ticker
SPIN = b'(module (func (export "spin") (loop $l (br $l))))'
host = plugsafe.Host()
plugin = host.load(SPIN, policy=plugsafe.Policy(timeout=0.1))
sys.setswitchinterval(0.005)
def lowered():
    return abs(sys.getswitchinterval() - _ticker.PROMPT_INTERVAL) < 1e-7
"""


def test_a_timed_call_made_while_its_thread_holds_the_prompt_lock_stops_on_time() -> None:
    # What a signal handler sees when it interrupts prompt_off (or the guard) and calls a
    # plugin to its deadline: the lock is already this thread's. It must stop, typed, and
    # leave the interval as it found it once the outer use ends.
    child = run_child(
        _SETUP
        + """
with _ticker._prompt_lock:
    outcome(plugin.invoke, "spin")
    print("inner lowered", lowered())
_ticker.prompt_due(time.perf_counter(), everything=True)
print("after", sys.getswitchinterval())
""",
        timeout=60,
    )
    child.assert_clean()
    assert child.outcomes() == ["TYPED DeadlineExceeded phase=call limit=timeout"]
    assert "inner lowered False" in child.lines  # the failure put it back (nested use)
    assert "after 0.005" in child.lines


def test_a_prompt_off_cut_short_between_its_steps_is_healed_by_the_reaper() -> None:
    # A KeyboardInterrupt can land between prompt_off's pop of the last entry and its restore:
    # no entry is left, the interval is still lowered. The reaper's look puts it back (it
    # used to skip the look when no entry was left: lowered until the next stopped call).
    saved = _ticker._prompt_saved[0]
    try:
        import sys

        before = sys.getswitchinterval()
        with _ticker._prompt_lock:
            assert not _ticker._PROMPTS and saved is None
            sys.setswitchinterval(_ticker.PROMPT_INTERVAL)
            _ticker._prompt_saved[0] = before  # as _prompt_on leaves it; then no entry
        _ticker.prompt_due(time.perf_counter())
        assert sys.getswitchinterval() == before
        assert _ticker._prompt_saved[0] is None
    finally:
        if _ticker._prompt_saved[0] is not None:
            sys.setswitchinterval(_ticker._prompt_saved[0])
            _ticker._prompt_saved[0] = None
