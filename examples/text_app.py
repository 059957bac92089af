"""Host app for the text transform example plugin: upper-case text and count its words.

    python examples/text_app.py "some text"          # the Rust plugin
    echo "some text" | python examples/text_app.py --lang c

It loads the committed plugin from examples/plugins/wasm/ (``--wasm`` picks another build) under
a tight policy: no host functions at all, a fuel budget and 4 MiB of memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import plugsafe

PLUGINS = Path(__file__).resolve().parent / "plugins" / "wasm"
POLICY = plugsafe.Policy(fuel=50_000_000, timeout=1.0, memory=4 * 2**20)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both plugin functions on the text from the command line or standard input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "text", nargs="?", help="text to transform (default: standard input, or a sample)"
    )
    parser.add_argument("--lang", choices=("rust", "c"), default="rust")
    parser.add_argument("--wasm", type=Path, help="plugin file (default: the committed build)")
    args = parser.parse_args(argv)

    if args.text is not None:
        text = args.text
    elif sys.stdin.isatty():
        text = "The quick brown fox\njumps over the lazy dog.\n"
    else:
        text = sys.stdin.read()
    wasm = args.wasm or PLUGINS / f"text-{args.lang}.wasm"
    with plugsafe.Host() as host, host.load(wasm, policy=POLICY, name="text") as plugin:
        try:
            upper = plugin.call("uppercase", text).decode()
            counts = json.loads(plugin.call("word_count", text))
        except plugsafe.GuestError as e:
            print(f"the plugin refused the input: {e.message}", file=sys.stderr)
            return 1
    print(upper)
    print(f"{counts['words']} words, {counts['lines']} lines, {counts['chars']} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
