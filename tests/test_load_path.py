"""The lean load path (issue 14, third pass): what it remembers never weakens a check.

A closed plugin is freed by reference counting (no cycle left for the garbage collector); the
loader's answer for the very bytes it was just given is reused only for the same policy object
and name argument; what a Plugin derives from its module's exports once is raised on every load;
a store made through the C API is limited and freed like wasmtime-py's was.
"""

from __future__ import annotations

import gc
import weakref

import pytest

import plugsafe
from plugsafe import _runtime as rt

from wat import abi_module

ECHO = abi_module(
    '(func (export "echo") (param i32 i32) (result i64) (call $ok (local.get 0) (local.get 1)))'
)
THREE = b"""(module (memory (export "memory") 1)
  (func (export "a") (result i32) i32.const 1)
  (func (export "b") (result i32) i32.const 2)
  (func (export "c") (result i32) i32.const 3))"""


@pytest.mark.parametrize("wasi", [False, True])
def test_a_closed_plugin_is_freed_without_the_garbage_collector(wasi: bool) -> None:
    policy = plugsafe.Policy(wasi=plugsafe.Wasi()) if wasi else plugsafe.Policy()
    with plugsafe.Host() as host:
        host.load(ECHO.encode(), policy=policy).close()  # a Linker left in the pool
        gc.collect()
        gc.disable()
        try:
            p = host.load(ECHO.encode(), policy=policy)
            assert p.call("echo", b"hi") == b"hi"
            assert p.memory.size > 0
            p.close()
            plugin, calls, inst = weakref.ref(p), weakref.ref(p._calls), p._calls.instance
            assert inst is None  # the instance was released at close
            del p
            assert plugin() is None
            assert calls() is None
        finally:
            gc.enable()


def test_a_released_plugin_refuses_calls_made_through_the_class() -> None:
    with plugsafe.Host() as host:
        p = host.load(ECHO.encode())
        p.close()
        with pytest.raises(plugsafe.PluginClosedError):
            plugsafe.Plugin.call(p, "echo", b"x")
        with pytest.raises(plugsafe.PluginClosedError):
            plugsafe.Plugin.invoke(p, "echo", 1, 2)
        with pytest.raises(plugsafe.PluginClosedError):
            p.call_json("echo", {"a": 1})
        with pytest.raises(plugsafe.PluginClosedError):
            p.memory.read(0, 1)


def test_the_same_bytes_under_a_stricter_policy_are_checked_again() -> None:
    wasm = bytes(rt.wat_to_wasm(THREE))
    with plugsafe.Host() as host:
        loose = plugsafe.Policy()
        assert host.load(wasm, policy=loose).invoke("c") == 3
        assert host.load(wasm, policy=loose).invoke("a") == 1  # the loader's last answer
        with pytest.raises(plugsafe.InvalidModuleError, match="max_functions"):
            host.load(wasm, policy=plugsafe.Policy(max_functions=2))
        with pytest.raises(plugsafe.InvalidModuleError, match="max_module_size"):
            host.load(wasm, policy=plugsafe.Policy(max_module_size=len(wasm) - 1))
        assert host.load(wasm, policy=loose).invoke("b") == 2


def test_the_same_bytes_under_another_name_get_that_name() -> None:
    wasm = bytes(rt.wat_to_wasm(THREE))
    with plugsafe.Host() as host:
        assert host.load(wasm, name="first").name == "first"
        assert host.load(wasm, name="second").name == "second"
        assert host.load(wasm).name.startswith("plugin-")


def test_an_export_of_the_wrong_type_is_refused_on_every_load() -> None:
    # What the Plugin derives from the exports is made once per module; its verdict stands
    # for every load, not only the first.
    bad = b'(module (memory (export "memory") 1) (func (export "_initialize") (param i32)))'
    with plugsafe.Host() as host:
        for _ in range(3):
            with pytest.raises(plugsafe.PluginLoadError, match="_initialize"):
                host.load(bad)


def test_a_store_made_through_the_c_api_keeps_its_limits() -> None:
    # The store's limits come from the policy, set with wasmtime_store_limiter: a memory may
    # not grow past the policy's cap (memory.grow answers -1), on every new instance.
    grow = b"""(module (memory (export "memory") 1)
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"""
    with plugsafe.Host() as host:
        for fresh in (False, True):
            p = host.load(grow, policy=plugsafe.Policy(memory=2 * 65536, fresh_instance=fresh))
            assert p.invoke("grow", 1) == 1
            assert p.invoke("grow", 1) == (-1 if not fresh else 1)
            assert p.invoke("grow", 5) == -1
            p.close()


def test_wasi_arguments_still_reach_the_guest() -> None:
    # An instance of a WASI plugin whose Wasi sets nothing gets a bare context made in C; one
    # with arguments still gets them (args_sizes_get reports the count).
    guest = b"""(module
      (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "argc") (result i32) (drop (call $sizes (i32.const 0) (i32.const 4)))
        (i32.load (i32.const 0))))"""
    with plugsafe.Host() as host:
        bare = host.load(guest, policy=plugsafe.Policy(wasi=plugsafe.Wasi()))
        assert bare.invoke("argc") == 0
        two = host.load(guest, policy=plugsafe.Policy(wasi=plugsafe.Wasi(args=["prog", "x"])))
        assert two.invoke("argc") == 2
