"""fork() with plugins around: a forked child never deletes the wasmtime objects it inherited
(a lock another thread held at the fork is held forever in the child: deleting them could hang
it), and forking while threads make timed, async and pooled calls leaves children that run.

Each scenario runs in a fresh interpreter under a hard timeout: a hang must fail the test, not
the run, and the test process's own leftover threads must not decide the outcome.
"""

from __future__ import annotations

import os

import pytest

from helpers import run_ok

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def test_forked_child_leaks_what_it_inherited_and_frees_its_own() -> None:
    out = run_ok(
        """
        import gc, os
        import plugsafe
        from plugsafe._runtime import _forksafe

        WAT = b'(module (func (export "f") (param i32) (result i32) (local.get 0)))'
        gc.collect()
        gc.disable()  # the dropped plugins stay cyclic garbage until a collection
        host = plugsafe.Host()
        timed = host.load(WAT, policy=plugsafe.Policy(timeout=5.0), name="timed")
        plain = host.load(WAT + b" ", name="plain")
        assert timed.invoke("f", 1) == 1 and plain.invoke("f", 2) == 2
        del timed, plain, host
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                gc.collect()  # collects the parent's garbage: stores, modules, linkers
                inherited = _forksafe.leaked()
                # The child's own objects are deleted as usual, and plugins still work here.
                with plugsafe.Host() as h:
                    p = h.load(WAT, policy=plugsafe.Policy(timeout=5.0), name="child")
                    ok = p.invoke("f", 7) == 7
                    p.close()
                gc.collect()
                code = 0 if ok and inherited >= 4 and _forksafe.leaked() == inherited else 2
                print(inherited, _forksafe.leaked(), ok, flush=True)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        gc.collect()
        assert _forksafe.leaked() == 0  # the parent deletes its own objects
        print("ok")
        """
    )
    assert out.strip().endswith("ok"), out


def test_forked_child_does_not_wait_for_locks_held_at_the_fork() -> None:
    # plugsafe's module-level locks, held by another thread when the main thread forks: the
    # child (where that thread does not exist) loads, calls and closes plugins all the same.
    out = run_ok(
        """
        import os, threading, time
        import plugsafe
        from plugsafe import _nesting
        from plugsafe._runtime import _engine, _instance

        WAT = b'(module (func (export "f") (param i32) (result i32) (local.get 0)))'
        held, done = threading.Event(), threading.Event()

        def holder():
            with _instance._RELEASING, _engine._SHARED_LOCK, _nesting._waits:
                held.set()
                done.wait()

        t = threading.Thread(target=holder)
        t.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with plugsafe.Host() as h:
                    p = h.load(WAT, policy=plugsafe.Policy(timeout=5.0))
                    code = 0 if p.invoke("f", 3) == 3 and p.last_call is not None else 2
            finally:
                os._exit(code)
        end = time.monotonic() + 60
        while True:
            done_pid, status = os.waitpid(pid, os.WNOHANG)
            if done_pid:
                break
            if time.monotonic() > end:
                os.kill(pid, 9)
                raise SystemExit("the child hung on a lock held at the fork")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0, status
        done.set()
        t.join()
        print("ok")
        """
    )
    assert out.strip().endswith("ok"), out


def test_fork_while_threads_call_plugins() -> None:
    # Threads keep making timed calls (traps, fresh instances, per-thread last_call records),
    # async calls (the plugins' executors) and pooled calls, and short-lived threads come and
    # go, while the main thread forks: every child must get out of os.fork() and run.
    out = run_ok(
        """
        import asyncio, os, threading, time
        import plugsafe

        ECHO = b'(module (func (export "f") (param i32) (result i32) (local.get 0)))'
        TRAP = (b'(module (func (export "f") (param i32) (result i32)'
                b' (if (i32.eqz (local.get 0)) (then unreachable)) (local.get 0)))')
        host = plugsafe.Host()
        plugins = [
            host.load(ECHO, policy=plugsafe.Policy(timeout=2.0), name="echo"),
            host.load(ECHO, policy=plugsafe.Policy(timeout=2.0, fresh_instance=True),
                      name="fresh"),
            host.load(TRAP, policy=plugsafe.Policy(timeout=2.0), name="trap"),
            host.load(ECHO, name="untimed"),
        ]
        pool = plugsafe.PluginPool(ECHO, plugsafe.Policy(timeout=2.0), size=2, host=host)
        stop = threading.Event()

        def one(p, k):
            try:
                p.invoke("f", k)
            except plugsafe.PlugsafeError:
                pass
            p.last_call

        def caller(k):
            while not stop.is_set():
                for i, p in enumerate(plugins):
                    one(p, (k + i) % 3)
                pool.invoke("f", k)

        def churn():
            while not stop.is_set():
                ts = [threading.Thread(target=lambda: [one(p, 1) for p in plugins])
                      for _ in range(3)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()

        async def asyncs():
            while not stop.is_set():
                await asyncio.gather(*(p.invoke_async("f", 1) for p in plugins),
                                     return_exceptions=True)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(3)]
        threads += [threading.Thread(target=churn),
                    threading.Thread(target=lambda: asyncio.run(asyncs()))]
        for t in threads:
            t.start()
        time.sleep(0.3)
        try:
            for n in range(40):
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        # Every fifth child also makes a timed call of its own.
                        if n % 5 == 0:
                            with plugsafe.Host() as h:
                                p = h.load(ECHO, policy=plugsafe.Policy(timeout=2.0))
                                code = 0 if p.invoke("f", 5) == 5 else 2
                        else:
                            code = 0
                    finally:
                        os._exit(code)
                end = time.monotonic() + 60
                while True:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        break
                    if time.monotonic() > end:
                        os.kill(pid, 9)
                        raise SystemExit(f"fork {n}: the child hung")
                    time.sleep(0.002)
                assert os.waitstatus_to_exitcode(status) == 0, (n, status)
        finally:
            stop.set()
            for t in threads:
                t.join()
        print("ok")
        """
    )
    assert out.strip().endswith("ok"), out
