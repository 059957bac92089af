"""Binding the compiled call cheaply (issue 14, goals 4 and 6: perf9).

A function's compiled call (``plugsafe._speedups.RawCall``) is bound at its second call on an
instance (``Instance.fast_call``). Binding used to read four addresses through cffi per
function (each ~0.3 µs hot, ~1 µs on a new plugin) and bound the allocator along with every ABI
function, even for a guest with an input buffer, which never calls it for small inputs. Now:
the context's address is the store's own int, the slots' is read once per scratch (shared by
every instance of a Linker), the trap slot's is computed from it, and the allocator is bound
only once an input goes through it on a compiled call.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
from inbuf_wat import guest

import plugsafe
from plugsafe import _runtime as rt

from wat import ECHO

# A guest with a 256-byte input buffer, counting its plugsafe_alloc calls (``allocs``).
INBUF = guest()


@pytest.fixture(autouse=True)
def _compiled() -> None:
    if not rt.SPEEDUPS:
        pytest.skip("the compiled call is not in use here (PLUGSAFE_SPEEDUPS=0, ctypes, unbuilt)")


def _inst(plugin: plugsafe.Plugin) -> Any:
    inst = plugin.invoke.__self__.instance  # type: ignore[attr-defined]
    assert inst is not None
    return inst


class _CountingFFI:
    """The backend's ffi, counting the addresses read through it (casts to ``uintptr_t``)."""

    def __init__(self, ffi: Any) -> None:
        self._ffi = ffi
        self.reads = 0

    def cast(self, ctype: str, value: object) -> Any:
        if ctype == "uintptr_t":
            self.reads += 1
        return self._ffi.cast(ctype, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ffi, name)


@pytest.fixture()
def counting(host: plugsafe.Host) -> Iterator[tuple[_CountingFFI, Any]]:
    backend: Any = _inst(host.load(ECHO.encode()))._b
    real = backend.ffi
    counter = _CountingFFI(real)
    backend.ffi = counter
    try:
        yield counter, backend
    finally:
        backend.ffi = real


def test_binding_reads_only_the_new_function_handles_address_through_cffi(
    host: plugsafe.Host, counting: tuple[_CountingFFI, Any]
) -> None:
    counter, _backend = counting
    first = host.load(INBUF.encode())
    assert first.call("echo", b"one") == b"one"
    counter.reads = 0
    assert first.call("echo", b"two") == b"two"  # binds echo's compiled call
    # The function's handle and the scratch slots (the first binding on this Linker).
    assert counter.reads == 2
    assert type(_inst(first).funcs["echo"].call).__name__ == "RawCall"
    first.close()
    # A new plugin of the same module takes the closed one's Linker, and its scratch slots,
    # whose address was read already: only the new instance's function handle is read.
    second = host.load(INBUF.encode())
    assert second.call("echo", b"one") == b"one"
    counter.reads = 0
    assert second.call("echo", b"two") == b"two"
    assert counter.reads == 1
    assert second.call("echo", b"three") == b"three"


def test_an_input_buffer_guests_allocator_is_bound_only_once_an_input_goes_through_it(
    host: plugsafe.Host,
) -> None:
    plugin = host.load(INBUF.encode())
    for data in (b"a", b"bb", b"ccc"):
        assert plugin.call("echo", data) == data
    inst = _inst(plugin)
    assert type(inst.funcs["echo"].call).__name__ == "RawCall"
    alloc = inst.funcs["plugsafe_alloc"]
    assert not alloc.fast and isinstance(alloc.call, functools.partial)
    assert plugin.invoke("allocs") == 0
    # Over the buffer: through plugsafe_alloc, now on a compiled call of echo: bound with it.
    big = bytes(range(256)) * 2
    assert plugin.call("echo", big) == big
    assert alloc.fast and type(alloc.call).__name__ == "RawCall"
    assert plugin.call("echo", big[::-1]) == big[::-1]
    assert plugin.call("echo", b"small") == b"small"
    assert plugin.invoke("allocs") == 2


def test_a_v1_guests_allocator_is_bound_with_its_function(host: plugsafe.Host) -> None:
    plugin = host.load(ECHO.encode())
    assert plugin.call("echo", b"one") == b"one"
    inst = _inst(plugin)
    assert isinstance(inst.funcs["plugsafe_alloc"].call, functools.partial)
    assert plugin.call("echo", b"two") == b"two"
    assert type(inst.funcs["echo"].call).__name__ == "RawCall"
    assert type(inst.funcs["plugsafe_alloc"].call).__name__ == "RawCall"


@pytest.mark.parametrize("guest", [ECHO, INBUF], ids=["v1", "input buffer"])
def test_calls_stay_right_across_plugins_sharing_a_linker_and_fresh_instances(
    host: plugsafe.Host, guest: str
) -> None:
    # The slots' address is kept per scratch, which plugins of one Linker share in turn, and
    # fresh instances of one plugin at once: every call must still land in its own store.
    for i in range(20):
        plugin = host.load(guest.encode())
        for j in range(4):
            data = f"{i}-{j}".encode() * (1 + 100 * (j % 2))
            assert plugin.call("echo", data) == data
        plugin.close()
    fresh = host.load(guest.encode(), policy=plugsafe.Policy(fresh_instance=True))
    keep = host.load(guest.encode())
    for j in range(6):
        data = f"fresh {j}".encode() * (1 + 100 * (j % 2))
        assert fresh.call("echo", data) == data
        assert keep.call("echo", data[::-1]) == data[::-1]


def test_the_addresses_bound_without_cffi_are_the_ones_cffi_reads(host: plugsafe.Host) -> None:
    # The context's address is the store's int and the trap slot's is computed from the
    # slots' (Instance.fast_call): both must be what reading the cffi objects gives.
    plugin = host.load(INBUF.encode())
    assert plugin.call("echo", b"one") == b"one"
    assert plugin.call("echo", b"two") == b"two"
    inst = _inst(plugin)
    ref = inst.funcs["echo"]
    b = inst._b
    assert ref.at[0] == b.address(ref.buf) != 0
    assert b.address(ref.trap) == ref.at[0] + 16 * ref.width
    assert b.address(inst._ctx) == inst._store.ctx != 0
