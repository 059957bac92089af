"""tidy9: the compiler child builds the parent's engine, pooling allocator included.

With ``compile_timeout``/``compile_memory`` a module is compiled in a child process
(``_isolate``), whose docstring said it built "the same engine" as the parent: it passed fuel
and stack, not the Host's ``Pooling`` limits. Its artifacts loaded only because wasmtime did not
mind. The child now builds the parent's engine exactly and sends its settings back, and the
parent refuses an artifact built for any other.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import plugsafe
from plugsafe import _isolate
from plugsafe import _runtime as rt

from wat import ECHO

POOLS = [
    plugsafe.Pooling(instances=2, memory_size="1MiB"),
    plugsafe.Pooling(instances=3, memory_size="4GiB", memories=2, tables=3, keep_resident=0),
    plugsafe.Pooling(instances=1, memory_size="64KiB", table_elements=1, keep_resident="64KiB"),
]


def _child(engine: rt.Engine, wasm: bytes) -> bytes:
    """What the compiler child sends for ``engine`` (run as compile_isolated runs it)."""
    package_parent = str(Path(_isolate.__file__).resolve().parent.parent)
    pool = "-" if engine.pooling is None else ",".join(map(str, engine.pooling))
    args = [sys.executable, "-I", "-c", _isolate._BOOTSTRAP, package_parent]
    args += ["1" if engine.metered else "0", str(engine.max_stack), "-", pool]
    done = subprocess.run(args, input=wasm, capture_output=True, timeout=120, check=True)
    return done.stdout


@pytest.mark.parametrize("pooling", [None, *POOLS], ids=["unpooled", "small", "wide", "tiny"])
@pytest.mark.parametrize("metered", [False, True], ids=["unmetered", "metered"])
def test_the_compiler_child_builds_the_parents_engine(
    pooling: plugsafe.Pooling | None, metered: bool
) -> None:
    engine = rt.shared_engine(
        metered=metered, max_stack=512 << 10, pooling=None if pooling is None else pooling.limits()
    )
    out = _child(engine, rt.wat_to_wasm(ECHO))
    assert out.startswith(_isolate._FRAME)
    settings = out[len(_isolate._FRAME) :].split(b"\n", 1)[0].decode()
    assert settings == engine.settings


@pytest.mark.parametrize("pooling", POOLS, ids=["small", "wide", "tiny"])
@pytest.mark.parametrize("limit", ["compile_timeout", "compile_memory"])
def test_a_pooled_host_compiling_in_a_child_loads_and_runs(
    pooling: plugsafe.Pooling, limit: str
) -> None:
    # compile_memory limits the child's address space on top of what it has after start-up,
    # the pool's reservation included (made before the limit is set).
    value: object = 60 if limit == "compile_timeout" else "512MiB"
    policy = plugsafe.Policy(memory="64KiB", fuel=10**6, **{limit: value})  # type: ignore[arg-type]
    with plugsafe.Host(pooling=pooling) as host:
        for metered in (policy, policy.replace(fuel=None)):
            plugin = host.load(ECHO.encode(), policy=metered)
            assert plugin.invoke("add", 2, 3) == 5
            assert plugin.call("echo", b"pooled") == b"pooled"
            plugin.close()


def test_an_artifact_for_other_engine_settings_is_refused() -> None:
    wasm = rt.wat_to_wasm(ECHO)
    unpooled = rt.shared_engine(metered=False, max_stack=512 << 10)
    pooled = rt.shared_engine(metered=False, max_stack=512 << 10, pooling=POOLS[0].limits())
    out = _child(unpooled, wasm)
    assert _isolate._deserialize(unpooled, out, "t", wasm).exports["add"].params == ("i32", "i32")
    with pytest.raises(plugsafe.PluginLoadError, match="other engine settings"):
        _isolate._deserialize(pooled, out, "t", wasm)
    with pytest.raises(plugsafe.PluginLoadError, match="sent no module"):
        _isolate._deserialize(unpooled, _isolate._FRAME + b"no newline", "t", wasm)
