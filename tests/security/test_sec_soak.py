"""A soak: 10^5 calls and 10^4 load/close cycles must not grow the process without bound.

Leaks in plugsafe (instances, stores, ctypes callbacks, linkers kept alive by a cycle) would show
up as RSS that grows with the number of calls or plugins. The bounds are generous; they catch
leaks that scale with the work (a few KiB per cycle), not allocator noise.
"""

from __future__ import annotations

import os
import sys

import pytest

import plugsafe
from plugsafe import Policy

from sec import attacker

MiB = 2**20

# echo through a host function, and a call that fails and discards its instance, so the soak
# covers the host-function trampoline and the trap path too.
SOAK = attacker(
    """(func (export "via_host") (param $p i32) (param $n i32) (result i64)
         (call $take (local.get $p) (local.get $n)))
       (func (export "trap") (param i32 i32) (result i64) unreachable)""",
    imports='(import "plugsafe" "take" (func $take (param i32 i32) (result i64)))',
)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _host() -> plugsafe.Host:
    host = plugsafe.Host()

    @host.function
    def take(data: bytes) -> bytes:
        return data

    return host


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_soak_calls_and_load_close_cycles() -> None:
    """10^5 calls (echo, host round trips, traps) and 10^4 load/close cycles, RSS bounded."""
    policy = Policy(allow={"take"}, fuel=1_000_000)
    payload = b"x" * 256
    with _host() as host:
        wat = SOAK.encode()
        # Warm up: the module cache, the ticker thread, allocator arenas.
        p = host.load(wat, policy=policy)
        for _ in range(2000):
            p.call("echo", payload)
        for _ in range(200):
            host.load(wat, policy=policy).close()
        before = _rss()
        for i in range(100_000):
            if i % 100 == 0:
                with pytest.raises(plugsafe.PluginTrap):
                    p.call("trap", payload)
            elif i % 10 == 0:
                assert p.call("via_host", payload) == payload
            else:
                assert p.call("echo", payload) == payload
        after_calls = _rss()
        for _ in range(10_000):
            host.load(wat, policy=policy).close()
        after_loads = _rss()
    calls = (after_calls - before) / MiB
    loads = (after_loads - after_calls) / MiB
    assert calls < 32, f"10^5 calls grew RSS by {calls:.1f} MiB"
    assert loads < 64, f"10^4 load/close cycles grew RSS by {loads:.1f} MiB"
