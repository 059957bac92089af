"""The first call on a new plugin: what it would look up is done at load (issue 14)."""

from __future__ import annotations

import pytest

import plugsafe

from wat import ECHO, abi_module


def test_abi_functions_are_ready_for_the_short_path_after_load(host: plugsafe.Host) -> None:
    plugin = host.load(ECHO.encode())
    inst = plugin._instance
    assert inst is not None
    # The allocator and both ABI-typed exports are looked up and checked; numeric ones are not.
    assert {"plugsafe_alloc", "echo", "fail"} <= set(inst.funcs)
    assert inst.funcs["echo"].abi_ok and inst.funcs["fail"].abi_ok
    assert "add" not in inst.funcs
    assert inst._known > 0  # the memory window too
    assert plugin.call("echo", b"first") == b"first"
    with pytest.raises(plugsafe.GuestError, match="oops"):
        plugin.call("fail", b"oops")


def test_only_a_few_are_prepared_and_the_rest_are_checked_on_first_call(
    host: plugsafe.Host,
) -> None:
    many = "\n".join(
        f'(func (export "e{i}") (param $p i32) (param $n i32) (result i64)'
        " (call $ok (local.get $p) (local.get $n)))"
        for i in range(12)
    )
    wrong = '(func (export "wrong") (param i32) (result i64) (i64.const 0))'
    plugin = host.load(abi_module(many + wrong).encode())
    inst = plugin._instance
    assert inst is not None
    ready = {name for name, ref in inst.funcs.items() if ref.abi_ok}
    assert ready == {f"e{i}" for i in range(8)}
    assert plugin.call("e11", b"late") == b"late"  # checked on its first call, as before
    with pytest.raises(plugsafe.SignatureError):
        plugin.call("wrong", b"x")


def test_a_plugin_without_the_abi_prepares_nothing(host: plugsafe.Host) -> None:
    wat = '(module (func (export "f") (param i32 i32) (result i64) (i64.const 5)))'
    plugin = host.load(wat.encode())
    inst = plugin._instance
    assert inst is not None and inst.funcs == {}
    with pytest.raises(plugsafe.AbiError):
        plugin.call("f", b"x")
    assert plugin.invoke("f", 1, 2) == 5
