"""attack7: bytes that lie about their length never size a copy into the guest.

What plugsafe copies into guest memory (a call's input, a host function's str or bytes result,
``plugin.memory.write``) was measured with ``len()`` and copied from the object's buffer. A
``bytes`` subclass answers ``len()`` itself, and such an object came out of conversions that
look safe: ``str.encode`` of a str subclass is that subclass's own ``encode``, and ``bytes(x)``
returns whatever bytes subclass ``x.__bytes__`` made. A 1-byte buffer that says it is 4096
bytes long was copied as 4096 bytes: 4095 bytes of the host process's heap (pointers and all)
went into the plugin's memory, where the plugin reads them (a host function's result), or the
call failed with an untyped ValueError/IndexError (a call's input). Each is now copied as the
plain bytes its buffer holds (a str as the UTF-8 of the str it holds).
"""

from __future__ import annotations

import pytest

import plugsafe

from conftest import LoadFn
from wat import ECHO, abi_module


class Big(bytes):
    """Holds what it holds, says it is 4096 bytes long."""

    def __len__(self) -> int:
        return 4096


class LyingStr(str):
    """Encodes as a 1-byte Big, whatever it holds."""

    def encode(self, *_args: object, **_kwargs: object) -> bytes:
        return Big(b"x")


class MadeBig(bytes):
    """``bytes()`` of it is a Big (``__bytes__`` may return any bytes subclass)."""

    def __bytes__(self) -> bytes:
        return Big(b"x")


# ``get`` answers what host function ``answer`` returned, ``blob`` what ``blob`` returned.
HOST_RESULTS = abi_module(
    """
  (func (export "get") (param $p i32) (param $n i32) (result i64) (local $r i64)
    (local.set $r (call $answer))
    (call $ok (i32.wrap_i64 (i64.shr_u (local.get $r) (i64.const 32)))
              (i32.wrap_i64 (local.get $r))))
  (func (export "blob") (param $p i32) (param $n i32) (result i64) (local $r i64)
    (local.set $r (call $blob))
    (call $ok (i32.wrap_i64 (i64.shr_u (local.get $r) (i64.const 32)))
              (i32.wrap_i64 (local.get $r))))""",
    imports='(import "plugsafe" "answer" (func $answer (result i64)))'
    '(import "plugsafe" "blob" (func $blob (result i64)))',
)


@pytest.fixture
def results_plugin(host: plugsafe.Host) -> plugsafe.Plugin:
    @host.function
    def answer() -> str:
        return LyingStr("hello")

    @host.function
    def blob() -> bytes:
        return MadeBig(b"abc")

    return host.load(HOST_RESULTS.encode(), policy=plugsafe.Policy(allow={"answer", "blob"}))


def test_a_host_functions_str_result_is_the_str_it_holds(
    results_plugin: plugsafe.Plugin,
) -> None:
    for _ in range(3):
        assert results_plugin.call("get") == b"hello"


def test_a_host_functions_bytes_result_is_as_long_as_its_buffer(
    results_plugin: plugsafe.Plugin,
) -> None:
    for _ in range(3):
        assert results_plugin.call("blob") == b"x"


@pytest.mark.parametrize(
    ("data", "want"), [(LyingStr("hi"), b"hi"), (MadeBig(b"abc"), b"x"), (Big(b"yz"), b"yz")]
)
def test_a_calls_input_is_as_long_as_its_buffer(load: LoadFn, data: object, want: bytes) -> None:
    p = load(ECHO)
    for _ in range(3):
        assert p.call("echo", data) == want  # type: ignore[arg-type]


def test_memory_write_copies_what_the_buffer_holds(load: LoadFn) -> None:
    p = load(ECHO)
    p.memory.write(60000, MadeBig(b"abc"))
    assert p.memory.read(60000, 8) == b"x" + bytes(7)
    p.memory.write(60100, Big(b"yz"))
    assert p.memory.read(60100, 8) == b"yz" + bytes(6)


class LyingInt(int):
    """An offset that says it is small and in range to every comparison and sum."""

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return False

    def __add__(self, other: object) -> int:
        return 8

    __radd__ = __add__


@pytest.mark.parametrize("offset", [1 << 40, 65536 + 4096, -(1 << 20)])
def test_memory_offsets_are_the_ints_they_hold(load: LoadFn, offset: int) -> None:
    # The range checks compared the object itself: every offset passed, and the memory view
    # clamped the slice (a negative one wrote at 0, the others failed untyped).
    p = load(ECHO)
    before = p.memory.read(0, 16)
    with pytest.raises(plugsafe.MemoryAccessError):
        p.memory.read(LyingInt(offset), 8)
    with pytest.raises(plugsafe.MemoryAccessError):
        p.memory.write(LyingInt(offset), b"AAAAAAAA")
    assert p.memory.read(0, 16) == before
    with pytest.raises(plugsafe.MemoryAccessError):
        p.memory.read(0, LyingInt(offset))


# A WASI command that copies up to 64 bytes of stdin to stdout.
CAT = """(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 64))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 12)))))"""


def test_stdin_is_as_long_as_its_buffer(host: plugsafe.Host) -> None:
    wasi = plugsafe.Wasi(stdin=MadeBig(b"abc"))
    assert type(wasi.stdin) is bytes and wasi.stdin == b"x"
    p = host.load(CAT.encode(), policy=plugsafe.Policy(wasi=wasi))
    assert p.run().stdout == b"x"
    assert p.run(stdin=MadeBig(b"abc")).stdout == b"x"
    assert p.run(stdin=b"plain").stdout == b"plain"


def test_a_components_string_and_bytes_arguments_are_what_their_buffers_hold(
    host: plugsafe.Host,
) -> None:
    # (Before: a ValueError from the copy's own size check, untyped.)
    from component_wat import WORLD

    with host.load(WORLD.encode(), policy=plugsafe.Policy(fuel=1_000_000)) as world:
        for _ in range(2):
            assert world.invoke("echo", LyingStr("hello")) == "hello"
            assert world.invoke("echo-bytes", MadeBig(b"abc")) == b"x"
            assert world.invoke("size", MadeBig(b"abc")) == 1


class SaysSmall(int):
    """Any int that says it is in every range, and 7 when asked for its int."""

    def __le__(self, other: object) -> bool:
        return True

    def __ge__(self, other: object) -> bool:
        return True

    def __int__(self) -> int:
        return 7


def test_a_components_integer_arguments_are_the_ints_they_hold(host: plugsafe.Host) -> None:
    # Range-checked through the subclass's comparisons and lowered as its __int__: 2**32 + 3
    # passed as a u32 and was added as 7 (or truncated to 3 by wasmtime).
    from component_wat import WORLD

    with host.load(WORLD.encode(), policy=plugsafe.Policy(fuel=1_000_000)) as world:
        assert world.invoke("add", SaysSmall(1), SaysSmall(2)) == 3
        with pytest.raises(plugsafe.SignatureError, match="out of range"):
            world.invoke("add", SaysSmall(2**32 + 3), 1)
