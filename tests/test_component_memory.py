"""A component's memory cap, seen through plugsafe's memory creator (``_runtime._hostmem``).

wasmtime's C API cannot read a component's memory, so plugsafe allocates components' linear
memories itself: a growth past the policy's ``memory`` (the sum of the instance's memories) is
refused *and recorded*, so a call that then traps raises MemoryLimitExceeded; an initial size
over the cap fails the load the same way; ``last_call.memory_bytes`` is the instance's memory;
every memory is unmapped when its instance goes. Fixtures are component text (no toolchain).
"""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plugsafe
from plugsafe import Host, MemoryLimitExceeded, Policy
from plugsafe._runtime import _component as rc
from plugsafe._runtime import _hostmem

wf_linear_memory = wasmtime._ffi.wasmtime_linear_memory_t

pytestmark = pytest.mark.skipif(
    not _hostmem.AVAILABLE, reason="plugsafe's memory creator needs a 64-bit POSIX host"
)

PAGE = 65536
MiB = 1 << 20

# One core module with two memories: "hog" grows the first and traps (as an allocator does) when
# the growth is refused; "grow"/"grow2" grow either and hand memory.grow's answer back; "spin"
# grows the first, then loops (fuel or the deadline must name themselves, not the memory).
_CORE = """
  (core module $m
    (memory (export "memory") {first})
    (memory $two {second})
    {data}
    (func (export "hog") (param i32) (result i32)
      (if (i32.eq (memory.grow (local.get 0)) (i32.const -1)) (then unreachable))
      (memory.size))
    (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
    (func (export "grow2") (param i32) (result i32) (memory.grow $two (local.get 0)))
    (func (export "spin") (param i32) (result i32)
      (drop (memory.grow (local.get 0)))
      (loop br 0)
      (i32.const 0))
    (func (export "peek") (param i32) (result i32) (i32.load (local.get 0)))
    (func (export "fill") (param i32) (result i32)
      ;; touch every byte of the first memory: the pages become resident
      (memory.fill (i32.const 0) (i32.const 7) (i32.mul (memory.size) (i32.const 65536)))
      (memory.size))
    {start}
  )
  (core instance $i (instantiate $m))
"""
_FUNCS = ["hog", "grow", "grow2", "spin", "peek", "fill"]


def component(first: int = 1, second: int = 1, data: str = "", start: str = "") -> bytes:
    parts = ["(component", _CORE.format(first=first, second=second, data=data, start=start)]
    for name in _FUNCS:
        sig = '(param "pages" u32) (result s32)'
        parts.append(f'(func ${name} {sig} (canon lift (core func $i "{name}")))')
        parts.append(f'(export "{name}" (func ${name}))')
    parts.append(")")
    return "\n".join(parts).encode()


MEM = component()


@pytest.fixture(scope="module")
def host() -> Any:
    with Host() as h:
        yield h


def test_a_growth_past_the_cap_that_traps_is_a_memory_limit_and_the_next_call_works(
    host: Host,
) -> None:
    with host.load_component(MEM, policy=Policy(memory=MiB, fuel=1_000_000)) as plugin:
        assert plugin.invoke("hog", 4) == 5  # 2 memories of 1 page + 4: 6 of 16 pages
        with pytest.raises(MemoryLimitExceeded) as info:
            plugin.invoke("hog", 11)  # 17 pages in all: refused, then unreachable
        err = info.value
        assert err.limit == "memory" and err.value == MiB and err.phase == "call"
        assert "memory.grow" in str(err) and "1 MiB" in str(err) and "'hog'" in str(err)
        stats = plugin.last_call
        assert stats is not None and stats.function == "hog"
        assert stats.memory_bytes == 6 * PAGE  # the refused growth took nothing
        # A fresh instance: the memory is back to its initial size, and works.
        assert plugin.invoke("hog", 1) == 2
        assert plugin.invoke("hog", 9) == 11  # 11 + 1 pages: under the cap
        assert plugin.last_call is not None and plugin.last_call.memory_bytes == 12 * PAGE


def test_a_refused_growth_the_guest_survives_is_no_error(host: Host) -> None:
    with host.load_component(MEM, policy=Policy(memory=MiB)) as plugin:
        assert plugin.invoke("grow", 20) == -1  # refused: the guest sees -1 and carries on
        assert plugin.invoke("grow", 1) == 1
        assert plugin.invoke("grow", 0) == 2  # the same instance: nothing was replaced


def test_a_refusal_belongs_to_its_own_call_only(host: Host) -> None:
    boom = MEM.replace(
        b'(func (export "fill")',
        b'(func (export "boom") (param i32) (result i32) unreachable)\n    (func (export "fill")',
    ).replace(
        b'(export "fill" (func $fill))',
        b'(export "fill" (func $fill))'
        b'(func $boom (param "x" u32) (result s32) (canon lift (core func $i "boom")))'
        b'(export "boom" (func $boom))',
    )
    with host.load_component(boom, policy=Policy(memory=MiB)) as plugin:
        assert plugin.invoke("grow", 20) == -1
        with pytest.raises(plugsafe.PluginTrap) as info:
            plugin.invoke("boom", 0)  # a trap with no refusal in this call
        assert not isinstance(info.value, MemoryLimitExceeded)


def test_the_cap_is_on_all_the_memories_together(host: Host) -> None:
    with host.load_component(MEM, policy=Policy(memory=MiB)) as plugin:
        assert plugin.invoke("grow", 9) == 1  # 10 + 1 pages
        assert plugin.invoke("grow2", 5) == 1  # 10 + 6 = 16 pages: the cap exactly
        assert plugin.invoke("grow2", 1) == -1
        assert plugin.invoke("grow", 1) == -1
        assert plugin.last_call is not None and plugin.last_call.memory_bytes == MiB


def test_an_initial_memory_over_the_cap_is_a_memory_limit_at_load(host: Host) -> None:
    # Each memory alone fits (10 pages of 16), both together do not.
    with pytest.raises(MemoryLimitExceeded) as info:
        host.load_component(component(10, 10), policy=Policy(memory=MiB))
    assert info.value.phase == "load" and info.value.value == MiB
    assert "1.2 MiB" in str(info.value) or "1280 KiB" in str(info.value)
    with host.load_component(component(10, 6), policy=Policy(memory=MiB)) as plugin:
        assert plugin.invoke("grow", 0) == 10


def test_fuel_and_the_deadline_name_themselves_after_a_refused_growth(host: Host) -> None:
    fuel = Policy(memory=MiB, fuel=100_000)
    with host.load_component(MEM, policy=fuel) as plugin, pytest.raises(plugsafe.FuelExhausted):
        plugin.invoke("spin", 100)
    timed = Policy(memory=MiB, timeout=0.1)
    with (
        host.load_component(MEM, policy=timed) as plugin,
        pytest.raises(plugsafe.DeadlineExceeded),
    ):
        plugin.invoke("spin", 100)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    cap_pages=st.integers(0, 40),
    grows=st.lists(st.tuples(st.booleans(), st.integers(0, 2**32 - 1)), max_size=12),
)
def test_grows_match_a_model_of_the_cap(
    host: Host, cap_pages: int, grows: list[tuple[bool, int]]
) -> None:
    # Hostile sizes too (u32 up to 4 Gi pages): each grow succeeds exactly when the sum of both
    # memories stays within the cap, and memory_bytes always says the sum.
    policy = Policy(memory=cap_pages * PAGE)
    if cap_pages < 2:
        with pytest.raises(MemoryLimitExceeded):
            host.load_component(MEM, policy=policy)
        return
    sizes = [1, 1]
    with host.load_component(MEM, policy=policy) as plugin:
        for second, pages in grows:
            got = plugin.invoke("grow2" if second else "grow", pages)
            i = 1 if second else 0
            fits = sum(sizes) + pages <= cap_pages and sizes[i] + pages <= 65536
            assert got == (sizes[i] if fits else -1)
            if fits:
                sizes[i] += pages
            assert plugin.last_call is not None
            assert plugin.last_call.memory_bytes == sum(sizes) * PAGE


def test_last_call_memory_bytes_is_the_instances_memory(host: Host) -> None:
    with host.load_component(MEM, policy=Policy(memory=64 * MiB)) as plugin:
        assert plugin.invoke("grow", 0) == 1
        assert plugin.last_call is not None and plugin.last_call.memory_bytes == 2 * PAGE
        assert plugin.invoke("grow", 100) == 1
        assert plugin.last_call is not None and plugin.last_call.memory_bytes == 102 * PAGE
        assert plugin.invoke("fill", 0) == 101  # the grown pages are readable and writable


def test_past_the_end_of_a_memory_is_out_of_bounds_not_the_hosts(host: Host) -> None:
    # The reservation past the memory's size (and the guard after it) is mapped PROT_NONE:
    # compiled code relies on it to trap, and the host must never read another mapping there.
    with host.load_component(MEM, policy=Policy(memory=MiB)) as plugin:
        assert plugin.invoke("grow", 1) == 1
        assert plugin.invoke("peek", 2 * PAGE - 4) == 0  # the grown page reads (zeroes)
        for addr in (2 * PAGE - 3, 2 * PAGE, 3 * PAGE, 2**31, 2**32 - 4):
            with pytest.raises(plugsafe.PluginTrap, match="out of bounds") as info:
                plugin.invoke("peek", addr)
            assert not isinstance(info.value, MemoryLimitExceeded)
        assert plugin.invoke("peek", 0) == 0


def test_memories_are_unmapped_when_their_instance_goes(host: Host) -> None:
    gc.collect()
    before = _hostmem.live_memories()
    policy = Policy(memory=8 * MiB, fuel=1_000_000)
    for _ in range(100):
        plugin = host.load_component(MEM, policy=policy)
        assert plugin.invoke("hog", 3) == 4
        with pytest.raises(MemoryLimitExceeded):
            plugin.invoke("hog", 200)  # the trapped instance is dropped
        assert plugin.invoke("grow", 0) == 1  # and a new one made
        plugin.close()
    assert _hostmem.live_memories() == before  # no collection needed: freed on close
    with pytest.raises(MemoryLimitExceeded):
        host.load_component(component(200, 1), policy=policy)  # refused at load: nothing kept
    assert _hostmem.live_memories() == before


def test_threads_instantiating_at_once_each_get_their_own_account(host: Host) -> None:
    # wasmtime names no Store when it asks for a memory: the instantiating thread does.
    errors: list[BaseException] = []

    def worker(pages: int) -> None:
        try:
            policy = Policy(memory=(pages + 2) * PAGE)
            for _ in range(15):
                with host.load_component(component(first=pages), policy=policy) as plugin:
                    assert plugin.invoke("grow", 0) == pages
                    assert plugin.last_call is not None
                    assert plugin.last_call.memory_bytes == (pages + 1) * PAGE
                    assert plugin.invoke("grow", 2) == -1  # each its own cap
                    assert plugin.invoke("grow", 1) == pages
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 3, 5, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_touched_memory_goes_back_to_the_system_at_close(host: Host) -> None:
    policy = Policy(memory=64 * MiB, fuel=None)
    for _ in range(2):  # warm up
        with host.load_component(MEM, policy=policy) as plugin:
            plugin.invoke("grow", 500)
            plugin.invoke("fill", 0)
    base = _rss()
    for i in range(40):  # 40 x 32 MiB touched: 1.3 GiB if nothing were unmapped
        plugin = host.load_component(MEM, policy=policy)
        assert plugin.invoke("grow", 511) == 1
        assert plugin.invoke("fill", 0) == 512
        plugin.close()
        del plugin
        rss = _rss()
        assert rss < base + 200 * MiB, f"cycle {i}: RSS {rss / MiB:.0f} MiB from {base / MiB:.0f}"


def _data_component(size: int, start_loops: int | None = None) -> bytes:
    data = f'(data (i32.const 0) "{"a" * size}")'
    start = ""
    if start_loops is not None:
        # A start function counting down start_loops times (a few units of fuel a round).
        start = (
            f"(func $start (local $n i32) (local.set $n (i32.const {start_loops}))"
            " (loop $l (local.set $n (i32.sub (local.get $n) (i32.const 1)))"
            " (br_if $l (local.get $n))))"
            " (start $start)"
        )
    return component(first=2, data=data, start=start)


def test_copying_data_segments_in_is_not_charged_to_the_policys_fuel(host: Host) -> None:
    # 100 KB of data: copying it in costs ~100k fuel (one per byte), ten times the policy's.
    big = _data_component(100_000)
    assert _hostmem.data_fuel(plugsafe._runtime.wat_to_wasm(big.decode())) == 100_000 + 2
    with host.load_component(big, policy=Policy(fuel=10_000)) as plugin:
        assert plugin.invoke("grow", 0) == 2
    # ... while a start function still gets the policy's fuel, and no more.
    with host.load_component(_data_component(100_000, 100), policy=Policy(fuel=10_000)):
        pass
    with pytest.raises(plugsafe.FuelExhausted) as info:
        host.load_component(_data_component(100_000, 100_000), policy=Policy(fuel=10_000))
    assert info.value.phase == "load"


def test_data_fuel_counts_nested_components_and_refuses_nothing() -> None:
    inner = '(core module $n (memory 1) (data (i32.const 0) "abc") (data "passive"))'
    text = f'(component (component {inner}) (core module $m (memory 1) (data (i32.const 8) "xy")))'
    wasm = plugsafe._runtime.wat_to_wasm(text)
    # Active segments only (a passive one is copied by the guest, if ever): (3+1)+1 + (2+1)+1.
    assert _hostmem.data_fuel(wasm) == 9
    for broken in (wasm[:20], b"\0asm\x01\0\0\0", wasm[: len(wasm) - 3], b""):
        assert _hostmem.data_fuel(broken) == 0


_METERED = Policy(fuel=10_000)  # one engine for every load below: one cache entry


def _cached_entry(tmp_path: Path, wasm: bytes) -> tuple[Any, str, bytes]:
    """Load ``wasm`` once with a disk cache in ``tmp_path``: (its cache, the entry's name, the
    stored artifact)."""
    from plugsafe._cache import ArtifactCache

    with Host(cache_dir=tmp_path) as first, first.load_component(wasm, policy=_METERED):
        pass
    (entry,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    cache = ArtifactCache(entry.parent, salt="unused")
    stored = cache.get(entry.name)
    assert stored is not None
    return cache, entry.name, stored[1]


def _counting_data_fuel(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time _hostmem.data_fuel walks a binary."""
    counted: list[int] = []
    real = _hostmem.data_fuel

    def counting(wasm: bytes) -> int:
        counted.append(1)
        return real(wasm)

    monkeypatch.setattr(_hostmem, "data_fuel", counting)
    return counted


def test_a_load_from_the_disk_cache_keeps_the_data_fuel_and_checks_it_with_the_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The count is kept with the disk entry: a second Host (a new process, say) loading the
    # component from disk charges the same, counted once from the binary to check the entry's
    # word (tidy12: tests/test_tidy12_component_cache.py).
    big = _data_component(100_000)
    cache, name, _ = _cached_entry(tmp_path, big)
    stored = cache.get(name)
    assert stored is not None and stored[0] == b"component;data_fuel=100002"
    counted = _counting_data_fuel(monkeypatch)
    with (
        Host(cache_dir=tmp_path) as second,
        second.load_component(big, policy=_METERED) as plugin,
    ):
        assert plugin.invoke("grow", 0) == 2  # the 100 KB copy is still not the policy's
    assert counted == [1]


@pytest.mark.parametrize(
    "description",
    [
        b"component;data_fuel=x",
        b"component;data_fuel=1;",
        b"component;data_fuel=99999999999999999999",  # over u64 with the policy's fuel
        b"module",
        b"",
    ],
)
def test_a_disk_entry_with_a_strange_description_is_compiled_again(
    tmp_path: Path, description: bytes
) -> None:
    big = _data_component(100_000)
    cache, name, artifact = _cached_entry(tmp_path, big)
    cache.put(name, artifact, description)
    with (
        Host(cache_dir=tmp_path) as second,
        second.load_component(big, policy=_METERED) as plugin,
    ):
        assert plugin.invoke("grow", 0) == 2
    again = cache.get(name)
    assert again is not None and again[0] == b"component;data_fuel=100002"


def test_a_disk_entry_written_before_the_count_was_kept_is_counted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = _data_component(100_000)
    cache, name, artifact = _cached_entry(tmp_path, big)
    cache.put(name, artifact, b"component")  # the description of earlier versions
    counted = _counting_data_fuel(monkeypatch)
    with (
        Host(cache_dir=tmp_path) as second,
        second.load_component(big, policy=_METERED) as plugin,
    ):
        assert plugin.invoke("grow", 0) == 2
    assert counted == [1]  # from the binary, and the entry (intact) is used as it is
    kept = cache.get(name)
    assert kept is not None and kept[0] == b"component"


def _message(err: int) -> str:
    """The message of a ``wasmtime_error_t*`` a callback returned (and free it)."""
    assert err, "the callback returned no error"
    from wasmtime import _ffi as wf

    ptr = ctypes.cast(err, ctypes.POINTER(wf.wasmtime_error_t))
    return str(wasmtime.WasmtimeError._from_ptr(ptr))


def test_the_callbacks_turn_every_failure_into_an_error_for_wasmtime() -> None:
    # Called as wasmtime would, with what a hostile or buggy moment could hand them.
    out = ctypes.pointer(wf_linear_memory())
    assert "outside an instantiation" in _message(
        _hostmem._new_memory(None, None, PAGE, 2**32, 2**32, 0, out)
    )
    size, capacity = ctypes.c_size_t(7), ctypes.c_size_t(7)
    # An env no memory has (never handed out): base 0 and sizes 0, no exception.
    assert _hostmem._get_memory(10**9, ctypes.byref(size), ctypes.byref(capacity)) == 0
    assert "KeyError" in _message(_hostmem._grow_memory(10**9, PAGE))
    _hostmem._free_memory(10**9)  # nothing to free: nothing happens
    with _hostmem.creating(_hostmem.Account(MiB)):
        # A broken out-pointer: the memory is unmapped again, and an error comes back.
        before = _hostmem.live_memories()
        assert "creating a memory failed" in _message(
            _hostmem._new_memory(None, None, PAGE, 2**32, 2**32, 0, None)
        )
        assert _hostmem.live_memories() == before
        assert "over its reservation" in _message(
            _hostmem._new_memory(None, None, 2 * PAGE, 2**32, PAGE, 0, out)
        )


def test_a_failing_creator_fails_the_load_cleanly(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> bool:
        raise RuntimeError("mprotect exploded")

    monkeypatch.setattr(_hostmem, "_protect", broken)
    with pytest.raises(plugsafe.PluginLoadError, match="RuntimeError"):
        host.load_component(MEM)
    monkeypatch.undo()
    with host.load_component(MEM) as plugin:  # nothing was left behind
        assert plugin.invoke("grow", 1) == 1


def test_a_failing_growth_is_a_refusal_to_the_guest_not_a_crash(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    with host.load_component(MEM) as plugin:
        monkeypatch.setattr(_hostmem, "_protect", lambda *_a: 1 / 0)
        assert plugin.invoke("grow", 1) == -1
        monkeypatch.undo()
        assert plugin.invoke("grow", 1) == 1


def test_ctrl_c_during_a_growth_is_raised_once_wasmtime_returns(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_args: object) -> bool:
        raise KeyboardInterrupt

    with host.load_component(MEM) as plugin:
        monkeypatch.setattr(_hostmem, "_protect", interrupted)
        with pytest.raises(KeyboardInterrupt):
            plugin.invoke("grow", 1)  # the guest saw -1 and returned: then the interrupt
        with pytest.raises(KeyboardInterrupt):
            plugin.invoke("hog", 1)  # the guest trapped: the interrupt, not the memory limit
        monkeypatch.undo()
        assert plugin.invoke("grow", 1) == 1  # a fresh instance, growing again
    # The instances the interrupts left are garbage held by their tracebacks' frames: collected
    # now, or a collection during the load below would free them and change the count.
    gc.collect()
    before = _hostmem.live_memories()
    monkeypatch.setattr(_hostmem, "_protect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        host.load_component(MEM)  # interrupted while creating its memory
    monkeypatch.undo()
    assert _hostmem.live_memories() == before  # nothing of it kept


def test_the_ctypes_backend_sees_the_cap_too() -> None:
    code = f"""
import plugsafe
from plugsafe._runtime import BACKEND
assert BACKEND == "ctypes", BACKEND
policy = plugsafe.Policy(memory=1 << 20)
with plugsafe.Host() as host, host.load_component({MEM!r}, policy=policy) as p:
    try:
        p.invoke("hog", 20)
    except plugsafe.MemoryLimitExceeded as exc:
        assert exc.phase == "call"
    else:
        raise AssertionError("no MemoryLimitExceeded")
    assert p.invoke("hog", 1) == 2
    assert p.last_call.memory_bytes == 3 * 65536
print("ok")
"""
    env = {**os.environ, "PLUGSAFE_BACKEND": "ctypes"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_memory_refused_keeps_the_failure() -> None:
    failure = plugsafe._runtime.WasmFailure("wasm trap: unreachable", "TRAP")
    account = _hostmem.Account(100)
    assert rc._after_refusal(failure, account) is failure
    account.refused = (64, 200)
    out = rc._after_refusal(failure, account)
    assert isinstance(out, rc.MemoryRefused)
    assert (out.size, out.asked, out.cap, out.trap_code) == (64, 200, 100, "TRAP")
    for code in ("OUT_OF_FUEL", "INTERRUPT", "STACK_OVERFLOW"):
        limit = plugsafe._runtime.WasmFailure("a limit", code)
        assert rc._after_refusal(limit, account) is limit
    assert rc._after_refusal(failure, None) is failure


def test_artifacts_compiled_with_copy_on_write_are_kept_apart(host: Host) -> None:
    # wasmtime refuses an artifact compiled with copy-on-write initialisation on an engine
    # without it: the disk cache's key says which kind an entry is, so neither evicts the other.
    engine = host._component_engine(False)
    assert engine.host_memory and ";hostmem" in engine.settings
    was = _hostmem.AVAILABLE
    try:
        _hostmem.AVAILABLE = False  # an engine as on a host without the creator
        plain = plugsafe._runtime.Engine(metered=False, max_stack=engine.max_stack, components=True)
    finally:
        _hostmem.AVAILABLE = was
    assert not plain.host_memory and ";hostmem" not in plain.settings
    wasm = plugsafe._runtime.wat_to_wasm(MEM.decode())
    artifact = rc.compile_component(plain, wasm).serialize()
    with pytest.raises(plugsafe._runtime.WasmFailure, match="CoW"):
        rc.deserialize_component(engine, artifact, wasm)
