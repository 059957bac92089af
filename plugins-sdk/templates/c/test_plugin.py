"""Tests for this plugin, run through plugsafe exactly as a host app runs it.

Build the plugin (`make`), then run `python -m pytest` in this directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import plugsafe

HERE = Path(__file__).resolve().parent
WASM = HERE / "plugsafe_template.wasm"


def load_policy() -> plugsafe.Policy:
    """The policy in policy.toml, the one the host app should use too."""
    return plugsafe.Policy.from_toml(HERE / "policy.toml")


@pytest.fixture
def plugin() -> Iterator[plugsafe.Plugin]:
    """The built plugin, loaded under its policy."""
    if not WASM.exists():
        pytest.fail(f"{WASM.name} is not built yet: run `make` first")
    with plugsafe.Host() as host, host.load(WASM, policy=load_policy(), name="shout") as p:
        yield p


def test_shouts(plugin: plugsafe.Plugin) -> None:
    assert plugin.call("shout", b"hello, world") == b"HELLO, WORLD"


def test_empty_input_is_an_error(plugin: plugsafe.Plugin) -> None:
    with pytest.raises(plugsafe.GuestError, match="nothing to shout"):
        plugin.call("shout", b"")


def test_fits_its_policy(plugin: plugsafe.Plugin) -> None:
    plugin.call("shout", b"x" * 100_000)
    fuel = load_policy().fuel
    assert plugin.last_call is not None and fuel is not None
    assert plugin.last_call.fuel_consumed < fuel
