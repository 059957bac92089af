"""Components and PluginPool (refused, clearly), and ComponentPlugin.last_call."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from component_wat import HOST_CALLS, WORLD

import plugsafe
from plugsafe import Host, Policy
from plugsafe._runtime import _hostmem

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "examples" / "components" / "image-service.wasm"


@pytest.mark.parametrize("kind", ["text", "binary file"])
def test_a_pool_of_a_component_is_refused_clearly(kind: str) -> None:
    source: bytes | Path = WORLD.encode() if kind == "text" else COMMITTED
    with pytest.raises(plugsafe.PluginLoadError) as info:
        plugsafe.PluginPool(source, size=2, name="comp")
    message = str(info.value)
    assert "PluginPool takes core WebAssembly modules only" in message
    assert "'comp' is a component" in message
    assert "Host.load_component" in message
    assert "unsupported WebAssembly binary version" not in message


def test_a_pool_names_a_component_file() -> None:
    with pytest.raises(plugsafe.PluginLoadError, match=r"image-service\.wasm' is a component"):
        plugsafe.PluginPool(COMMITTED)


def test_last_call_is_none_before_the_first_call() -> None:
    with Host() as host, host.load_component(WORLD.encode(), name="w") as plugin:
        assert plugin.last_call is None


def test_last_call_counts_fuel_time_and_names_the_call() -> None:
    with (
        Host() as host,
        host.load_component(WORLD.encode(), policy=Policy(fuel=1_000_000), name="w") as plugin,
    ):
        assert plugin.invoke("sum", range(1000)) == sum(range(1000))
        stats = plugin.last_call
        assert stats is not None
        assert stats.plugin == "w" and stats.function == "sum"
        # A loop of 1000 rounds: well over 1000 instructions, well under the limit.
        assert stats.fuel_consumed is not None and 1000 < stats.fuel_consumed < 1_000_000
        assert stats.duration > 0
        # The instance's one page, as plugsafe's memory creator counts it (issue 16; 0 where
        # there is none: the C API cannot read a component's memory).
        assert stats.memory_bytes == (65536 if _hostmem.AVAILABLE else 0)
        assert stats.host_calls == 0
        plugin.invoke("add", 1, 2)
        small = plugin.last_call
        assert small is not None and small.function == "add"
        assert small.fuel_consumed is not None and small.fuel_consumed < stats.fuel_consumed
        # Imported here: importing plugsafe.testing at collection would make it an attribute
        # of plugsafe for every test (test_api checks what plugsafe exposes).
        from plugsafe.testing import assert_within_policy

        assert_within_policy(plugin, headroom=0.5)  # type: ignore[arg-type]


def test_last_call_without_fuel_has_no_fuel() -> None:
    with Host() as host, host.load_component(WORLD.encode()) as plugin:
        plugin.invoke("add", 1, 2)
        stats = plugin.last_call
        assert stats is not None and stats.fuel_consumed is None


def test_last_call_of_a_call_stopped_by_fuel_used_all_of_it() -> None:
    with (
        Host() as host,
        host.load_component(WORLD.encode(), policy=Policy(fuel=5_000)) as plugin,
    ):
        with pytest.raises(plugsafe.FuelExhausted):
            plugin.invoke("spin")
        stats = plugin.last_call
        assert stats is not None and stats.function == "spin" and stats.fuel_consumed == 5_000
        plugin.invoke("add", 1, 2)  # a fresh instance, a fresh budget
        after = plugin.last_call
        assert after is not None and after.function == "add"
        assert after.fuel_consumed is not None and after.fuel_consumed < 5_000


def test_last_call_counts_host_calls() -> None:
    with Host() as host:

        @host.component_function("test:host/logging#host-log")
        def host_log(msg: str) -> None:
            pass

        @host.component_function("test:host/clock#now")
        def now() -> int:
            return 1

        policy = Policy(allow={"test:host/logging", "test:host/clock"})
        with host.load_component(HOST_CALLS.encode(), policy=policy) as plugin:
            plugin.invoke("run", "x", 3)
            stats = plugin.last_call
            assert stats is not None and stats.host_calls == 4  # three logs and now()


def test_last_call_is_per_thread() -> None:
    with Host() as host, host.load_component(WORLD.encode()) as plugin:
        plugin.invoke("add", 1, 2)
        seen: list[plugsafe.CallStats | None] = []

        def other() -> None:
            seen.append(plugin.last_call)  # nothing called on this thread yet
            plugin.invoke("neg", 4)
            seen.append(plugin.last_call)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert seen[0] is None
        assert seen[1] is not None and seen[1].function == "neg"
        mine = plugin.last_call
        assert mine is not None and mine.function == "add"
