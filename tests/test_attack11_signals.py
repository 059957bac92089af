"""attack11: an exception a signal handler raises never loses (nor doubles) a Host's pool slot.

With ``Host(pooling=...)`` every store takes one of the pool's slots (``PoolSlots``) and gives
it back when it is deleted. A handler's exception (SIGINT's KeyboardInterrupt, a SIGALRM
timeout's) raised between taking a slot and the store owning it, or between deleting the store
and giving the slot back, lost the slot for good; one raised inside the store's constructor gave
it back twice. Under a storm of SIGALRM every 0.2-0.3 ms for 4 s, calls on a ``fresh_instance``
plugin (an instance per call) lost all 64 slots of a pool: every plugin of the Host then failed
with ``PoolExhausted`` for the rest of the process, and the pool also ended with more slots
than its limit (72 of 64). The plugin must stay usable (docs/errors.md), and so must the Host.
"""

from __future__ import annotations

import sys

import pytest

from helpers import signal_storm

SLOTS = 4

# (A scenario for helpers.signal_storm: ``storm_loop``, ``report`` are its.)
_STORM = """
    import gc
    import plugsafe
    from inbuf_wat import guest
    from plugsafe import Policy, Pooling

    MiB = 1 << 20
    SLOTS = <SLOTS>
    host = plugsafe.Host(pooling=Pooling(instances=SLOTS, memory_size=3 * MiB))
    body = '(func (export "trap") (param i32 i32) (result i64) unreachable)'
    src = guest(body=body).encode()
    fresh = host.load(src, policy=Policy(memory=3 * MiB, fresh_instance=True, timeout=5.0))
    fresh_fuel = host.load(src, policy=Policy(memory=3 * MiB, fresh_instance=True, fuel=10**6))
    kept = host.load(src, policy=Policy(memory=3 * MiB))  # replaces its instance after a trap
    plugins = (fresh, fresh_fuel)

    def step(n):
        k = n % 3
        if k == 2:
            try:
                kept.call("trap", b"")
            except plugsafe.PluginTrap:
                pass
            assert kept.call("echo", b"kept") == b"kept"
        else:
            assert plugins[k].call("echo", b"abc") == b"abc"

    got = storm_loop(step, tolerated=plugsafe.PoolExhausted, max_tolerated=50)
    kept.close()
    gc.collect()
    # Every slot is free again (wasmtime's own pool of each engine too: no store was left
    # undeleted), and no more than the pool has: plugins that keep their instance take exactly
    # SLOTS of them on each of the Host's engines (metered and not), and on both together.
    slots = []
    for fuels in ((None,), (10**6,), (None, 10**6)):
        held = []
        for i in range(SLOTS + 2):
            policy = Policy(memory=3 * MiB, fuel=fuels[i % len(fuels)])
            try:
                held.append(host.load(src, policy=policy))
            except plugsafe.PoolExhausted:
                break
        slots.append(len(held))
        for q in held:
            q.close()
    report(**got, slots=slots)
""".replace("<SLOTS>", str(SLOTS))


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="CPython 3.10 runs signal handlers after any instruction"
)
def test_a_signal_handlers_exception_never_loses_a_hosts_pool_slot() -> None:
    got = signal_storm(
        _STORM, seconds=4.0, interval=0.0003, at_least={"interrupts": 100, "calls": 100}
    )
    assert got["escaped"] == [], got
    assert got["tolerated"] == 0, got  # PoolExhausted: a slot lost
    assert got["slots"] == [SLOTS] * 3, got
