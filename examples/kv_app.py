"""Host app for the key-value example plugin: app-defined host functions and plugin logging.

    python examples/kv_app.py "Dear {name}, your order {order} ships from {city}."
    python examples/kv_app.py --lang c --visit home --visit home

The app owns a small key-value store and exposes two functions of it to the plugin,
``kv_get(key: str) -> str | None`` and ``kv_incr(key: str, by: int) -> int``. The policy allows
exactly those two plus ``log``; the plugin's log lines appear under ``plugsafe.plugin.kv``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import plugsafe

PLUGINS = Path(__file__).resolve().parent / "plugins" / "wasm"
POLICY = plugsafe.Policy(
    fuel=10_000_000,
    timeout=1.0,
    memory=4 * 2**20,
    allow=frozenset({"log", "kv_get", "kv_incr"}),
    max_host_calls=1_000,
)


class Store:
    """The app's data; the plugin reaches it only through the two registered functions."""

    def __init__(self) -> None:
        self.values = {"name": "Ada", "order": "#1815", "city": "London"}
        self.counters: dict[str, int] = {}

    def get(self, key: str) -> str | None:
        """Value of ``key``, or None."""
        return self.values.get(key)

    def incr(self, key: str, by: int) -> int:
        """Add ``by`` to the counter ``key``; returns the new value."""
        self.counters[key] = self.counters.get(key, 0) + by
        return self.counters[key]


def main(argv: Sequence[str] | None = None) -> int:
    """Render a template and count page visits through the plugin."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", nargs="?", default="Hello, {name}! ({unknown})")
    parser.add_argument("--visit", action="append", default=[], help="page to count a visit to")
    parser.add_argument("--lang", choices=("rust", "c"), default="rust")
    parser.add_argument("--wasm", type=Path, help="plugin file (default: the committed build)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG, format="%(levelname)-7s %(name)s: %(message)s")

    store = Store()
    with plugsafe.Host() as host:
        host.function(store.get, name="kv_get")
        host.function(store.incr, name="kv_incr")
        wasm = args.wasm or PLUGINS / f"kv-{args.lang}.wasm"
        with host.load(wasm, policy=POLICY, name="kv") as plugin:
            try:
                print(plugin.call("render", args.template).decode())
                for page in args.visit:
                    print(plugin.call("visit", page).decode())
            except plugsafe.GuestError as e:
                print(f"the plugin refused: {e.message}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
