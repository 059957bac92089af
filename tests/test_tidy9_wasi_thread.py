"""tidy9: which thread wasmtime calls a WASI output sink on.

``OutputSink``'s docstring said "wasmtime's WASI calls it on the call's thread". Measured here,
it does not: wasmtime 50 writes a custom stdout/stderr from a thread of its own (a worker its
WASI output runs on; to Python a "Dummy" thread), one for every store. What holds, and what
plugsafe relies on: a guest's ``fd_write`` waits for the sink, so everything is written by the
time the call returns (``RunResult`` reads it then), one instance's sink is never written twice
at once, and concurrent runs never see each other's bytes. (These tests take the Python sinks;
where ``plugsafe._speedups`` is in use captures are kept in C: tests/test_lead11_capture.py.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import plugsafe
from plugsafe import Policy, Wasi, _wasishims

from wat import WASI_WRITER as WRITER


def python_sinks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Captures taken by OutputSink.write in Python, as without plugsafe._speedups (with it
    they are kept in C and no Python runs on wasmtime's thread: tests/test_lead11_capture.py)."""
    monkeypatch.setattr("plugsafe._runtime.native_capture", lambda limit: None)


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, object, bytes]]]:
    """Every sink write as (the writing thread, the sink, the bytes)."""
    python_sinks(monkeypatch)
    seen: list[tuple[int, object, bytes]] = []
    write = _wasishims.OutputSink.write

    def spy(self: _wasishims.OutputSink, data: bytes) -> int:
        seen.append((threading.get_ident(), self, bytes(data)))  # (kept alive: ids unique)
        return write(self, data)

    monkeypatch.setattr(_wasishims.OutputSink, "write", spy)
    yield seen


def test_wasmtime_writes_output_on_a_thread_of_its_own(
    writers: list[tuple[int, object, bytes]],
) -> None:
    with plugsafe.Host() as host:
        plugin = host.load(WRITER, policy=Policy(wasi=Wasi()))
        me = threading.get_ident()
        result = plugin.run()
        assert (result.stdout, result.stderr) == (b"hello", b"oops")
        assert [d for _t, _s, d in writers] == [b"hello", b"oops"]
        assert me not in {t for t, _s, _d in writers}
        python_threads = {
            t.ident for t in threading.enumerate() if t.__class__ is not threading._DummyThread
        }  # type: ignore[attr-defined]
        assert not {t for t, _s, _d in writers} & python_threads


def test_every_write_is_done_when_the_call_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    write = _wasishims.OutputSink.write

    def slow(self: _wasishims.OutputSink, data: bytes) -> int:
        time.sleep(0.2)  # the guest's fd_write waits for this, on wasmtime's thread
        return write(self, data)

    python_sinks(monkeypatch)
    monkeypatch.setattr(_wasishims.OutputSink, "write", slow)
    with plugsafe.Host() as host:
        plugin = host.load(WRITER, policy=Policy(wasi=Wasi()))
        result = plugin.run()
    assert (result.stdout, result.stderr) == (b"hello", b"oops")


def test_concurrent_runs_of_one_plugin_never_share_or_interleave_a_sink(
    writers: list[tuple[int, object, bytes]],
) -> None:
    barrier = threading.Barrier(4)
    with plugsafe.Host() as host:
        plugin = host.load(WRITER, policy=Policy(wasi=Wasi()))

        def run() -> tuple[bytes, bytes]:
            barrier.wait()
            result = plugin.run()
            return result.stdout, result.stderr

        with ThreadPoolExecutor(4) as pool:
            outputs = list(pool.map(lambda _: run(), range(4)))
    assert outputs == [(b"hello", b"oops")] * 4
    by_sink: dict[int, list[bytes]] = {}
    for _thread, sink, data in writers:
        by_sink.setdefault(id(sink), []).append(data)
    # 8 sinks (stdout and stderr of 4 fresh instances), each written once with its own bytes.
    assert sorted(by_sink.values()) == [[b"hello"]] * 4 + [[b"oops"]] * 4


def test_a_call_on_the_plugins_own_instance_discards_without_a_sink(
    writers: list[tuple[int, object, bytes]],
) -> None:
    # Instances for calls are made with read=False: wasmtime discards captured output itself,
    # and no sink (so no Python) runs at all.
    with plugsafe.Host() as host:
        plugin = host.load(WRITER, policy=Policy(wasi=Wasi()))
        assert plugin.invoke("write") == 0
    assert writers == []
