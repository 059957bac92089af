"""lead13: ``Host(on_call=...)`` reports a component's calls as it reports a module's.

A component's ``invoke`` and ``invoke_async`` went unreported: an operator's metrics saw
module plugins only. Now every call, returned, failed or refused before it ran, reaches the
Host's callback with its ``CallStats`` (``context`` always None: a component call takes none).
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from component_wat import WORLD

import plugsafe
from plugsafe import CallStats, Policy


def _host(seen: list[CallStats]) -> plugsafe.Host:
    return plugsafe.Host(on_call=seen.append)


def test_every_component_call_is_reported_with_its_stats_and_error() -> None:
    seen: list[CallStats] = []
    with _host(seen) as host:
        p = host.load_component(WORLD.encode(), policy=Policy(fuel=10**6), name="comp")
        assert p.invoke("add", 2, 3) == 5
        with pytest.raises(plugsafe.GuestError):
            p.invoke("res", -1)  # the result's error case
        with pytest.raises(plugsafe.PluginTrap):
            p.invoke("boom")
        with pytest.raises(plugsafe.SignatureError):
            p.invoke("add", "two", 3)  # refused before it ran
        with pytest.raises(plugsafe.ExportNotFoundError):
            p.invoke("nope")
        assert asyncio.run(p.invoke_async("add", 40, 2)) == 42
    assert [(s.plugin, s.function, s.error) for s in seen] == [
        ("comp", "add", None),
        ("comp", "res", plugsafe.GuestError),
        ("comp", "boom", plugsafe.PluginTrap),
        ("comp", "add", plugsafe.SignatureError),
        ("comp", "nope", plugsafe.ExportNotFoundError),
        ("comp", "add", None),
    ]
    ran = [seen[i] for i in (0, 1, 2, 5)]
    assert all(s.fuel_consumed is not None and s.fuel_consumed > 0 for s in ran), ran
    assert seen[3].fuel_consumed is None and seen[4].fuel_consumed is None  # never ran
    assert all(s.duration >= 0 and s.context is None for s in seen)
    # The same numbers as the plugin's own last_call (the callback's copy adds the error).
    assert seen[0].memory_bytes >= 0


def test_a_component_call_reported_matches_its_last_call() -> None:
    seen: list[CallStats] = []
    with _host(seen) as host:
        p = host.load_component(WORLD.encode(), policy=Policy(fuel=10**6))
        p.invoke("sum", [1, 2, 3])
        last = p.last_call
    assert last is not None and len(seen) == 1
    assert seen[0] == last  # (error None, context not compared)


def test_a_failing_on_call_never_changes_a_component_calls_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bad(stats: CallStats) -> None:
        raise ZeroDivisionError("metrics backend down")

    caplog.set_level(logging.ERROR, logger="plugsafe")
    with plugsafe.Host(on_call=bad) as host:
        p = host.load_component(WORLD.encode())
        assert p.invoke("add", 1, 1) == 2
        with pytest.raises(plugsafe.PluginTrap):
            p.invoke("boom")
    records = [r for r in caplog.records if "on_call" in r.getMessage()]
    assert len(records) == 2
    assert records[0].exc_info is not None and records[0].exc_info[0] is ZeroDivisionError


def test_a_component_without_on_call_reports_nothing_and_keeps_its_last_call() -> None:
    with plugsafe.Host() as host:
        p = host.load_component(WORLD.encode())
        assert p.invoke("add", 1, 1) == 2
        assert p.last_call is not None and p.last_call.function == "add"
