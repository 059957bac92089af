"""Host app that runs the hostile example plugin and shows which limit stops each attack.

    python examples/hostile_app.py

The plugin (examples/plugins/rust/hostile, written with the Rust SDK) loops forever, allocates
without end, recurses without end and tries to forge and flood log lines. Every call fails with
the matching plugsafe error, and the same plugin object keeps working afterwards.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import plugsafe

PLUGINS = Path(__file__).resolve().parent / "plugins" / "wasm"

ATTACKS = [
    ("spin", "loops forever", plugsafe.Policy(fuel=5_000_000, allow=frozenset({"log"}))),
    ("spin", "loops forever, unmetered", plugsafe.Policy(timeout=0.2, allow=frozenset({"log"}))),
    ("hog", "allocates without end", plugsafe.Policy(memory=8 * 2**20, allow=frozenset({"log"}))),
    ("recurse", "recurses without end", plugsafe.Policy(allow=frozenset({"log"}))),
    ("forge_log", "forges and floods log lines", plugsafe.Policy(allow=frozenset({"log"}))),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run every attack; exit 1 if any of them was not stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wasm", type=Path, default=PLUGINS / "hostile-rust.wasm")
    args = parser.parse_args(argv)
    # Show the plugin's log lines as the host lets them through: escaped and capped.
    logging.basicConfig(level=logging.INFO, format="    log: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("plugsafe.plugin.hostile").setLevel(logging.INFO)

    failures = 0
    with plugsafe.Host() as host:
        for function, what, policy in ATTACKS:
            print(f"{function}: {what}")
            policy = policy.replace(log_messages=3)
            with host.load(args.wasm, policy=policy, name="hostile") as plugin:
                try:
                    plugin.call(function)
                except plugsafe.PlugsafeError as e:
                    print(f"  stopped: {type(e).__name__}: {str(e).splitlines()[0]}")
                else:
                    if function != "forge_log":
                        print("  NOT STOPPED")
                        failures += 1
                    else:
                        print("  contained: the lines above are escaped and capped")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
