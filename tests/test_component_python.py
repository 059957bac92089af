"""The image-service world in Python (examples/components/image-py), built with componentize-py.

Slow: the component is ~18 MB, componentize-py takes a minute to build it on a busy machine and
wasmtime 10-90 s to compile it. So these run only with PLUGSAFE_COMPONENTIZE_PY=1, and both the
built component (keyed by the hash of its sources) and the compiled artifact (the Host's disk
cache) are kept in PLUGSAFE_TEST_CACHE (default ~/.cache/plugsafe-tests) for the next run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from buildcache import CACHE, cached, digest, tool_version
from cancelling import cancel_invoke, free_after
from sdk import imageref

import plugsafe

from toolchains import missing

OPT_IN = "PLUGSAFE_COMPONENTIZE_PY"
ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "examples" / "components" / "image-py"
WIT = ROOT / "examples" / "components" / "image" / "wit"
POLICY = plugsafe.Policy(max_module_size=64 * 2**20, fuel=1_000_000_000, timeout=60.0)

pytestmark = pytest.mark.skipif(
    os.environ.get(OPT_IN) != "1", reason=f"slow componentize-py build: set {OPT_IN}=1"
)


def _componentize_py() -> str | None:
    beside = Path(sys.executable).parent / "componentize-py"
    return str(beside) if beside.exists() else shutil.which("componentize-py")


@pytest.fixture(scope="module")
def component() -> Path:
    tool = _componentize_py()
    if tool is None:
        missing("componentize-py is not installed", "pip install componentize-py")
    assert tool is not None

    def build(out: Path) -> None:
        cmd = [tool, "-d", str(WIT), "-w", "image-service", "componentize", "-p", str(SOURCE)]
        cmd += ["app", "--stub-wasi", "-o", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=out.parent)
        assert res.returncode == 0, res.stdout + res.stderr

    key = digest([SOURCE, WIT], tool_version(tool, "--version"), "image-service --stub-wasi")
    return cached("image-py", key, build, suffix=".wasm")


@pytest.fixture(scope="module")
def plugin(component: Path) -> Iterator[plugsafe.ComponentPlugin]:
    with (
        plugsafe.Host(cache_dir=CACHE / "compiled") as host,
        host.load_component(component, policy=POLICY, name="image-py") as p,
    ):
        yield p


def test_the_default_max_module_size_names_the_setting(component: Path) -> None:
    assert component.stat().st_size > 16 * 2**20
    with plugsafe.Host() as host, pytest.raises(plugsafe.InvalidModuleError) as info:
        host.load(component)
    assert "max_module_size" in str(info.value)


def test_toolchain_exports_are_hidden(plugin: plugsafe.ComponentPlugin) -> None:
    assert sorted(plugin.exports) == ["processor/blur", "processor/grayscale", "processor/resize"]


def test_grayscale_resize_blur_match_the_reference(plugin: plugsafe.ComponentPlugin) -> None:
    img = imageref.pattern(9, 7)
    rec = {"width": img.width, "height": img.height, "data": img.pixels}
    assert plugin.invoke("processor/grayscale", rec).data == imageref.grayscale(img).pixels
    assert plugin.invoke("processor/resize", rec, 5, 11).data == imageref.resize(img, 5, 11).pixels
    out = plugin.invoke("processor/blur", rec, 1.5).data
    ref = imageref.blur(img, 1.5).pixels
    assert max(abs(a - b) for a, b in zip(out, ref, strict=True)) <= 1


def test_a_python_exception_traps_and_the_next_call_works(
    plugin: plugsafe.ComponentPlugin,
) -> None:
    with pytest.raises(plugsafe.PluginTrap):
        plugin.invoke("processor/grayscale", {"width": 2, "height": 2, "data": b"abc"})
    out = plugin.invoke("processor/grayscale", {"width": 1, "height": 1, "data": b"abc"})
    assert out.data == b"bbb"


def test_fuel_stops_a_python_component(component: Path) -> None:
    img = imageref.pattern(32, 32)
    rec = {"width": 32, "height": 32, "data": img.pixels}
    policy = POLICY.replace(fuel=2_000_000)
    with (
        plugsafe.Host(cache_dir=CACHE / "compiled") as host,
        host.load_component(component, policy=policy) as p,
    ):
        with pytest.raises(plugsafe.FuelExhausted):
            p.invoke("processor/blur", rec, 3.0)
        assert p.invoke("processor/grayscale", {"width": 1, "height": 1, "data": b"abc"})


def test_copying_its_data_in_is_not_charged_to_the_policys_fuel(component: Path) -> None:
    # ~11 MB of data segments cost ~11M fuel to copy in at instantiation: not the policy's.
    policy = POLICY.replace(fuel=1_000_000)
    with (
        plugsafe.Host(cache_dir=CACHE / "compiled") as host,
        host.load_component(component, policy=policy) as p,
    ):
        out = p.invoke("processor/grayscale", {"width": 1, "height": 1, "data": b"abc"})
        assert out.data == b"bbb"
        stats = p.last_call
        # The instance's memory, as plugsafe's memory creator counts it: ~12 MiB.
        assert stats is not None and 8 * 2**20 < stats.memory_bytes < 64 * 2**20


def test_the_memory_cap_is_a_memory_limit_for_a_python_component(component: Path) -> None:
    with plugsafe.Host(cache_dir=CACHE / "compiled") as host:
        with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
            host.load_component(component, policy=POLICY.replace(memory=8 * 2**20))
        assert info.value.phase == "load"
        with host.load_component(component, policy=POLICY.replace(memory=14 * 2**20)) as p:
            start = p.invoke("processor/grayscale", {"width": 1, "height": 1, "data": b"abc"})
            assert start.data == b"bbb"
            # 3 MB of pixels: lowering them needs more memory than the cap leaves.
            big = {"width": 1000, "height": 1000, "data": bytes(3_000_000)}
            with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
                p.invoke("processor/grayscale", big)
            assert info.value.phase == "call" and info.value.value == 14 * 2**20
            out = p.invoke("processor/grayscale", {"width": 1, "height": 1, "data": b"abc"})
            assert out.data == b"bbb"  # a fresh instance


def test_a_cancelled_call_of_a_componentize_py_component_ends_within_milliseconds(
    component: Path,
) -> None:
    # comp12 (in this file: the Python legs of CI have no componentize-py). The image service
    # in Python: a 40x40 blur of radius 30 runs for seconds.
    policy = plugsafe.Policy(max_module_size=64 * 2**20, timeout=60.0)
    cache = component.parent / "compiled"
    with plugsafe.Host(cache_dir=cache) as host, host.load_component(component, policy=policy) as p:
        data = bytes(i % 251 for i in range(40 * 40 * 3))
        img = {"width": 40, "height": 40, "data": data}

        def still_blurring() -> None:
            assert p._lock.locked(), "the blur ended before its cancel (test premise)"

        cancelled = cancel_invoke(p, "processor/blur", img, 30.0, after=1.0, check=still_blurring)
        assert free_after(p, cancelled) < 0.5
        small = {"width": 2, "height": 1, "data": b"\xff\x00\x00\x00\xff\x00"}
        assert p.invoke("processor/grayscale", small).width == 2
