"""Calling plugins: call (bytes ABI), call_json, invoke, exports, stats, close."""

from __future__ import annotations

import json

import pytest

import plugsafe

from conftest import BAD_I32_PAIRS, LoadFn
from wat import ECHO, abi_module

# Upper-cases ASCII in place and returns it: a real transform through the ABI.
UPPER = abi_module(
    """
  (func (export "upper") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $c i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97))
                     (i32.le_u (local.get $c) (i32.const 122)))
          (then (i32.store8 (i32.add (local.get $p) (local.get $i))
                            (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $ok (local.get $p) (local.get $n)))
"""
)

MULTI = """(module
  (func (export "pair") (param i64 f64) (result i64 f64) local.get 0 local.get 1)
  (func (export "f32id") (param f32) (result f32) local.get 0)
  (func (export "neg") (result i32) i32.const -1)
  (func (export "nothing"))
  (func (export "takes_ref") (param externref))
  (memory (export "mem") 1)
  (global (export "g") i32 (i32.const 3)))"""


def test_call_echo_bytes_and_str(load: LoadFn) -> None:
    p = load(ECHO)
    assert p.call("echo", b"hello") == b"hello"
    assert p.call("echo", "h\u00e9llo \u2603") == "h\u00e9llo \u2603".encode()
    assert p.call("echo", bytearray(b"ba")) == b"ba"
    assert p.call("echo", memoryview(b"mv")) == b"mv"
    assert p.call("echo") == b""
    big = bytes(range(256)) * 4096  # 1 MiB: forces the guest allocator to grow memory
    assert p.call("echo", big) == big


def test_call_transforms(load: LoadFn) -> None:
    p = load(UPPER)
    assert p.call("upper", b"Hello, World!") == b"HELLO, WORLD!"


def test_call_json_roundtrip(load: LoadFn) -> None:
    p = load(ECHO)
    value = {"x": 1, "list": [1, 2.5, None, True], "s": "\u00e9"}
    assert p.call_json("echo", value) == value


def test_call_json_bad_output_is_abi_error(load: LoadFn) -> None:
    p = load(UPPER)
    with pytest.raises(plugsafe.AbiError, match="valid JSON"):
        p.call_json("upper", True)  # answers TRUE


def test_guest_error_carries_message(load: LoadFn) -> None:
    p = load(ECHO, name="g")
    with pytest.raises(plugsafe.GuestError) as info:
        p.call("fail", "no such user: bob")
    assert info.value.message == "no such user: bob"
    assert info.value.plugin == "g" and info.value.function == "fail"
    assert "no such user: bob" in str(info.value)
    assert p.call("echo", b"still fine") == b"still fine"


def test_invalid_utf8_error_message_is_replaced(load: LoadFn) -> None:
    p = load(ECHO)
    with pytest.raises(plugsafe.GuestError) as info:
        p.call("fail", b"bad \xff byte")
    assert info.value.message == "bad \ufffd byte"


def test_call_input_type_checked(load: LoadFn) -> None:
    with pytest.raises(TypeError, match="bytes or str"):
        load(ECHO).call("echo", 42)  # type: ignore[arg-type]


def test_call_needs_the_abi(load: LoadFn) -> None:
    p = load('(module (func (export "f") (param i32 i32) (result i64) i64.const 0))')
    with pytest.raises(plugsafe.AbiError, match="does not implement the plugsafe ABI"):
        p.call("f", b"x")


def test_call_wrong_export_shape(load: LoadFn) -> None:
    p = load(ECHO)
    with pytest.raises(plugsafe.SignatureError, match=r"\(i32, i32\) -> i64"):
        p.call("add", b"x")
    with pytest.raises(plugsafe.ExportNotFoundError, match="has no export 'nope'") as info:
        p.call("nope", b"x")
    assert "echo" in str(info.value)
    with pytest.raises(plugsafe.ExportNotFoundError, match="is a memory"):
        p.call("memory", b"")


def test_invoke_numbers(load: LoadFn) -> None:
    p = load(MULTI)
    assert p.invoke("pair", 2**63 - 1, 1.5) == (2**63 - 1, 1.5)
    assert p.invoke("pair", 2**64 - 1, 0) == (-1, 0.0)  # unsigned input is taken modulo 2^64
    assert p.invoke("f32id", 0.5) == 0.5
    assert p.invoke("neg") == -1
    assert p.invoke("nothing") is None


def test_invoke_unsigned_i32_argument(load: LoadFn) -> None:
    assert load(ECHO).invoke("add", 2**32 - 1, 2) == 1


@pytest.mark.parametrize(("args", "message"), BAD_I32_PAIRS)
def test_invoke_bad_arguments(load: LoadFn, args: tuple[object, ...], message: str) -> None:
    with pytest.raises(plugsafe.SignatureError, match=message):
        load(ECHO).invoke("add", *args)  # type: ignore[arg-type]


def test_invoke_refuses_reference_types(load: LoadFn) -> None:
    with pytest.raises(plugsafe.SignatureError, match="uses type"):
        load(MULTI).invoke("takes_ref", 0)


def test_invoke_non_function(load: LoadFn) -> None:
    with pytest.raises(plugsafe.ExportNotFoundError, match="is a global"):
        load(MULTI).invoke("g")


def test_exports_and_imports_describe_the_module(load: LoadFn) -> None:
    p = load(MULTI)
    assert p.exports["pair"].params == ("i64", "f64")
    assert p.exports["pair"].results == ("i64", "f64")
    assert p.exports["mem"].kind == "memory"
    assert p.exports["g"].kind == "global"
    assert str(p.exports["neg"]) == "func neg() -> i32"
    assert p.imports == ()
    with pytest.raises(TypeError):
        p.exports["x"] = p.exports["g"]  # type: ignore[index]


def test_last_call_stats(load: LoadFn) -> None:
    p = load(ECHO, fuel=1_000_000)
    assert p.last_call is None
    p.call("echo", b"abc")
    stats = p.last_call
    assert stats is not None
    assert stats.fuel_consumed is not None and 0 < stats.fuel_consumed < 1_000_000
    assert stats.duration > 0
    assert stats.memory_bytes == 65536
    assert stats.host_calls == 0
    unmetered = load(ECHO)
    unmetered.call("echo", b"abc")
    assert unmetered.last_call is not None and unmetered.last_call.fuel_consumed is None


def test_close_and_context_manager(host: plugsafe.Host) -> None:
    with host.load(ECHO.encode()) as p:
        assert p.call("echo", b"x") == b"x"
    assert p.closed
    for use in (
        lambda: p.call("echo", b"x"),
        lambda: p.invoke("add", 1, 2),
        lambda: p.call_json("echo", 1),
        lambda: p.memory.read(0, 1),
        lambda: p.memory.size,
    ):
        with pytest.raises(plugsafe.PluginClosedError):
            use()
    p.close()  # idempotent


def test_host_close_closes_plugins(host: plugsafe.Host) -> None:
    p = host.load(ECHO.encode())
    host.close()
    assert p.closed and host.closed
    with pytest.raises(plugsafe.PluginClosedError):
        p.call("echo", b"")
    host.close()


def test_memory_read_write(load: LoadFn) -> None:
    p = load(ECHO)
    assert p.memory.size == 65536
    p.memory.write(100, b"abc")
    assert p.memory.read(100, 3) == b"abc"
    assert p.memory.read(65535, 1) == b"\x00"
    assert p.memory.read(65536, 0) == b""


def test_json_input_must_be_serialisable(load: LoadFn) -> None:
    with pytest.raises(TypeError):
        load(ECHO).call_json("echo", {1, 2})
    with pytest.raises(ValueError):
        load(ECHO).call_json("echo", float("nan"))
    assert json.dumps({"a": 1})


def test_a_trap_message_is_one_line_and_the_backtrace_is_kept_apart() -> None:
    wat = '(module (func (export "boom") unreachable))'
    with plugsafe.Host() as host:
        plugin = host.load(wat.encode(), name="boomer")
        with pytest.raises(plugsafe.PluginTrap) as info:
            plugin.invoke("boom")
    err = info.value
    assert str(err) == "plugin 'boomer' in 'boom' trapped: wasm `unreachable` instruction executed"
    assert err.trap_code == "UNREACHABLE"
    assert err.backtrace is not None and "wasm backtrace" in err.backtrace
