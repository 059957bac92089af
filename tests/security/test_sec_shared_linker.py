"""Issue 14: a closed plugin's Linker serves the next plugin of the same module (a security
boundary).

A Linker's callbacks are bound to one plugin at a time. When a plugin closes, the Host's pool
closes every store made through its Linker and keeps the Linker; the next plugin that needs
exactly the same definitions (same engine, module, host functions, WASI or not) takes it and
rebinds every callback to its own state. What must hold, attacked here:

- a host call reaches only the state of the plugin whose store made it: its context, its quota,
  its deadline, its allocator; never a closed plugin's, never another live plugin's (two live
  plugins never share a Linker, also when loaded and called from many threads at once);
- a closed plugin's stores are closed before its Linker serves again (no store of it can call);
- a Linker whose spare trap may have been used, or around whose calls Python failed, is never
  reused;
- the import check still decides per policy: a Linker defining more than a policy allows is
  never reached by that policy's plugin (the check refuses it first), and WASI is keyed apart;
- host functions registered later change nothing for plugins already loaded;
- a forked child reuses what it inherited only as its own, and both processes work.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

import plugsafe
from plugsafe import Policy, Wasi

from helpers import run_ok
from wat import abi_module

# ``f(n)`` calls ``who()`` n times and returns the sum of its answers; ``g()`` calls ``b()``.
WHO = b"""(module
  (import "plugsafe" "who" (func $who (result i64)))
  (memory (export "memory") 1)
  (func (export "f") (param $n i32) (result i64) (local $s i64)
    (block $done (loop $l
      (br_if $done (i32.eqz (local.get $n)))
      (local.set $s (i64.add (local.get $s) (call $who)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $l)))
    (local.get $s)))"""

AB = b"""(module
  (import "plugsafe" "a" (func $a (result i64)))
  (import "plugsafe" "b" (func $b (result i64)))
  (func (export "g") (result i64) (i64.add (call $a) (call $b))))"""


def _who_host() -> plugsafe.Host:
    host = plugsafe.Host()

    @host.function
    def who() -> int:
        call = plugsafe.current_call()
        assert call is not None
        return int(call.context)

    return host


def _pooled(host: plugsafe.Host) -> int:
    return len(host._linkers)


def test_the_next_plugin_of_a_module_reuses_the_linker_and_sees_only_its_own_state() -> None:
    with _who_host() as host:
        a = host.load(WHO, policy=Policy(allow={"who"}, max_host_calls=3), name="a")
        assert a.invoke("f", 3, context=1) == 3
        linker = a._linker
        a_instance = a._instance
        a_state = a._calls.state
        a.close()
        assert _pooled(host) == 1
        # The closed plugin's store was closed before its Linker went back to the pool.
        assert a_instance is not None and a_instance._final is not None
        assert a_instance.func("f") is None

        b = host.load(WHO, policy=Policy(allow={"who"}, max_host_calls=50), name="b")
        assert b._linker is linker and _pooled(host) == 0
        # b's quota (50), not a's (3); b's context; a's record untouched.
        assert b.invoke("f", 40, context=2) == 80
        assert b.last_call is not None and b.last_call.host_calls == 40
        assert a_state.host_calls == 0 and a_state.context is None
        with pytest.raises(plugsafe.PluginClosedError):
            a.invoke("f", 1, context=1)
        b.close()

        # And a stricter quota after a looser one: the Linker enforces the lessee's.
        c = host.load(WHO, policy=Policy(allow={"who"}, max_host_calls=2), name="c")
        assert c._linker is linker
        with pytest.raises(plugsafe.HostCallLimitExceeded) as info:
            c.invoke("f", 3, context=5)
        assert "'c'" in str(info.value)
        # The trap discarded c's instance; the next one is linked through the same Linker.
        assert c.invoke("f", 2, context=5) == 10
        c.close()


def test_live_plugins_never_share_a_linker_under_threads() -> None:
    with _who_host() as host:
        # Fill the pool, so that the plugins below are made from pooled Linkers.
        for _ in range(4):
            host.load(WHO, policy=Policy(allow={"who"})).close()
        assert _pooled(host) >= 1
        quotas = {1: 5, 2: 10_000, 3: 7, 4: 10_000}
        plugins = {
            k: host.load(WHO, policy=Policy(allow={"who"}, max_host_calls=q), name=f"p{k}")
            for k, q in quotas.items()
        }
        assert len({id(p._linker) for p in plugins.values()}) == len(plugins)
        errors: list[BaseException] = []
        results: dict[int, list[tuple[int, object]]] = {k: [] for k in plugins}

        def worker(k: int) -> None:
            plugin = plugins[k]
            try:
                for i in range(150):
                    n = 1 + i % 9
                    try:
                        out: object = plugin.invoke("f", n, context=k)
                    except plugsafe.HostCallLimitExceeded as exc:
                        out = exc
                    results[k].append((n, out))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in plugins for _ in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for k, seen in results.items():
            assert len(seen) == 300
            for n, out in seen:
                if n > quotas[k]:
                    # Over this plugin's own quota, whatever the others allow.
                    assert isinstance(out, plugsafe.HostCallLimitExceeded), (k, n, out)
                    assert f"'p{k}'" in str(out)
                else:
                    # Every answer came from this plugin's own context.
                    assert out == n * k, (k, n, out)
        for p in plugins.values():
            p.close()


def test_a_plugin_closed_while_another_of_its_module_calls() -> None:
    entered, release = threading.Event(), threading.Event()
    with plugsafe.Host() as host:

        @host.function
        def who() -> int:
            call = plugsafe.current_call()
            assert call is not None
            if call.context == "slow":
                entered.set()
                assert release.wait(60)
                return 100
            return 1

        policy = Policy(allow={"who"})
        busy = host.load(WHO, policy=policy, name="busy")
        doomed = host.load(WHO, policy=policy, name="doomed")
        out: list[object] = []
        t = threading.Thread(target=lambda: out.append(busy.invoke("f", 2, context="slow")))
        t.start()
        assert entered.wait(60)
        # While busy's guest is inside a host call: close doomed, and a new plugin takes its
        # Linker (never busy's, which is in use).
        doomed_linker = doomed._linker
        doomed.close()
        fresh = host.load(WHO, policy=policy, name="fresh")
        assert fresh._linker is doomed_linker and fresh._linker is not busy._linker
        assert fresh.invoke("f", 3, context="x") == 3
        release.set()
        t.join(60)
        assert out == [200]  # busy's second host call was not slowed: context is per call
        assert busy.invoke("f", 1, context="y") == 1
        busy.close()
        fresh.close()


def test_closing_from_inside_a_host_call_returns_the_linker_only_when_the_call_ends() -> None:
    plugins: list[plugsafe.Plugin] = []
    with plugsafe.Host() as host:

        @host.function
        def who() -> int:
            plugins[0].close()  # deferred: the call is still running
            # The Linker is not in the pool yet: nothing else can be bound to it now.
            assert _pooled(host) == 0
            return 4

        p = host.load(WHO, policy=Policy(allow={"who"}))
        plugins.append(p)
        assert p.invoke("f", 2) == 8
        assert p.closed and _pooled(host) == 1
        q = host.load(WHO, policy=Policy(allow={"who"}))
        assert q._linker is p._linker


def test_a_linker_whose_record_is_distrusted_is_never_reused() -> None:
    with _who_host() as host:
        p = host.load(WHO, policy=Policy(allow={"who"}))
        # What the C boundary does when a spare trap was used or Python failed around a call
        # (tests/test_boundary.py makes it happen for real at the recursion limit).
        p._linker.record.distrust()
        old = p._linker
        p.close()
        assert _pooled(host) == 0
        q = host.load(WHO, policy=Policy(allow={"who"}))
        assert q._linker is not old
        assert q.invoke("f", 2, context=3) == 6
        q.close()
        assert _pooled(host) == 1


def test_the_import_check_refuses_before_a_wider_linker_is_reached() -> None:
    with plugsafe.Host() as host:

        @host.function
        def a() -> int:
            return 1

        @host.function
        def b() -> int:
            return 10

        @host.function
        def c() -> int:
            return 100

        host.load(AB, policy=Policy(allow={"a", "b"})).close()
        assert _pooled(host) == 1  # a Linker defining plugsafe.a and plugsafe.b waits
        # A policy allowing only a: refused by the import check, the pooled Linker untouched.
        with pytest.raises(plugsafe.ImportNotAllowedError) as info:
            host.load(AB, policy=Policy(allow={"a"}))
        assert "plugsafe.b (not allowed" in str(info.value)
        assert _pooled(host) == 1
        # A wider policy takes it: the module imports only a and b, and only they are defined.
        p = host.load(AB, policy=Policy(allow={"a", "b", "c"}))
        assert _pooled(host) == 0
        assert p.invoke("g") == 11
        assert [name for _numeric, _module, name in p._linker._shapes] == ["a", "b"]
        p.close()


def test_wasi_and_plain_linkers_are_kept_apart() -> None:
    plain = b'(module (func (export "f") (result i32) i32.const 7))'
    uses_wasi = b"""(module
      (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
      (func (export "f") (result i32) i32.const 8))"""
    with plugsafe.Host() as host:
        host.load(plain, policy=Policy(wasi=Wasi())).close()
        assert _pooled(host) == 1
        # The same module without WASI: not the WASI Linker (a new one is built).
        p = host.load(plain)
        assert _pooled(host) == 1
        assert p.invoke("f") == 7
        # A module importing WASI under a policy without it: refused as before.
        with pytest.raises(plugsafe.ImportNotAllowedError):
            host.load(uses_wasi)
        w = host.load(uses_wasi, policy=Policy(wasi=Wasi()))
        assert w.invoke("f") == 8
        p.close()
        w.close()


def test_functions_registered_later_change_nothing_for_loaded_plugins() -> None:
    late_import = b"""(module
      (import "plugsafe" "late" (func $late (result i64)))
      (func (export "g") (result i64) (call $late)))"""
    with _who_host() as host:
        p = host.load(WHO, policy=Policy(allow={"who"}, max_host_calls=3))
        shapes = list(p._linker._shapes)
        # Not registered yet: a policy cannot even name it, and the import is unknown.
        with pytest.raises(plugsafe.PolicyError):
            host.load(late_import, policy=Policy(allow={"late"}))
        with pytest.raises(plugsafe.ImportNotAllowedError):
            host.load(late_import)

        @host.function
        def late() -> int:
            return 42

        # The loaded plugin's Linker defines what it did; after a trap it is linked the same.
        assert p._linker._shapes == shapes
        with pytest.raises(plugsafe.HostCallLimitExceeded):
            p.invoke("f", 5, context=1)
        assert p.invoke("f", 2, context=1) == 2
        assert p._linker._shapes == shapes
        # A new plugin needs its policy to allow the new function, as before.
        with pytest.raises(plugsafe.ImportNotAllowedError):
            host.load(late_import)
        q = host.load(late_import, policy=Policy(allow={"late"}))
        assert q.invoke("g") == 42
        p.close()
        q.close()


def test_rebind_refuses_another_shape() -> None:
    with _who_host() as host:

        @host.function
        def a() -> int:
            return 1

        @host.function
        def b() -> int:
            return 2

        p = host.load(WHO, policy=Policy(allow={"who"}))
        q = host.load(AB, policy=Policy(allow={"a", "b"}))
        bindings: list[Any] = [
            q._host_calls.binding(f, ((), ("i64",))) for f in q._functions.values()
        ]
        linker = p._linker
        before = [slot[0] for slot in linker._slots]
        assert not linker.rebind(bindings)
        assert [slot[0] for slot in linker._slots] == before
        p.close()
        q.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_reuses_a_pooled_linker_as_its_own() -> None:
    script = """
        import os
        import plugsafe

        WHO = WHO_WAT
        host = plugsafe.Host()

        @host.function
        def who() -> int:
            return int(plugsafe.current_call().context)

        policy = plugsafe.Policy(allow={"who"}, timeout=5.0)
        host.load(WHO, policy=policy).close()
        assert len(host._linkers) == 1
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                p = host.load(WHO, policy=policy)
                ok = p.invoke("f", 3, context=4) == 12 and len(host._linkers) == 0
                p.close()
                q = host.load(WHO, policy=policy)
                ok = ok and q.invoke("f", 2, context=5) == 10
                code = 0 if ok else 2
            finally:
                os._exit(code)
        p = host.load(WHO, policy=policy)
        assert p.invoke("f", 2, context=6) == 12
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        p.close()
        host.close()
        print("ok")
    """.replace("WHO_WAT", repr(WHO))
    assert run_ok(script, timeout=180).strip().endswith("ok")


def test_the_import_memo_answers_only_for_the_same_policy_and_registry() -> None:
    with plugsafe.Host() as host:

        @host.function
        def a() -> int:
            return 1

        both = Policy(allow={"a", "b"})
        with pytest.raises(plugsafe.PolicyError):
            host.load(AB, policy=both)  # b is not a host function yet

        @host.function
        def b() -> int:
            return 2

        p = host.load(AB, policy=both)  # checked, and remembered on the module
        assert p.invoke("g") == 3
        module = p._module
        assert module.import_check is not None and module.import_check[0] is both
        # Another policy object, even an equal one, is checked afresh: a narrower one refused.
        with pytest.raises(plugsafe.ImportNotAllowedError):
            host.load(AB, policy=Policy(allow={"a"}))
        again = Policy(allow={"a", "b"})
        q = host.load(AB, policy=again)
        assert q.invoke("g") == 3
        checked = module.import_check
        assert checked is not None and checked[0] is again
        q.close()
        q = host.load(AB, policy=again)  # the same policy and registry: the memo answers
        assert module.import_check is checked

        # A function registered later (the registry grew) makes the memo stale.
        @host.function
        def c() -> int:
            return 3

        r = host.load(AB, policy=again)
        assert module.import_check is not checked
        for plugin in (p, q, r):
            plugin.close()


def test_a_plugin_closed_from_many_threads_at_once_gives_its_linker_back_once() -> None:
    with _who_host() as host:
        for _ in range(20):
            p = host.load(WHO, policy=Policy(allow={"who"}))
            barrier = threading.Barrier(4)

            def close(plugin: plugsafe.Plugin = p, b: threading.Barrier = barrier) -> None:
                b.wait(10)
                plugin.close()

            threads = [threading.Thread(target=close) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert _pooled(host) == 1
            # Two live plugins never get the one Linker.
            a = host.load(WHO, policy=Policy(allow={"who"}))
            b = host.load(WHO, policy=Policy(allow={"who"}))
            assert a._linker is not b._linker
            assert a.invoke("f", 1, context=1) == 1 and b.invoke("f", 1, context=2) == 2
            a.close()
            b.close()
            host._linkers.clear()


# ``shout(p, n)`` passes its input to host function ``up`` (bytes in, bytes out through the
# plugin's allocator) and returns what it answered.
SHOUT = abi_module(
    """
  (func (export "shout") (param $p i32) (param $n i32) (result i64)
    (local $w i64)
    (local.set $w (call $up (local.get $p) (local.get $n)))
    (call $ok (i32.wrap_i64 (i64.shr_u (local.get $w) (i64.const 32)))
              (i32.wrap_i64 (i64.and (local.get $w) (i64.const 0x7fffffff)))))
""",
    imports='(import "plugsafe" "up" (func $up (param i32 i32) (result i64)))',
).encode()


def test_marshalled_host_functions_use_the_lessees_caps_memory_and_allocator() -> None:
    with plugsafe.Host() as host:

        @host.function
        def up(data: bytes) -> bytes:
            call = plugsafe.current_call()
            assert call is not None
            return data.upper() + str(call.context).encode()

        a = host.load(SHOUT, policy=Policy(allow={"up"}, max_host_arg_size=4), name="a")
        assert a.call("shout", b"abc", context=1) == b"ABC1"
        with pytest.raises(plugsafe.AbiError, match="max_host_arg_size of 4"):
            a.call("shout", b"abcdef", context=1)
        linker = a._linker
        a.close()
        b = host.load(SHOUT, policy=Policy(allow={"up"}, max_host_arg_size=1000), name="b")
        assert b._linker is linker
        # b's cap, b's memory (the result placed by b's allocator), b's context.
        assert b.call("shout", b"abcdef", context=2) == b"ABCDEF2"
        b.close()
        c = host.load(SHOUT, policy=Policy(allow={"up"}, max_host_arg_size=2), name="c")
        assert c._linker is linker
        with pytest.raises(plugsafe.AbiError, match=r"plugin 'c'.*max_host_arg_size of 2"):
            c.call("shout", b"abc", context=3)
        c.close()
