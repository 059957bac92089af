"""Tests for this plugin, run through plugsafe exactly as a host app runs it.

Build the plugin (`python build.py`), then run `python -m pytest` in this directory. The
helpers come with plugsafe: see `plugsafe.testing`.

The first run compiles the ~18 MB component (10-90 s); the compiled copy is kept in
.plugsafe-cache/ (the Host's disk cache), so later runs load it in under a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import plugsafe
from plugsafe.testing import assert_within_policy, load_plugin

HERE = Path(__file__).resolve().parent
WASM = HERE / "plugsafe_template.wasm"
# The policy the host app should use too.
POLICY = HERE / "policy.toml"


@pytest.fixture(scope="module")
def plugin() -> Iterator[plugsafe.ComponentPlugin]:
    """The built plugin, loaded under policy.toml once for this module's tests."""
    if not WASM.exists():
        pytest.fail(f"{WASM.name} is not built yet: run `python build.py` first")
    with plugsafe.Host(cache_dir=HERE / ".plugsafe-cache") as host:
        # When the plugin starts importing an interface of the app's (an `import` in
        # wit/world.wit), register a stand-in and allow it (policy.toml's [imports] allow,
        # or allow={...} here). For example:
        #
        #     @host.component_function("local:app/kv#get")
        #     def kv_get(key: str) -> str | None:
        #         return {"ada": "Lovelace"}.get(key)
        #
        #     p = load_plugin(host, WASM, POLICY, allow={"local:app/kv"}, name="shout")
        p = load_plugin(host, WASM, POLICY, name="shout")
        assert isinstance(p, plugsafe.ComponentPlugin)
        yield p


def test_exports(plugin: plugsafe.ComponentPlugin) -> None:
    assert dict(plugin.exports) == {"shout": "func(text: string) -> result<string, string>"}


def test_shouts(plugin: plugsafe.ComponentPlugin) -> None:
    assert plugin.invoke("shout", "hello, world") == "HELLO, WORLD"


def test_empty_text_is_an_error(plugin: plugsafe.ComponentPlugin) -> None:
    with pytest.raises(plugsafe.GuestError, match="nothing to shout") as info:
        plugin.invoke("shout", "")
    assert info.value.value == "nothing to shout"  # type: ignore[attr-defined]


def test_fits_its_policy(plugin: plugsafe.ComponentPlugin) -> None:
    plugin.invoke("shout", "x" * 10_000)
    # At most half of each limit in policy.toml (fuel, time, host calls; a component's memory
    # cannot be read from the host, so it is not measured). Time is the one noisy measure:
    # loosen headroom on a slow CI machine.
    assert_within_policy(plugin, headroom=0.5)  # type: ignore[arg-type]
