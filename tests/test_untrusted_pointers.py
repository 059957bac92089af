"""Every pointer and length a guest hands the host is untrusted: bad ones are AbiErrors."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plugsafe
from plugsafe import Policy

from conftest import LoadFn
from wat import abi_module

# "lie" returns whatever result word the caller asks for; "grow_then_echo" grows memory during
# the call and then echoes, which must be read through a fresh view of the memory.
LIAR = abi_module(
    """
  (global $word (mut i64) (i64.const 0))
  (func (export "set_word") (param i64) (global.set $word (local.get 0)))
  (func (export "lie") (param $p i32) (param $n i32) (result i64) (global.get $word))
  (func (export "grow_then_echo") (param $p i32) (param $n i32) (result i64)
    (drop (memory.grow (i32.const 16)))
    (call $ok (local.get $p) (local.get $n)))
"""
)


def word(ptr: int, length: int, error: bool = False) -> int:
    w = ((ptr & 0xFFFFFFFF) << 32) | (length & 0xFFFFFFFF) | (0x80000000 if error else 0)
    return w - (1 << 64) if w >= 1 << 63 else w


@pytest.mark.parametrize(
    ("ptr", "length"),
    [
        (65536, 1),  # just past the end
        (65535, 2),  # straddles the end
        (0xFFFFFFFF, 1),  # "-1": a negative pointer read as unsigned
        (0xFFFFFFF0, 0x20),  # wraps past 2^32 if added in 32 bits
        (0, 65537),  # length over the memory
        (0x80000000, 0x10),
    ],
)
def test_output_pointer_that_lies_is_abi_error(load: LoadFn, ptr: int, length: int) -> None:
    p = load(LIAR)
    p.invoke("set_word", word(ptr, length))
    with pytest.raises(plugsafe.AbiError, match="bad output pointer"):
        p.call("lie", b"")
    p.invoke("set_word", word(ptr, length, error=True))
    with pytest.raises(plugsafe.AbiError, match="bad error message pointer"):
        p.call("lie", b"")


def test_output_length_over_max_output_is_refused_before_reading(load: LoadFn) -> None:
    p = load(LIAR, max_output=100)
    p.invoke("set_word", word(0, 0x7FFFFFFF))
    with pytest.raises(plugsafe.AbiError, match="max_output"):
        p.call("lie", b"")


def test_valid_lie_is_read_exactly(load: LoadFn) -> None:
    p = load(LIAR)
    p.memory.write(65530, b"tail!!")
    p.invoke("set_word", word(65530, 6))
    assert p.call("lie", b"") == b"tail!!"


def test_memory_view_is_refetched_after_growth(load: LoadFn) -> None:
    p = load(LIAR)
    data = b"z" * 70_000  # input itself forces growth, then the call grows again
    assert p.call("grow_then_echo", data) == data
    assert p.memory.size >= 17 * 65536


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ptr=st.integers(0, 2**32 - 1), length=st.integers(0, 2**31 - 1), error=st.booleans())
def test_random_result_words_never_read_wrong_bytes(
    load: LoadFn, ptr: int, length: int, error: bool
) -> None:
    p = load(LIAR, max_output=2**31 - 1)
    size = p.memory.size
    p.invoke("set_word", word(ptr, length, error))
    if length == 0 or ptr + length <= size:  # an empty output may use any pointer
        expected = p.memory.read(ptr, length) if length else b""
        if error:
            with pytest.raises(plugsafe.GuestError) as info:
                p.call("lie", b"")
            assert info.value.message == expected.decode("utf-8", "replace")
        else:
            assert p.call("lie", b"") == expected
    else:
        with pytest.raises(plugsafe.AbiError):
            p.call("lie", b"")


BAD_ALLOC = """(module (memory (export "memory") 1)
  (global $ret (mut i32) (i32.const 0))
  (func (export "set") (param i32) (global.set $ret (local.get 0)))
  (func (export "plugsafe_abi_version") (result i32) i32.const 1)
  (func (export "plugsafe_alloc") (param i32) (result i32) global.get $ret)
  (func (export "f") (param i32 i32) (result i64) i64.const 0))"""


@pytest.mark.parametrize("ret", [65535, -1, -16, 65536])
def test_allocator_returning_a_bad_pointer_is_abi_error(load: LoadFn, ret: int) -> None:
    p = load(BAD_ALLOC)
    p.invoke("set", ret)
    with pytest.raises(plugsafe.AbiError, match="plugsafe_alloc returned a bad buffer"):
        p.call("f", b"four")


def test_allocator_returning_zero_below_the_cap_is_abi_error(load: LoadFn) -> None:
    p = load(BAD_ALLOC)
    with pytest.raises(plugsafe.AbiError, match="returned 0"):
        p.call("f", b"four")


HOST_PTRS = abi_module(
    """
  (func (export "pass") (param $p i32) (param $n i32) (result i64)
    (call $take (local.get $p) (local.get $n)))
  (func (export "raw") (param i32 i32) (result i64) (call $take (local.get 0) (local.get 1)))
""",
    imports='(import "plugsafe" "take" (func $take (param i32 i32) (result i64)))',
)


@pytest.mark.parametrize(
    ("ptr", "length"),
    [(-1, 1), (65536, 1), (65000, 1000), (0, -1), (-16, 32), (0x7FFFFFFF, 0x7FFFFFFF)],
)
def test_host_function_pointer_attacks(host: plugsafe.Host, ptr: int, length: int) -> None:
    calls: list[bytes] = []

    @host.function
    def take(data: bytes) -> bytes:
        calls.append(data)
        return data

    p = host.load(HOST_PTRS.encode(), policy=Policy(allow={"take"}))
    with pytest.raises(plugsafe.AbiError, match="bytes argument to host function 'take'"):
        p.invoke("raw", ptr, length)
    assert calls == []  # the host function never saw a bad span
    assert p.call("pass", b"fine") == b"fine"


def test_memory_read_write_refuse_out_of_range(load: LoadFn) -> None:
    p = load(LIAR)
    size = p.memory.size
    for offset, length in (
        (-4, 4),
        (size, 1),
        (size - 1, 2),
        (0, size + 1),
        (0, -1),
        (2**32, 1),
        (2**64, 0),
    ):
        with pytest.raises(plugsafe.MemoryAccessError):
            p.memory.read(offset, length)
    for offset, data in ((-1, b"x"), (size, b"x"), (size - 1, b"xy")):
        with pytest.raises(plugsafe.MemoryAccessError):
            p.memory.write(offset, data)
    with pytest.raises(TypeError):
        p.memory.read(1.5, 1)  # type: ignore[arg-type]
    assert isinstance(plugsafe.MemoryAccessError("x"), IndexError)


def test_host_argument_over_its_cap_is_refused_before_copying(host: plugsafe.Host) -> None:
    seen: list[int] = []

    @host.function
    def take(data: bytes) -> bytes:
        seen.append(len(data))
        return b""

    p = host.load(HOST_PTRS.encode(), policy=Policy(allow={"take"}, max_host_arg_size=100))
    assert p.call("pass", b"x" * 100) == b""
    with pytest.raises(plugsafe.AbiError, match="max_host_arg_size"):
        p.call("pass", b"x" * 101)
    assert seen == [100]


def test_empty_output_may_use_any_pointer(load: LoadFn) -> None:
    p = load(LIAR)
    p.invoke("set_word", word(0xFFFF_FFF0, 0))
    assert p.call("lie", b"") == b""
