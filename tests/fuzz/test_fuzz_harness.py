"""The harness itself: outcomes are pinned on the right case, and a dead worker is replaced."""

from __future__ import annotations

import base64

from .harness import CRASH, HANG, OK, TYPED, UNTYPED, Runner, smith_case

EMPTY = base64.b64encode(b"(module)").decode()


def _case(*ops: list[object]) -> dict[str, object]:
    return {"wasm": EMPTY, "policy": {}, "ops": list(ops)}


def test_each_outcome_is_attributed_to_its_case() -> None:
    runner = Runner(wall=3.0)
    try:
        got = [
            runner.run(_case(), 1),
            runner.run(_case(["_abort"]), 2),
            runner.run(_case(), 3),
            runner.run(_case(["_sleep", 30]), 4),
            runner.run(_case(["_raise"]), 5),
            runner.run({**_case(), "wasm": base64.b64encode(b"not wasm").decode()}, 6),
            runner.run(smith_case(b"\x00asm\x01\x00\x00\x00"), 7),
        ]
    finally:
        runner.close()
    assert [o.outcome for o in got] == [OK, CRASH, OK, HANG, UNTYPED, TYPED, OK]
    assert got[1].detail == "killed by SIGABRT"
    assert "ZeroDivisionError" in got[4].detail
    assert "InvalidModuleError" in got[5].detail
    assert runner.spawned == 3  # the first, and one after each of the crash and the hang
