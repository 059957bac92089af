"""Attacks through the input buffer (docs/abi.md, ``plugsafe_input_buffer``).

The guest names the buffer; the host must never write outside the guest's memory or outside
what the guest declared, must ask every instance afresh (never trust an answer from another
instance, or a changed answer later), and must charge the question to the call. A guest whose
buffer overlaps its own stack or heap only hurts itself; these tests are about the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inbuf_wat import BUF_AT, BUF_CAP, HEAP_AT, guest, where, word

import plugsafe
from plugsafe import Policy

from sec import assert_healthy

PAGE = 65536
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

BAD_BUFFERS = {
    "just past the end": (PAGE - 10, 11),
    "starts past the end": (PAGE, 1),
    "pointer plus capacity wraps past 2^32": (0xFFFF_FFF0, 0x20),
    "capacity wraps a pointer past 2^32": (16, 0xFFFF_FFF8),
    "whole address space": (1, 0xFFFF_FFFF),
    "negative pointer as i32": (-16 & 0xFFFF_FFFF, 8),
    "address 0 (null)": (0, 16),
}


@pytest.mark.parametrize("at, cap", BAD_BUFFERS.values(), ids=list(BAD_BUFFERS))
def test_a_buffer_outside_memory_fails_the_load(host: plugsafe.Host, at: int, cap: int) -> None:
    # Asked at load for the instance the first call runs on: a bad answer is the load's error.
    with pytest.raises(plugsafe.PluginLoadError, match="plugsafe_input_buffer returned a bad"):
        host.load(guest(f"(i64.const {word(at, cap)})").encode())
    assert_healthy(host)


@pytest.mark.parametrize("at, cap", BAD_BUFFERS.values(), ids=list(BAD_BUFFERS))
def test_a_buffer_outside_memory_is_an_abi_error_and_nothing_is_written(
    host: plugsafe.Host, at: int, cap: int
) -> None:
    # With fresh_instance every call's instance asks at its first input, within the call.
    p = host.load(
        guest(f"(i64.const {word(at, cap)})").encode(), policy=Policy(fresh_instance=True)
    )
    before = p.memory.read(0, PAGE)
    with pytest.raises(plugsafe.AbiError, match="plugsafe_input_buffer returned a bad input"):
        p.call("echo", b"attack bytes")
    # Every call reports it, not only the first.
    with pytest.raises(plugsafe.AbiError, match="plugsafe_input_buffer"):
        p.call("echo", b"x")
    # Nothing of the input reached memory (a fresh one here: the instance that asked is gone),
    # nothing outside it was touched: the host is healthy, and calls without input work.
    assert p.memory.read(0, PAGE) == before
    assert p.call("echo", b"") == b""
    assert_healthy(host)


def test_a_buffer_that_ends_exactly_at_the_end_of_memory_is_used(host: plugsafe.Host) -> None:
    p = host.load(guest(f"(i64.const {word(PAGE - 16, 16)})").encode())
    assert where(p.call("where", b"x" * 16)) == PAGE - 16
    assert p.memory.read(PAGE - 16, 16) == b"x" * 16
    assert where(p.call("where", b"x" * 17)) == HEAP_AT  # over capacity: alloc


def test_a_buffer_declared_larger_than_memory_is_refused_not_trimmed(
    host: plugsafe.Host,
) -> None:
    # 64 KiB declared at 1024 in a 1-page memory: even a 1-byte input must not go there.
    wat = guest(f"(i64.const {word(BUF_AT, PAGE)})").encode()
    with pytest.raises(plugsafe.PluginLoadError, match="plugsafe_input_buffer"):
        host.load(wat)
    p = host.load(wat, policy=Policy(fresh_instance=True))
    with pytest.raises(plugsafe.AbiError, match="plugsafe_input_buffer"):
        p.call("echo", b"a")


def test_the_buffer_is_checked_against_the_memory_named_memory_only(host: plugsafe.Host) -> None:
    # Two memories: "memory" has 1 page, another has 4. A buffer inside the big one but past
    # the end of "memory" is refused: the host writes only into "memory".
    memory = '(memory (export "memory") 1) (memory (export "other") 4)'
    wat = guest(f"(i64.const {word(2 * PAGE, 16)})", memory=memory).encode()
    with pytest.raises(plugsafe.PluginLoadError, match="plugsafe_input_buffer"):
        host.load(wat)
    p = host.load(wat, policy=Policy(fresh_instance=True))
    with pytest.raises(plugsafe.AbiError, match="plugsafe_input_buffer"):
        p.call("echo", b"abc")
    ok = host.load(guest(memory=memory).encode())
    assert where(ok.call("where", b"abc")) == BUF_AT


def test_a_changed_answer_is_never_asked_for_on_the_same_instance(host: plugsafe.Host) -> None:
    # The query answers a good buffer the first time and a bad one afterwards: the host asks
    # once per instance, so the good one stays in use (and the bad one is never written).
    q = f"""(if (result i64) (i32.eq (global.get $queries) (i32.const 1))
      (then (i64.const {word(BUF_AT, BUF_CAP)}))
      (else (i64.const {word(PAGE * 16, BUF_CAP)})))"""
    p = host.load(guest(q).encode())
    for _ in range(5):
        assert where(p.call("where", b"abc")) == BUF_AT
    assert p.invoke("queries") == 1


def test_an_answer_is_never_carried_over_to_a_fresh_instance(host: plugsafe.Host) -> None:
    # The host app decides the answer per query: good for the first instance, then one
    # outside memory. After a trap the fresh instance asks again and gets (and refuses) it.
    answers = [word(BUF_AT, BUF_CAP), word(PAGE * 2, 8)]

    @host.function
    def answer() -> Annotated[int, plugsafe.I64]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    imports = '(import "plugsafe" "answer" (func $answer (result i64)))'
    trap = '(func (export "boom") (param i32 i32) (result i64) unreachable)'
    p = host.load(
        guest("(call $answer)", imports=imports, body=trap).encode(),
        policy=Policy(allow={"answer"}),
    )
    assert where(p.call("where", b"abc")) == BUF_AT
    with pytest.raises(plugsafe.PluginTrap):
        p.call("boom", b"abc")
    with pytest.raises(plugsafe.AbiError, match="plugsafe_input_buffer"):
        p.call("echo", b"abc")
    # The same when the new instance's first call has no input (it asks nothing) and the
    # question comes on the short path, at the first call with input.
    with pytest.raises(plugsafe.PluginTrap):
        p.call("boom")
    assert p.call("echo", b"") == b""
    with pytest.raises(plugsafe.AbiError, match="plugsafe_input_buffer"):
        p.call("echo", b"abc")
    with pytest.raises(plugsafe.AbiError, match="plugsafe_input_buffer"):
        p.call("echo", b"abc")
    assert_healthy(host)


def test_a_trap_in_the_query_fails_the_load(host: plugsafe.Host) -> None:
    with pytest.raises(plugsafe.PluginLoadError, match="plugsafe_input_buffer"):
        host.load(guest("unreachable").encode())
    assert_healthy(host)


def test_a_trap_in_the_query_ends_the_call_as_a_trap(host: plugsafe.Host) -> None:
    p = host.load(guest("unreachable").encode(), policy=Policy(fresh_instance=True))
    with pytest.raises(plugsafe.PluginTrap):
        p.call("echo", b"abc")
    # Empty input never asks: the plugin is still usable that way.
    assert p.call("echo", b"") == b""
    with pytest.raises(plugsafe.PluginTrap):
        p.call("echo", b"abc")
    assert_healthy(host)


LOOP = "(loop $l (br $l)) (i64.const 0)"


def test_a_query_that_loops_forever_is_stopped_by_the_timeout(host: plugsafe.Host) -> None:
    with pytest.raises(plugsafe.DeadlineExceeded):
        host.load(guest(LOOP).encode(), policy=Policy(timeout=0.2))
    p = host.load(guest(LOOP).encode(), policy=Policy(timeout=0.2, fresh_instance=True))
    with pytest.raises(plugsafe.DeadlineExceeded):
        p.call("echo", b"abc")
    assert_healthy(host)


def test_a_query_that_loops_forever_runs_out_of_fuel(host: plugsafe.Host) -> None:
    with pytest.raises(plugsafe.FuelExhausted):
        host.load(guest(LOOP).encode(), policy=Policy(fuel=100_000))
    p = host.load(guest(LOOP).encode(), policy=Policy(fuel=100_000, fresh_instance=True))
    with pytest.raises(plugsafe.FuelExhausted):
        p.call("echo", b"abc")
    assert_healthy(host)


def test_the_query_and_the_call_share_one_fuel_budget(host: plugsafe.Host) -> None:
    # A query burning ~60% of the fuel and a function burning ~60%: neither alone runs out,
    # together they must (the query is no free budget of its own). fresh_instance: each
    # call's instance asks within the call.
    burn = """(func $burn (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
             (br_if $l (i32.lt_u (local.get $i) (i32.const 20000)))))
  (func (export "heavy") (param $p i32) (param $n i32) (result i64)
    (call $burn) (call $ok (local.get $p) (local.get $n)))"""
    q = f"(call $burn) (i64.const {word(BUF_AT, BUF_CAP)})"
    fuel = 200_000
    alone = host.load(guest(None, body=burn).encode(), policy=Policy(fuel=fuel))
    assert alone.call("heavy", b"abc") == b"abc"
    assert alone.last_call is not None and alone.last_call.fuel_consumed is not None
    assert fuel * 0.5 < alone.last_call.fuel_consumed < fuel * 0.9
    p = host.load(guest(q, body=burn).encode(), policy=Policy(fuel=fuel, fresh_instance=True))
    with pytest.raises(plugsafe.FuelExhausted):
        p.call("heavy", b"abc")


def test_a_reexported_host_function_as_the_query_is_checked_like_any_answer(
    host: plugsafe.Host,
) -> None:
    answers: list[int] = []

    @host.function
    def buf() -> Annotated[int, plugsafe.I64]:
        return answers[-1]

    body = '(export "plugsafe_input_buffer" (func $buf))'
    imports = '(import "plugsafe" "buf" (func $buf (result i64)))'
    wat = guest(None, imports=imports, body=body).encode()
    answers.append(word(BUF_AT, BUF_CAP))
    good = host.load(wat, policy=Policy(allow={"buf"}))
    assert where(good.call("where", b"abc")) == BUF_AT
    fresh = host.load(wat, policy=Policy(allow={"buf"}, fresh_instance=True))
    assert where(fresh.call("where", b"abc")) == BUF_AT
    assert fresh.last_call is not None and fresh.last_call.host_calls == 1
    answers.append(word(PAGE * 3, 8))
    with pytest.raises(plugsafe.PluginLoadError, match="plugsafe_input_buffer"):
        host.load(wat, policy=Policy(allow={"buf"}))
    with pytest.raises(plugsafe.AbiError, match="plugsafe_input_buffer"):
        fresh.call("echo", b"abc")
    assert_healthy(host, good)


def test_a_query_calling_its_own_plugin_is_refused(host: plugsafe.Host) -> None:
    plugins: list[plugsafe.Plugin] = []

    @host.function
    def again() -> None:
        plugins[0].call("echo", b"nested")

    imports = '(import "plugsafe" "again" (func $again))'
    p = host.load(
        guest(f"(call $again) (i64.const {word(BUF_AT, BUF_CAP)})", imports=imports).encode(),
        policy=Policy(allow={"again"}, fresh_instance=True),
    )
    plugins.append(p)
    with pytest.raises(plugsafe.HostFunctionError) as info:
        p.call("echo", b"outer")
    assert isinstance(info.value.__cause__, plugsafe.PluginCallError)
    assert "re-entrant" in str(info.value.__cause__)


# "keep" calls the host function "inner" and then returns its input: the input must still be
# what the host placed, whatever "inner" did meanwhile.
KEEP = """
  (func (export "keep") (param $p i32) (param $n i32) (result i64)
    (call $inner)
    (call $ok (local.get $p) (local.get $n)))"""


def test_a_host_function_cannot_call_the_plugin_while_its_buffer_holds_the_input(
    host: plugsafe.Host,
) -> None:
    plugins: list[plugsafe.Plugin] = []
    refused: list[BaseException] = []

    @host.function
    def inner() -> None:
        try:
            plugins[0].call("echo", b"INNER INPUT THAT WOULD OVERWRITE")
        except plugsafe.PluginCallError as exc:
            refused.append(exc)

    p = host.load(
        guest(body=KEEP, imports='(import "plugsafe" "inner" (func $inner))').encode(),
        policy=Policy(allow={"inner"}),
    )
    plugins.append(p)
    assert p.call("keep", b"outer input") == b"outer input"
    assert len(refused) == 1 and "re-entrant" in str(refused[0])
    assert p.invoke("allocs") == 0


def test_another_plugin_of_the_same_module_called_meanwhile_has_its_own_buffer(
    host: plugsafe.Host,
) -> None:
    plugins: list[plugsafe.Plugin] = []

    @host.function
    def inner() -> None:
        if len(plugins) > 1:
            assert plugins[1].call("echo", b"OTHER PLUGIN INPUT") == b"OTHER PLUGIN INPUT"

    wat = guest(body=KEEP, imports='(import "plugsafe" "inner" (func $inner))').encode()
    plugins.append(host.load(wat, policy=Policy(allow={"inner"}), name="a"))
    plugins.append(host.load(wat, policy=Policy(allow={"inner"}), name="b"))
    assert plugins[0].call("keep", b"outer input") == b"outer input"


def test_a_host_function_writing_the_plugins_memory_is_the_apps_business_not_an_escape(
    host: plugsafe.Host,
) -> None:
    # Plugin.memory from a host function is the app's own tool: it may change the input the
    # guest holds (as it could before the buffer existed), and still only inside memory.
    plugins: list[plugsafe.Plugin] = []

    @host.function
    def inner() -> None:
        plugins[0].memory.write(BUF_AT, b"OUTER")
        with pytest.raises(plugsafe.PlugsafeError):
            plugins[0].memory.write(PAGE - 2, b"past the end")

    p = host.load(
        guest(body=KEEP, imports='(import "plugsafe" "inner" (func $inner))').encode(),
        policy=Policy(allow={"inner"}),
    )
    plugins.append(p)
    assert p.call("keep", b"outer input") == b"OUTER input"


def test_the_policy_max_input_still_applies_before_anything_is_placed(
    host: plugsafe.Host,
) -> None:
    p = host.load(guest().encode(), policy=Policy(max_input=8))
    with pytest.raises(plugsafe.AbiError, match="max_input"):
        p.call("echo", b"123456789")
    assert p.memory.read(BUF_AT, 9) == bytes(9)
    assert p.call("echo", b"12345678") == b"12345678"


def test_a_64_bit_memory_is_refused_at_load_so_no_buffer_can_name_one(
    host: plugsafe.Host,
) -> None:
    with pytest.raises(plugsafe.InvalidModuleError, match="memory64"):
        host.load(guest(memory='(memory (export "memory") i64 1)').encode())


# -- fuzz: any answer, any input ----------------------------------------------------------------

_EDGES = [0, 1, 2, 16, BUF_AT, PAGE - 300, PAGE - 1, PAGE, PAGE + 1, 2**31 - 1, 2**31, 2**32 - 1]
_U32 = st.one_of(st.sampled_from(_EDGES), st.integers(0, 2**32 - 1), st.integers(0, PAGE + 8))


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[plugsafe.Plugin, list[int]]]:
    # Every call asks (fresh_instance), and the host app answers for the guest.
    answers = [0]
    with plugsafe.Host() as host:

        @host.function
        def answer() -> Annotated[int, plugsafe.I64]:
            return answers[0]

        imports = '(import "plugsafe" "answer" (func $answer (result i64)))'
        wat = guest("(call $answer)", imports=imports)
        yield host.load(wat.encode(), policy=Policy(allow={"answer"}, fresh_instance=True)), answers


@FUZZ
@given(at=_U32, cap=_U32, data=st.binary(max_size=300))
def test_any_buffer_answer_is_used_exactly_when_it_is_inside_memory(
    fuzzed: tuple[plugsafe.Plugin, list[int]], at: int, cap: int, data: bytes
) -> None:
    plugin, answers = fuzzed
    answers[0] = word(at, cap)
    inside = cap == 0 or (at != 0 and at + cap <= PAGE)
    if data and not inside:
        with pytest.raises(plugsafe.AbiError, match="plugsafe_input_buffer"):
            plugin.call("where", data)
        return
    placed = where(plugin.call("where", data))
    if not data:
        assert placed == 0
    elif len(data) <= cap:
        assert placed == at
    else:
        assert placed == HEAP_AT
    assert plugin.call("echo", data) == data
