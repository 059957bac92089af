"""attack2: closing from where the app did not expect it (host functions of async pool calls)."""

from __future__ import annotations

import asyncio

import pytest

import plugsafe
from plugsafe import Policy, Pooling

from wat import ECHO

MiB = 1024 * 1024

# "f" calls plugsafe.bye (which closes something), then returns its argument.
BYE_WAT = """(module (import "plugsafe" "bye" (func $b))
 (func (export "f") (param i32) (result i32) (call $b) (local.get 0)))"""


@pytest.mark.parametrize("how", ["invoke_async", "invoke"])
def test_a_pool_closed_from_its_own_call_closes_every_plugin(how: str) -> None:
    """Finding: PluginPool.close() waited for the pool's threads; from a host function of an
    async pool call (running on one of them) it raised RuntimeError ("cannot join current
    thread", as a HostFunctionError) after marking the pool closed, so its plugins were never
    closed and a second close() did nothing: their pooling slots were lost for good."""
    with plugsafe.Host(pooling=Pooling(instances=2, memory_size=16 * MiB)) as host:
        policy = Policy(allow={"bye"}, memory=16 * MiB)
        pools: list[plugsafe.PluginPool] = []

        @host.function
        def bye() -> None:
            pools[0].close()

        pool = plugsafe.PluginPool(BYE_WAT.encode(), size=2, host=host, policy=policy)
        pools.append(pool)

        async def run() -> object:
            return await pool.invoke_async("f", 7)

        # The running call finishes (its plugin closes as it ends), then all is closed.
        assert (asyncio.run(run()) if how == "invoke_async" else pool.invoke("f", 7)) == 7
        assert pool.closed
        with pytest.raises(plugsafe.PluginClosedError):
            pool.invoke("f", 1)
        # Both slots are free again: every plugin of the pool was closed.
        others = [host.load(ECHO.encode(), policy=Policy(memory=16 * MiB)) for _ in range(2)]
        assert all(p.call("echo", b"x") == b"x" for p in others)
