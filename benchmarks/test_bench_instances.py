"""Instances and loading: fresh instance + call, load again in-process, load in a fresh process."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import plugsafe

from conftest import SMALL, U64, ByHand, has_policy_field, tag
from guests import EXTISM_PURE_GUEST

FRESH_LOAD = Path(__file__).with_name("fresh_load.py")
REPO = Path(plugsafe.__file__).resolve().parent.parent
CHILD_ROUNDS = 7

# -- a brand-new instance for every call ---------------------------------------------------------


def test_fresh_instance_plugsafe(benchmark: Any, ps_host: plugsafe.Host, pure_wasm: bytes) -> None:
    tag(benchmark, "fresh instance + call", "plugsafe")
    if not has_policy_field("fresh_instance"):
        pytest.skip("this plugsafe has no Policy(fresh_instance=True) yet")
    policy = plugsafe.Policy(fresh_instance=True)  # type: ignore[call-arg,unused-ignore]
    plugin = ps_host.load(pure_wasm, policy=policy)
    assert benchmark(plugin.call, "echo", SMALL) == SMALL
    plugin.close()


def test_fresh_instance_wasmtime(benchmark: Any, wt: ByHand) -> None:
    """By hand: a new Store, Linker.instantiate, the exports, then the ABI echo."""
    tag(benchmark, "fresh instance + call", "wasmtime-py")

    def run() -> bytearray:
        store = wasmtime.Store(wt.engine)
        exports: Any = wt.linker.instantiate(store, wt.module).exports(store)
        memory = exports["memory"]
        ptr = exports["plugsafe_alloc"](store, len(SMALL))
        memory.write(store, SMALL, ptr)
        word = exports["echo"](store, ptr, len(SMALL)) & U64
        out, n = word >> 32, word & 0x7FFF_FFFF
        result: bytearray = memory.read(store, out, out + n)
        return result

    assert benchmark(run) == SMALL


def test_fresh_instance_extism(benchmark: Any, extism_mod: Any, ex_compiled: Any) -> None:
    """Extism: a new Plugin from a CompiledPlugin, then the echo."""
    tag(benchmark, "fresh instance + call", "extism")

    def run() -> bytes:
        plugin = extism_mod.Plugin(ex_compiled)
        out: bytes = plugin.call("echo", SMALL)
        del plugin
        return out

    assert benchmark(run) == SMALL


# -- load the same module again in this process (plugsafe's in-memory module cache) --------------


def test_reload_plugsafe(benchmark: Any, ps_host: plugsafe.Host, pure_wasm: bytes) -> None:
    tag(benchmark, "load again, same process", "plugsafe")
    policy = plugsafe.Policy()

    def run() -> None:
        ps_host.load(pure_wasm, policy=policy).close()

    benchmark(run)


# -- load from the disk cache with a new Host, in a process that has loaded before ---------------


def test_load_cached_warm_plugsafe(benchmark: Any, tmp_path: Path, pure_wasm: bytes) -> None:
    """A new ``Host(cache_dir=...)`` (not timed), then the timed ``load`` from its disk cache."""
    tag(benchmark, "load from disk cache, warm process", "plugsafe")
    if not _plugsafe_cache_kwargs():
        pytest.skip("this plugsafe has no on-disk compile cache yet")
    cache = tmp_path / "cache"
    path = tmp_path / "bench.wasm"
    path.write_bytes(pure_wasm)
    plugsafe.Host(cache_dir=cache).load(path).close()  # type: ignore[call-arg,unused-ignore]
    hosts: list[plugsafe.Host] = []

    def setup() -> tuple[tuple[plugsafe.Host], dict[str, Any]]:
        for h in hosts:
            h.close()
        hosts[:] = [plugsafe.Host(cache_dir=cache)]  # type: ignore[call-arg,unused-ignore]
        return (hosts[0],), {}

    benchmark.pedantic(lambda host: host.load(path), setup=setup, rounds=200)
    for h in hosts:
        h.close()


def test_load_cached_warm_wasmtime(benchmark: Any, tmp_path: Path, pure_wasm: bytes) -> None:
    """By hand: a new Engine (not timed), then Module.deserialize_file + instantiate."""
    tag(benchmark, "load from disk cache, warm process", "wasmtime-py")
    path = tmp_path / "bench.cwasm"
    path.write_bytes(bytes(wasmtime.Module(wasmtime.Engine(), pure_wasm).serialize()))

    def setup() -> tuple[tuple[wasmtime.Engine], dict[str, Any]]:
        return (wasmtime.Engine(),), {}

    def load(engine: wasmtime.Engine) -> Any:
        module = wasmtime.Module.deserialize_file(engine, str(path))
        store = wasmtime.Store(engine)
        return wasmtime.Linker(engine).instantiate(store, module).exports(store)

    benchmark.pedantic(load, setup=setup, rounds=200)


# -- load in a fresh process: timed inside child processes ---------------------------------------


@pytest.fixture(scope="module")
def load_dir(tmp_path_factory: pytest.TempPathFactory, pure_wasm: bytes) -> Path:
    d = tmp_path_factory.mktemp("fresh-load")
    (d / "bench.wasm").write_bytes(pure_wasm)
    (d / "extism.wasm").write_bytes(bytes(wasmtime.wat2wasm(EXTISM_PURE_GUEST)))
    (d / "cache").mkdir(mode=0o700)
    engine = wasmtime.Engine()
    (d / "cache" / "by-hand.cwasm").write_bytes(
        bytes(wasmtime.Module(engine, pure_wasm).serialize())
    )
    return d


def _child(mode: str, load_dir: Path) -> dict[str, float]:
    # The child must import the plugsafe under test (this checkout), not whichever is installed.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        [
            sys.executable,
            str(FRESH_LOAD),
            mode,
            str(load_dir / "bench.wasm"),
            str(load_dir / "cache"),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("mode", "contender"),
    [
        ("plugsafe", "plugsafe"),
        ("wasmtime-deserialize", "wasmtime-py"),
        ("wasmtime-compile", "wasmtime-py, compiling"),
        ("extism", "extism"),
    ],
)
def test_load_fresh_process(benchmark: Any, load_dir: Path, mode: str, contender: str) -> None:
    """Each round is one child process; the figure is the load time the child measured."""
    if mode == "extism":
        pytest.importorskip("extism", reason="Extism columns skipped: pip install -e '.[bench]'")
    _child(mode, load_dir)  # warm the OS file cache and fill plugsafe's compile cache
    samples: list[dict[str, float]] = []
    benchmark.pedantic(lambda: samples.append(_child(mode, load_dir)), rounds=CHILD_ROUNDS)
    cached = mode != "plugsafe" or bool(_plugsafe_cache_kwargs())
    tag(
        benchmark,
        "load, fresh process",
        contender,
        inner_median_s=statistics.median(s["load"] for s in samples),
        setup_median_s=statistics.median(s["setup"] for s in samples),
        import_median_s=statistics.median(s["import"] for s in samples),
        note="" if cached else "no disk cache yet: compiles",
    )


def _plugsafe_cache_kwargs() -> dict[str, Any]:
    sys.path.insert(0, str(FRESH_LOAD.parent))
    from fresh_load import plugsafe_cache_kwargs

    return plugsafe_cache_kwargs("unused")
