"""Fixtures for the benchmarks: the same guests loaded through plugsafe, wasmtime-py by hand and
Extism's Python SDK.

Every benchmark tags itself with ``extra_info``: ``item`` (the work measured, one row of the
report), ``contender`` (who did it) and ``per`` (how many operations one round did, so the report
can show per-operation times). ``benchmarks/report.py`` reads those back from the JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import platform
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import plugsafe

from guests import (
    EXTISM_GUEST,
    EXTISM_PURE_GUEST,
    PLUGSAFE_GUEST,
    PLUGSAFE_PURE_GUEST,
)

MiB = 1024 * 1024
SMALL = b"hello world"  # the 11-byte echo
assert len(SMALL) == 11
BIG = bytes(range(256)) * (MiB // 256)  # the 1 MiB echo
assert len(BIG) == MiB
U64 = (1 << 64) - 1


def tag(benchmark: Any, item: str, contender: str, per: int = 1, **extra: Any) -> None:
    """Label a benchmark for report.py."""
    benchmark.extra_info["item"] = item
    benchmark.extra_info["contender"] = contender
    benchmark.extra_info["per"] = per
    benchmark.extra_info.update(extra)


def has_policy_field(name: str) -> bool:
    """Whether this plugsafe's Policy has the field ``name`` (features land over time)."""
    return any(f.name == name for f in dataclasses.fields(plugsafe.Policy))


def bump(x: int) -> int:
    """The host function every guest→host benchmark calls."""
    return x + 1


# Each timed round lasts at least this long. pytest-benchmark's default (5 µs) lets a call of a
# few microseconds be timed one call per round whenever its first, uncalibrated call happened to
# be slow, and then the timer's own cost (about a microsecond) is counted as the call's. Rounds
# of many calls time every contender the same way; a larger --benchmark-min-time still wins.
MIN_ROUND_SECONDS = 0.0002


@pytest.fixture
def benchmark(benchmark: Any) -> Any:
    """pytest-benchmark's fixture, with rounds of at least MIN_ROUND_SECONDS."""
    benchmark._min_time = max(benchmark._min_time, MIN_ROUND_SECONDS)
    return benchmark


# -- plugsafe -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ps_host() -> Iterator[plugsafe.Host]:
    host = plugsafe.Host()
    host.function(bump)
    yield host
    host.close()


@pytest.fixture(scope="session")
def ps_plugin(ps_host: plugsafe.Host) -> plugsafe.Plugin:
    """The ABI guest with the ``bump`` host import, under a default policy (1 s timeout)."""
    return ps_host.load(
        PLUGSAFE_GUEST.encode(), policy=plugsafe.Policy(allow=frozenset({"bump"})), name="bench"
    )


@pytest.fixture(scope="session")
def pure_wasm() -> bytes:
    return bytes(wasmtime.wat2wasm(PLUGSAFE_PURE_GUEST))


# -- wasmtime-py by hand --------------------------------------------------------------------------


@dataclasses.dataclass
class ByHand:
    """The ABI guest instantiated with wasmtime-py's public API, as a user would by hand."""

    engine: wasmtime.Engine
    module: wasmtime.Module
    linker: wasmtime.Linker
    store: wasmtime.Store
    add: wasmtime.Func
    alloc: wasmtime.Func
    echo: wasmtime.Func
    hostloop: wasmtime.Func
    compute: wasmtime.Func
    memory: wasmtime.Memory
    # The guest's input buffer query (docs/abi.md).
    ask_buffer: wasmtime.Func

    # The guest's input buffer, asked once as plugsafe asks it: (pointer, size). Asked at the
    # first echo, not when instantiated: a row may still have to set the store's fuel or epoch
    # deadline (a store with epoch interruption and no deadline traps at once).
    input_buffer: tuple[int, int] | None = None

    def call_echo(self, data: bytes) -> bytearray:
        """plugsafe's ABI done by hand: place the input (in the guest's input buffer when it
        fits, as plugsafe does, else through alloc), call, decode the result word, read."""
        store = self.store
        if self.input_buffer is None:
            word = self.ask_buffer(store) & U64
            self.input_buffer = (word >> 32, word & 0xFFFF_FFFF)
        at, size = self.input_buffer
        ptr = at if 0 < len(data) <= size else self.alloc(store, len(data))
        self.memory.write(store, data, ptr)
        word = self.echo(store, ptr, len(data)) & U64
        out, n = word >> 32, word & 0x7FFF_FFFF
        return self.memory.read(store, out, out + n)


def by_hand_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    linker = wasmtime.Linker(engine)
    i64 = wasmtime.ValType.i64()
    linker.define_func("plugsafe", "bump", wasmtime.FuncType([i64], [i64]), bump)
    return linker


def by_hand(engine: wasmtime.Engine | None = None) -> ByHand:
    engine = engine or wasmtime.Engine()
    module = wasmtime.Module(engine, PLUGSAFE_GUEST)
    linker = by_hand_linker(engine)
    store = wasmtime.Store(engine)
    exports = linker.instantiate(store, module).exports(store)

    def get(name: str) -> Any:
        return exports[name]

    return ByHand(
        engine,
        module,
        linker,
        store,
        get("add"),
        get("plugsafe_alloc"),
        get("echo"),
        get("hostloop"),
        get("compute"),
        get("memory"),
        get("plugsafe_input_buffer"),
    )


@pytest.fixture(scope="session")
def wt() -> ByHand:
    return by_hand()


# -- Extism ---------------------------------------------------------------------------------------


def _extism() -> Any:
    """Import Extism's SDK or skip with the reason (``pip install -e .[bench]`` installs it)."""
    try:
        import extism
    except ImportError as exc:
        pytest.skip(
            f"Extism columns skipped: its Python SDK or native library cannot be imported ({exc}); "
            "install it with: pip install -e '.[bench]'"
        )
    except OSError as exc:  # the package is there but libextism could not be loaded
        pytest.skip(f"Extism columns skipped: its native library could not be loaded ({exc})")
    return extism


_EXTISM_BUMP: list[Any] = []


def _extism_bump(extism: Any) -> Any:
    # Extism keeps host functions in a process-wide registry: register ``bump`` only once.
    if not _EXTISM_BUMP:

        def ext_bump(_plugin: Any, params: list[Any], results: list[Any], *_data: Any) -> None:
            results[0].value = bump(params[0].value)

        sig = ([extism.ValType.I64], [extism.ValType.I64])
        _EXTISM_BUMP.append(
            extism.host_fn(name="bump", namespace="extism:host/user", signature=sig)(ext_bump)
        )
    return _EXTISM_BUMP[0]


@pytest.fixture(scope="session")
def extism_mod() -> Any:
    return _extism()


@pytest.fixture(scope="session")
def ex_plugin(extism_mod: Any) -> Any:
    """Extism plugin with the echo and the host loop (its ``bump`` is an Extism host function)."""
    wasm = bytes(wasmtime.wat2wasm(EXTISM_GUEST))
    plugin = extism_mod.Plugin(wasm, functions=[_extism_bump(extism_mod)])
    assert plugin.call("echo", SMALL) == SMALL
    return plugin


@pytest.fixture(scope="session")
def ex_compiled(extism_mod: Any) -> Any:
    """A compiled Extism plugin (no host functions) for fresh-instance figures."""
    wasm = bytes(wasmtime.wat2wasm(EXTISM_PURE_GUEST))
    # 1.1.1 does not re-export CompiledPlugin from the package; it lives in extism.extism.
    compiled = getattr(extism_mod, "CompiledPlugin", None)
    if compiled is None:
        compiled = extism_mod.extism.CompiledPlugin
    return compiled(wasm, functions=[])


# -- the run's environment, kept in the JSON for report.py ---------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load_average() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


_LOAD_AT_START = _load_average()


def pytest_benchmark_update_json(config: Any, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """Record what the report must state about the machine and the versions under test."""
    backend = getattr(getattr(plugsafe, "_runtime", None), "BACKEND", "ctypes (only path)")
    output_json["plugsafe_env"] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "platform": f"{platform.system()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "wasmtime": _dist_version("wasmtime"),
        "plugsafe": plugsafe.__version__,
        "plugsafe_backend": backend,
        "extism": _dist_version("extism"),
        "extism_sys": _dist_version("extism-sys"),
        "pytest_benchmark": _dist_version("pytest-benchmark"),
        "load_average_start": _LOAD_AT_START,
        "load_average_end": _load_average(),
    }


# -- a fresh instance per call (issue 14, goal 6) --------------------------------------------------

POOLED = "plugsafe, Host(pooling=...)"


@contextlib.contextmanager
def fresh_contenders() -> Iterator[dict[str, Callable[[], object]]]:
    """An 11-byte echo on a new instance each time: plugsafe with ``fresh_instance`` (on demand
    and with ``Host(pooling=...)``) and wasmtime-py by hand (a new ``Store``, instantiate, alloc,
    write, call, read), for the rows that interleave them."""
    wasm = bytes(wasmtime.wat2wasm(PLUGSAFE_PURE_GUEST))
    policy = plugsafe.Policy(fresh_instance=True, memory=16 * 1024 * 1024)
    pooling = plugsafe.Pooling(instances=16, memory_size=16 * 1024 * 1024)
    with plugsafe.Host() as plain, plugsafe.Host(pooling=pooling) as pooled:
        p_plain = plain.load(wasm, policy=policy)
        p_pooled = pooled.load(wasm, policy=policy)
        assert p_pooled.call("echo", b"hello world") == b"hello world"
        engine = wasmtime.Engine()
        module = wasmtime.Module(engine, wasm)
        linker = wasmtime.Linker(engine)

        def by_hand() -> None:
            store = wasmtime.Store(engine)
            exports: Any = linker.instantiate(store, module).exports(store)
            memory = exports["memory"]
            ptr = exports["plugsafe_alloc"](store, 11)
            memory.write(store, b"hello world", ptr)
            word = exports["echo"](store, ptr, 11) & U64
            memory.read(store, word >> 32, (word >> 32) + (word & 0x7FFF_FFFF))

        yield {
            "plugsafe": lambda: p_plain.call("echo", b"hello world"),
            POOLED: lambda: p_pooled.call("echo", b"hello world"),
            "wasmtime-py": by_hand,
        }
