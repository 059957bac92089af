"""plugsafe demo: load plugins nobody vetted, call them, and watch every limit stop a bad one.

Run from a checkout:  python examples/demo.py
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import plugsafe

HERE = Path(__file__).resolve().parent / "wat"


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="    log  %(name)s %(levelname)s: %(message)s"
    )

    with plugsafe.Host() as host:
        titles = {"ada": "Countess of Lovelace", "alan": "father of computer science"}

        @host.function
        def lookup(key: str) -> str | None:
            """An app-defined host function: plugins allowed to may ask the app for a title."""
            return titles.get(key)

        print("== a well-behaved plugin ==")
        # A generous timeout: the demo must say the same on a busy machine.
        policy = plugsafe.Policy(allow={"log", "lookup"}, fuel=1_000_000, timeout=5.0)
        greet = host.load(HERE / "greet.wat", policy=policy)
        print("greet('world')    ->", greet.call("greet", "world"))
        stats = greet.last_call
        assert stats is not None
        print(
            f"    fuel {stats.fuel_consumed}, {stats.duration * 1e6:.0f} us, "
            f"{stats.memory_bytes} bytes of memory"
        )
        print("describe('ada')   ->", greet.call("describe", "ada"))
        try:
            greet.call("describe", "bob")
        except plugsafe.GuestError as exc:
            print("describe('bob')   -> GuestError:", exc.message)

        print("\n== a greedy plugin: imports are denied by default, all listed at once ==")
        try:
            host.load(HERE / "greedy.wat", policy=plugsafe.Policy(allow={"lookup"}))
        except plugsafe.ImportNotAllowedError as exc:
            print(exc)

        print("\n== a hostile plugin: each attack meets a limit ==")
        # Each attack is set up so that exactly the limit it shows stops it, however loaded the
        # machine: the other limits are far away (a 30 s timeout where time is not the point, no
        # fuel limit where the timeout is), so the output is the same on every run.
        strict = plugsafe.Policy(
            allow={"log"},
            timeout=30.0,
            memory=4 * 2**20,
            max_host_calls=1_000,
            log_messages=2,
            log_message_size=24,
        )
        hostile = host.load(HERE / "hostile.wat", policy=strict)
        timed = host.load(
            HERE / "hostile.wat", policy=strict.replace(timeout=0.2), name="hostile-timed"
        )
        metered = host.load(
            HERE / "hostile.wat", policy=strict.replace(fuel=5_000_000), name="hostile-metered"
        )
        attacks = [
            ("spin   (infinite loop, timeout 0.2 s)", timed, "spin"),
            ("spin   (infinite loop, 5M fuel)", metered, "spin"),
            ("bomb   (grows memory, cap 4 MiB)", hostile, "bomb"),
            ("deep   (unbounded recursion)", hostile, "deep"),
            ("liar   (output pointer past memory)", hostile, "liar"),
            ("flood  (1M log calls, cap 1,000)", hostile, "flood"),
        ]
        for label, plugin, function in attacks:
            try:
                plugin.call(function, b"")
            except plugsafe.PlugsafeError as exc:
                first_line = str(exc).splitlines()[0]
                print(f"{label:40} -> {type(exc).__name__}: {first_line}")
            else:
                print(f"{label:40} -> NOT STOPPED")
                return 1
        print(
            "\nThe host is still here, and the good plugin still answers:",
            greet.call("greet", "again"),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
