"""The plugin that calls app-defined host functions (a key-value store) and logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import plugsafe

from .conftest import PluginPath

SOURCES = ["committed", "fresh"]
LANGS = ["rust", "c"]


class Store:
    """The app's key-value store, exposed to the plugin as two host functions."""

    def __init__(self) -> None:
        self.values = {"user": "Ada", "city": "London", "empty": ""}
        self.counters: dict[str, int] = {}

    def register(self, host: plugsafe.Host) -> None:
        """Register kv_get and kv_incr on the host."""

        @host.function
        def kv_get(key: str) -> str | None:
            return self.values.get(key)

        @host.function
        def kv_incr(key: str, by: int) -> int:
            self.counters[key] = self.counters.get(key, 0) + by
            return self.counters[key]


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture(
    params=[(lang, src) for lang in LANGS for src in SOURCES], ids=lambda p: "-".join(p)
)
def plugin(
    request: pytest.FixtureRequest, host: plugsafe.Host, store: Store, plugin_path: PluginPath
) -> Iterator[plugsafe.Plugin]:
    lang, source = request.param
    store.register(host)
    policy = plugsafe.Policy(allow=frozenset({"log", "kv_get", "kv_incr"}))
    with host.load(plugin_path("kv", lang, source), policy=policy, name="kv") as p:
        yield p


def test_render_looks_up_and_logs(
    plugin: plugsafe.Plugin, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="plugsafe.plugin.kv"):
        out = plugin.call("render", "Hello, {user} from {city}!{empty} {nope}.")
    assert out == b"Hello, Ada from London! ."
    messages = [
        (r.levelno, r.getMessage()) for r in caplog.records if r.name == "plugsafe.plugin.kv"
    ]
    assert (logging.WARNING, 'no value for key "nope"') in messages
    assert (logging.INFO, f"rendered {len(out)} bytes with 4 lookups") in messages


def test_render_without_placeholders_calls_nothing(plugin: plugsafe.Plugin) -> None:
    assert plugin.call("render", "plain text") == b"plain text"
    assert plugin.last_call is not None
    assert plugin.last_call.host_calls == 1  # only the "rendered" log line


def test_render_error(plugin: plugsafe.Plugin) -> None:
    with pytest.raises(plugsafe.GuestError, match="unclosed '\\{' at byte 4"):
        plugin.call("render", "abc {user")


def test_visit_uses_an_int_host_function(plugin: plugsafe.Plugin, store: Store) -> None:
    assert plugin.call("visit", "home") == b"home: 1 visits"
    assert plugin.call("visit", "home") == b"home: 2 visits"
    store.counters["visits:about"] = -7
    assert plugin.call("visit", "about") == b"about: -6 visits"
    with pytest.raises(plugsafe.GuestError, match="which page"):
        plugin.call("visit", "")


@pytest.mark.parametrize("lang", LANGS)
def test_denied_without_the_host_functions_in_the_policy(
    host: plugsafe.Host, store: Store, plugin_path: PluginPath, lang: str
) -> None:
    store.register(host)
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        host.load(
            plugin_path("kv", lang, "committed"), policy=plugsafe.Policy(allow=frozenset({"log"}))
        )
    assert "plugsafe.kv_get" in str(info.value)
    assert "plugsafe.kv_incr" in str(info.value)
