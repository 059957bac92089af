"""attack4: the input buffer's query (``plugsafe_input_buffer``) re-entering the host.

The query runs inside the call that asks it (a fresh instance's first input), so its host
functions can do what any host function can: close the plugin, touch its memory. None of it may
let the host write the input anywhere but the buffer the instance named, or use a released store.
"""

from __future__ import annotations

import pytest
from inbuf_wat import BUF_AT, BUF_CAP, guest, word

import plugsafe
from plugsafe import Policy

from sec import assert_healthy

HOOK = '(import "plugsafe" "hook" (func $hook))'
QUERY = f"(call $hook) (i64.const {word(BUF_AT, BUF_CAP)})"


def test_a_query_that_closes_its_plugin_ends_the_call_then_every_call_is_refused(
    host: plugsafe.Host,
) -> None:
    plugins: list[plugsafe.Plugin] = []

    @host.function
    def hook() -> None:
        plugins[0].close()  # from inside the call: finished when the call ends

    p = host.load(
        guest(QUERY, imports=HOOK).encode(), policy=Policy(allow={"hook"}, fresh_instance=True)
    )
    plugins.append(p)
    assert p.call("echo", b"first input") == b"first input"
    assert p.closed
    for data in (b"", b"x", b"y" * 300):
        with pytest.raises(plugsafe.PluginClosedError):
            p.call("echo", data)
    assert_healthy(host)


@pytest.mark.parametrize("fresh", [False, True])
def test_a_query_whose_host_function_writes_the_buffer_cannot_change_the_input(
    host: plugsafe.Host, fresh: bool
) -> None:
    # The query runs before the input is placed: whatever its host function wrote into the
    # buffer, the function sees its input (and nothing is written outside the buffer).
    plugins: list[plugsafe.Plugin] = []

    @host.function
    def hook() -> None:
        if plugins:
            plugins[0].memory.write(BUF_AT, b"Z" * BUF_CAP)

    trap = '(func (export "trap") unreachable)'
    p = host.load(
        guest(QUERY, imports=HOOK, body=trap).encode(),
        policy=Policy(allow={"hook"}, fresh_instance=fresh),
    )
    plugins.append(p)
    for _ in range(3):
        assert p.call("echo", b"the input") == b"the input"
        if not fresh:
            with pytest.raises(plugsafe.PluginTrap):
                p.invoke("trap")  # the next call's instance asks again
    assert_healthy(host)
