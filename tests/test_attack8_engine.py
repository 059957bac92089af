"""attack8: engines made through the C API directly (cold7's rewrite), with hostile settings.

``wasm_engine_new_with_config`` cannot fail in the C API: wasmtime ``unwrap()``s the engine's
creation, so a pooling allocator whose slots cannot be reserved (more address space than the
process has, or than ``RLIMIT_AS`` lets it map) was a Rust panic that aborted the whole host
process at the first load. Pooling limits that validate one by one can still be impossible
together (``instances * memories`` slots of 4 GiB of address space each): the load must say so
with a ``PolicyError`` (from ``Host(...)``, which makes its engine), and the process must go
on.

Each scenario runs in a fresh interpreter: an abort must fail the test, not the run.
"""

from __future__ import annotations

import os

import pytest

from helpers import run_ok as _run

pytestmark = pytest.mark.skipif(os.name != "posix", reason="address-space limits are POSIX")


_LOAD = """
    import plugsafe

    WAT = b'(module (memory (export "memory") 1) (func (export "f") (result i32) i32.const 7))'

    def load(pooling):
        try:
            host = plugsafe.Host(pooling=pooling)
        except plugsafe.PolicyError as exc:
            print("refused", exc.field, "|", exc)
            return
        plugin = host.load(WAT, policy=plugsafe.Policy(memory="64KiB"))
        try:
            print("ran", plugin.invoke("f"))
        finally:
            plugin.close()
"""


def test_a_pool_larger_than_the_address_space_is_refused_not_a_process_abort() -> None:
    # 10**8 slots of 4 GiB: far past the 128 TiB a Linux process may address.
    out = _run(
        _LOAD
        + """
    load(plugsafe.Pooling(instances=1_000_000, memory_size="4GiB", memories=100))
    load(plugsafe.Pooling(instances=1_000_000, memory_size="64KiB"))
    # The process goes on: a pool that fits still loads and runs.
    load(plugsafe.Pooling(instances=2, memory_size="64KiB"))
    """
    )
    lines = out.splitlines()
    assert lines[0].startswith("refused instances |"), out
    assert "address space" in lines[0], out
    assert lines[1].startswith("refused instances |"), out
    assert lines[2] == "ran 7", out


def test_a_pool_over_the_address_space_limit_is_refused_not_a_process_abort() -> None:
    # RLIMIT_AS (``ulimit -v``, common for sandboxed services) leaves ~16 GiB to map: four slots
    # of 4 GiB plus guards and the pool's own ~2 GiB do not fit, two do.
    out = _run(
        _LOAD
        + """
    import resource

    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    size = pages * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + 16 * 2**30, resource.RLIM_INFINITY))
    load(plugsafe.Pooling(instances=4, memory_size="64KiB"))
    load(plugsafe.Pooling(instances=2, memory_size="64KiB"))
    """.replace("import resource", "import os, resource")
    )
    lines = out.splitlines()
    assert lines[0].startswith("refused instances |"), out
    assert lines[1] == "ran 7", out


def test_a_metered_load_whose_engine_cannot_reserve_the_pool_is_refused() -> None:
    # Metered plugins get an engine of their own, with a second reservation of the same pool,
    # made at their first load: room for one pool (~6 GiB) but not two.
    out = _run(
        """
    import os, resource
    import plugsafe

    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    size = pages * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + 10 * 2**30, resource.RLIM_INFINITY))
    WAT = b'(module (func (export "f") (result i32) i32.const 7))'
    host = plugsafe.Host(pooling=plugsafe.Pooling(instances=1, memory_size="64KiB"))
    plain = host.load(WAT, policy=plugsafe.Policy(memory="64KiB"))
    print("ran", plain.invoke("f"))
    try:
        host.load(WAT, policy=plugsafe.Policy(memory="64KiB", fuel=10_000))
    except plugsafe.PolicyError as exc:
        print("refused", exc.field)
    print("ran", plain.invoke("f"))
    """
    )
    assert out.splitlines() == ["ran 7", "refused instances", "ran 7"], out
