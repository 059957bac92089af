"""Host app for the image-service *component* (WIT world in examples/components/image/wit).

    python examples/component_app.py OUTDIR [--width 96 --height 64 --radius 2.0]

The same picture operations as image_app.py, but the plugin is a WebAssembly component: the
contract is the WIT world, values are typed (an ``image`` record in, a Record out), and any
language that targets the world can implement it. Writes grayscale.ppm, resized.ppm and
blurred.ppm to OUTDIR.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import plugsafe

COMPONENT = Path(__file__).resolve().parent / "components" / "image-service.wasm"
POLICY = plugsafe.Policy(fuel=2_000_000_000, timeout=10.0, memory=256 * 2**20)


def test_picture(width: int, height: int) -> bytes:
    """A colourful picture with sharp edges, so the effects are easy to see."""
    out = bytearray()
    for y in range(height):
        for x in range(width):
            square = (x // 16 + y // 16) % 2
            out += bytes((x * 255 // width, y * 255 // height, 255 * square))
    return bytes(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Process a test picture with each function of the component and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--wasm", type=Path, default=COMPONENT, help="the component")
    parser.add_argument("--width", type=int, default=96, help="resize to this width")
    parser.add_argument("--height", type=int, default=64, help="resize to this height")
    parser.add_argument("--radius", type=float, default=2.0, help="blur radius")
    args = parser.parse_args(argv)

    image = {"width": 128, "height": 96, "data": test_picture(128, 96)}
    args.outdir.mkdir(parents=True, exist_ok=True)
    with plugsafe.Host() as host, host.load_component(args.wasm, policy=POLICY) as plugin:
        for name, signature in plugin.exports.items():
            print(f"{name}: {signature}")
        results = {
            "grayscale": plugin.invoke("processor/grayscale", image),
            "resized": plugin.invoke("processor/resize", image, args.width, args.height),
            "blurred": plugin.invoke("processor/blur", image, args.radius),
        }
    for name, result in results.items():
        path = args.outdir / f"{name}.ppm"
        path.write_bytes(b"P6\n%d %d\n255\n" % (result.width, result.height) + result.data)
        print(f"{name:9} -> {path} ({result.width}x{result.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
