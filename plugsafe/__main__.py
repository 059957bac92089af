"""``python -m plugsafe`` and the ``plugsafe`` console script; see docs/cli.md."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> int:
    """Run the ``plugsafe`` command line with ``sys.argv``; return the exit code."""
    # Imported here so that importing plugsafe.__main__ (the console script's entry point) stays
    # cheap until the command actually runs.
    from ._cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
