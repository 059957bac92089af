"""The hostile plugin written with the Rust SDK: every attack meets a limit."""

from __future__ import annotations

import logging

import pytest

import plugsafe

from .conftest import PluginPath

SOURCES = ["committed", "fresh"]


@pytest.mark.parametrize("source", SOURCES)
def test_each_attack_is_stopped(host: plugsafe.Host, plugin_path: PluginPath, source: str) -> None:
    policy = plugsafe.Policy(
        fuel=20_000_000, timeout=5.0, memory=8 * 2**20, allow=frozenset({"log"})
    )
    with host.load(plugin_path("hostile", "rust", source), policy=policy, name="hostile") as p:
        with pytest.raises(plugsafe.FuelExhausted):
            p.call("spin")
        with pytest.raises(plugsafe.MemoryLimitExceeded):
            p.call("hog")
        with pytest.raises(plugsafe.PluginTrap):
            p.call("recurse")
        # Still usable after every one of them.
        assert p.call("forge_log") == b""


@pytest.mark.parametrize("source", SOURCES)
def test_spin_meets_the_timeout_without_fuel(
    host: plugsafe.Host, plugin_path: PluginPath, source: str
) -> None:
    policy = plugsafe.Policy(fuel=None, timeout=0.2, allow=frozenset({"log"}))
    path = plugin_path("hostile", "rust", source)
    with (
        host.load(path, policy=policy, name="hostile") as p,
        pytest.raises(plugsafe.DeadlineExceeded),
    ):
        p.call("spin")


def test_log_forgery_and_flood_are_contained(
    host: plugsafe.Host, plugin_path: PluginPath, caplog: pytest.LogCaptureFixture
) -> None:
    # A generous timeout: the flood is stopped by the log and host-call caps, not by time, and
    # on a loaded machine its many host calls can take longer than the default second.
    policy = plugsafe.Policy(allow=frozenset({"log"}), log_messages=50, timeout=60.0)
    with (
        host.load(plugin_path("hostile", "rust", "committed"), policy=policy, name="h") as p,
        caplog.at_level(logging.DEBUG),
    ):
        p.call("forge_log")
    records = [r for r in caplog.records if r.name == "plugsafe.plugin.h"]
    assert all("\n" not in r.getMessage() for r in records)
    assert "the host was compromised" in records[0].getMessage()
    assert len(records) <= 52  # 50 kept, plus the host's note about the dropped ones
