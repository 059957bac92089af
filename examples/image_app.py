"""Host app for the image example plugin: grayscale, resize and blur a picture.

    python examples/image_app.py OUTDIR                     # a generated test picture
    python examples/image_app.py OUTDIR --input photo.ppm   # any binary PPM (P6, 8-bit)
    python examples/image_app.py OUTDIR --lang c --width 64 --height 48 --radius 2.5

Writes ``grayscale.ppm``, ``resized.ppm`` and ``blurred.ppm`` to OUTDIR. PPM is the plugin's own
format (raw RGB) with a text header, so any image viewer or ``convert`` can open the results.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import plugsafe

PLUGINS = Path(__file__).resolve().parent / "plugins" / "wasm"
POLICY = plugsafe.Policy(fuel=2_000_000_000, timeout=10.0, memory=256 * 2**20)


def read_ppm(path: Path) -> tuple[int, int, bytes]:
    """Width, height and RGB bytes of a binary PPM (P6, maxval 255)."""
    data = path.read_bytes()
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":  # comment to end of line
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while not data[end : end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic != b"P6" or maxval != 255:
        raise ValueError(f"{path}: only binary 8-bit PPM (P6, maxval 255) is supported")
    return width, height, data[pos + 1 : pos + 1 + width * height * 3]


def write_ppm(path: Path, image: bytes) -> None:
    """Write the plugin's image format (width, height, RGB) as a binary PPM."""
    width, height = struct.unpack_from("<II", image)
    path.write_bytes(b"P6\n%d %d\n255\n" % (width, height) + image[8:])


def test_picture(width: int, height: int) -> bytes:
    """A colourful picture with sharp edges, so the effects are easy to see."""
    out = bytearray()
    for y in range(height):
        for x in range(width):
            square = (x // 16 + y // 16) % 2
            out += bytes((x * 255 // width, y * 255 // height, 255 * square))
    return bytes(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Process the picture with each plugin function and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--input", type=Path, help="binary PPM to process")
    parser.add_argument("--lang", choices=("rust", "c"), default="rust")
    parser.add_argument("--wasm", type=Path, help="plugin file (default: the committed build)")
    parser.add_argument("--width", type=int, default=96, help="resize to this width")
    parser.add_argument("--height", type=int, default=64, help="resize to this height")
    parser.add_argument("--radius", type=float, default=2.0, help="blur radius")
    args = parser.parse_args(argv)

    if args.input:
        width, height, pixels = read_ppm(args.input)
    else:
        width, height, pixels = 128, 96, test_picture(128, 96)
    image = struct.pack("<II", width, height) + pixels
    args.outdir.mkdir(parents=True, exist_ok=True)
    wasm = args.wasm or PLUGINS / f"image-{args.lang}.wasm"
    requests = {
        "grayscale": ("grayscale", image),
        "resized": ("resize", struct.pack("<II", args.width, args.height) + image),
        "blurred": ("blur", struct.pack("<d", args.radius) + image),
    }
    with plugsafe.Host() as host, host.load(wasm, policy=POLICY, name="image") as plugin:
        for name, (function, request) in requests.items():
            try:
                result = plugin.call(function, request)
            except plugsafe.GuestError as e:
                print(f"{function}: the plugin refused: {e.message}", file=sys.stderr)
                return 1
            stats = plugin.last_call
            write_ppm(args.outdir / f"{name}.ppm", result)
            assert stats is not None
            print(
                f"{function:9} -> {args.outdir / (name + '.ppm')} "
                f"({stats.duration * 1000:.1f} ms, {stats.fuel_consumed:,} fuel)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
