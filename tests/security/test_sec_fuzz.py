"""Fuzzing with hypothesis: random pointers, lengths and payloads; broken modules; odd policies.

The properties: the host never crashes, never returns wrong bytes (whatever it returns is exactly
what the guest's memory holds at that span), and every failure is one of plugsafe's typed errors.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plugsafe
from plugsafe import Policy
from plugsafe._wasmbin import Caps, PrecheckError, nesting_depths, precheck

from bombs import module
from sec import attacker
from wat import ECHO

PAGE = 65536

# The guest does what its input tells it: the first 8 bytes are a pointer and a length (little
# endian); "told" returns them as its result word, "tell_host" passes them to the host function
# "take" and returns what the host answered.
TOLD = attacker(
    """(func (export "told") (param $p i32) (param $n i32) (result i64)
         (i64.or (i64.shl (i64.extend_i32_u (i32.load (local.get $p))) (i64.const 32))
                 (i64.extend_i32_u (i32.load offset=4 (local.get $p)))))
       (func (export "tell_host") (param $p i32) (param $n i32) (result i64)
         (call $take (i32.load (local.get $p)) (i32.load offset=4 (local.get $p))))""",
    imports='(import "plugsafe" "take" (func $take (param i32 i32) (result i64)))',
)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def told() -> Iterator[tuple[plugsafe.Plugin, list[bytes]]]:
    seen: list[bytes] = []
    with plugsafe.Host() as host:

        @host.function
        def take(data: bytes) -> bytes:
            seen.append(data)
            return data

        policy = Policy(allow={"take"}, max_output=2**31 - 1, memory=4 * PAGE)
        yield host.load(TOLD.encode(), policy=policy, name="told"), seen


# Pointers and lengths near the interesting edges as well as anywhere in 32 bits.
u32 = st.one_of(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2 * PAGE),
    st.integers(2**32 - 2 * PAGE, 2**32 - 1),
    st.sampled_from([0, 1, PAGE - 1, PAGE, PAGE + 1, 2**31 - 1, 2**31, 2**32 - 1]),
)


@FUZZ
@given(ptr=u32, length=u32, payload=st.binary(max_size=300))
def test_random_output_spans_are_exact_or_abi_errors(
    told: tuple[plugsafe.Plugin, list[bytes]], ptr: int, length: int, payload: bytes
) -> None:
    """The guest returns any (pointer, length, error bit): exact bytes, GuestError, or AbiError."""
    p, _ = told
    size = p.memory.size
    real_len = length & 0x7FFFFFFF
    is_error = bool(length & 0x80000000)
    try:
        out = p.call("told", struct.pack("<II", ptr, length) + payload)
    except plugsafe.GuestError as exc:
        assert is_error and (real_len == 0 or ptr + real_len <= size)
        expected = p.memory.read(ptr, real_len) if real_len else b""
        assert exc.message == expected.decode("utf-8", "replace")
        return
    except plugsafe.AbiError:
        assert ptr + real_len > size
        return
    assert not is_error
    if real_len == 0:  # nothing is read; see the note in tell_host's test below
        assert out == b""
        return
    assert ptr + real_len <= size
    assert out == p.memory.read(ptr, real_len)


@FUZZ
@given(ptr=u32, length=u32, payload=st.binary(max_size=300))
def test_random_host_function_spans_are_exact_or_abi_errors(
    told: tuple[plugsafe.Plugin, list[bytes]], ptr: int, length: int, payload: bytes
) -> None:
    """The guest hands the host function any (pointer, length): exact bytes or AbiError."""
    p, seen = told
    seen.clear()
    size = p.memory.size
    try:
        out = p.call("tell_host", struct.pack("<II", ptr, length) + payload)
    except plugsafe.AbiError:
        assert ptr + length > size and seen == []
        return
    except plugsafe.MemoryLimitExceeded:  # the answer did not fit in the capped memory
        assert len(seen) == 1 and len(seen[0]) == length
        return
    if length == 0:
        # An empty span reads nothing, so the host accepts it at any pointer (the output
        # path, by contrast, refuses an empty span that starts past the end).
        assert seen == [b""] and out == b""
        return
    assert ptr + length <= size
    assert seen == [out]
    assert len(out) == length


@FUZZ
@given(payload=st.binary(max_size=70_000))
def test_random_payloads_round_trip(payload: bytes) -> None:
    """Any payload, including ones that force memory growth, comes back byte for byte."""
    with plugsafe.Host() as host:
        p = host.load(ECHO.encode())
        assert p.call("echo", payload) == payload
        assert p.call("echo", payload[::-1]) == payload[::-1]


# -- malformed modules ------------------------------------------------------------------------

LOAD_POLICY = Policy(timeout=0.05, fuel=100_000, memory=16 * PAGE)
SEED = module(
    [b"\x02\x40\x41\x02\x04\x40\x01\x0b\x0b", b"\x41\x7f\x1a", b""], exports=["a", "b", "c"]
)


def _load_or_typed_error(host: plugsafe.Host, data: bytes) -> None:
    try:
        host.load(data, policy=LOAD_POLICY)
    except plugsafe.PluginLoadError:
        pass
    except plugsafe.LimitExceeded as exc:  # e.g. a start function or a memory over the cap
        assert exc.phase == "load"


@pytest.fixture(scope="module")
def shared_host() -> Iterator[plugsafe.Host]:
    with plugsafe.Host() as h:
        yield h


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_are_never_a_crash(shared_host: plugsafe.Host, data: bytes) -> None:
    """Random bytes, with and without the wasm header."""
    for candidate in (data, b"\x00asm\x01\x00\x00\x00" + data):
        _load_or_typed_error(shared_host, candidate)


@FUZZ
@given(
    cut=st.integers(0, len(SEED)),
    flips=st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=4),
)
def test_mutated_and_truncated_modules_are_never_a_crash(
    shared_host: plugsafe.Host, cut: int, flips: list[tuple[int, int]]
) -> None:
    """A valid module with bytes changed and its tail cut off."""
    data = bytearray(SEED)
    for pos, value in flips:
        data[pos] = value
    _load_or_typed_error(shared_host, bytes(data[:cut]))


@FUZZ
@given(data=st.binary(max_size=400))
def test_the_precheck_fails_only_with_its_own_error(data: bytes) -> None:
    """The pre-parser itself, fed garbage after a valid header: PrecheckError or a result."""
    wasm = b"\x00asm\x01\x00\x00\x00" + data
    caps = Caps(10, 10, 10, 100, 5)
    for check in (lambda: precheck(wasm, caps), lambda: nesting_depths(wasm)):
        with contextlib.suppress(PrecheckError):
            check()


# -- random policies --------------------------------------------------------------------------

FIELDS = [f for f in Policy.__dataclass_fields__ if f != "allow"]
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.sampled_from([0, 1, 2**31 - 1, 2**32, 2**63, 0.5, 1e-9]),
)
allows = st.one_of(
    st.frozensets(st.text(max_size=6), max_size=3), st.text(max_size=4), st.integers(), st.none()
)


@settings(FUZZ, max_examples=100)
@given(d=st.dictionaries(st.sampled_from(FIELDS), values, max_size=6), allow=allows)
def test_random_policy_dicts_are_valid_or_policy_errors(
    d: dict[str, object], allow: object
) -> None:
    """Any mix of field values: a Policy that validates, or a PolicyError naming a real field."""
    try:
        policy = Policy(**d, allow=allow)  # type: ignore[arg-type]
    except plugsafe.PolicyError as exc:
        assert exc.field in (*FIELDS, "allow")
        return
    for key, value in d.items():
        assert getattr(policy, key) == value
