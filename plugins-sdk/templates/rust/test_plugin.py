"""Tests for this plugin, run through plugsafe exactly as a host app runs it.

Build the plugin (`python build.py`), then run `python -m pytest` in this directory. The
fixtures (`plugsafe_host`) and helpers come with plugsafe: see `plugsafe.testing`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import plugsafe
from plugsafe.testing import assert_within_policy, load_plugin

HERE = Path(__file__).resolve().parent
WASM = HERE / "target" / "wasm32-unknown-unknown" / "release" / "plugsafe_template.wasm"
# The policy the host app should use too.
POLICY = HERE / "policy.toml"


@pytest.fixture
def plugin(plugsafe_host: plugsafe.Host) -> plugsafe.Plugin:
    """The built plugin, loaded under policy.toml (closed with the host after each test)."""
    if not WASM.exists():
        pytest.fail(f"{WASM.name} is not built yet: run `python build.py` first")
    # When the plugin starts importing a host function (plugsafe::import! in src/lib.rs), give
    # the test a stand-in that records its calls, and allow it: add the name to policy.toml's
    # [imports] allow, or widen the policy here with allow={...}. For example:
    #
    #     from plugsafe.testing import stub
    #
    #     @stub(plugsafe_host)
    #     def kv_get(key: str) -> str | None:
    #         return {"ada": "Lovelace"}.get(key)
    #
    #     plugin = load_plugin(plugsafe_host, WASM, POLICY, allow={"kv_get"}, name="shout")
    #     ...
    #     assert kv_get.calls == [("ada",)]
    return load_plugin(plugsafe_host, WASM, POLICY, name="shout")


def test_shouts(plugin: plugsafe.Plugin) -> None:
    assert plugin.call("shout", b"hello, world") == b"HELLO, WORLD"


def test_empty_input_is_an_error(plugin: plugsafe.Plugin) -> None:
    with pytest.raises(plugsafe.GuestError, match="nothing to shout"):
        plugin.call("shout", b"")


def test_fits_its_policy(plugin: plugsafe.Plugin) -> None:
    plugin.call("shout", b"x" * 100_000)
    # At most half of each limit in policy.toml (fuel, time, memory, host calls): room for
    # bigger inputs. Time is the one noisy measure; loosen headroom on a slow CI machine.
    assert_within_policy(plugin, headroom=0.5)
