"""Issue 13 §1 and §4: per-call context (current_call, contextvars), any annotated callable as a
host function, per-thread last_call and Host(on_call=...)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from typing import Any

import pytest

import plugsafe
from plugsafe import CallStats, Policy

from wat import abi_module

# "run" (ABI) and "num" (numeric) call plugsafe.tick once, then echo their input.
TICK_WAT = abi_module(
    """
  (func (export "run") (param $p i32) (param $n i32) (result i64)
    (call $tick)
    (call $ok (local.get $p) (local.get $n)))
  (func (export "num") (param i32) (result i32) (call $tick) (local.get 0))
  (func (export "many") (param $k i32)
    (loop $l (call $tick) (local.set $k (i32.sub (local.get $k) (i32.const 1)))
      (br_if $l (local.get $k))))
""",
    imports='(import "plugsafe" "tick" (func $tick))',
)
# Calls plugsafe.tick from its start function.
START_WAT = """(module (import "plugsafe" "tick" (func $tick))
  (func $s (call $tick)) (start $s)
  (func (export "noop")))"""

ALLOW = Policy(allow={"tick"})


def _seen(info: plugsafe.CallInfo | None) -> tuple[str, str, object] | None:
    return None if info is None else (info.plugin.name, info.function, info.context)


def test_current_call_names_plugin_function_and_context(host: plugsafe.Host) -> None:
    seen: list[Any] = []

    @host.function
    def tick() -> None:
        seen.append(_seen(plugsafe.current_call()))

    assert plugsafe.current_call() is None
    p = host.load(TICK_WAT.encode(), policy=ALLOW, name="a")
    tenant = object()
    # The first call goes the general way, the next ones the short path: both carry it.
    for _ in range(2):
        assert p.call("run", b"x", context=tenant) == b"x"
        assert p.invoke("num", 7, context="inv") == 7
        assert p.call_json("run", [1], context={"t": 1}) == [1]
        p.call("run")
    assert (
        seen
        == [
            ("a", "run", tenant),
            ("a", "num", "inv"),
            ("a", "run", {"t": 1}),
            ("a", "run", None),
        ]
        * 2
    )
    assert plugsafe.current_call() is None


def test_nested_calls_see_their_own_call_and_the_outer_one_is_restored(
    host: plugsafe.Host,
) -> None:
    seen: list[Any] = []
    plugins: dict[str, plugsafe.Plugin] = {}

    @host.function
    def tick() -> None:
        info = plugsafe.current_call()
        assert info is not None
        seen.append(_seen(info))
        if info.plugin.name == "outer":
            plugins["inner"].call("run", b"", context="inner-ctx")
            seen.append(_seen(plugsafe.current_call()))  # the outer call again
            with pytest.raises(plugsafe.HostFunctionError):
                plugins["inner"].call("run", b"", context="failing")
            seen.append(_seen(plugsafe.current_call()))
        elif info.context == "failing":
            raise RuntimeError("inner fails")

    plugins["outer"] = host.load(TICK_WAT.encode(), policy=ALLOW, name="outer")
    plugins["inner"] = host.load(TICK_WAT.encode(), policy=ALLOW, name="inner")
    for _ in range(2):
        seen.clear()
        plugins["outer"].call("run", b"", context="outer-ctx")
        assert seen == [
            ("outer", "run", "outer-ctx"),
            ("inner", "run", "inner-ctx"),
            ("outer", "run", "outer-ctx"),
            ("inner", "run", "failing"),
            ("outer", "run", "outer-ctx"),
        ]
    assert plugsafe.current_call() is None


def test_no_context_leaks_into_the_next_call_after_an_error(host: plugsafe.Host) -> None:
    seen: list[Any] = []

    @host.function
    def tick() -> None:
        info = plugsafe.current_call()
        seen.append(_seen(info))
        if info is not None and info.context == "boom":
            raise ValueError("boom")

    p = host.load(TICK_WAT.encode(), policy=ALLOW, name="p")
    with pytest.raises(plugsafe.HostFunctionError):
        p.call("run", b"", context="boom")
    assert plugsafe.current_call() is None
    p.call("run")  # on a fresh instance (the trap discarded the old one)
    p.invoke("num", 1)  # the short path
    assert seen == [("p", "run", "boom"), ("p", "run", None), ("p", "num", None)]


def test_a_start_function_sees_its_own_plugin_not_the_loading_call(host: plugsafe.Host) -> None:
    seen: list[Any] = []

    @host.function
    def tick() -> None:
        info = plugsafe.current_call()
        seen.append(_seen(info))
        if info is not None and info.plugin.name == "outer":
            host.load(START_WAT.encode(), policy=ALLOW, name="started").close()

    outer = host.load(TICK_WAT.encode(), policy=ALLOW, name="outer")
    outer.call("run", b"", context="tenant-a")
    assert seen == [("outer", "run", "tenant-a"), ("started", "(start)", None)]


def test_current_call_is_per_thread(host: plugsafe.Host) -> None:
    inside = threading.Event()
    release = threading.Event()
    other: list[Any] = []

    @host.function
    def tick() -> None:
        inside.set()
        release.wait(10)

    p = host.load(TICK_WAT.encode(), policy=Policy(allow={"tick"}, timeout=None))
    t = threading.Thread(target=lambda: p.call("run", b"", context="secret"))
    t.start()
    assert inside.wait(10)
    other.append(plugsafe.current_call())  # this thread is in no call
    release.set()
    t.join()
    assert other == [None]


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="<unset>")


def test_contextvars_reach_host_functions_from_every_kind_of_call(host: plugsafe.Host) -> None:
    seen: list[str] = []

    @host.function
    def tick() -> None:
        seen.append(VAR.get())
        if seen[-1] == "async":
            VAR.set("changed inside")  # stays in the async call's copy of the context

    p = host.load(TICK_WAT.encode(), policy=ALLOW, name="p")
    pool = plugsafe.PluginPool(TICK_WAT.encode(), ALLOW, size=2, host=host)

    async def main() -> None:
        VAR.set("async")
        await p.call_async("run", b"")
        await p.invoke_async("num", 1)
        await p.call_json_async("run", 1)
        await pool.call_async("run", b"")
        await pool.invoke_async("num", 1)
        assert VAR.get() == "async"  # the host function's set stayed in its copy

    try:
        token = VAR.set("sync")
        p.call("run")
        pool.call("run")
        VAR.reset(token)
        asyncio.run(main())
    finally:
        pool.close()
    assert seen == ["sync", "sync"] + ["async"] * 5


class Tenants:
    """One host function serving several tenants: a bound method and a callable object."""

    def __init__(self) -> None:
        self.data = {"acme": b"acme-data", "initech": b"initech-data"}

    def lookup(self, key: str) -> bytes | None:
        info = plugsafe.current_call()
        assert info is not None
        return self.data.get(f"{info.context}") if key == "mine" else None

    def __call__(self, key: str) -> bytes | None:
        return self.lookup(key)


# Imports lookup(str) -> bytes | None and answers its result (or empty for None).
LOOKUP_WAT = abi_module(
    """
  (func (export "get") (param $p i32) (param $n i32) (result i64)
    (local $r i64)
    (local.set $r (call $lookup (local.get $p) (local.get $n)))
    (if (i64.eq (local.get $r) (i64.const -1))
      (then (return (call $ok (i32.const 0) (i32.const 0)))))
    (local.get $r))
""",
    imports='(import "plugsafe" "lookup" (func $lookup (param i32 i32) (result i64)))',
)


@pytest.mark.parametrize("form", ["bound method", "callable object", "partial"])
def test_one_host_serves_many_tenants_with_any_callable(host: plugsafe.Host, form: str) -> None:
    tenants = Tenants()

    def keyed(store: dict[str, bytes], key: str) -> bytes | None:
        info = plugsafe.current_call()
        assert info is not None
        return store.get(f"{info.context}") if key == "mine" else None

    fn: Any = {
        "bound method": tenants.lookup,
        "callable object": tenants,
        "partial": functools.partial(keyed, tenants.data),
    }[form]
    assert host.function(fn, name="lookup") is fn
    p = host.load(LOOKUP_WAT.encode(), policy=Policy(allow={"lookup"}))
    assert p.call("get", "mine", context="acme") == b"acme-data"
    assert p.call("get", "mine", context="initech") == b"initech-data"
    assert p.call("get", "other", context="acme") == b""


def test_partial_and_callable_object_names_and_refusals(host: plugsafe.Host) -> None:
    def kv(prefix: str, key: str) -> bytes:
        return (prefix + key).encode()

    # A partial takes its function's name; its bound parameters are not wasm's.
    host.function(functools.partial(kv, "p:"))
    assert "kv" in host.functions
    with pytest.raises(ValueError, match="pass name="):
        host.function(Tenants())
    # Bound by keyword, the later parameters can only be passed by keyword: wasm cannot.
    with pytest.raises(TypeError, match="positionally"):
        host.function(functools.partial(kv, prefix="p:"), name="kv2")
    with pytest.raises(TypeError, match="a class is not a host function"):
        host.function(Tenants, name="cls")


def test_last_call_is_per_thread(host: plugsafe.Host) -> None:
    @host.function
    def tick() -> None:
        pass

    p = host.load(TICK_WAT.encode(), policy=ALLOW, name="p")
    barrier = threading.Barrier(2)
    results: dict[int, list[int]] = {}

    def worker(k: int) -> None:
        got = []
        for _ in range(200):
            barrier.wait(10)
            p.invoke("many", k)
            barrier.wait(10)  # both threads' calls are done: each must still see its own
            stats = p.last_call
            assert stats is not None
            got.append(stats.host_calls)
        results[k] = got

    threads = [threading.Thread(target=worker, args=(k,)) for k in (3, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {3: [3] * 200, 5: [5] * 200}
    # A thread that never called the plugin has no last call.
    assert p.last_call is None
    p.invoke("many", 2)
    stats = p.last_call
    assert stats is not None
    assert (stats.host_calls, stats.plugin, stats.function) == (2, "p", "many")


def test_on_call_reports_every_call_with_plugin_function_error_and_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reports: list[CallStats] = []
    inside: list[object] = []

    def record(stats: CallStats) -> None:
        reports.append(stats)
        inside.append(plugsafe.current_call())  # the call is over: no context to see

    with plugsafe.Host(on_call=record) as host:

        @host.function
        def tick() -> None:
            info = plugsafe.current_call()
            if info is not None and info.context == "fail":
                raise RuntimeError("no")

        p = host.load(TICK_WAT.encode(), policy=Policy(allow={"tick"}, fuel=10**6), name="p")
        p.call("run", b"abc", context="t1")
        p.invoke("num", 4)
        with pytest.raises(plugsafe.HostFunctionError):
            p.call("run", b"", context="fail")
        with pytest.raises(plugsafe.ExportNotFoundError):
            p.call("missing")
        p.call_json("run", {"a": 1})
        asyncio.run(p.call_async("run", b"x", context="async"))
        cmd = host.load(
            b'(module (memory (export "memory") 1) (func (export "_start")))',
            policy=Policy(wasi=plugsafe.Wasi()),
            name="cmd",
        )
        assert cmd.run().exit_code == 0
        bad = host.load(
            abi_module(
                """(data (i32.const 16) "nope")
                (func (export "bad") (param i32 i32) (result i64)
                  (call $ok (i32.const 16) (i32.const 4)))"""
            ).encode(),
            name="bad",
        )
        with pytest.raises(plugsafe.AbiError, match="valid JSON"):
            bad.call_json("bad", 1)
        with pytest.raises(plugsafe.AbiError, match="valid JSON"):
            asyncio.run(bad.call_json_async("bad", 1, context="j"))
    got = [(r.plugin, r.function, r.error, r.context, r.host_calls) for r in reports]
    assert got == [
        ("p", "run", None, "t1", 1),
        ("p", "num", None, None, 1),
        ("p", "run", plugsafe.HostFunctionError, "fail", 1),
        ("p", "missing", plugsafe.ExportNotFoundError, None, 0),
        ("p", "run", None, None, 1),
        ("p", "run", None, "async", 1),
        ("cmd", "_start", None, None, 0),
        ("bad", "bad", plugsafe.AbiError, None, 0),  # call_json: decoding is part of the call
        ("bad", "bad", plugsafe.AbiError, "j", 0),
    ]
    assert inside == [None] * len(reports)
    assert all(r.fuel_consumed and r.duration >= 0 for r in reports[:-3] if r.error is None)
    assert reports[0].memory_bytes == 65536
    # last_call has the same figures, but never the context (it outlives the call).
    assert p.last_call is not None


def test_a_failing_on_call_callback_is_logged_and_never_breaks_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bad(stats: CallStats) -> None:
        raise ZeroDivisionError("metrics backend down")

    with plugsafe.Host(on_call=bad) as host:

        @host.function
        def tick() -> None:
            pass

        p = host.load(TICK_WAT.encode(), policy=ALLOW, name="p")
        caplog.set_level(logging.ERROR, logger="plugsafe")
        assert p.call("run", b"ok") == b"ok"
        with pytest.raises(plugsafe.ExportNotFoundError):
            p.call("missing")  # the call's own error, not the callback's
    records = [r for r in caplog.records if "on_call" in r.getMessage()]
    assert len(records) == 2
    assert records[0].exc_info is not None and records[0].exc_info[0] is ZeroDivisionError
    with pytest.raises(TypeError, match="on_call must be callable"):
        plugsafe.Host(on_call=42)  # type: ignore[arg-type]


def test_pools_report_to_on_call() -> None:
    reports: list[CallStats] = []
    with plugsafe.PluginPool(
        TICK_WAT.replace('(import "plugsafe" "tick" (func $tick))', "")
        .replace("(call $tick)", "")
        .encode(),
        size=2,
        name="pooled",
        on_call=reports.append,
    ) as pool:
        pool.call("run", b"a", context=1)
        pool.invoke("num", 2, context=2)
        asyncio.run(pool.call_async("run", b"b", context=3))
    assert [(r.plugin, r.function, r.context) for r in reports] == [
        ("pooled", "run", 1),
        ("pooled", "num", 2),
        ("pooled", "run", 3),
    ]
    with plugsafe.Host() as host, pytest.raises(TypeError, match="pass on_call to that Host"):
        plugsafe.PluginPool(TICK_WAT.encode(), host=host, on_call=reports.append)


def test_concurrent_async_calls_each_see_their_own_context_and_contextvars(
    host: plugsafe.Host,
) -> None:
    seen: list[tuple[object, str]] = []
    lock = threading.Lock()

    @host.function
    def tick() -> None:
        info = plugsafe.current_call()
        assert info is not None
        with lock:
            seen.append((info.context, VAR.get()))

    pool = plugsafe.PluginPool(TICK_WAT.encode(), ALLOW, size=3, host=host)
    single = host.load(TICK_WAT.encode(), policy=ALLOW)

    async def one(i: int) -> None:
        VAR.set(f"v{i}")  # each task has its own context
        if i % 2:
            await pool.call_async("run", b"", context=i)
        else:
            await single.invoke_async("num", 1, context=i)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(30)))

    try:
        asyncio.run(main())
    finally:
        pool.close()
    assert sorted(seen, key=lambda s: int(str(s[0]))) == [(i, f"v{i}") for i in range(30)]
