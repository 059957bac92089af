"""Attack pass 3: a plugin call made from a Python signal handler never hangs on plugsafe's own
process-wide locks.

A signal handler runs on the main thread between any two bytecodes, also while that thread
holds one of plugsafe's locks (arming the epoch ticker, registering a wait for a busy plugin).
An app whose handler calls a plugin (a SIGTERM handler asking a plugin to flush) then took the
same lock again on the same thread: with plain locks, a hang for ever. Each scenario holds the
lock on the main thread, as the interrupted code did, and calls from there, in a child process.
"""

from __future__ import annotations

from child import run_child

_SPIN = """
SPIN = b'(module (func (export "spin") (loop $l (br $l))))'
host = plugsafe.Host()
"""


def test_a_timed_call_while_the_thread_is_arming_the_ticker_stops_on_time() -> None:
    child = run_child(
        _SPIN
        + """
from plugsafe._runtime import _ticker
plugin = host.load(SPIN, policy=plugsafe.Policy(timeout=0.1))
end = time.monotonic() + 30
while any(tk.armed for tk in _ticker._TICKERS) and time.monotonic() < end:
    time.sleep(0.02)  # the load's own arming is over: the call must arm the ticker itself
print("armed before", any(tk.armed for tk in _ticker._TICKERS))
with _ticker._lock:  # as inside Ticker.arm(), when the signal came
    outcome(plugin.invoke, "spin")
outcome(plugin.invoke, "spin")
""",
        timeout=60,
    )
    child.assert_clean()
    assert child.outcomes() == ["TYPED DeadlineExceeded phase=call limit=timeout"] * 2
    assert "armed before False" in child.lines


def test_a_call_waiting_for_a_busy_plugin_while_the_thread_registers_a_wait_ends() -> None:
    child = run_child(
        """
from plugsafe import _nesting
inside, release = threading.Event(), threading.Event()
host = plugsafe.Host()

@host.function
def hook(k: int) -> int:
    inside.set()
    release.wait(30)
    return k

plugin = host.load(
    abi_module(
        '(func (export "go") (param i64) (result i64) (call $hook (local.get 0)))',
        imports='(import "plugsafe" "hook" (func $hook (param i64) (result i64)))',
    ).encode(),
    policy=plugsafe.Policy(allow={"hook"}, timeout=10.0),
)
t = threading.Thread(target=plugin.invoke, args=("go", 1))
t.start()
assert inside.wait(30)
threading.Timer(0.3, release.set).start()
with _nesting._waits:  # as inside start_wait() of another wait, when the signal came
    outcome(plugin.invoke, "go", 2)  # waits for the other thread's call, then runs
t.join()
print("waiting", dict(_nesting._WAITING))
""",
        timeout=60,
    )
    child.assert_clean()
    assert child.outcomes() == ["OK 2"]
    assert "waiting {}" in child.lines
