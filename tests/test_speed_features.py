"""The speed features' behaviour (their speed is measured in benchmarks/, never here)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import plugsafe
from plugsafe import Policy, _runtime

from wat import ECHO, abi_module

COUNTER = """(module
  (global $n (mut i32) (i32.const 0))
  (memory (export "memory") 1)
  (func (export "next") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n))
  (func (export "spin") (loop $l (br $l))))"""


# -- call paths -------------------------------------------------------------------------------


def test_fast_backend_is_used_when_layouts_match() -> None:
    expected = os.environ.get("PLUGSAFE_BACKEND") or "cffi"
    assert expected == _runtime.BACKEND


def test_forced_fallback_backend_runs() -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests'); import plugsafe, wat; "
        "from plugsafe import _runtime; h = plugsafe.Host(); "
        "p = h.load(wat.ECHO.encode()); "
        "print(_runtime.BACKEND, p.call('echo', b'hi').decode(), p.invoke('add', 2, 3))"
    )
    env = dict(os.environ, PLUGSAFE_BACKEND="ctypes")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ctypes", "hi", "5"]


def test_layout_mismatch_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    from wasmtime import _ffi as wf

    class Wrong(ctypes.Structure):
        _fields_ = [("x", ctypes.c_uint8 * 7)]

    monkeypatch.setattr(wf, "wasmtime_func_t", Wrong)
    monkeypatch.delenv("PLUGSAFE_BACKEND", raising=False)
    with pytest.warns(RuntimeWarning, match="slower ctypes call path.*wasmtime_func_t"):
        backend = _runtime._select_backend()
    assert backend.name == "ctypes"


# -- fresh instances --------------------------------------------------------------------------


def test_fresh_instance_keeps_no_state_between_calls() -> None:
    with plugsafe.Host() as host:
        fresh = host.load(COUNTER.encode(), policy=Policy(fresh_instance=True))
        assert [fresh.invoke("next") for _ in range(3)] == [1, 1, 1]
        reused = host.load(COUNTER.encode())
        assert [reused.invoke("next") for _ in range(3)] == [1, 2, 3]
        echo = host.load(ECHO.encode(), policy=Policy(fresh_instance=True))
        assert echo.call("echo", b"a") == b"a" and echo.call("echo", b"bc") == b"bc"
    with pytest.raises(plugsafe.PolicyError, match="fresh_instance"):
        Policy(fresh_instance=1)  # type: ignore[arg-type]


# -- the on-disk compile cache ----------------------------------------------------------------


def _load_in_fresh_process(cache: Path, wat_path: Path) -> str:
    code = (
        "import sys, plugsafe; h = plugsafe.Host(cache_dir=sys.argv[1]); "
        "p = h.load(sys.argv[2]); print(p.invoke('add', 20, 22))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(cache), str(wat_path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_cache_is_used_by_a_fresh_process(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    src = tmp_path / "echo.wat"
    src.write_text(ECHO)
    assert _load_in_fresh_process(cache, src) == "42"
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    before = entries[0].stat().st_mtime_ns
    assert _load_in_fresh_process(cache, src) == "42"
    assert entries[0].stat().st_mtime_ns == before  # read, not rewritten: it was a hit


def test_corrupt_cache_entry_is_discarded_and_recompiled(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with plugsafe.Host(cache_dir=cache) as host:
        host.load(ECHO.encode())
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    data = bytearray(entry.read_bytes())
    data[-100] ^= 0xFF  # flip bits inside the artifact: the digest no longer matches
    entry.write_bytes(bytes(data))
    with plugsafe.Host(cache_dir=cache) as host:
        assert host.load(ECHO.encode()).call("echo", b"ok") == b"ok"
    assert entry.read_bytes() != bytes(data)  # replaced by a good entry


def test_foreign_bytes_in_the_cache_are_never_deserialized(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with plugsafe.Host(cache_dir=cache) as host:
        host.load(ECHO.encode())
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    entry.write_bytes(b"\x7fELF not ours at all")
    with plugsafe.Host(cache_dir=cache) as host:
        assert host.load(ECHO.encode()).invoke("add", 1, 1) == 2


def test_cached_description_matches_what_wasmtime_reports(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    wat = abi_module(
        '(func (export "pair") (param i64 f64) (result i64 f64) local.get 0 local.get 1)'
        '(global (export "g") (mut i32) (i32.const 3)) (table (export "t") 2 funcref)',
        imports='(import "plugsafe" "log" (func (param i32 i32 i32)))',
    )
    policy = Policy(allow={"log"})
    with plugsafe.Host() as host:
        fresh = host.load(wat.encode(), policy=policy)
        expected = (dict(fresh.exports), fresh.imports)
    with plugsafe.Host(cache_dir=cache) as host:
        host.load(wat.encode(), policy=policy)  # compiles and fills the cache
    with plugsafe.Host(cache_dir=cache) as host:
        cached = host.load(wat.encode(), policy=policy)  # from the cache entry
        assert (dict(cached.exports), cached.imports) == expected
        assert cached.invoke("pair", 5, 0.5) == (5, 0.5)


def test_unreadable_description_is_discarded_and_recompiled(tmp_path: Path) -> None:
    from plugsafe._cache import ArtifactCache

    cache = tmp_path / "cache"
    with plugsafe.Host(cache_dir=cache) as host:
        host.load(ECHO.encode())
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    reader = ArtifactCache(cache, salt="unused")
    got = reader.get(entry.name)
    assert got is not None
    # A well-formed entry (its digest matches) whose description is not what plugsafe writes.
    reader.put(entry.name, got[1], b'{"imports": [], "exports": [["add", "bogus"]]}')
    with plugsafe.Host(cache_dir=cache) as host:
        assert host.load(ECHO.encode()).invoke("add", 2, 2) == 4
    again = reader.get(entry.name)
    assert again is not None and again[0] != b'{"imports": [], "exports": [["add", "bogus"]]}'


def test_cache_dir_writable_by_others_is_not_used(tmp_path: Path) -> None:
    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(0o777)
    with (
        pytest.warns(UserWarning, match="writable by no one else"),
        plugsafe.Host(cache_dir=cache) as host,
    ):
        host.load(ECHO.encode())
    assert list(cache.iterdir()) == []


def test_cache_keys_separate_metered_and_unmetered(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with plugsafe.Host(cache_dir=cache) as host:
        host.load(ECHO.encode())
        host.load(ECHO.encode(), policy=Policy(fuel=1000))
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


# -- pools and asyncio ------------------------------------------------------------------------


def test_pool_gives_each_instance_its_own_state() -> None:
    with plugsafe.PluginPool(COUNTER.encode(), Policy(), size=3) as pool:
        assert pool.size == 3
        results = [pool.invoke("next") for _ in range(6)]
        assert sorted(results) == [1, 1, 1, 2, 2, 2]  # round-robin over 3 instances
    assert pool.closed
    with pytest.raises(plugsafe.PluginClosedError):
        pool.invoke("next")


def test_pool_runs_calls_in_parallel() -> None:
    # Two calls that each spin until their timeout: with size=2 they overlap, so a third
    # thread's call to the pool is not needed to prove it; we check both ran at once.
    with plugsafe.PluginPool(COUNTER.encode(), Policy(timeout=0.3), size=2) as pool:
        starts: list[float] = []
        ends: list[float] = []

        def spin() -> None:
            starts.append(time.monotonic())
            with pytest.raises(plugsafe.DeadlineExceeded):
                pool.invoke("spin")
            ends.append(time.monotonic())

        threads = [threading.Thread(target=spin) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert max(starts) < min(ends)  # the second began before the first ended


def test_pool_shares_a_host_and_validates_size() -> None:
    with plugsafe.Host() as host:
        pool = plugsafe.PluginPool(ECHO.encode(), size=2, host=host, name="p")
        assert pool.name == "p"
        assert pool.call("echo", b"x") == b"x"
        assert pool.call_json("echo", [1]) == [1]
        pool.close()
        assert not host.closed  # a host the caller passed in stays open
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            plugsafe.PluginPool(ECHO.encode(), size=bad)  # type: ignore[arg-type]


def test_async_calls_never_block_the_event_loop() -> None:
    async def main() -> None:
        with plugsafe.Host() as host:
            spinner = host.load(COUNTER.encode(), policy=Policy(timeout=0.3))
            echo = host.load(ECHO.encode())
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            tick_task = asyncio.create_task(ticker())
            with pytest.raises(plugsafe.DeadlineExceeded):
                await spinner.invoke_async("spin")
            tick_task.cancel()
            # The loop ran all the while the plugin spun: ~30 ticks of 10 ms in its 0.3 s on an
            # idle machine, about 1 if the call blocked the loop; 5 leaves room for a loaded one.
            assert ticks >= 5
            assert await echo.call_async("echo", b"a") == b"a"
            assert await echo.call_json_async("echo", {"k": 1}) == {"k": 1}
            assert await echo.invoke_async("add", 1, 2) == 3
            with plugsafe.PluginPool(ECHO.encode(), size=2, host=host) as pool:
                outs = await asyncio.gather(*(pool.call_async("echo", f"{i}") for i in range(20)))
                assert outs == [f"{i}".encode() for i in range(20)]
                assert await pool.invoke_async("add", 2, 2) == 4
                assert await pool.call_json_async("echo", "s") == "s"

    asyncio.run(main())


def test_pre_parsed_cffi_declarations_are_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("cffi")
    from plugsafe import _cdef

    fresh = tmp_path / "gen.py"
    _cdef.generate(fresh)
    committed = Path(_cdef.__file__).with_name("_wasmtime_cffi.py")
    assert committed.read_text() == fresh.read_text(), "run: python -m plugsafe._cdef"


def test_cffi_backend_uses_the_pre_parsed_declarations() -> None:
    if _runtime.BACKEND != "cffi":
        pytest.skip("the ctypes path is forced")
    from plugsafe import _wasmtime_cffi

    assert _runtime._B.ffi is _wasmtime_cffi.ffi  # type: ignore[union-attr]
