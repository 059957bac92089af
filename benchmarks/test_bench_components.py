"""Issue 16, bulk data: grayscale of an RGB image through a component, by payload size.

One row per payload (1 KiB to 1 MiB of pixels), three contenders measured in interleaved rounds
(A, B, C, A, B, C, ...), each on its cheapest path:

- ``plugsafe component``: ``plugin.invoke("processor/grayscale", {...})`` on the committed C
  image-service component (examples/components/image-service.wasm);
- ``wasmtime-py component``: the same component through wasmtime-py's own component API by hand
  (``Linker.instantiate``, ``Func.__call__`` with a ``Record``), which lowers and lifts
  ``list<u8>`` one element at a time;
- ``plugsafe core ABI``: ``plugin.call("grayscale", ...)`` on the committed C core-module build
  of the same filter (examples/plugins/wasm/image-c.wasm), the bulk path plugsafe recommends.

The issue's goal: a 64x64 image (12 KiB) through the component within 2 ms; the 12 KiB row
is that image. docs/components.md ("Speed") has the figures and where the core ABI stays the
bulk path. Under ``--benchmark-disable`` (CI) every row runs one short round: checked, not timed.
"""

from __future__ import annotations

import math
import struct
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from test_bench_issue14 import _quick, interleaved, report
from wasmtime import component as wc

import plugsafe

REPO = Path(plugsafe.__file__).resolve().parent.parent
COMPONENT = REPO / "examples" / "components" / "image-service.wasm"
CORE = REPO / "examples" / "plugins" / "wasm" / "image-c.wasm"
ITEM = "grayscale through a component"
# Pixel payloads: 1 KiB, 12 KiB (the issue's 64x64 image), 64 KiB, 256 KiB, 1 MiB.
PAYLOADS = (1024, 64 * 64 * 3, 64 * 1024, 256 * 1024, 1024 * 1024)
CONTENDERS = ("plugsafe component", "wasmtime-py component", "plugsafe core ABI")
# Generous limits: the point is the cost of the data, not the policy (a list<u8> result is
# counted at 33 bytes per byte against max_output, see docs/components.md).
POLICY = plugsafe.Policy(
    fuel=None, timeout=60.0, memory=256 * 2**20, max_input=64 * 2**20, max_output=64 * 2**20
)


def _side(payload: int) -> int:
    """The side of the square RGB image closest to ``payload`` bytes of pixels."""
    return max(1, round(math.sqrt(payload / 3)))


@pytest.fixture(scope="module")
def grayscale_rows(request: pytest.FixtureRequest) -> dict[tuple[str, int], float]:
    quick = _quick(request)
    payloads = PAYLOADS[:2] if quick else PAYLOADS
    out: dict[tuple[str, int], float] = {}
    with plugsafe.Host() as host:
        comp = host.load_component(COMPONENT, policy=POLICY, name="image-service")
        core = host.load(CORE, policy=POLICY, name="image-c")
        engine = wasmtime.Engine()
        store = wasmtime.Store(engine)
        instance = wc.Linker(engine).instantiate(
            store, wc.Component(engine, COMPONENT.read_bytes())
        )
        iface = instance.get_export_index(store, "mycompany:image-processor/processor@1.0.0")
        assert iface is not None
        index = instance.get_export_index(store, "grayscale", iface)
        assert index is not None
        func = instance.get_func(store, index)
        assert func is not None
        for payload in payloads:
            side = _side(payload)
            pixels = bytes(range(256)) * (side * side * 3 // 256) + bytes(side * side * 3 % 256)
            image = {"width": side, "height": side, "data": pixels}
            record: Any = wc.Record()
            record.width, record.height, record.data = side, side, pixels
            request_bytes = struct.pack("<II", side, side) + pixels
            # The three agree before anything is timed.
            a = comp.invoke("processor/grayscale", image).data
            b = func(store, record).data
            c = core.call("grayscale", request_bytes)[8:]
            assert a == b == c, payload
            rounds = 1 if quick else (15 if payload <= 64 * 1024 else 5)
            per = 1 if quick or payload > 64 * 1024 else 5
            medians = interleaved(
                {
                    "plugsafe component": partial(comp.invoke, "processor/grayscale", image),
                    "wasmtime-py component": partial(func, store, record),
                    "plugsafe core ABI": partial(core.call, "grayscale", request_bytes),
                },
                rounds=rounds,
                per=per,
            )
            for name, seconds in medians.items():
                out[(name, payload)] = seconds
        comp.close()
        core.close()
    return out


@pytest.mark.parametrize("payload", PAYLOADS, ids=[f"{p // 1024}KiB" for p in PAYLOADS])
@pytest.mark.parametrize("contender", CONTENDERS)
def test_grayscale_by_payload(
    benchmark: Any,
    grayscale_rows: dict[tuple[str, int], float],
    contender: str,
    payload: int,
) -> None:
    seconds = grayscale_rows.get((contender, payload))
    if seconds is None:
        pytest.skip("timed runs only (the untimed run checks the two smallest payloads)")
    side = _side(payload)
    report(
        benchmark,
        f"{ITEM}, {side}x{side} ({side * side * 3 // 1024} KiB)",
        contender,
        seconds,
        payload=side * side * 3,
    )
