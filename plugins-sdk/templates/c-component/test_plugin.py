"""Tests for this plugin, run through plugsafe exactly as a host app runs it.

Build the plugin (`make`), then run `python -m pytest` in this directory. The
fixtures (`plugsafe_host`) and helpers come with plugsafe: see `plugsafe.testing`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import plugsafe
from plugsafe.testing import assert_within_policy, load_plugin

HERE = Path(__file__).resolve().parent
WASM = HERE / "plugsafe_template.wasm"
# The policy the host app should use too.
POLICY = HERE / "policy.toml"


@pytest.fixture
def plugin(plugsafe_host: plugsafe.Host) -> plugsafe.ComponentPlugin:
    """The built plugin, loaded under policy.toml (closed with the host after each test)."""
    if not WASM.exists():
        pytest.fail(f"{WASM.name} is not built yet: run `make` first")
    # When the plugin starts importing an interface of the app's (an `import` in
    # wit/world.wit), register a stand-in and allow it (policy.toml's [imports] allow, or
    # allow={...} here). For example:
    #
    #     @plugsafe_host.component_function("local:app/kv#get")
    #     def kv_get(key: str) -> str | None:
    #         return {"ada": "Lovelace"}.get(key)
    #
    #     plugin = load_plugin(plugsafe_host, WASM, POLICY, allow={"local:app/kv"}, name="shout")
    plugin = load_plugin(plugsafe_host, WASM, POLICY, name="shout")
    assert isinstance(plugin, plugsafe.ComponentPlugin)
    return plugin


def test_exports(plugin: plugsafe.ComponentPlugin) -> None:
    assert dict(plugin.exports) == {"shout": "func(text: string) -> result<string, string>"}


def test_shouts(plugin: plugsafe.ComponentPlugin) -> None:
    assert plugin.invoke("shout", "hello, world") == "HELLO, WORLD"


def test_empty_text_is_an_error(plugin: plugsafe.ComponentPlugin) -> None:
    with pytest.raises(plugsafe.GuestError, match="nothing to shout") as info:
        plugin.invoke("shout", "")
    assert info.value.value == "nothing to shout"  # type: ignore[attr-defined]


def test_fits_its_policy(plugin: plugsafe.ComponentPlugin) -> None:
    plugin.invoke("shout", "x" * 100_000)
    # At most half of each limit in policy.toml (fuel, time, host calls; a component's memory
    # cannot be read from the host, so it is not measured). Time is the one noisy measure:
    # loosen headroom on a slow CI machine.
    assert_within_policy(plugin, headroom=0.5)  # type: ignore[arg-type]
