"""What limits cost on a compute loop (an xorshift PRNG, COMPUTE_ITERATIONS steps per call).

plugsafe compiles every plugin with epoch interruption on (that is how a timeout works), so its
"unlimited" policy still carries the epoch checks; wasmtime-py by hand on a plain engine is the
loop with no checks at all.
"""

from __future__ import annotations

from typing import Any

import pytest
import wasmtime

import plugsafe

from conftest import by_hand, tag

ITEM = "compute loop"
FAR = 1 << 62  # an epoch deadline that never comes


@pytest.mark.parametrize(
    ("contender", "policy"),
    [
        pytest.param("plugsafe unlimited", plugsafe.Policy(timeout=None), id="unlimited"),
        pytest.param("plugsafe timeout", plugsafe.Policy(timeout=10.0), id="timeout"),
        pytest.param(
            "plugsafe fuel+timeout",
            plugsafe.Policy(fuel=10**12, timeout=10.0),
            id="fuel+timeout",
        ),
    ],
)
def test_compute_plugsafe(
    benchmark: Any,
    ps_host: plugsafe.Host,
    pure_wasm: bytes,
    contender: str,
    policy: plugsafe.Policy,
) -> None:
    tag(benchmark, ITEM, contender)
    plugin = ps_host.load(pure_wasm, policy=policy)
    expected = plugin.invoke("compute")
    assert benchmark(plugin.invoke, "compute") == expected
    plugin.close()


@pytest.mark.parametrize(
    ("contender", "fuel", "epoch"),
    [
        pytest.param("wasmtime-py plain", False, False, id="plain"),
        pytest.param("wasmtime-py epoch", False, True, id="epoch"),
        pytest.param("wasmtime-py fuel+epoch", True, True, id="fuel+epoch"),
    ],
)
def test_compute_wasmtime(benchmark: Any, contender: str, fuel: bool, epoch: bool) -> None:
    tag(benchmark, ITEM, contender)
    cfg = wasmtime.Config()
    cfg.consume_fuel = fuel
    cfg.epoch_interruption = epoch
    wt = by_hand(wasmtime.Engine(cfg))
    if fuel:
        wt.store.set_fuel(2**62)
    if epoch:
        wt.store.set_epoch_deadline(FAR)
    benchmark(wt.compute, wt.store)
