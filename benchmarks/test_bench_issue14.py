"""Issue 14: speed where users feel it, every figure against the peers in interleaved rounds.

Each row is measured once, by a module fixture, with its contenders' rounds interleaved
(A, B, C, A, B, C, ...: a burst of load on this shared machine hits all of them alike); the
tests then hand each contender's median to pytest-benchmark (``inner_median_s``) for the report.
Under ``--benchmark-disable`` (CI) every row runs one short round: checked, not timed.

Rows: loading a module the process compiled (a large C program built with wasi-libc, and
modules by size, for the plot), cold start (a fresh ``python``: import, load from the disk cache,
call), the first call on a new plugin, 1,000 plugins round-robin, the echo by payload size (for
the plot), the precheck's worst case at 4 and 16 MiB, and a fresh instance per call with the
pooling allocator.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import plugsafe
from plugsafe import _runtime as rt

from bigc import build
from conftest import U64, fresh_contenders, tag
from guests import EXTISM_PURE_GUEST, PLUGSAFE_PURE_GUEST

REPO = Path(plugsafe.__file__).resolve().parent.parent
_pc = time.perf_counter

Contenders = dict[str, Callable[[], object]]


def _load_close(host: plugsafe.Host, wasm: bytes) -> None:
    host.load(wasm).close()


def _quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("benchmark_disable", False))


def interleaved(
    contenders: Contenders,
    rounds: int,
    per: int,
    *,
    clock: Callable[[], float] = _pc,
    warm: int = 1,
) -> dict[str, float]:
    """Median seconds per operation of each contender, over ``rounds`` interleaved rounds, by
    ``clock`` (wall time; ``time.thread_time`` for the CPU-time rows), each first called
    ``warm`` times (first-use costs are rows of their own)."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        for _ in range(warm):
            fn()
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = clock()
            for _ in range(per):
                fn()
            samples[name].append((clock() - start) / per)
    return {name: statistics.median(v) for name, v in samples.items()}


def report(benchmark: Any, item: str, contender: str, seconds: float, **extra: Any) -> None:
    """Hand one interleaved median to pytest-benchmark (its own timing is of a no-op)."""
    tag(benchmark, item, contender, inner_median_s=seconds, **extra)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def _extism() -> Any | None:
    try:
        import extism
    except (ImportError, OSError):
        return None
    return extism


def _wat_module(functions: int) -> bytes:
    """A module of ``functions`` small, distinct functions (for load time against size)."""
    body = []
    for i in range(functions):
        body.append(
            f'(func $f{i} (export "f{i}") (param i32) (result i32)'
            f" (i32.add (i32.mul (local.get 0) (i32.const {i + 3}))"
            f" (if (result i32) (i32.gt_s (local.get 0) (i32.const {i}))"
            f" (then (i32.const {i})) (else (i32.const {i + 1})))))"
        )
    return bytes(wasmtime.wat2wasm(f'(module (memory (export "memory") 1) {" ".join(body)})'))


# -- 1. loading a module the process already compiled --------------------------------------------

LOAD_C = "load a compiled C program"
# The same load when no closed plugin left a Linker to reuse (see docs/performance.md).
NO_REUSE = "plugsafe, no Linker to reuse"
LOAD_SIZE = "load a compiled module"


@pytest.fixture(scope="module")
def load_c(request: pytest.FixtureRequest) -> tuple[dict[str, float], str]:
    quick = _quick(request)
    # Untimed (CI): a small program, built in a second; timed: the full-size one (cached).
    path = build(50 if quick else 1700)
    if path is None:
        pytest.skip("needs clang with wasi-libc to build the large C program")
    wasm = path.read_bytes()
    with plugsafe.Host() as host, plugsafe.Host() as cold_host:
        policy = plugsafe.Policy(wasi=plugsafe.Wasi())
        host.load(wasm, policy=policy).close()
        # A Host whose pool keeps nothing: every load builds its Linker, as the first plugin of
        # a module does, or one loaded while the module's other plugins are all still open.
        cold_host._linkers = rt.LinkerPool(per_key=0)
        cold_host.load(wasm, policy=policy).close()
        engine = wasmtime.Engine()
        module = wasmtime.Module(engine, wasm)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()

        def by_hand() -> None:
            store = wasmtime.Store(engine)
            store.set_wasi(wasmtime.WasiConfig())
            linker.instantiate(store, module)

        medians = interleaved(
            {
                "plugsafe": lambda: host.load(wasm, policy=policy).close(),
                "wasmtime-py": by_hand,
                NO_REUSE: lambda: cold_host.load(wasm, policy=policy).close(),
            },
            rounds=1 if quick else 15,
            per=1 if quick else 20,
        )
    from plugsafe import _loader

    count = _loader.check_shape(wasm, plugsafe.Policy(), "bigc").functions
    return medians, f"{len(wasm) / 1024:.0f} KiB, {count} functions, WASI"


@pytest.mark.parametrize("contender", ["plugsafe", "wasmtime-py", NO_REUSE])
def test_load_compiled_c_program(
    benchmark: Any, load_c: tuple[dict[str, float], str], contender: str
) -> None:
    medians, shape = load_c
    report(benchmark, LOAD_C, contender, medians[contender], note=shape)


SIZES = (16, 128, 1024, 4096)  # functions: about 0.5 KiB to 170 KiB of module


@pytest.fixture(scope="module")
def load_by_size(request: pytest.FixtureRequest) -> dict[tuple[str, int], float]:
    quick = _quick(request)
    extism = _extism()
    out: dict[tuple[str, int], float] = {}
    with plugsafe.Host() as host:
        for n in SIZES[:1] if quick else SIZES:
            wasm = _wat_module(n)
            host.load(wasm).close()
            engine = wasmtime.Engine()
            module = wasmtime.Module(engine, wasm)
            linker = wasmtime.Linker(engine)

            def by_hand(engine: Any = engine, module: Any = module, linker: Any = linker) -> None:
                store = wasmtime.Store(engine)
                linker.instantiate(store, module)

            contenders: Contenders = {
                "plugsafe": partial(_load_close, host, wasm),
                "wasmtime-py": by_hand,
            }
            if extism is not None:
                compiled = extism.extism.CompiledPlugin(wasm, functions=[])
                contenders["extism"] = partial(extism.Plugin, compiled)
            medians = interleaved(contenders, rounds=1 if quick else 9, per=1 if quick else 10)
            for who, v in medians.items():
                out[(who, len(wasm))] = v
    return out


@pytest.mark.parametrize("contender", ["plugsafe", "wasmtime-py", "extism"])
def test_load_compiled_by_size(
    benchmark: Any, load_by_size: dict[tuple[str, int], float], contender: str
) -> None:
    points = sorted((size, v) for (who, size), v in load_by_size.items() if who == contender)
    if not points:
        pytest.skip("Extism columns skipped: pip install -e '.[bench]'")
    size, largest = points[-1]
    report(
        benchmark,
        f"{LOAD_SIZE} ({size / 1024:.0f} KiB)",
        contender,
        largest,
        plot="load",
        points=points,
    )


# -- 2. cold start: a fresh python imports, loads from the disk cache, calls ----------------------

COLD = "cold start (import, load from cache, call)"

_COLD_PLUGSAFE = """
import plugsafe
host = plugsafe.Host(cache_dir={cache!r})
plugin = host.load({wasm!r})
assert plugin.call("echo", b"ping") == b"ping"
"""
_COLD_WASMTIME = """
import wasmtime
engine = wasmtime.Engine()
module = wasmtime.Module.deserialize_file(engine, {cwasm!r})
store = wasmtime.Store(engine)
exports = wasmtime.Linker(engine).instantiate(store, module).exports(store)
alloc, echo, memory = exports["plugsafe_alloc"], exports["echo"], exports["memory"]
ptr = alloc(store, 4)
memory.write(store, b"ping", ptr)
word = echo(store, ptr, 4) & {u64}
assert memory.read(store, word >> 32, (word >> 32) + (word & 0x7FFFFFFF)) == b"ping"
"""
_COLD_EXTISM = """
import extism
with open({ewasm!r}, "rb") as f:
    plugin = extism.Plugin(f.read())
assert plugin.call("echo", b"ping") == b"ping"
"""


@pytest.fixture(scope="module")
def cold(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, float]:
    d = tmp_path_factory.mktemp("cold")
    wasm = bytes(wasmtime.wat2wasm(PLUGSAFE_PURE_GUEST))
    (d / "g.wasm").write_bytes(wasm)
    (d / "e.wasm").write_bytes(bytes(wasmtime.wat2wasm(EXTISM_PURE_GUEST)))
    (d / "g.cwasm").write_bytes(bytes(wasmtime.Module(wasmtime.Engine(), wasm).serialize()))
    (d / "cache").mkdir(mode=0o700)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    fmt = {
        "cache": str(d / "cache"),
        "wasm": str(d / "g.wasm"),
        "cwasm": str(d / "g.cwasm"),
        "ewasm": str(d / "e.wasm"),
        "u64": U64,
    }
    # Bytecode for this checkout, as an installed plugsafe has (pip compiles on install, as it
    # did wasmtime's): with PYTHONDONTWRITEBYTECODE set, every child would compile the sources.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "plugsafe")], check=True)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    scripts = {"plugsafe": _COLD_PLUGSAFE, "wasmtime-py": _COLD_WASMTIME}
    if _extism() is not None:
        scripts["extism"] = _COLD_EXTISM

    def child(code: str) -> Callable[[], object]:
        return lambda: subprocess.run(
            [sys.executable, "-c", code.format(**fmt)], check=True, env=env, timeout=120, cwd=d
        )

    quick = _quick(request)
    return interleaved(
        {who: child(code) for who, code in scripts.items()}, rounds=1 if quick else 11, per=1
    )


@pytest.mark.parametrize("contender", ["plugsafe", "wasmtime-py", "extism"])
def test_cold_start(benchmark: Any, cold: dict[str, float], contender: str) -> None:
    if contender not in cold:
        pytest.skip("Extism columns skipped: pip install -e '.[bench]'")
    report(benchmark, COLD, contender, cold[contender], note="whole process, python included")


# -- 4. the first call on a new plugin, and 1,000 plugins round-robin ----------------------------

FIRST = "first call on a new plugin"
MANY = "1,000 plugins round-robin"


@pytest.fixture(scope="module")
def first_call(request: pytest.FixtureRequest) -> dict[str, float]:
    wasm = bytes(wasmtime.wat2wasm(PLUGSAFE_PURE_GUEST))
    quick = _quick(request)
    # The default host and a pooled one, alternated in the same rounds: under pooling a new
    # plugin's instance lands in a slot whose first 64 KiB stayed resident (keep_resident), so
    # its first input is written without a page fault (docs/performance.md, "4.").
    names = ["plugsafe", POOLED_FIRST]
    samples: dict[str, list[float]] = {
        f"{name} {which} call": [] for name in names for which in ("first", "later")
    }
    pooling = plugsafe.Pooling(instances=16, memory_size=16 * 1024 * 1024)
    # The pool's slots are 16 MiB: its plugins' memory cap must fit (the default host keeps
    # the default policy, as this row always measured).
    fits = plugsafe.Policy(memory=16 * 1024 * 1024)
    with plugsafe.Host() as plain, plugsafe.Host(pooling=pooling) as pooled:
        loads = {
            "plugsafe": lambda: plain.load(wasm),
            POOLED_FIRST: lambda: pooled.load(wasm, policy=fits),
        }
        for _ in range(3 if quick else 300):
            for name in names:
                plugin = loads[name]()
                start = _pc()
                plugin.call("echo", b"hello world")
                first = _pc() - start
                # "Later" is the third call: the second binds the function's compiled call
                # (Instance.fast_call: once per function and instance, from its second call),
                # a one-off cost that is no later call's.
                plugin.call("echo", b"hello world")
                start = _pc()
                plugin.call("echo", b"hello world")
                samples[f"{name} later call"].append(_pc() - start)
                samples[f"{name} first call"].append(first)
                plugin.close()
    return {k: statistics.median(v) for k, v in samples.items()}


POOLED_FIRST = "plugsafe, Host(pooling=...),"


@pytest.mark.parametrize(
    "contender",
    [
        "plugsafe first call",
        "plugsafe later call",
        f"{POOLED_FIRST} first call",
        f"{POOLED_FIRST} later call",
    ],
)
def test_first_call(benchmark: Any, first_call: dict[str, float], contender: str) -> None:
    report(benchmark, FIRST, contender, first_call[contender], note="11-byte echo")


@pytest.fixture(scope="module")
def many(request: pytest.FixtureRequest) -> dict[str, float]:
    quick = _quick(request)
    n = 10 if quick else 1000
    wasm = bytes(wasmtime.wat2wasm(PLUGSAFE_PURE_GUEST))
    with plugsafe.Host() as host:
        plugins = [host.load(wasm) for _ in range(n)]
        for p in plugins:
            p.invoke("add", 1, 2)
        one = plugins[0]
        engine = wasmtime.Engine()
        module = wasmtime.Module(engine, wasm)
        linker = wasmtime.Linker(engine)
        pairs: list[tuple[Any, wasmtime.Store]] = []
        for _ in range(n):
            store = wasmtime.Store(engine)
            pairs.append((linker.instantiate(store, module).exports(store)["add"], store))
        add0, store0 = pairs[0]

        def rr(fn: Callable[[Any], object], items: list[Any]) -> Callable[[], object]:
            def run() -> None:
                for item in items:
                    fn(item)

            return run

        medians = interleaved(
            {
                "plugsafe, one plugin": rr(lambda p: one.invoke("add", 1, 2), plugins),
                "plugsafe, round-robin": rr(lambda p: p.invoke("add", 1, 2), plugins),
                "wasmtime-py, one store": rr(lambda pair: add0(store0, 1, 2), pairs),
                "wasmtime-py, round-robin": rr(lambda pair: pair[0](pair[1], 1, 2), pairs),
            },
            rounds=1 if quick else 11,
            per=1,
        )
        for p in plugins:
            p.close()
    return {k: v / n for k, v in medians.items()}


@pytest.mark.parametrize(
    "contender",
    [
        "plugsafe, one plugin",
        "plugsafe, round-robin",
        "wasmtime-py, one store",
        "wasmtime-py, round-robin",
    ],
)
def test_many_plugins(benchmark: Any, many: dict[str, float], contender: str) -> None:
    report(benchmark, MANY, contender, many[contender], note="invoke add")


# -- the echo by payload size (the plot) ---------------------------------------------------------

ECHO_SIZES = (11, 256, 4096, 65536, 1 << 20)


@pytest.fixture(scope="module")
def echo_by_size(
    request: pytest.FixtureRequest, ps_plugin: plugsafe.Plugin, wt: Any
) -> dict[tuple[str, int], float]:
    quick = _quick(request)
    extism = _extism()
    ex = None
    if extism is not None:
        ex = extism.Plugin(bytes(wasmtime.wat2wasm(EXTISM_PURE_GUEST)), functions=[])
    out: dict[tuple[str, int], float] = {}
    for size in ECHO_SIZES[:1] if quick else ECHO_SIZES:
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        contenders: Contenders = {
            "plugsafe": partial(ps_plugin.call, "echo", data),
            "wasmtime-py": partial(wt.call_echo, data),
        }
        if ex is not None:
            contenders["extism"] = partial(ex.call, "echo", data)
        per = 1 if quick else max(1, 2000 // (1 + size // 1024))
        for who, v in interleaved(contenders, rounds=1 if quick else 9, per=per).items():
            out[(who, size)] = v
    return out


@pytest.mark.parametrize("contender", ["plugsafe", "wasmtime-py", "extism"])
def test_echo_by_size(
    benchmark: Any, echo_by_size: dict[tuple[str, int], float], contender: str
) -> None:
    points = sorted((size, v) for (who, size), v in echo_by_size.items() if who == contender)
    if not points:
        pytest.skip("Extism columns skipped: pip install -e '.[bench]'")
    size, v = points[-1]
    report(benchmark, f"echo by size ({size} B)", contender, v, plot="echo", points=points)


# -- the precheck's worst case -------------------------------------------------------------------

PRECHECK = "precheck, worst case (i32.const 2; drop)"


def _drop_module(total: int) -> bytes:
    """``total`` bytes of 1 MiB bodies of ``i32.const 2; drop`` (every 3rd byte an opener)."""

    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | 0x80 if n else b)
            if not n:
                return bytes(out)

    body = b"\x00" + b"\x41\x02\x1a" * ((1024 * 1024 - 32) // 3) + b"\x0b"
    n = total // len(body)
    code = leb(n) + (leb(len(body)) + body) * n
    sections = [(1, b"\x01\x60\x00\x00"), (3, leb(n) + b"\x00" * n), (10, code)]
    return b"\x00asm\x01\x00\x00\x00" + b"".join(bytes([i]) + leb(len(c)) + c for i, c in sections)


@pytest.fixture(scope="module")
def precheck_times(request: pytest.FixtureRequest) -> dict[str, float]:
    from plugsafe import _loader

    quick = _quick(request)
    caps = _loader.caps_of(plugsafe.Policy())
    out: dict[str, float] = {}
    for mib in (1,) if quick else (4, 16):
        wasm = _drop_module(mib * 1024 * 1024)
        times = []
        for _ in range(1 if quick else 5):
            start = time.process_time()
            _loader.check_shape(wasm, caps, "worst")
            times.append(time.process_time() - start)
        out[f"plugsafe, {mib} MiB"] = statistics.median(times)
    return out


@pytest.mark.parametrize("mib", [4, 16])
def test_precheck_worst_case(benchmark: Any, precheck_times: dict[str, float], mib: int) -> None:
    key = f"plugsafe, {mib} MiB"
    if key not in precheck_times:
        pytest.skip("timed runs only")
    report(benchmark, PRECHECK, key, precheck_times[key], note="CPU time")


# -- 6. a fresh instance per call, with and without the pooling allocator ------------------------

FRESH = "fresh instance + call, interleaved"


@pytest.fixture(scope="module")
def fresh(request: pytest.FixtureRequest) -> dict[str, float]:
    quick = _quick(request)
    with fresh_contenders() as contenders:
        return interleaved(contenders, rounds=1 if quick else 15, per=1 if quick else 100)


@pytest.mark.parametrize("contender", ["plugsafe", "plugsafe, Host(pooling=...)", "wasmtime-py"])
def test_fresh_instance_pooled(benchmark: Any, fresh: dict[str, float], contender: str) -> None:
    report(benchmark, FRESH, contender, fresh[contender], note="11-byte echo")


# -- 5. small calls, interleaved -----------------------------------------------------------------

INVOKE = "invoke add, interleaved"
ECHO11 = "echo 11 B, interleaved"


@pytest.fixture(scope="module")
def small_calls(
    request: pytest.FixtureRequest, ps_plugin: plugsafe.Plugin, wt: Any
) -> dict[str, float]:
    quick = _quick(request)
    extism = _extism()
    contenders: Contenders = {
        "invoke: plugsafe": lambda: ps_plugin.invoke("add", 1, 2),
        "invoke: wasmtime-py": lambda: wt.add(wt.store, 1, 2),
        "echo: plugsafe": lambda: ps_plugin.call("echo", b"hello world"),
        "echo: wasmtime-py": lambda: wt.call_echo(b"hello world"),
    }
    if extism is not None:
        ex = extism.Plugin(bytes(wasmtime.wat2wasm(EXTISM_PURE_GUEST)), functions=[])
        contenders["echo: extism"] = lambda: ex.call("echo", b"hello world")
    return interleaved(contenders, rounds=1 if quick else 25, per=1 if quick else 400)


@pytest.mark.parametrize(
    ("item", "contender"),
    [
        (INVOKE, "plugsafe"),
        (INVOKE, "wasmtime-py"),
        (ECHO11, "plugsafe"),
        (ECHO11, "wasmtime-py"),
        (ECHO11, "extism"),
    ],
)
def test_small_calls(
    benchmark: Any, small_calls: dict[str, float], item: str, contender: str
) -> None:
    key = f"{'invoke' if item == INVOKE else 'echo'}: {contender}"
    if key not in small_calls:
        pytest.skip("Extism columns skipped: pip install -e '.[bench]'")
    note = "zero-copy guest" if contender == "extism" else ""
    report(benchmark, item, contender, small_calls[key], note=note)
