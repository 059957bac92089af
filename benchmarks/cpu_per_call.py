"""Per-call CPU time of invoke, an 11-byte echo and a guest→host call (best of 7 rounds).

``invoke`` calls a plugin without imports; ``invoke_imports`` the benchmark row's plugin, the
ABI guest that imports a host function (the short path's bookkeeping for such a plugin).

The echo guest declares an input buffer (docs/abi.md); ``echo11v1`` is the same guest without
it, as a plain v1 guest (input through ``plugsafe_alloc``: two wasm calls).

For comparing two versions of plugsafe on a busy machine, where wall-clock medians move too much:
run it under each version in turn, alternating, e.g. from two checkouts with their own venvs
(``.venv/bin/python benchmarks/cpu_per_call.py``). docs/performance.md has a use of it.

A second line: ``invoke`` over 1,000 plugins in turn against one plugin, per call (goal 7 of
issue 14, docs/performance.md "7. 1,000 plugins round-robin").
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import plugsafe

sys.path.insert(0, str(Path(__file__).parent))
from guests import PLUGSAFE_GUEST, PLUGSAFE_PURE_GUEST, PLUGSAFE_V1_GUEST

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
HOST_CALLS = """
(module
  (import "plugsafe" "inc" (func $inc (param i64) (result i64)))
  (func (export "run") (param i32) (result i64) (local i64)
    (block (loop
      (br_if 1 (i32.eqz (local.get 0)))
      (local.set 1 (call $inc (local.get 1)))
      (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br 0)))
    (local.get 1)))
"""


def best(run: Callable[[int], object], n: int, rounds: int = 7) -> float:
    """The least CPU seconds per operation over ``rounds`` runs of ``run(n)``."""
    times = []
    for _ in range(rounds):
        t = time.thread_time()
        run(n)
        times.append((time.thread_time() - t) / n)
    return min(times)


def main() -> None:
    with plugsafe.Host() as host:

        @host.function
        def inc(x: int) -> int:
            return x + 1

        @host.function
        def bump(x: int) -> int:
            return x + 1

        add = host.load(ADD.encode())
        echo = host.load(PLUGSAFE_PURE_GUEST.encode())
        echo_v1 = host.load(PLUGSAFE_V1_GUEST.encode())
        # The benchmark row's plugin: the ABI guest with a host import (default policy).
        imports = host.load(PLUGSAFE_GUEST.encode(), policy=plugsafe.Policy(allow={"bump"}))
        name = next(n for n, e in echo.exports.items() if e.params == ("i32", "i32"))
        calls = host.load(
            HOST_CALLS.encode(), policy=plugsafe.Policy(allow={"inc"}, max_host_calls=10**9)
        )

        def invoke(n: int) -> None:
            f = add.invoke
            for _ in range(n):
                f("add", 1, 2)

        def invoke_imports(n: int) -> None:
            f = imports.invoke
            for _ in range(n):
                f("add", 1, 2)

        def call(n: int) -> None:
            f = echo.call
            for _ in range(n):
                f(name, b"hello world")

        def call_v1(n: int) -> None:
            f = echo_v1.call
            for _ in range(n):
                f(name, b"hello world")

        invoke(10)
        invoke_imports(10)
        call(10)
        call_v1(10)
        calls.invoke("run", 10)
        print(
            f"invoke {best(invoke, 20_000) * 1e9:.0f} ns  "
            f"invoke_imports {best(invoke_imports, 20_000) * 1e9:.0f} ns  "
            f"echo11 {best(call, 20_000) * 1e9:.0f} ns  "
            f"echo11v1 {best(call_v1, 20_000) * 1e9:.0f} ns  "
            f"hostcall {best(lambda n: calls.invoke('run', n), 20_000) * 1e9:.0f} ns"
        )
        many = [host.load(PLUGSAFE_PURE_GUEST.encode()) for _ in range(1000)]
        first = many[0]
        for p in many:
            p.invoke("add", 1, 2)

        def one(n: int) -> None:
            for _ in range(n // 1000):
                for _p in many:
                    first.invoke("add", 1, 2)

        def turn(n: int) -> None:
            for _ in range(n // 1000):
                for p in many:
                    p.invoke("add", 1, 2)

        one(1000)
        turn(1000)
        t_one, t_turn = best(one, 20_000), best(turn, 20_000)
        print(f"1000 in turn {t_turn * 1e9:.0f} ns ({t_turn / t_one:.2f}x one plugin)")


if __name__ == "__main__":
    main()
