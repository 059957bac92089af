"""Issue 14, goals 1 and 6 in CPU time: a load and a fresh instance, against wasmtime-py.

The rows of ``test_bench_issue14.py`` are wall-clock medians; on a shared, busy machine a
round's wall time includes every moment the process waited for a core, which hides what the
code itself costs. These rows time the same operations with ``time.thread_time()`` (the CPU
time of this thread alone), the contenders' rounds interleaved (A, B, C, A, B, C, ...), and
report each contender's median round (seconds per operation):

- ``load a compiled C program, CPU``: ``host.load(bytes, policy=Policy(wasi=Wasi()))`` +
  ``close()`` of the generated C program (``bigc.py``), compiled and loaded once before, so
  each load reuses the Linker the previous ``close()`` left; wasmtime-py: ``Store``,
  ``set_wasi`` and ``Linker.instantiate`` of the compiled module (a ``define_wasi`` Linker made
  beforehand), the store freed when it goes out of scope.
- ``fresh instance + call, CPU``: ``Policy(fresh_instance=True)``, an 11-byte ABI echo, with
  and without ``Host(pooling=...)``; wasmtime-py: a new ``Store``, ``Linker.instantiate``, the
  exports, ``plugsafe_alloc``, ``Memory.write``, ``echo``, ``Memory.read``.

Under ``--benchmark-disable`` (CI) every row runs one short round: checked, not timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import wasmtime
from test_bench_issue14 import _quick, interleaved, report

import plugsafe

from bigc import build
from conftest import POOLED, fresh_contenders

Contenders = dict[str, Callable[[], object]]


def interleaved_cpu(contenders: Contenders, rounds: int, per: int) -> dict[str, float]:
    """Median CPU seconds (this thread) per operation of each contender, rounds interleaved;
    each warmed ``per`` times first (caches, the Linker pool, the pooling allocator's slots)."""
    return interleaved(contenders, rounds, per, clock=time.thread_time, warm=per)


LOAD_CPU = "load a compiled C program, CPU"


@pytest.fixture(scope="module")
def load_cpu(request: pytest.FixtureRequest) -> tuple[dict[str, float], str]:
    quick = _quick(request)
    path = build(50 if quick else 1700)
    if path is None:
        pytest.skip("needs clang with wasi-libc to build the large C program")
    wasm = path.read_bytes()
    with plugsafe.Host() as host:
        policy = plugsafe.Policy(wasi=plugsafe.Wasi())
        host.load(wasm, policy=policy).close()
        engine = wasmtime.Engine()
        module = wasmtime.Module(engine, wasm)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()

        def by_hand() -> None:
            store = wasmtime.Store(engine)
            store.set_wasi(wasmtime.WasiConfig())
            linker.instantiate(store, module)

        medians = interleaved_cpu(
            {"plugsafe": lambda: host.load(wasm, policy=policy).close(), "wasmtime-py": by_hand},
            rounds=1 if quick else 15,
            per=1 if quick else 100,
        )
    return medians, f"{len(wasm) / 1024:.0f} KiB, WASI"


@pytest.mark.parametrize("contender", ["plugsafe", "wasmtime-py"])
def test_load_compiled_c_program_cpu(
    benchmark: Any, load_cpu: tuple[dict[str, float], str], contender: str
) -> None:
    medians, shape = load_cpu
    assert medians[contender] > 0
    report(benchmark, LOAD_CPU, contender, medians[contender], note=shape)


FRESH_CPU = "fresh instance + call, CPU"


@pytest.fixture(scope="module")
def fresh_cpu(request: pytest.FixtureRequest) -> dict[str, float]:
    quick = _quick(request)
    with fresh_contenders() as contenders:
        return interleaved_cpu(contenders, rounds=1 if quick else 15, per=1 if quick else 200)


@pytest.mark.parametrize("contender", [POOLED, "plugsafe", "wasmtime-py"])
def test_fresh_instance_cpu(benchmark: Any, fresh_cpu: dict[str, float], contender: str) -> None:
    assert fresh_cpu[contender] > 0
    report(benchmark, FRESH_CPU, contender, fresh_cpu[contender], note="11-byte echo")
