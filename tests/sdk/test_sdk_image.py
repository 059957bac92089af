"""The image example (grayscale, bilinear resize, gaussian blur) against a Python reference."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator

import pytest

import plugsafe

from . import imageref
from .conftest import PluginPath
from .imageref import Image

SOURCES = ["committed", "fresh"]
LANGS = ["rust", "c"]
POLICY = plugsafe.Policy(fuel=500_000_000, timeout=10.0, memory=64 * 2**20)


@pytest.fixture(
    params=[(lang, src) for lang in LANGS for src in SOURCES], ids=lambda p: "-".join(p)
)
def plugin(
    request: pytest.FixtureRequest, host: plugsafe.Host, plugin_path: PluginPath
) -> Iterator[plugsafe.Plugin]:
    """The image plugin in each language, committed and freshly built."""
    lang, source = request.param
    with host.load(plugin_path("image", lang, source), policy=POLICY, name="image") as p:
        yield p


IMAGES = [
    imageref.pattern(1, 1),
    imageref.pattern(7, 5, seed=3),
    imageref.pattern(16, 9, seed=7),
]


def max_difference(a: Image, b: Image) -> int:
    """Largest per-channel difference of two images of the same size."""
    assert (a.width, a.height) == (b.width, b.height)
    return max((abs(x - y) for x, y in zip(a.pixels, b.pixels, strict=True)), default=0)


def test_grayscale(plugin: plugsafe.Plugin) -> None:
    for img in IMAGES:
        got = Image.decode(plugin.call("grayscale", img.encode()))
        assert got == imageref.grayscale(img)


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (14, 10), (32, 18), (7, 5)])
def test_resize_bilinear(plugin: plugsafe.Plugin, size: tuple[int, int]) -> None:
    for img in IMAGES:
        request = struct.pack("<II", *size) + img.encode()
        got = Image.decode(plugin.call("resize", request))
        # Only IEEE +, -, * and floor are involved: every implementation agrees exactly.
        assert got == imageref.resize(img, *size)


@pytest.mark.parametrize("radius", [0.0, 0.4, 1.0, 1.5, 2.75])
def test_blur_gaussian(plugin: plugsafe.Plugin, radius: float) -> None:
    for img in IMAGES:
        got = Image.decode(plugin.call("blur", struct.pack("<d", radius) + img.encode()))
        # exp() may differ in its last bit between math libraries, which can move a value that
        # sits right on a rounding boundary by one level; nothing more.
        assert max_difference(got, imageref.blur(img, radius)) <= 1


def test_blur_really_blurs(plugin: plugsafe.Plugin) -> None:
    img = Image(5, 1, bytes([0, 0, 0] * 2 + [255, 255, 255] + [0, 0, 0] * 2))
    got = Image.decode(plugin.call("blur", struct.pack("<d", 1.0) + img.encode()))
    centre, neighbour, edge = got.pixels[6], got.pixels[3], got.pixels[0]
    assert 255 > centre > neighbour > edge >= 0


def header(width: int, height: int) -> bytes:
    return struct.pack("<II", width, height)


LIES = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x01\x00\x00", id="short-header"),
    pytest.param(header(2, 2) + bytes(11), id="one-byte-short"),
    pytest.param(header(2, 2) + bytes(13), id="one-byte-long"),
    pytest.param(header(1000, 1000) + bytes(12), id="claims-huge"),
    pytest.param(header(0xFFFFFFFF, 0xFFFFFFFF) + bytes(12), id="overflowing-size"),
    pytest.param(header(0x55555556, 3) + bytes(6), id="wraps-32-bit"),
    pytest.param(header(0, 5), id="zero-width"),
    pytest.param(header(4, 0), id="zero-height"),
]


@pytest.mark.parametrize("data", LIES)
def test_lying_inputs_are_guest_errors(plugin: plugsafe.Plugin, data: bytes) -> None:
    requests = {
        "grayscale": data,
        "resize": header(3, 3) + data,
        "blur": struct.pack("<d", 1.0) + data,
    }
    for function, request in requests.items():
        with pytest.raises(plugsafe.GuestError):
            plugin.call(function, request)
    # The same instance still works: the guest reported the problem, it did not trap.
    assert plugin.call("grayscale", IMAGES[0].encode()) == imageref.grayscale(IMAGES[0]).encode()


@pytest.mark.parametrize(
    "size", [(0, 3), (3, 0), (5000, 5000), (0xFFFFFFFF, 2)], ids=lambda s: "x".join(map(str, s))
)
def test_bad_resize_targets_are_guest_errors(
    plugin: plugsafe.Plugin, size: tuple[int, int]
) -> None:
    with pytest.raises(plugsafe.GuestError):
        plugin.call("resize", struct.pack("<II", *size) + IMAGES[1].encode())


@pytest.mark.parametrize("radius", [-1.0, math.nan, math.inf, 65.0])
def test_bad_blur_radius_is_a_guest_error(plugin: plugsafe.Plugin, radius: float) -> None:
    with pytest.raises(plugsafe.GuestError, match="radius"):
        plugin.call("blur", struct.pack("<d", radius) + IMAGES[1].encode())


def test_short_requests_are_guest_errors(plugin: plugsafe.Plugin) -> None:
    for function in ("resize", "blur"):
        with pytest.raises(plugsafe.GuestError):
            plugin.call(function, b"\x01\x02")
