"""Pure-Python reference implementation of the image example plugin.

It follows the algorithms documented in ``examples/plugins/rust/image/src/lib.rs`` operation
for operation in IEEE double precision, so the plugins must agree with it exactly except where
``exp`` itself differs in the last bit between math libraries (the blur tests allow 1 level).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Image:
    """Raw RGB pixels, row by row."""

    width: int
    height: int
    pixels: bytes

    def encode(self) -> bytes:
        """The plugin's wire format: width u32 LE, height u32 LE, pixels."""
        return struct.pack("<II", self.width, self.height) + self.pixels

    @staticmethod
    def decode(data: bytes) -> Image:
        """Inverse of :meth:`encode`, checking that the sizes agree."""
        width, height = struct.unpack_from("<II", data)
        pixels = data[8:]
        assert len(pixels) == width * height * 3, (width, height, len(pixels))
        return Image(width, height, pixels)

    def at(self, x: int, y: int, c: int) -> float:
        """Channel ``c`` of pixel (x, y) as a float."""
        return float(self.pixels[(y * self.width + x) * 3 + c])


def pattern(width: int, height: int, seed: int = 1) -> Image:
    """A deterministic test image with edges and gradients (a tiny LCG, no randomness)."""
    out = bytearray()
    state = seed
    for y in range(height):
        for x in range(width):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            noise = state >> 24
            out += bytes(
                (
                    (x * 255 // max(width - 1, 1)) ^ (noise & 0x1F),
                    (y * 255 // max(height - 1, 1)),
                    255 if (x // 3 + y // 3) % 2 else noise,
                )
            )
    return Image(width, height, bytes(out))


def _to_u8(v: float) -> int:
    r = math.floor(v + 0.5)
    return 0 if r < 0 else 255 if r > 255 else r


def grayscale(img: Image) -> Image:
    """(299 R + 587 G + 114 B + 500) // 1000 into all three channels."""
    out = bytearray()
    for i in range(0, len(img.pixels), 3):
        r, g, b = img.pixels[i], img.pixels[i + 1], img.pixels[i + 2]
        grey = (299 * r + 587 * g + 114 * b + 500) // 1000
        out += bytes((grey, grey, grey))
    return Image(img.width, img.height, bytes(out))


def _sample_points(src: int, dst: int) -> list[tuple[int, int, float]]:
    scale = src / dst
    points = []
    for i in range(dst):
        s = (i + 0.5) * scale - 0.5
        s = max(s, 0.0)
        s = min(s, float(src - 1))
        i0 = math.floor(s)
        i1 = i0 + 1 if i0 + 1 < src else src - 1
        points.append((i0, i1, s - i0))
    return points


def resize(img: Image, width: int, height: int) -> Image:
    """Bilinear resize sampling at pixel centres, edges clamped."""
    xs = _sample_points(img.width, width)
    ys = _sample_points(img.height, height)
    out = bytearray()
    for y0, y1, fy in ys:
        for x0, x1, fx in xs:
            for c in range(3):
                top = img.at(x0, y0, c) * (1.0 - fx) + img.at(x1, y0, c) * fx
                bottom = img.at(x0, y1, c) * (1.0 - fx) + img.at(x1, y1, c) * fx
                out.append(_to_u8(top * (1.0 - fy) + bottom * fy))
    return Image(width, height, bytes(out))


def _kernel(sigma: float) -> list[float]:
    k = math.ceil(3.0 * sigma)
    weights = [math.exp(-float(i * i) / (2.0 * sigma * sigma)) for i in range(-k, k + 1)]
    # A plain left-to-right sum, as the plugins do (Python 3.12's sum() compensates rounding).
    total = 0.0
    for w in weights:
        total += w
    return [w / total for w in weights]


def blur(img: Image, radius: float) -> Image:
    """Separable gaussian blur, sigma = radius, horizontal then vertical, edges clamped."""
    if radius == 0.0:
        return img
    w, h = img.width, img.height
    weights = _kernel(radius)
    k = len(weights) // 2

    def clamp(i: int, n: int) -> int:
        return 0 if i < 0 else n - 1 if i >= n else i

    tmp = [0.0] * (w * h * 3)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                acc = 0.0
                for j, wt in enumerate(weights):
                    acc += wt * img.at(clamp(x + j - k, w), y, c)
                tmp[(y * w + x) * 3 + c] = acc
    out = bytearray()
    for y in range(h):
        for x in range(w):
            for c in range(3):
                acc = 0.0
                for j, wt in enumerate(weights):
                    acc += wt * tmp[(clamp(y + j - k, h) * w + x) * 3 + c]
                out.append(_to_u8(acc))
    return Image(w, h, bytes(out))
