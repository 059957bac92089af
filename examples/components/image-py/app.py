"""The image-service world (../image/wit) in Python, built with componentize-py.

    componentize-py -d ../image/wit -w image-service componentize app --stub-wasi \
        -o image-service-py.wasm

Same algorithms as the C component (and examples/plugins/c/image.c): grayscale only here, with
resize and blur as straightforward loops, so the results match the Python reference.
"""

import math

from wit_world import exports
from wit_world.exports.processor import Image

MAX_PIXELS = 1 << 24


def _check(img: Image) -> None:
    n = img.width * img.height
    if img.width == 0 or img.height == 0 or n > MAX_PIXELS or len(img.data) != 3 * n:
        raise ValueError("the image's data is not width * height RGB pixels")


def _to_u8(v: float) -> int:
    r = math.floor(v + 0.5)
    return 0 if r < 0 else 255 if r > 255 else r


class Processor(exports.Processor):
    def grayscale(self, img: Image) -> Image:
        _check(img)
        data = img.data
        out = bytearray(len(data))
        for i in range(0, len(data), 3):
            grey = (299 * data[i] + 587 * data[i + 1] + 114 * data[i + 2] + 500) // 1000
            out[i] = out[i + 1] = out[i + 2] = grey
        return Image(img.width, img.height, bytes(out))

    def resize(self, img: Image, new_width: int, new_height: int) -> Image:
        _check(img)
        if new_width == 0 or new_height == 0 or new_width * new_height > MAX_PIXELS:
            raise ValueError("bad target size")

        def points(src: int, dst: int) -> list[tuple[int, int, float]]:
            scale, last, out = src / dst, float(src - 1), []
            for i in range(dst):
                p = min(max((i + 0.5) * scale - 0.5, 0.0), last)
                i0 = math.floor(p)
                out.append((i0, i0 + 1 if i0 + 1 < src else src - 1, p - i0))
            return out

        xs, ys = points(img.width, new_width), points(img.height, new_height)
        d, w = img.data, img.width
        out = bytearray()
        for y0, y1, fy in ys:
            for x0, x1, fx in xs:
                for c in range(3):
                    top = d[(y0 * w + x0) * 3 + c] * (1.0 - fx) + d[(y0 * w + x1) * 3 + c] * fx
                    bot = d[(y1 * w + x0) * 3 + c] * (1.0 - fx) + d[(y1 * w + x1) * 3 + c] * fx
                    out.append(_to_u8(top * (1.0 - fy) + bot * fy))
        return Image(new_width, new_height, bytes(out))

    def blur(self, img: Image, radius: float) -> Image:
        _check(img)
        if not 0.0 <= radius <= 64.0:
            raise ValueError("blur radius must be from 0 to 64")
        if radius == 0.0:
            return Image(img.width, img.height, bytes(img.data))
        k = math.ceil(3.0 * radius)
        weights = [math.exp(-(i * i) / (2.0 * radius * radius)) for i in range(-k, k + 1)]
        total = sum(weights)
        weights = [wt / total for wt in weights]
        w, h, d = img.width, img.height, img.data
        tmp = [0.0] * (w * h * 3)
        for y in range(h):
            for x in range(w):
                for c in range(3):
                    acc = 0.0
                    for i, wt in enumerate(weights):
                        xx = min(max(x + i - k, 0), w - 1)
                        acc += wt * d[(y * w + xx) * 3 + c]
                    tmp[(y * w + x) * 3 + c] = acc
        out = bytearray()
        for y in range(h):
            for x in range(w):
                for c in range(3):
                    acc = 0.0
                    for i, wt in enumerate(weights):
                        yy = min(max(y + i - k, 0), h - 1)
                        acc += wt * tmp[(yy * w + x) * 3 + c]
                    out.append(_to_u8(acc))
        return Image(w, h, bytes(out))
