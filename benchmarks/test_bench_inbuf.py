"""The input buffer (docs/abi.md): the 11-byte echo and the first call, with and without it.

The same echo guest twice: with ``plugsafe_input_buffer`` (one wasm call per plugin call, as
guests built with the SDKs) and without (a plain v1 guest: ``plugsafe_alloc``, then the
function), beside Extism's zero-copy echo and wasmtime-py by hand, rounds interleaved. Run as a
script (``python benchmarks/test_bench_inbuf.py``) it prints the medians and ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import wasmtime
from test_bench_issue14 import _extism, interleaved, report

import plugsafe

from conftest import by_hand
from guests import EXTISM_PURE_GUEST, PLUGSAFE_PURE_GUEST, PLUGSAFE_V1_GUEST

_pc = time.perf_counter
DATA = b"hello world"
ECHO = "echo 11 B, input buffer, interleaved"
FIRST = "first call on a new plugin, input buffer"


def measure_small(quick: bool = False) -> dict[str, float]:
    """Medians (seconds per call) of the 11-byte echo, every contender on its cheapest path."""
    contenders: dict[str, Callable[[], object]] = {}
    with plugsafe.Host() as host:
        buffered = host.load(PLUGSAFE_PURE_GUEST.encode())
        v1 = host.load(PLUGSAFE_V1_GUEST.encode())
        contenders["plugsafe"] = lambda: buffered.call("echo", DATA)
        contenders["plugsafe, v1 guest"] = lambda: v1.call("echo", DATA)
        wt = by_hand()  # asks the guest's buffer once, as plugsafe does
        contenders["wasmtime-py"] = lambda: wt.call_echo(DATA)
        extism = _extism()
        if extism is not None:
            ex = extism.Plugin(bytes(wasmtime.wat2wasm(EXTISM_PURE_GUEST)), functions=[])
            contenders["extism"] = lambda: ex.call("echo", DATA)
        return interleaved(contenders, rounds=1 if quick else 25, per=1 if quick else 400)


def measure_first(quick: bool = False) -> dict[str, float]:
    """Medians of the first and a later (the third) 11-byte echo on a new plugin, with and
    without."""
    guests = {"plugsafe": PLUGSAFE_PURE_GUEST, "plugsafe, v1 guest": PLUGSAFE_V1_GUEST}
    samples: dict[str, list[float]] = {}
    for name in guests:
        samples[f"{name} first call"] = []
        samples[f"{name} later call"] = []
    wasm = {name: bytes(wasmtime.wat2wasm(g)) for name, g in guests.items()}
    with plugsafe.Host() as host:
        for _ in range(3 if quick else 300):
            for name in guests:  # interleaved: one of each per round
                plugin = host.load(wasm[name])
                start = _pc()
                plugin.call("echo", DATA)
                first = _pc() - start
                # The third call is the later one: the second binds the compiled call (see
                # test_bench_issue14.first_call).
                plugin.call("echo", DATA)
                start = _pc()
                plugin.call("echo", DATA)
                samples[f"{name} later call"].append(_pc() - start)
                samples[f"{name} first call"].append(first)
                plugin.close()
    return {k: statistics.median(v) for k, v in samples.items()}


def _quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("benchmark_disable", False))


@pytest.fixture(scope="module")
def small(request: pytest.FixtureRequest) -> dict[str, float]:
    return measure_small(_quick(request))


@pytest.fixture(scope="module")
def first_calls(request: pytest.FixtureRequest) -> dict[str, float]:
    return measure_first(_quick(request))


@pytest.mark.parametrize("contender", ["plugsafe", "plugsafe, v1 guest", "wasmtime-py", "extism"])
def test_echo_with_the_input_buffer(
    benchmark: Any, small: dict[str, float], contender: str
) -> None:
    if contender not in small:
        pytest.skip("Extism columns skipped: pip install -e '.[bench]'")
    note = {"extism": "zero-copy guest", "plugsafe, v1 guest": "no plugsafe_input_buffer"}
    report(benchmark, ECHO, contender, small[contender], note=note.get(contender, ""))


@pytest.mark.parametrize(
    "contender",
    [
        "plugsafe first call",
        "plugsafe later call",
        "plugsafe, v1 guest first call",
        "plugsafe, v1 guest later call",
    ],
)
def test_first_call_with_the_input_buffer(
    benchmark: Any, first_calls: dict[str, float], contender: str
) -> None:
    report(benchmark, FIRST, contender, first_calls[contender], note="11-byte echo")


if __name__ == "__main__":
    small_calls = measure_small()
    for name, s in small_calls.items():
        print(f"echo 11 B  {name:22} {s * 1e6:7.2f} us")
    ps = small_calls["plugsafe"]
    for name, s in small_calls.items():
        if name != "plugsafe":
            print(f"  {name} / plugsafe = {s / ps:.2f}x")
    if "extism" in small_calls:
        v1 = small_calls["plugsafe, v1 guest"]
        print(f"  extism / v1 guest = {small_calls['extism'] / v1:.2f}x")
    firsts = measure_first()
    for name, s in firsts.items():
        print(f"{name:32} {s * 1e6:7.2f} us")
    for g in ("plugsafe", "plugsafe, v1 guest"):
        print(
            f"  {g}: first / later = {firsts[f'{g} first call'] / firsts[f'{g} later call']:.2f}x"
        )
