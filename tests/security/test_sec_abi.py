"""Attacks through the plugin ABI: lying pointers and lengths, wrong versions, forbidden imports.

Every pointer and length a guest hands over is untrusted. These tests hand over the bad ones an
attacker would pick and check that each becomes the precise typed error, that the host function
never sees a bad span, and that the host keeps working.
"""

from __future__ import annotations

import pytest

import plugsafe
from plugsafe import Policy

from sec import assert_healthy, attacker

MiB = 2**20

# "take" is a host function taking bytes (ptr, len); "raw" passes any (ptr, len) to it.
TAKER = attacker(
    '(func (export "raw") (param i32 i32) (result i64) (call $take (local.get 0) (local.get 1)))',
    imports='(import "plugsafe" "take" (func $take (param i32 i32) (result i64)))',
)
# "name" takes a str; the guest passes bytes from its memory.
NAMER = attacker(
    '(func (export "raw") (param i32 i32) (result i64) (call $name (local.get 0) (local.get 1)))',
    imports='(import "plugsafe" "name" (func $name (param i32 i32) (result i64)))',
)
# "lie" returns whatever result word was set with "set_word".
LIAR = attacker(
    """(global $word (mut i64) (i64.const 0))
  (func (export "set_word") (param i64) (global.set $word (local.get 0)))
  (func (export "lie") (param i32 i32) (result i64) (global.get $word))"""
)


def _word(ptr: int, length: int, error: bool = False) -> int:
    w = ((ptr & 0xFFFFFFFF) << 32) | (length & 0xFFFFFFFF) | (0x80000000 if error else 0)
    return w - (1 << 64) if w >= 1 << 63 else w


@pytest.fixture
def taker(host: plugsafe.Host) -> tuple[plugsafe.Plugin, list[bytes]]:
    seen: list[bytes] = []

    @host.function
    def take(data: bytes) -> bytes:
        seen.append(data)
        return data

    return host.load(TAKER.encode(), policy=Policy(allow={"take"})), seen


POINTER_ATTACKS = {
    "negative pointer": (-1, 1),
    "negative pointer and length": (-16, 32),
    "negative length": (0, -1),
    "pointer plus length wraps past 2^32": (0xFFFFFFF0, 0x20),
    "length wraps a pointer past 2^32": (16, 0xFFFFFFF8),
    "just past the end": (65536, 1),
    "straddles the end": (65000, 1000),
    "length over the memory": (0, 65537),
    "both huge": (0x7FFFFFFF, 0x7FFFFFFF),
}


@pytest.mark.parametrize(("ptr", "length"), POINTER_ATTACKS.values(), ids=POINTER_ATTACKS.keys())
def test_host_function_pointer_attack(
    host: plugsafe.Host, taker: tuple[plugsafe.Plugin, list[bytes]], ptr: int, length: int
) -> None:
    """Attack: a bad (pointer, length) for a host function's bytes argument."""
    p, seen = taker
    with pytest.raises(plugsafe.AbiError, match="bytes argument to host function 'take'"):
        p.invoke("raw", ptr, length)
    assert seen == []  # the host function never ran on a bad span
    assert p.call("raw", b"") == b""  # (0, 0) is a valid empty span
    assert_healthy(host, p)


def test_host_function_argument_at_the_very_end_is_exact(
    host: plugsafe.Host, taker: tuple[plugsafe.Plugin, list[bytes]]
) -> None:
    """Control: the last bytes of memory are a valid span, read exactly (no off-by-one)."""
    p, seen = taker
    p.memory.write(65536 - 4, b"tail")
    p.invoke("raw", 65536 - 4, 4)
    assert seen == [b"tail"]


def test_host_function_argument_length_over_the_input_cap(host: plugsafe.Host) -> None:
    """Attack: hand a host function the whole (large) memory as its argument.

    A host-function argument is capped by ``max_host_arg_size`` (checked before anything is
    copied) and by the guest's memory; it is copied once. The quota on host calls bounds how
    often.
    """
    seen: list[int] = []

    @host.function
    def take(data: bytes) -> bytes:
        seen.append(len(data))
        return b""

    # A timeout far off: placing 7 MiB in a fresh instance (its memory grown and faulted in)
    # is part of the call, and on the ctypes path on a loaded machine it ran past the default
    # 1 s (DeadlineExceeded in 'echo': 1 of 2 runs of CI's ctypes leg with two busy processes
    # beside it). The attack is the argument's length, not time.
    policy = Policy(allow={"take"}, memory=8 * MiB, max_host_arg_size=8 * MiB, timeout=30.0)
    p = host.load(TAKER.encode(), policy=policy)
    p.call("echo", b"x" * (7 * MiB))  # grows the memory to about 8 MiB
    size = p.memory.size
    p.invoke("raw", 0, size)
    assert seen == [size]
    with pytest.raises(plugsafe.AbiError):
        p.invoke("raw", 0, size + 1)
    small = host.load(TAKER.encode(), policy=Policy(allow={"take"}, max_host_arg_size=1024))
    with pytest.raises(plugsafe.AbiError, match="max_host_arg_size"):
        small.invoke("raw", 0, 1025)
    assert seen == [size]
    assert_healthy(host, p)


def test_host_function_str_argument_with_invalid_utf8(host: plugsafe.Host) -> None:
    """Attack: invalid UTF-8 (a lone continuation byte, an overlong NUL, a surrogate) as str."""
    seen: list[str] = []

    @host.function
    def name(text: str) -> str:
        seen.append(text)
        return text

    p = host.load(NAMER.encode(), policy=Policy(allow={"name"}))
    for bad in (b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"ok\xff"):
        p.memory.write(100, bad)
        with pytest.raises(plugsafe.AbiError, match="invalid UTF-8"):
            p.invoke("raw", 100, len(bad))
    assert seen == []
    p.memory.write(100, "é€".encode())
    p.invoke("raw", 100, 5)
    assert seen == ["é€"]
    assert_healthy(host, p)


OUTPUT_LIES = {
    "pointer past the end": (65536, 1),
    "straddles the end": (65535, 2),
    "negative pointer": (0xFFFFFFFF, 1),
    "wraps past 2^32": (0xFFFFFFF0, 0x20),
    "length over the memory": (0, 65537),
}


@pytest.mark.parametrize("error", [False, True], ids=["output", "error message"])
@pytest.mark.parametrize(("ptr", "length"), OUTPUT_LIES.values(), ids=OUTPUT_LIES.keys())
def test_output_pointer_or_length_that_lies(
    host: plugsafe.Host, ptr: int, length: int, error: bool
) -> None:
    """Attack: a plugin function returns an output (or error) span outside its memory."""
    p = host.load(LIAR.encode())
    p.invoke("set_word", _word(ptr, length, error))
    what = "error message" if error else "output"
    with pytest.raises(plugsafe.AbiError, match=f"bad {what} pointer"):
        p.call("lie", b"")
    assert_healthy(host, p)


def test_output_length_over_max_output(host: plugsafe.Host) -> None:
    """Attack: claim a 2 GiB output so the host allocates it; refused before any read."""
    p = host.load(LIAR.encode(), policy=Policy(max_output=1024))
    p.invoke("set_word", _word(0, 0x7FFFFFFF))
    with pytest.raises(plugsafe.AbiError, match="max_output"):
        p.call("lie", b"")
    assert_healthy(host, p)


@pytest.mark.parametrize("declared", [0, 2, -1, 0x7FFFFFFF])
def test_wrong_abi_version(host: plugsafe.Host, declared: int) -> None:
    """Attack (or accident): a guest declaring an ABI version plugsafe does not speak."""
    wat = attacker("").replace(
        '(func (export "plugsafe_abi_version") (result i32) i32.const 1)',
        f'(func (export "plugsafe_abi_version") (result i32) i32.const {declared})',
    )
    with pytest.raises(plugsafe.AbiVersionError) as info:
        host.load(wat.encode())
    assert info.value.declared == declared and info.value.supported == plugsafe.ABI_VERSION
    assert str(declared) in str(info.value) and str(plugsafe.ABI_VERSION) in str(info.value)
    assert_healthy(host)


def test_abi_version_function_that_loops(host: plugsafe.Host) -> None:
    """Attack: plugsafe_abi_version never returns, to hang the load."""
    wat = attacker("").replace(
        '(func (export "plugsafe_abi_version") (result i32) i32.const 1)',
        '(func (export "plugsafe_abi_version") (result i32) (loop $l (br $l)) i32.const 1)',
    )
    with pytest.raises(plugsafe.DeadlineExceeded) as info:
        host.load(wat.encode(), policy=Policy(timeout=0.05))
    assert info.value.phase == "load"
    assert_healthy(host)


def test_unknown_and_disallowed_imports(host: plugsafe.Host) -> None:
    """Attack: import functions the host lacks and ones it has but the policy forbids."""

    @host.function
    def secret() -> int:
        raise AssertionError("never callable by this plugin")

    wat = """(module
      (import "plugsafe" "secret" (func (result i64)))
      (import "plugsafe" "no_such_fn" (func))
      (import "env" "system" (func (param i32)))
      (import "plugsafe" "log" (memory 1))
      (import "plugsafe" "log" (func (param i32 i32 i32))))"""
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        host.load(wat.encode(), policy=Policy())
    assert set(info.value.imports) == {
        "plugsafe.secret",
        "plugsafe.no_such_fn",
        "env.system",
        "plugsafe.log",
    }
    reasons = {(p.module, p.name, p.reason) for p in info.value.problems}
    assert ("plugsafe", "secret", "not allowed") in reasons
    assert ("plugsafe", "no_such_fn", "unknown") in reasons
    assert ("env", "system", "unknown") in reasons
    assert_healthy(host)


def test_import_with_a_different_signature(host: plugsafe.Host) -> None:
    """Attack: import an allowed function with another type, to confuse argument decoding."""
    wat = '(module (import "plugsafe" "log" (func (param i64 i64))))'
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        host.load(wat.encode(), policy=Policy(allow={"log"}))
    assert info.value.problems[0].reason == "wrong type"
    assert_healthy(host)


@pytest.mark.parametrize(
    "module", ["wasi_snapshot_preview1", "wasi_unstable", "wasi:cli/environment@0.2.0"]
)
def test_wasi_imports_without_the_capability(host: plugsafe.Host, module: str) -> None:
    """Attack: import WASI (files, clocks, environment) when the policy grants no WASI."""
    wat = f"""(module
      (import "{module}" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
      (import "{module}" "environ_get" (func (param i32 i32) (result i32))))"""
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        host.load(wat.encode())
    assert len(info.value.problems) == 2
    assert all("WASI is not enabled" in p.detail for p in info.value.problems)
    assert_healthy(host)


def test_imported_memory_table_or_global(host: plugsafe.Host) -> None:
    """Attack: import a memory, table or global, hoping to share host state."""
    wat = """(module
      (import "plugsafe" "memory" (memory 1))
      (import "plugsafe" "table" (table 1 funcref))
      (import "plugsafe" "g" (global i32)))"""
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        host.load(wat.encode())
    assert len(info.value.problems) == 3
    assert_healthy(host)
