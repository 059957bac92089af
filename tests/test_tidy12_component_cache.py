"""tidy12: a component's disk-cache entry may not lie about the fuel its data segments cost.

A component's entry stores ``data_fuel``, the fuel wasmtime charges to copy its data segments
in at instantiation (``_hostmem.data_fuel``), added on top of the policy's fuel. It was believed:
an entry saying 9999999999999 gave a start function that many units of fuel more than the
policy's (a loop the policy's fuel stops ran on, bounded by the timeout alone), and one saying 0
charged a 100 KB copy to the policy's fuel (a component that fits refused with FuelExhausted).
The count is now read again from the binary in hand on every disk hit (~11 ms of CPU for an
18 MB componentize-py component, whose disk hit costs ~240 ms and whose compile ~30 s); an
entry that disagrees is deleted and the component compiled again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from test_component_memory import _cached_entry, _data_component

import plugsafe
from plugsafe import Host, Policy
from plugsafe._cache import ArtifactCache

_FUEL = Policy(fuel=10_000)


def _lying(
    tmp_path: Path, wasm: bytes, data_fuel: int, *, refused: bool = False
) -> tuple[Any, str, Path]:
    """The disk entry of ``wasm`` rewritten to say ``data_fuel`` (its digest made to match, as
    anyone who can write the directory can); (its cache, its name, a second link to it)."""
    if not refused:
        cache, name, artifact = _cached_entry(tmp_path, wasm)
    else:  # written by the compile, before the instantiation refuses the component
        with Host(cache_dir=tmp_path) as first, pytest.raises(plugsafe.FuelExhausted):
            first.load_component(wasm, policy=_FUEL)
        (entry,) = [p for p in tmp_path.rglob("*") if p.is_file()]
        cache, name = ArtifactCache(entry.parent, salt="unused"), entry.name
        stored = cache.get(name)
        assert stored is not None
        artifact = stored[1]
    truth = cache.get(name)
    assert truth is not None and truth[0] != b"component;data_fuel=%d" % data_fuel
    cache.put(name, artifact, b"component;data_fuel=%d" % data_fuel)
    held = tmp_path / ".held"
    os.link(cache.directory / name, held)
    return cache, name, held


def test_an_entry_overstating_the_data_fuel_gives_a_start_function_no_more_fuel(
    tmp_path: Path,
) -> None:
    # The start function counts down 100,000 times (a few units of fuel each): far over the
    # policy's 10,000, and refused at load, with the entry's truth (data_fuel=4).
    looping = _data_component(2, start_loops=100_000)
    cache, name, held = _lying(tmp_path, looping, 9_999_999_999_999, refused=True)
    with (
        Host(cache_dir=tmp_path) as host,
        pytest.raises(plugsafe.FuelExhausted) as info,
    ):
        host.load_component(looping, policy=_FUEL)
    assert info.value.phase == "load"
    assert not (cache.directory / name).samefile(held)  # deleted, compiled, written again
    again = cache.get(name)
    assert again is not None and again[0] == b"component;data_fuel=4"


def test_an_entry_understating_the_data_fuel_charges_no_copy_to_the_policy(
    tmp_path: Path,
) -> None:
    # 100 KB of data: copying it in costs ~100k fuel, ten times the policy's (not its to pay).
    big = _data_component(100_000)
    cache, name, held = _lying(tmp_path, big, 0)
    with Host(cache_dir=tmp_path) as host, host.load_component(big, policy=_FUEL) as plugin:
        assert plugin.invoke("grow", 0) == 2
    assert not (cache.directory / name).samefile(held)
    again = cache.get(name)
    assert again is not None and again[0] == b"component;data_fuel=100002"


def test_an_entry_telling_the_truth_is_a_hit(tmp_path: Path) -> None:
    big = _data_component(100_000)
    cache, name, _artifact = _cached_entry(tmp_path, big)
    held = tmp_path / ".held"
    os.link(cache.directory / name, held)
    with Host(cache_dir=tmp_path) as host, host.load_component(big, policy=_FUEL) as plugin:
        assert plugin.invoke("grow", 0) == 2
    assert (cache.directory / name).samefile(held)  # nothing compiled, nothing written
