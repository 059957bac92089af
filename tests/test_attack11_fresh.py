"""attack11: hostile guests against a call on a new instance (``fresh_instance``, pooling).

Every failure is a documented error and gives the instance's pool slot (and memory) back at
once: not when the error raised, and the traceback that holds the failed instance, are
collected. An app may keep errors (``asyncio.gather(return_exceptions=True)``, an error list,
a log record formatted later): N kept errors must not hold the N slots of a pool that every
plugin of the Host shares.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from inbuf_wat import guest

import plugsafe
from plugsafe import Policy, Pooling

MiB = 1024 * 1024
SLOTS = 2

# A reactor whose ``_initialize`` fails on demand (a host function says when): the load's
# instance initializes fine, later ones do not.
_IMPORTS = '(import "plugsafe" "mood" (func $mood (result i32)))'
_REACTOR = """
  (func $spin (loop $l (br $l)))
  (func (export "_initialize")
    (block $fine
      (block $burn
        (block $trap
          (br_table $fine $trap $burn (call $mood)))
        unreachable)
      (call $spin)))
  (func (export "trap") (param i32 i32) (result i64) unreachable)
"""


@pytest.fixture
def pooled() -> Iterator[plugsafe.Host]:
    # Its own limits (pools are per set of limits): no other test's plugins share its slots.
    with plugsafe.Host(pooling=Pooling(instances=SLOTS, memory_size=3 * MiB)) as host:
        yield host


def assert_slots_free(host: plugsafe.Host) -> None:
    """Every slot of the pool is free: a plugin that keeps its instance takes each of them."""
    keep = [host.load(guest().encode(), policy=Policy(memory=3 * MiB)) for _ in range(SLOTS)]
    for p in keep:
        assert p.call("echo", b"ok") == b"ok"
        p.close()


@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize(
    ("failing", "error"),
    [(1, plugsafe.PluginTrap), (2, plugsafe.FuelExhausted), (2, plugsafe.DeadlineExceeded)],
)
def test_a_reactor_whose_initialize_fails_frees_its_slot_while_the_error_is_kept(
    pooled: plugsafe.Host, fresh: bool, failing: int, error: type[Exception]
) -> None:
    now = [0]

    @pooled.function
    def mood() -> int:
        return now[0]

    limits: dict[str, object] = (
        {"fuel": 100_000} if error is plugsafe.FuelExhausted else {"timeout": 0.2}
    )
    p = pooled.load(
        guest(body=_REACTOR, imports=_IMPORTS).encode(),
        policy=Policy(memory=3 * MiB, fresh_instance=fresh, allow={"mood"}, **limits),  # type: ignore[arg-type]
    )
    assert p.call("echo", b"fine") == b"fine"
    now[0] = failing
    kept: list[BaseException] = []
    for _ in range(SLOTS + 1):
        if not fresh and not kept:
            # The instance it has goes (a trap), so that the next call makes one (as does
            # every call after a failed one).
            with pytest.raises(plugsafe.PluginTrap, match="unreachable"):
                p.call("trap", b"")
        with pytest.raises(error, match="_initialize") as info:
            p.call("echo", b"x")
        kept.append(info.value)
    now[0] = 0
    assert p.call("echo", b"again") == b"again"
    p.close()  # (a plugin that keeps its instance holds a slot)
    assert_slots_free(pooled)


def test_a_load_whose_initialize_fails_frees_its_slot_while_the_error_is_kept(
    pooled: plugsafe.Host,
) -> None:
    @pooled.function
    def mood() -> int:
        return 1

    kept: list[BaseException] = []
    for _ in range(SLOTS + 1):
        with pytest.raises(plugsafe.PluginLoadError, match="_initialize") as info:
            pooled.load(
                guest(body=_REACTOR, imports=_IMPORTS).encode(),
                policy=Policy(memory=3 * MiB, allow={"mood"}),
            )
        kept.append(info.value)
    assert_slots_free(pooled)
