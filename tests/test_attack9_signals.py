"""attack9: an exception a signal handler raises never leaves a plugin locked.

CPython runs pending signal handlers as a call returns, so a handler that raises (the default
SIGINT handler's KeyboardInterrupt, a SIGALRM timeout's exception, a SIGTERM handler's
SystemExit) can raise right after ``lock.acquire(False)`` took a plugin's lock and before the
``try`` that releases it: the exception left, the lock stayed taken. Every later call of the
plugin then waited its whole timeout and raised ``DeadlineExceeded`` ("all of it spent waiting
for the plugin, busy in another thread": there was no other thread), or waited for ever without
a timeout, and ``close()`` waited for ever (a Ctrl-C, then the app's ``finally: host.close()``,
hung). In 8 s of SIGALRM every 0.2 ms, ~170 plugins were left locked: in ``invoke``'s and
``call``'s short paths and in ``guarded``.

Here a child process calls plugins in a loop (and another thread calls them too, so that the
main thread also waits for their locks) while SIGALRM handlers raise KeyboardInterrupt at
random points; after each interrupt no plugin may be left locked by nobody, and every call
between them returns its right result or a documented error.
"""

from __future__ import annotations

import sys
import threading

import pytest
from test_speedups import NUMERIC, _host, _policy

from helpers import signal_storm

# (A scenario for helpers.signal_storm: ``storm_loop``, ``report`` are its.)
_STORM = """
    import plugsafe
    from test_speedups import ECHO, NUMERIC, _host, _policy

    host = _host()

    def load():
        return (host.load(NUMERIC.encode(), policy=_policy(timeout=2.0)),
                host.load(ECHO.encode(), policy=plugsafe.Policy(timeout=2.0)))

    p, e = load()
    stop = threading.Event()

    def other():  # keeps the locks busy now and then: the main thread waits for them too
        while not stop.is_set():
            q, f = p, e
            try:
                q.invoke("add", 1, 2)
                f.call("echo", b"other")
            except plugsafe.PlugsafeError:
                pass
            time.sleep(0.0005)

    thread = threading.Thread(target=other, daemon=True)
    thread.start()
    left_locked = []

    def step(n):
        k = n % 5
        if k == 0:
            assert p.invoke("add", n & 0xFFFF, 1) == (n & 0xFFFF) + 1
        elif k == 1:
            assert p.invoke("run", 3) == 3
        elif k == 2:
            assert e.call("echo", b"abc") == b"abc"
        elif k == 3:
            try:
                p.invoke("boom", 1)
            except plugsafe.PluginTrap:
                pass
        else:
            assert p.invoke("div", 7, 2) == 3

    def still_locked():
        # Nobody else can hold them long: the other thread's calls take microseconds.
        for name, plugin in (("invoke", p), ("call", e)):
            lock = plugin._calls.lock
            if lock.acquire(timeout=1.0):
                lock.release()
            else:
                left_locked.append(name)
        return bool(left_locked)

    got = storm_loop(step, after_interrupt=still_locked)
    stop.set()
    thread.join()
    # And close() returns (it waited for ever on a lock left taken).
    closer = threading.Thread(target=lambda: (p.close(), e.close()), daemon=True)
    closer.start()
    closer.join(30)
    report(**got, left_locked=left_locked, close_hung=closer.is_alive())
"""


# CPython 3.10 runs pending handlers after most instructions, the attribute read that takes the
# lock included (see _nesting.Taker): the window is narrower there, not closed (3.10 is past its
# end of life).
_HANDLERS_AT_CALLS_ONLY = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="CPython 3.10 runs signal handlers after any instruction"
)


@_HANDLERS_AT_CALLS_ONLY
def test_a_signal_handlers_exception_never_leaves_a_plugin_locked() -> None:
    # (at_least: the storm did land, thousands of interrupts in a quiet run, and calls still
    # went through between them.)
    got = signal_storm(_STORM, seconds=4.0, at_least={"interrupts": 100, "calls": 100})
    assert got["left_locked"] == [], got
    assert got["escaped"] == [], got
    assert got["close_hung"] is False, got


def test_an_exception_while_the_short_path_aims_at_a_function_never_calls_the_wrong_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # invoke's short path aims at a function (CallPath._aim) on its second call on an
    # instance, setting a dozen fields, one of them by a call (Instance.fast_call, where a
    # signal handler's exception can be raised). It aimed at the new function first: an
    # exception there left "div" aimed with "add"'s C call and "div"'s slots, and the next
    # div(9, 3) ran add on stale arguments and returned 9 (its first argument, read back as
    # the result).
    from plugsafe import _runtime as rt

    with _host() as host:
        plugin = host.load(NUMERIC.encode(), policy=_policy())
        assert plugin.invoke("add", 1, 2) == 3
        assert plugin.invoke("add", 1, 2) == 3  # aimed at add
        assert plugin.invoke("div", 7, 2) == 3  # div's first call: the general path
        fast_call = rt.Instance.fast_call
        raised: list[str] = []

        me = threading.get_ident()

        def interrupted(self: rt.Instance, ref: rt.FuncRef) -> object:
            if not raised and threading.get_ident() == me and ref.name == "div":
                raised.append(ref.name)
                raise KeyboardInterrupt  # as a signal handler's, raised at this call
            return fast_call(self, ref)

        monkeypatch.setattr(rt.Instance, "fast_call", interrupted)
        with pytest.raises(KeyboardInterrupt):
            plugin.invoke("div", 100, 5)  # div's second call aims at it: interrupted
        assert raised == ["div"]
        assert plugin.invoke("div", 9, 3) == 3
        assert plugin.invoke("add", 20, 22) == 42
        assert plugin.invoke("div", 9, 3) == 3


_POOL_STORM = """
    import plugsafe
    from test_speedups import NUMERIC, _host, _policy

    host = _host()

    def make():
        return plugsafe.PluginPool(NUMERIC.encode(), policy=_policy(timeout=2.0), size=2,
                                   host=host)

    pool = make()
    stop = threading.Event()
    go = threading.Semaphore(0)  # the other threads call while the main thread lets them
    idle = threading.Semaphore(0)

    def other():  # holds instances now and then: the main thread's calls wait too
        while not stop.is_set():
            go.acquire()
            try:
                pool.invoke("run", 50)
            except plugsafe.PlugsafeError:
                pass
            idle.release()

    for _ in range(2):  # as many as the pool has instances
        threading.Thread(target=other, daemon=True).start()
    storm_start()
    lost, escaped, interrupts, calls, n = 0, [], 0, 0, 0
    end = time.monotonic() + SECONDS
    while storm_going(end, interrupts=interrupts, calls=calls):
        n += 1
        busy = n % 3 == 0
        if busy:
            go.release()  # the other threads' calls run alongside this one
            go.release()
        try:
            armed[0] = True
            assert pool.invoke("add", n & 0xFF, 1) == (n & 0xFF) + 1
            armed[0] = False
            calls += 1
        except KeyboardInterrupt:
            armed[0] = False
            interrupts += 1
        except BaseException as exc:
            armed[0] = False
            escaped.append(repr(exc))
            break
        finally:
            if busy:
                idle.acquire()  # their calls are over
                idle.acquire()
            # Now every instance is free again, unless one was lost.
            if pool._idle.qsize() != pool.size:
                lost += 1
                pool = make()
    storm_stop()
    stop.set()
    report(interrupts=interrupts, calls=calls, lost=lost, escaped=escaped)
"""


@_HANDLERS_AT_CALLS_ONLY
def test_a_signal_handlers_exception_never_loses_a_pool_instance() -> None:
    # The same for PluginPool: an exception raised as the free queue's get returned (or as
    # the index left ``held``) lost the index, and the pool one of its instances for good
    # (6 pools of 2 in 5 s of the storm; a pool of 1 was then dead).
    got = signal_storm(_POOL_STORM, seconds=4.0, at_least={"interrupts": 100, "calls": 100})
    assert got["lost"] == 0, got
    assert got["escaped"] == [], got
