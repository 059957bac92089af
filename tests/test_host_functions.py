"""App-defined host functions and the built-in log."""

from __future__ import annotations

import logging

import pytest

import plugsafe
from plugsafe import Policy

from wat import abi_module

# Imports kv_get(key: str) -> bytes | None, and calls it with the input as key; the result word
# (or -1) goes back to the host as this function's output (pointer/length reused as-is).
KV_WAT = abi_module(
    """
  (func (export "get") (param $p i32) (param $n i32) (result i64)
    (local $r i64)
    (local.set $r (call $kv_get (local.get $p) (local.get $n)))
    (if (i64.eq (local.get $r) (i64.const -1))
      (then (return (call $ok (i32.const 0) (i32.const 0)))))
    (local.get $r))
""",
    imports='(import "plugsafe" "kv_get" (func $kv_get (param i32 i32) (result i64)))',
)


def test_bytes_host_function_roundtrip(host: plugsafe.Host) -> None:
    store = {"a": b"apple", "big": b"x" * 300_000}

    @host.function(name="kv_get")
    def kv(key: str) -> bytes | None:
        return store.get(key)

    p = host.load(KV_WAT.encode(), policy=Policy(allow={"kv_get"}))
    assert p.call("get", "a") == b"apple"
    assert p.call("get", "big") == store["big"]
    assert p.call("get", "missing") == b""  # None answered -1, the plugin maps that to empty
    assert p.last_call is not None and p.last_call.host_calls == 1


def test_decorator_forms_and_registry(host: plugsafe.Host) -> None:
    @host.function
    def f1(x: int) -> int:
        return x

    def f2(x: float) -> float:
        return x

    assert host.function(f2, name="kv_float") is f2
    assert {"log", "f1", "kv_float"} <= set(host.functions)
    with pytest.raises(ValueError, match="already registered"):
        host.function(f1)
    with pytest.raises(ValueError, match="built in"):
        host.function(f1, name="log")
    with pytest.raises(ValueError, match="not valid"):
        host.function(f1, name="has space")


@pytest.mark.parametrize(
    "fn_src",
    [
        "def f(x): return x",
        "def f(x: int): return x",
        "def f(x: list) -> int: return 1",
        "def f(*a: int) -> int: return 1",
        "def f(x: int) -> dict: return {}",
        "def f(x: int) -> int | str: return 1",
    ],
)
def test_unsupported_annotations_are_refused(host: plugsafe.Host, fn_src: str) -> None:
    ns: dict[str, object] = {}
    exec(fn_src, ns)
    with pytest.raises(TypeError, match="host function 'f'"):
        host.function(ns["f"])  # type: ignore[arg-type]


NUMS_WAT = """(module
  (import "plugsafe" "mix" (func $mix (param i64 f64 i32) (result f64)))
  (import "plugsafe" "flag" (func $flag (param i32) (result i32)))
  (import "plugsafe" "unit" (func $unit))
  (func (export "run") (param i64 f64 i32) (result f64)
    call $unit
    (call $mix (local.get 0) (local.get 1) (local.get 2)))
  (func (export "neg") (param i32) (result i32) (call $flag (local.get 0))))"""


def test_numeric_host_functions(host: plugsafe.Host) -> None:
    seen: list[object] = []

    @host.function
    def mix(a: int, b: float, c: bool) -> float:
        seen.append((a, b, c))
        return a + b + (100 if c else 0)

    @host.function
    def flag(v: bool) -> bool:
        return not v

    @host.function
    def unit() -> None:
        seen.append("unit")

    p = host.load(NUMS_WAT.encode(), policy=Policy(allow={"mix", "flag", "unit"}))
    assert p.invoke("run", -(2**40), 0.5, 7) == -(2**40) + 100.5
    assert seen == ["unit", (-(2**40), 0.5, True)]
    assert p.invoke("neg", 0) == 1 and p.invoke("neg", 5) == 0


def test_host_exception_is_host_function_error_with_cause(host: plugsafe.Host) -> None:
    class Boom(RuntimeError):
        pass

    @host.function
    def kv_get(key: str) -> bytes:
        raise Boom(f"no backend for {key}")

    p = host.load(KV_WAT.encode(), policy=Policy(allow={"kv_get"}), name="kv")
    with pytest.raises(plugsafe.HostFunctionError) as info:
        p.call("get", "k1")
    err = info.value
    assert isinstance(err.__cause__, Boom)
    assert str(err.__cause__) == "no backend for k1"
    assert err.function == "kv_get"
    assert "kv_get" in str(err) and "Boom" in str(err) and "'kv'" in str(err)
    # A trap throws the instance away, and the next call works on a fresh one.
    with pytest.raises(plugsafe.HostFunctionError):
        p.call("get", "k2")


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_propagate_unchanged(host: plugsafe.Host, exc_type: type) -> None:
    @host.function
    def kv_get(key: str) -> bytes:
        raise exc_type("stop")

    p = host.load(KV_WAT.encode(), policy=Policy(allow={"kv_get"}))
    with pytest.raises(exc_type):
        p.call("get", "k")


def test_wrong_result_type_is_host_function_error(host: plugsafe.Host) -> None:
    @host.function
    def kv_get(key: str) -> bytes:
        return "not bytes"  # type: ignore[return-value]

    p = host.load(KV_WAT.encode(), policy=Policy(allow={"kv_get"}))
    with pytest.raises(plugsafe.HostFunctionError) as info:
        p.call("get", "k")
    assert isinstance(info.value.__cause__, TypeError)
    assert "returned str" in str(info.value.__cause__)


def test_str_argument_must_be_utf8(host: plugsafe.Host) -> None:
    @host.function
    def kv_get(key: str) -> bytes:
        return b""

    p = host.load(KV_WAT.encode(), policy=Policy(allow={"kv_get"}))
    with pytest.raises(plugsafe.AbiError, match="invalid UTF-8"):
        p.call("get", b"\xff\xfe")


def test_reentrant_call_is_refused(host: plugsafe.Host) -> None:
    holder: list[plugsafe.Plugin] = []

    @host.function
    def kv_get(key: str) -> bytes:
        return holder[0].call("get", "again")

    p = host.load(KV_WAT.encode(), policy=Policy(allow={"kv_get"}))
    holder.append(p)
    with pytest.raises(plugsafe.HostFunctionError) as info:
        p.call("get", "k")
    assert isinstance(info.value.__cause__, plugsafe.PluginCallError)
    assert "re-entrant" in str(info.value.__cause__)


def test_host_function_may_call_another_plugin(host: plugsafe.Host) -> None:
    from wat import ECHO

    echo = host.load(ECHO.encode(), name="echo")

    @host.function
    def kv_get(key: str) -> bytes:
        return echo.call("echo", key.upper())

    p = host.load(KV_WAT.encode(), policy=Policy(allow={"kv_get"}))
    assert p.call("get", "abc") == b"ABC"


def test_host_call_quota(host: plugsafe.Host) -> None:
    @host.function
    def tick() -> None:
        pass

    wat = """(module (import "plugsafe" "tick" (func $t))
      (func (export "many") (param $n i32)
        (loop $l (call $t) (local.set $n (i32.sub (local.get $n) (i32.const 1)))
          (br_if $l (local.get $n)))))"""
    p = host.load(wat.encode(), policy=Policy(allow={"tick"}, max_host_calls=1000))
    p.invoke("many", 1000)
    assert p.last_call is not None and p.last_call.host_calls == 1000
    with pytest.raises(plugsafe.HostCallLimitExceeded) as info:
        p.invoke("many", 1001)
    assert info.value.limit == "max_host_calls" and info.value.value == 1000
    p.invoke("many", 10)  # the quota is per call


LOG_WAT = """(module
  (import "plugsafe" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "hello\\nFAKE line\\1b[31mred\\ff")
  (func (export "say") (param $level i32) (param $len i32)
    (call $log (local.get $level) (i32.const 0) (local.get $len)))
  (func (export "spam") (param $n i32)
    (loop $l (call $log (i32.const 2) (i32.const 0) (i32.const 5))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (local.get $n))))
  (func (export "raw") (param i32 i32 i32)
    (call $log (local.get 0) (local.get 1) (local.get 2))))"""


def test_log_levels_and_logger_name(host: plugsafe.Host, caplog: pytest.LogCaptureFixture) -> None:
    p = host.load(LOG_WAT.encode(), policy=Policy(allow={"log"}), name="greeter")
    caplog.set_level(logging.DEBUG, logger="plugsafe")
    for level in range(5):
        p.invoke("say", level, 5)
    records = [r for r in caplog.records if r.name == "plugsafe.plugin.greeter"]
    assert [r.levelno for r in records] == [
        logging.DEBUG,
        logging.DEBUG,
        logging.INFO,
        logging.WARNING,
        logging.ERROR,
    ]
    assert all(r.getMessage() == "hello" for r in records)
    assert p.last_call is not None and p.last_call.host_calls == 1


def test_log_escapes_control_characters(
    host: plugsafe.Host, caplog: pytest.LogCaptureFixture
) -> None:
    p = host.load(LOG_WAT.encode(), policy=Policy(allow={"log"}), name="x")
    caplog.set_level(logging.DEBUG, logger="plugsafe")
    p.invoke("say", 2, 24)
    (record,) = [r for r in caplog.records if r.name == "plugsafe.plugin.x"]
    msg = record.getMessage()
    assert "\n" not in msg and "\x1b" not in msg
    assert msg == "hello\\nFAKE line\\x1b[31mred\ufffd"


def test_log_message_size_is_capped(host: plugsafe.Host, caplog: pytest.LogCaptureFixture) -> None:
    p = host.load(LOG_WAT.encode(), policy=Policy(allow={"log"}, log_message_size=3), name="c")
    caplog.set_level(logging.DEBUG, logger="plugsafe")
    p.invoke("say", 2, 20)
    (record,) = [r for r in caplog.records if r.name == "plugsafe.plugin.c"]
    assert record.getMessage() == "hel... [cut: 20 bytes in all]"


def test_log_count_is_capped_per_call(
    host: plugsafe.Host, caplog: pytest.LogCaptureFixture
) -> None:
    p = host.load(LOG_WAT.encode(), policy=Policy(allow={"log"}, log_messages=3), name="s")
    caplog.set_level(logging.DEBUG, logger="plugsafe")
    p.invoke("spam", 10)
    records = [r for r in caplog.records if r.name == "plugsafe.plugin.s"]
    assert [r.getMessage() for r in records[:3]] == ["hello"] * 3
    assert len(records) == 4
    assert "dropped 7 log message(s)" in records[3].getMessage()
    assert records[3].levelno == logging.WARNING
    caplog.clear()
    p.invoke("spam", 2)  # per call: the count starts again
    assert len([r for r in caplog.records if r.name == "plugsafe.plugin.s"]) == 2


def test_log_count_is_capped_per_call_on_fresh_instances(
    host: plugsafe.Host, caplog: pytest.LogCaptureFixture
) -> None:
    # A fresh instance per call ends its calls by another way (CallPath.settle): same warning,
    # same stats.
    policy = Policy(allow={"log"}, log_messages=3, fresh_instance=True)
    p = host.load(LOG_WAT.encode(), policy=policy, name="f")
    caplog.set_level(logging.DEBUG, logger="plugsafe")
    p.invoke("spam", 10)
    records = [r for r in caplog.records if r.name == "plugsafe.plugin.f"]
    assert [r.getMessage() for r in records[:3]] == ["hello"] * 3
    assert len(records) == 4
    assert "dropped 7 log message(s)" in records[3].getMessage()
    stats = p.last_call
    assert stats is not None and stats.function == "spam" and stats.host_calls == 10
    assert stats.memory_bytes == 65536 and stats.fuel_consumed is None
    caplog.clear()
    p.invoke("spam", 2)  # per call: the count starts again
    assert len([r for r in caplog.records if r.name == "plugsafe.plugin.f"]) == 2
    assert p.last_call is not None and p.last_call.host_calls == 2


@pytest.mark.parametrize(
    ("level", "ptr", "length", "message"),
    [
        (9, 0, 5, "level 9"),
        (-1, 0, 5, "level -1"),
        (2, 65535, 2, "runs past the end"),
        (2, -1, 1, "runs past the end"),
        (2, 0, -1, "runs past the end"),
        (2, 10, 0x7FFFFFFF, "runs past the end"),
    ],
)
def test_log_bad_arguments_are_abi_errors(
    host: plugsafe.Host, level: int, ptr: int, length: int, message: str
) -> None:
    p = host.load(LOG_WAT.encode(), policy=Policy(allow={"log"}))
    with pytest.raises(plugsafe.AbiError, match=message):
        p.invoke("raw", level, ptr, length)


def test_log_of_whole_memory_is_cut_not_copied(host: plugsafe.Host) -> None:
    p = host.load(LOG_WAT.encode(), policy=Policy(allow={"log"}, log_message_size=16))
    p.invoke("raw", 0, 0, 65536)  # valid span; only 16 bytes are kept


def test_slow_host_function_cannot_stretch_the_deadline(host: plugsafe.Host) -> None:
    import time

    runs: list[float] = []

    @host.function
    def slow() -> None:
        runs.append(time.monotonic())
        time.sleep(0.15)

    wat = """(module (import "plugsafe" "slow" (func $s))
      (func (export "twice") (call $s) (call $s) (call $s)))"""
    p = host.load(wat.encode(), policy=Policy(allow={"slow"}, timeout=0.1))
    with pytest.raises(plugsafe.DeadlineExceeded):
        p.invoke("twice")
    # The first host call overran the deadline; the second was refused before it ran.
    assert len(runs) == 1
