"""Attack pass 3: plain plugins whose lock a thread held at a fork, seen from the forked child.

Only the forking thread survives ``fork()``. A plugin another thread was calling at the fork
keeps its lock held for ever in the child: a call there waited until its deadline (with a
timeout) or for ever (without one), and ``close()`` hung. Pools already refused such waits at
once; plugins and components now do too (``_nesting``: the child marks those plugins lost).
Each scenario runs in its own Python process (a hang there must not hang the suite).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from child import TESTS

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

_SCRIPT = f"""
import os, sys, threading, time
sys.path[:0] = [{str(TESTS / "security")!r}, {str(TESTS)!r}]
import plugsafe
from wat import abi_module

SPIN = (
    b'(module (func (export "spin") (loop $l (br $l)))'
    b' (func (export "one") (result i32) i32.const 1))'
)
HOOKED = abi_module(
    '''
  (func (export "go") (param i64) (result i64) (call $hook (local.get 0)))
  (func (export "one") (result i32) i32.const 1)
''',
    imports='(import "plugsafe" "hook" (func $hook (param i64) (result i64)))',
).encode()

host = plugsafe.Host()
inside, release = threading.Event(), threading.Event()
forked_inside = []

@host.function
def hook(k: int) -> int:
    if k == 1:
        inside.set()
        release.wait(30)
    elif k == 2:
        # Fork from inside a call: in the child this thread's own call goes on and ends.
        pid = os.fork()
        if pid == 0:
            forked_inside.append(True)
        else:
            forked_inside.append(pid)
    return k

pol = plugsafe.Policy(allow={{"hook"}})
spin = host.load(SPIN, policy=plugsafe.Policy(timeout=8.0), name="spin")
hooked = host.load(HOOKED, policy=pol, name="hooked")
idle = host.load(HOOKED, policy=pol, name="idle")
"""


def _run(body: str) -> None:
    res = subprocess.run(
        [sys.executable, "-c", _SCRIPT + body], capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith("child 0"), res.stdout + res.stderr


_WAIT_CHILD = """
end = time.monotonic() + 60
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() > end:
        os.kill(pid, 9)
        raise SystemExit("the child hung on a plugin lost at the fork")
    time.sleep(0.01)
"""


def test_a_child_refuses_at_once_a_plugin_another_thread_was_calling_at_the_fork() -> None:
    # "spin" (no imports: its call has no owner to look at; timeout 8 s) runs a loop in one
    # thread, "hooked" (no timeout) waits in its host function in another, while the main
    # thread forks. In the child a call of "spin" waited 8 s, one of "hooked" for ever, and
    # close() of either hung. Now each call is refused at once with a PluginCallError that
    # says why, close() returns at once, and "idle" (not in use at the fork) still serves.
    _run(
        """
def quietly(f, *a):
    try:
        f(*a)
    except plugsafe.PlugsafeError:
        pass
t1 = threading.Thread(target=quietly, args=(spin.invoke, "spin"), daemon=True)
t2 = threading.Thread(target=quietly, args=(hooked.invoke, "go", 1), daemon=True)
t1.start(); t2.start()
assert inside.wait(30)
time.sleep(0.3)  # "spin" is in its loop by now
pid = os.fork()
if pid == 0:
    code = 1
    try:
        for plugin in (spin, hooked):
            started = time.monotonic()
            try:
                plugin.invoke("one")
                os._exit(2)
            except plugsafe.PluginCallError as exc:
                if "did not survive a fork" not in str(exc) or repr(plugin.name) not in str(exc):
                    print(exc)
                    os._exit(3)
            if time.monotonic() - started > 4:
                os._exit(4)
        started = time.monotonic()
        spin.close(); hooked.close()
        if not (spin.closed and hooked.closed) or time.monotonic() - started > 4:
            os._exit(5)
        try:
            spin.invoke("one")
            os._exit(6)
        except plugsafe.PluginClosedError:
            pass
        if idle.invoke("one") != 1:
            os._exit(7)
        started = time.monotonic()
        host.close()  # closes "idle" and the others again: nothing waits
        if not idle.closed or time.monotonic() - started > 4:
            os._exit(8)
        code = 0
    except BaseException as exc:
        print("child raised", type(exc).__name__, exc)
    finally:
        sys.stdout.flush()
        os._exit(code)
"""
        + _WAIT_CHILD
        + """
release.set()
print("child", os.waitstatus_to_exitcode(status))
sys.stdout.flush()
os._exit(0)
"""
    )


def test_a_call_a_host_function_forks_from_ends_normally_in_the_child() -> None:
    # The forking thread's own call holds its plugin's lock in the child too: that plugin is
    # not lost there; its call returns and the plugin serves the child's next calls.
    _run(
        """
r = hooked.invoke("go", 2)
if forked_inside == [True]:
    code = 1
    try:
        if r == 2 and hooked.invoke("one") == 1 and hooked.invoke("go", 3) == 3:
            code = 0
    finally:
        os._exit(code)
pid = forked_inside[0]
"""
        + _WAIT_CHILD
        + """
print("child", os.waitstatus_to_exitcode(status))
"""
    )


def test_a_child_refuses_at_once_a_component_another_thread_was_calling_at_the_fork() -> None:
    # The same for a component: its call waits in a host function in another thread at the
    # fork. In the child a call without a timeout waited for ever; now it is refused at once,
    # and close() returns at once.
    _run(
        """
from component_wat import HOST_CALLS

@host.component_function("test:host/logging#host-log")
def host_log(msg: str) -> None:
    if msg == "wait":
        inside.set()
        release.wait(30)

@host.component_function("test:host/clock#now")
def now() -> int:
    return 42

inside.clear()
cpol = plugsafe.Policy(allow={"test:host/logging", "test:host/clock#now"})
comp = host.load(HOST_CALLS.encode(), policy=cpol, name="comp")
t = threading.Thread(target=comp.invoke, args=("run", "wait", 1), daemon=True)
t.start()
assert inside.wait(30)
pid = os.fork()
if pid == 0:
    code = 1
    try:
        started = time.monotonic()
        try:
            comp.invoke("run", "x", 1)
            os._exit(2)
        except plugsafe.PluginCallError as exc:
            if "did not survive a fork" not in str(exc) or "'comp'" not in str(exc):
                print(exc)
                os._exit(3)
        comp.close()
        if not comp.closed or time.monotonic() - started > 4:
            os._exit(4)
        code = 0
    except BaseException as exc:
        print("child raised", type(exc).__name__, exc)
    finally:
        sys.stdout.flush()
        os._exit(code)
"""
        + _WAIT_CHILD
        + """
release.set()
t.join()
print("child", os.waitstatus_to_exitcode(status))
sys.stdout.flush()
os._exit(0)
"""
    )
