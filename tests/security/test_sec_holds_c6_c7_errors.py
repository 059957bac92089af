"""Issue 12, classes 6 and 7: everything a plugin can cause is a documented PlugsafeError, and the
error's facts (class, phase, limit, what happened to the instance) are the documented ones.

These cannot crash the process, so they run in-process.
"""

from __future__ import annotations

import time

import pytest

import plugsafe

from sec import assert_healthy
from wat import abi_module

C6 = "issue 12 class 6: "
C7 = "issue 12 class 7: "

LOG_IMPORT = '(import "plugsafe" "log" (func $log (param i32 i32 i32)))'


def _log_span(host: plugsafe.Host, pointer: int, length: int) -> plugsafe.Plugin:
    wat = abi_module(
        f"""
  (func (export "go") (param i32 i32) (result i64)
    (call $log (i32.const 2) (i32.const {pointer}) (i32.const {length}))
    (call $ok (i32.const 0) (i32.const 0)))""",
        imports=LOG_IMPORT,
    )
    return host.load(wat.encode(), policy=plugsafe.Policy(allow={"log"}), name="logspan")


# (pointer, length) as the guest passes them (i32, so negative = high unsigned). Each span runs
# past the end of memory, some by wrapping around 2**32.
WRAPPING_SPANS = {
    "ptr_minus_1_len_2": (-1, 2),
    "ptr_top_len_32": (-16, 32),
    # (100, 0xFFFFFFF0): the end check computes 100 + len - 1, which wraps to 83 and passes; the
    # span is accepted and a 4 KiB prefix logged as if the guest had 4 GiB of memory.
    "ptr_100_len_minus_16": (100, -16),
}


@pytest.mark.parametrize("span", sorted(WRAPPING_SPANS))
def test_c6_log_span_wrapping_32_bits_is_abi_error(host: plugsafe.Host, span: str) -> None:
    plugin = _log_span(host, *WRAPPING_SPANS[span])
    with pytest.raises(plugsafe.AbiError):
        plugin.call("go")
    assert_healthy(host, plugin)


@pytest.mark.parametrize("span", [(65530, 100), (-1, 1), (0, 65537), (65536, 1)])
def test_c6_log_span_past_the_end_without_wrapping_is_abi_error(
    host: plugsafe.Host, span: tuple[int, int]
) -> None:
    plugin = _log_span(host, *span)
    with pytest.raises(plugsafe.AbiError):
        plugin.call("go")
    assert_healthy(host, plugin)


def _returns(host: plugsafe.Host, annotation: str, value: object) -> plugsafe.Plugin:
    """A plugin whose ``go`` calls host function ``give`` returning ``value`` as ``annotation``."""
    ns: dict[str, object] = {"value": value}
    exec(f"def give() -> {annotation}:\n    return value", ns)
    host.function(ns["give"], name="give")  # type: ignore[arg-type]
    wasm_result = {"str": "i64", "bytes": "i64", "str | None": "i64", "float": "f64", "int": "i64"}
    rtype = wasm_result[annotation]
    wat = abi_module(
        """
  (func (export "go") (param i32 i32) (result i64)
    call $give
    drop
    (call $ok (i32.const 0) (i32.const 0)))""",
        imports=f'(import "plugsafe" "give" (func $give (result {rtype})))',
    )
    return host.load(wat.encode(), policy=plugsafe.Policy(allow={"give"}), name="give")


class _BadFloat(float):
    def __float__(self) -> float:
        raise ValueError("no float for you")


# (annotation, value) results the host cannot encode. The app's bug, but the call must still end
# in the documented HostFunctionError ("returned a value of the wrong type"), not a raw error.
UNENCODABLE = {
    "lone_surrogate_str": ("str", "ok\udc80"),
    "lone_surrogate_optional_str": ("str | None", "\ud800"),
    "huge_int_as_float": ("float", 10**400),
    "float_subclass_that_refuses": ("float", _BadFloat(1.5)),
}


@pytest.mark.parametrize("case", sorted(UNENCODABLE))
def test_c6_unencodable_host_result_is_host_function_error(host: plugsafe.Host, case: str) -> None:
    annotation, value = UNENCODABLE[case]
    plugin = _returns(host, annotation, value)
    with pytest.raises(plugsafe.HostFunctionError) as info:
        plugin.call("go")
    assert info.value.function == "give"
    assert_healthy(host, plugin)


def _emits(host: plugsafe.Host, text: bytes) -> plugsafe.Plugin:
    data = "".join(f"\\{b:02x}" for b in text)
    wat = abi_module(
        f"""
  (data (i32.const 4096) "{data}")
  (func (export "go") (param i32 i32) (result i64)
    (call $ok (i32.const 4096) (i32.const {len(text)})))""",
        memory=f'(memory (export "memory") {1 + (4096 + len(text)) // 65536})',
    )
    return host.load(wat.encode(), name="emit")


@pytest.mark.xfail(
    strict=True, reason=C6 + "call_json on deeply nested output leaks RecursionError"
)
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_c6_call_json_deeply_nested_output_is_abi_error(host: plugsafe.Host, opener: bytes) -> None:
    plugin = _emits(host, opener * 100_000)
    with pytest.raises(plugsafe.AbiError):
        plugin.call_json("go", None)
    assert_healthy(host, plugin)


@pytest.mark.parametrize(
    "text", [b"1" * 5000, b'"\\ud800"x', b"\xff\xfe", b"[1,2", b"NaN NaN", b"\x00"]
)
def test_c6_call_json_other_bad_output_is_abi_error(host: plugsafe.Host, text: bytes) -> None:
    plugin = _emits(host, text)
    with pytest.raises(plugsafe.AbiError):
        plugin.call_json("go", None)


# -- class 7: wrong facts -------------------------------------------------------------------------

TICK = '(import "plugsafe" "tick" (func $tick))'


def _with_tick(host: plugsafe.Host, delay: float = 0.0) -> None:
    @host.function
    def tick() -> None:
        if delay:
            time.sleep(delay)


def _host_calls_in(where: str, n: int, straight: bool = False) -> str:
    """A module that makes ``n`` host calls in its start function, _initialize or ABI version.

    ``straight``: the calls are straight-line code, so no loop back-edge lets the epoch check
    fire first and the host-call deadline check is what notices the deadline.
    """
    loop = (
        "call $tick " * n
        if straight
        else f"""
    (local $i i32)
    (loop $l
      call $tick
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {n}))))"""
    )
    if where == "start":
        body = f"(func $s {loop}) (start $s)"
    elif where == "initialize":
        body = f'(func (export "_initialize") {loop})'
    else:
        body = f'(func (export "plugsafe_abi_version") (result i32) {loop} i32.const 1)'
    prelude = (
        ""
        if where == "abi_version"
        else '(func (export "plugsafe_abi_version") (result i32) i32.const 1)'
    )
    return f"""(module {TICK} (memory (export "memory") 1)
      {prelude}
      (func (export "plugsafe_alloc") (param i32) (result i32) i32.const 1024)
      {body})"""


@pytest.mark.xfail(strict=True, reason=C7 + "max_host_calls hit while loading says phase 'call'")
@pytest.mark.parametrize("where", ["start", "initialize", "abi_version"])
def test_c7_host_call_limit_while_loading_says_phase_load(host: plugsafe.Host, where: str) -> None:
    _with_tick(host)
    policy = plugsafe.Policy(allow={"tick"}, max_host_calls=10)
    with pytest.raises(plugsafe.HostCallLimitExceeded) as info:
        host.load(_host_calls_in(where, 1000).encode(), policy=policy)
    assert (info.value.phase, info.value.limit, info.value.value) == ("load", "max_host_calls", 10)


@pytest.mark.xfail(strict=True, reason=C7 + "a slow host function while loading says phase 'call'")
@pytest.mark.parametrize("where", ["start", "initialize", "abi_version"])
def test_c7_deadline_in_a_host_call_while_loading_says_phase_load(
    host: plugsafe.Host, where: str
) -> None:
    _with_tick(host, delay=0.06)
    policy = plugsafe.Policy(allow={"tick"}, timeout=0.1)
    with pytest.raises(plugsafe.DeadlineExceeded) as info:
        host.load(_host_calls_in(where, 5, straight=True).encode(), policy=policy)
    assert (info.value.phase, info.value.limit) == ("load", "timeout")


@pytest.mark.parametrize("where", ["start", "initialize"])
def test_c7_a_looping_start_while_loading_says_phase_load(host: plugsafe.Host, where: str) -> None:
    body = (
        "(func $s (loop $l (br $l))) (start $s)"
        if where == "start"
        else ('(func (export "_initialize") (loop $l (br $l)))')
    )
    with pytest.raises(plugsafe.DeadlineExceeded) as info:
        host.load(f"(module {body})".encode(), policy=plugsafe.Policy(timeout=0.05))
    assert info.value.phase == "load"


def _start_gets_bytes(host: plugsafe.Host, size: int) -> str:
    @host.function
    def blob() -> bytes:
        return b"x" * size

    return """(module (import "plugsafe" "blob" (func $blob (result i64)))
      (memory (export "memory") 1 1)
      (func (export "plugsafe_abi_version") (result i32) i32.const 1)
      (func (export "plugsafe_alloc") (param i32) (result i32) i32.const 0)
      (func $s call $blob drop) (start $s))"""


@pytest.mark.xfail(
    strict=True, reason=C7 + "a host result too big to place while loading says 'call'"
)
def test_c7_host_result_memory_limit_while_loading_says_phase_load(host: plugsafe.Host) -> None:
    wat = _start_gets_bytes(host, 100)
    with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
        host.load(wat.encode(), policy=plugsafe.Policy(allow={"blob"}))
    assert info.value.phase == "load"


GROWS = abi_module(
    """
  (global $calls (mut i32) (i32.const 0))
  (func (export "count") (param i32 i32) (result i64)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store (i32.const 0) (global.get $calls))
    (call $ok (i32.const 0) (i32.const 4)))""",
    memory='(memory (export "memory") 1)',
)


@pytest.mark.xfail(
    strict=True, reason=C7 + "the instance is kept after MemoryLimitExceeded on the input"
)
def test_c7_memory_limit_on_the_input_discards_the_instance(host: plugsafe.Host) -> None:
    plugin = host.load(GROWS.encode(), policy=plugsafe.Policy(memory=2 * 65536))
    assert plugin.call("count") == (1).to_bytes(4, "little")
    with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
        plugin.call("count", b"x" * 200_000)
    assert info.value.phase == "call"
    # docs/errors.md: after MemoryLimitExceeded the instance is discarded, so the count restarts.
    assert plugin.call("count") == (1).to_bytes(4, "little")


def test_c7_memory_limit_on_a_host_result_discards_the_instance(host: plugsafe.Host) -> None:
    @host.function
    def blob() -> bytes:
        return b"x" * 200_000

    wat = abi_module(
        """
  (global $calls (mut i32) (i32.const 0))
  (func (export "count") (param i32 i32) (result i64)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store (i32.const 0) (global.get $calls))
    (call $ok (i32.const 0) (i32.const 4)))
  (func (export "big") (param i32 i32) (result i64)
    call $blob drop (call $ok (i32.const 0) (i32.const 0)))""",
        imports='(import "plugsafe" "blob" (func $blob (result i64)))',
    )
    plugin = host.load(wat.encode(), policy=plugsafe.Policy(allow={"blob"}, memory=2 * 65536))
    assert plugin.call("count") == (1).to_bytes(4, "little")
    with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
        plugin.call("big")
    assert info.value.phase == "call"
    assert plugin.call("count") == (1).to_bytes(4, "little")
