"""Issue 14, goal 2: the cold start in CPU time, the figure a busy machine disturbs least.

``test_bench_issue14.py``'s cold-start row times each fresh ``python`` by the wall clock, which
on these shared 2-core machines includes waiting for a core. This row runs the same two scripts
(plugsafe: import, ``Host(cache_dir=)``, load from the cache, call; wasmtime-py by hand: import,
``Module.deserialize_file``, instantiate, the same ABI echo), rounds interleaved, and reports each
child's CPU time (user + system, from the children's rusage): the process's own work, start-up
and exit included.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import wasmtime
from test_bench_issue14 import _COLD_PLUGSAFE, _COLD_WASMTIME, REPO, _quick, report

from conftest import U64
from guests import PLUGSAFE_PURE_GUEST

COLD_CPU = "cold start, CPU (import, load from cache, call)"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def cold_cpu(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, float]:
    d = tmp_path_factory.mktemp("cold_cpu")
    wasm = bytes(wasmtime.wat2wasm(PLUGSAFE_PURE_GUEST))
    (d / "g.wasm").write_bytes(wasm)
    (d / "g.cwasm").write_bytes(bytes(wasmtime.Module(wasmtime.Engine(), wasm).serialize()))
    (d / "cache").mkdir(mode=0o700)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    fmt = {"cache": str(d / "cache"), "wasm": str(d / "g.wasm"), "cwasm": str(d / "g.cwasm")}
    fmt["u64"] = str(U64)
    # As in the wall-clock row: bytecode compiled, as an installed plugsafe has it.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "plugsafe")], check=True)
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    def child(code: str) -> Callable[[], float]:
        def run() -> float:
            before = _children_cpu()
            subprocess.run(
                [sys.executable, "-c", code.format(**fmt)], check=True, env=env, timeout=120, cwd=d
            )
            return _children_cpu() - before

        return run

    contenders = {"plugsafe": child(_COLD_PLUGSAFE), "wasmtime-py": child(_COLD_WASMTIME)}
    for run in contenders.values():
        run()  # warm: fills plugsafe's disk cache, the OS's page cache
    rounds = 1 if _quick(request) else 15
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            samples[name].append(run())
    return {name: statistics.median(v) for name, v in samples.items()}


@pytest.mark.parametrize("contender", ["plugsafe", "wasmtime-py"])
def test_cold_start_cpu(benchmark: Any, cold_cpu: dict[str, float], contender: str) -> None:
    report(benchmark, COLD_CPU, contender, cold_cpu[contender], note="CPU of the whole process")
