"""The image-service component (C, examples/components/) against the Python reference.

The committed build runs everywhere; a fresh build from the C source and the WIT world needs
clang with wasi-libc and wasm-tools, and skips (or, under PLUGSAFE_REQUIRE_TOOLCHAINS=1, fails)
without them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sdk import imageref

import plugsafe

from toolchains import missing

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ROOT / "examples" / "components"
sys.path.insert(0, str(COMPONENTS))
import build as component_build  # noqa: E402  (examples/components/build.py)

POLICY = plugsafe.Policy(fuel=500_000_000, timeout=10.0, memory=64 * 2**20)


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("components")
    try:
        return component_build.build("image-service", out)
    except component_build.ToolMissing as exc:
        missing(str(exc))


@pytest.fixture(params=["committed", "fresh"])
def image_service(
    request: pytest.FixtureRequest, host: plugsafe.Host
) -> Iterator[plugsafe.ComponentPlugin]:
    if request.param == "committed":
        path = COMPONENTS / "image-service.wasm"
    else:
        path = request.getfixturevalue("fresh_build")
    with host.load_component(path, policy=POLICY, name="image-service") as plugin:
        yield plugin


def _record(img: imageref.Image) -> dict[str, Any]:
    return {"width": img.width, "height": img.height, "data": img.pixels}


def test_the_committed_build_is_the_source_built(fresh_build: Path) -> None:
    assert fresh_build.read_bytes() == (COMPONENTS / "image-service.wasm").read_bytes()


def test_world_and_exports(image_service: plugsafe.ComponentPlugin) -> None:
    image = "record { width: u32, height: u32, data: list<u8> }"
    assert dict(image_service.exports) == {
        "processor/blur": f"func(img: {image}, radius: f32) -> {image}",
        "processor/grayscale": f"func(img: {image}) -> {image}",
        "processor/resize": f"func(img: {image}, new-width: u32, new-height: u32) -> {image}",
    }
    assert image_service.imports == ()


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 5), (64, 64)])
def test_grayscale_matches_the_reference(
    image_service: plugsafe.ComponentPlugin, width: int, height: int
) -> None:
    img = imageref.pattern(width, height)
    out = image_service.invoke("processor/grayscale", _record(img))
    ref = imageref.grayscale(img)
    assert (out.width, out.height, out.data) == (ref.width, ref.height, ref.pixels)
    # The fully qualified name is always accepted.
    full = "mycompany:image-processor/processor@1.0.0#grayscale"
    assert image_service.invoke(full, _record(img)) == out


def test_resize_and_blur_match_the_reference(image_service: plugsafe.ComponentPlugin) -> None:
    img = imageref.pattern(20, 12)
    out = image_service.invoke("processor/resize", _record(img), 31, 7)
    ref = imageref.resize(img, 31, 7)
    assert (out.width, out.height, out.data) == (31, 7, ref.pixels)
    out = image_service.invoke("processor/blur", _record(img), 1.5)
    ref = imageref.blur(img, 1.5)
    assert (out.width, out.height) == (20, 12)
    # exp() may differ in the last bit between math libraries (as in tests/sdk).
    assert max(abs(a - b) for a, b in zip(out.data, ref.pixels, strict=True)) <= 1


def test_a_malformed_image_traps_and_the_next_call_works(
    image_service: plugsafe.ComponentPlugin,
) -> None:
    with pytest.raises(plugsafe.PluginTrap):
        image_service.invoke("processor/grayscale", {"width": 2, "height": 2, "data": b"abc"})
    with pytest.raises(plugsafe.SignatureError, match="width"):
        image_service.invoke("processor/grayscale", {"width": -1, "height": 1, "data": b"abc"})
    out = image_service.invoke("processor/grayscale", {"width": 1, "height": 1, "data": b"abc"})
    assert out == plugsafe.Record(width=1, height=1, data=b"bbb")


def test_fuel_limits_a_component_call(host: plugsafe.Host) -> None:
    img = imageref.pattern(64, 64)
    policy = plugsafe.Policy(fuel=10_000)
    with host.load_component(COMPONENTS / "image-service.wasm", policy=policy) as plugin:
        with pytest.raises(plugsafe.FuelExhausted):
            plugin.invoke("processor/blur", _record(img), 3.0)
        assert plugin.invoke("processor/grayscale", _record(imageref.pattern(1, 1))).width == 1


def test_the_example_app_runs(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "component_app.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("grayscale", "resized", "blurred"):
        data = (tmp_path / f"{name}.ppm").read_bytes()
        assert data.startswith(b"P6\n")


@pytest.mark.parametrize("build", ["committed", "fresh"])
def test_the_memory_cap_stops_the_c_component_and_the_next_call_works(
    request: pytest.FixtureRequest, host: plugsafe.Host, build: str
) -> None:
    path = COMPONENTS / "image-service.wasm"
    if build == "fresh":
        path = request.getfixturevalue("fresh_build")
    small = imageref.pattern(4, 4)
    # blur of 256x256 mallocs 1.5 MiB of doubles: over a 1 MiB cap, so malloc fails and the C
    # code traps (__builtin_trap); the refused growth makes that the memory limit.
    big = imageref.pattern(256, 256)
    policy = POLICY.replace(memory=2**20, max_output=64 * 2**20)
    with host.load_component(path, policy=policy) as plugin:
        with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
            plugin.invoke("processor/blur", _record(big), 2.0)
        assert info.value.phase == "call" and info.value.value == 2**20
        stats = plugin.last_call
        assert stats is not None and 0 < stats.memory_bytes <= 2**20
        out = plugin.invoke("processor/grayscale", _record(small))
        assert out.data == imageref.grayscale(small).pixels
