"""Session 11's de-duplication: one home for "one daemon thread on demand" (``_daemon.Daemon``,
used by the re-sender of cancelled calls and each engine's interrupt bumper)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from plugsafe._runtime._daemon import Daemon

from helpers import run_ok


class _Queue:
    """A Daemon's owner as the re-sender and the bumper are: work handed over under its lock."""

    def __init__(self, name: str) -> None:
        self.items: list[int] = []
        self.done: list[int] = []
        self.go = threading.Event()
        self.go.set()
        self.daemon = Daemon(name, self._run, self._forget)

    def _forget(self) -> None:
        self.items = []

    def _run(self) -> None:
        lock = self.daemon.lock()
        while True:
            self.go.wait(10)
            with lock:
                if not self.items:
                    self.daemon.stopping()
                    return
                item = self.items.pop()
            self.done.append(item)

    def put(self, item: int) -> None:
        self.daemon.request(lambda: self.items.append(item))


def _named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def _until_stopped(queue: _Queue, within: float = 10.0) -> None:
    until = time.monotonic() + within
    while queue.daemon.running() and time.monotonic() < until:
        time.sleep(0.005)
    assert not queue.daemon.running()


def test_a_daemon_runs_one_thread_for_requests_made_while_it_runs() -> None:
    queue = _Queue("dup11-one")
    queue.go.clear()  # the thread waits: every further request finds it running
    for i in range(50):
        queue.put(i)
    assert len(_named("dup11-one")) == 1
    queue.go.set()
    _until_stopped(queue)
    assert sorted(queue.done) == list(range(50))
    queue.put(50)  # stopped: the next request starts it again
    _until_stopped(queue)
    assert 50 in queue.done


def test_a_daemon_whose_thread_fails_to_start_starts_one_at_the_next_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = _Queue("dup11-fails")
    start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if self.name == "dup11-fails":
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError):
        queue.put(1)
    assert not queue.daemon.running()
    monkeypatch.setattr(threading.Thread, "start", start)
    queue.put(2)
    _until_stopped(queue)
    assert sorted(queue.done) == [1, 2]


def test_a_request_while_the_same_thread_holds_the_daemon_s_lock_does_not_hang() -> None:
    # As a signal handler cancelling a call on the main thread while it is inside a request.
    queue = _Queue("dup11-nested")

    def nested() -> None:
        with queue.daemon.lock():
            queue.put(1)

    worker = threading.Thread(target=nested, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "a nested request waited for its own thread's lock"
    _until_stopped(queue)
    assert queue.done == [1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_s_interrupt_bump_does_not_wait_for_a_lock_its_parent_held() -> None:
    # Ticker.bump's lock was one for the process and never replaced in a forked child: held by
    # another thread of the parent at the fork (its helper takes it every 1,024 increments),
    # the child's first interrupt of a call with a long timeout hung for ever (measured on
    # fded944: the child's bump blocked until SIGALRM killed it). Each Daemon's lock is its
    # process's: the child makes its own and starts its own helper.
    out = run_ok(
        """
        import os, signal, threading, time
        import plugsafe
        from plugsafe._runtime import _ticker
        from wat import ECHO

        host = plugsafe.Host()
        host.load(ECHO.encode(), policy=plugsafe.Policy(timeout=30))
        ticker = next(t for t in _ticker._TICKERS if t._ptr)
        ticker.bump(10)
        held, release = threading.Event(), threading.Event()

        def hold():
            with ticker._bumper.lock():
                held.set()
                release.wait()

        threading.Thread(target=hold, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # (a hang: killed, not waited for)
            ticker.bump(2_000)
            while ticker._bumper.running():  # its own helper makes them, then stops
                time.sleep(0.005)
            os._exit(0 if ticker._owed == 0 else 3)
        release.set()
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """,
        timeout=120,
    )
    assert out.split() == ["child", "0"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_forgets_its_parent_s_work_and_starts_its_own_thread() -> None:
    out = run_ok(
        """
        import os, threading, time
        from plugsafe._runtime._daemon import Daemon

        items, done = [], []
        go = threading.Event()

        def run():
            lock = daemon.lock()
            while True:
                go.wait(10)
                with lock:
                    if not items:
                        daemon.stopping()
                        return
                    item = items.pop()
                done.append(item)

        def forget():
            items.clear()

        daemon = Daemon("dup11-fork", run, forget)
        daemon.request(lambda: items.append("parent's"))  # its thread waits on ``go``
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # No thread here, none of the parent's work: a request starts one.
                assert not daemon.running() and not items  # (its first use here)
                go.set()
                daemon.request(lambda: items.append("child's"))
                until = time.monotonic() + 10
                while daemon.running() and time.monotonic() < until:
                    time.sleep(0.005)
                code = 0 if done == ["child's"] else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        go.set()
        print("child", os.waitstatus_to_exitcode(status))
        """,
        timeout=120,
    )
    assert out.split() == ["child", "0"]


# -- 2. what an Owned releases with it (a WASI configuration's custom outputs) -------------------


def test_what_an_owned_pointer_releases_with_it_is_released_once_whether_freed_or_taken() -> None:
    from plugsafe._runtime import _lib
    from plugsafe._runtime._forksafe import Owned

    freed: list[object] = []
    released: list[str] = []
    kept = Owned(_lib.lib.wasmtime_trap_new(b"t", 1), _lib.lib.wasm_trap_delete)
    kept.also = lambda: released.append("kept")
    kept.close()
    kept.close()
    assert released == ["kept"]
    taken = Owned(_lib.lib.wasmtime_trap_new(b"t", 1), freed.append)
    taken.also = lambda: released.append("taken")
    raw = taken.take()
    assert released == ["kept"]  # its new owner may still use it: kept until closed
    del taken  # (collected, never closed)
    assert released == ["kept", "taken"] and freed == []
    _lib.lib.wasm_trap_delete(raw)


def test_a_store_forgets_its_wasi_configuration_s_outputs_when_deleted_never_before() -> None:
    import gc

    from plugsafe import _runtime as rt
    from plugsafe._runtime import _linker
    from plugsafe._runtime._store import Store

    gc.disable()
    try:
        before = len(_linker._OUTPUTS)
        cfg = rt.wasi_config(
            args=[], env={}, stdin=b"", stdout=("capture", len), stderr=("capture", len),
            preopens=[],
        )  # fmt: skip
        engine = rt.Engine(metered=False, max_stack=512 * 1024)
        store = Store(engine.address)
        assert store.set_wasi(cfg) == 0
        del cfg  # the store keeps it: wasmtime may still write through its sinks
        assert len(_linker._OUTPUTS) == before + 2
        store.close()
        assert len(_linker._OUTPUTS) == before
    finally:
        gc.enable()
