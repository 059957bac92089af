"""Hostile component bytes: truncated and mutated components load or fail with typed errors.

A component is parsed, validated and described by wasmtime (Rust) and wasmtime-py's type objects;
a crash there would take the host process down, so the loads run in a child process, which
reports each outcome, and the test asserts the child neither crashed nor saw an untyped error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent

_CHILD = textwrap.dedent(
    """
    import json, random, sys
    sys.path.insert(0, sys.argv[1])
    import plugsafe
    from component_wat import WORLD, IMPORTS, RESOURCE

    seed, count = int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    bases = [bytes(plugsafe._runtime.wat_to_wasm(t)) for t in (WORLD, IMPORTS, RESOURCE)]

    def mutate(data):
        data = bytearray(data)
        how = rng.randrange(4)
        if how == 0:
            return bytes(data[: rng.randrange(8, len(data))])
        if how == 1:
            for _ in range(rng.randrange(1, 8)):
                i = rng.randrange(8, len(data))
                data[i] ^= 1 << rng.randrange(8)
            return bytes(data)
        if how == 2:
            i = rng.randrange(8, len(data))
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
            return bytes(data)
        i = rng.randrange(8, len(data))
        data[i] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
        return bytes(data)

    outcomes = {}
    untyped = []
    policy = plugsafe.Policy(fuel=100_000, wasi=plugsafe.Wasi())
    with plugsafe.Host() as host:
        for n in range(count):
            data = mutate(rng.choice(bases))
            try:
                with host.load(data, policy=policy) as plugin:
                    for name, sig in plugin.exports.items():
                        if sig == "func(a: u32, b: u32) -> u32":
                            plugin.invoke(name, 1, 2)
                outcome = "loaded"
            except plugsafe.PlugsafeError as exc:
                outcome = type(exc).__name__
            except Exception as exc:
                outcome = "untyped"
                untyped.append(f"{type(exc).__name__}: {exc}"[:300])
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(json.dumps({"outcomes": outcomes, "untyped": untyped}))
    """
)


def test_mutated_components_fail_only_with_typed_errors() -> None:
    count = int(os.environ.get("PLUGSAFE_COMPONENT_FUZZ", "150"))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(TESTS), "1606", str(count)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"the child died ({proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["untyped"] == []
    assert sum(report["outcomes"].values()) == count
    # The mutations reach past the parser: some load, most are refused as invalid.
    assert report["outcomes"].get("InvalidModuleError", 0) > 0
