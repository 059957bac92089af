#!/usr/bin/env python3
"""Build this plugin: app.py and wit/ into plugsafe_template.wasm, a WebAssembly component.

Usage (only the Python standard library is needed here; the build needs componentize-py)::

    python build.py          # -> plugsafe_template.wasm
    python build.py --check  # only say which componentize-py would be used, or how to get it

It runs ``componentize-py -d wit -w plugsafe-template componentize app --stub-wasi -o
plugsafe_template.wasm``. componentize-py (``pip install componentize-py``) carries the Python
interpreter it embeds, so the build works offline; it is found as ``COMPONENTIZE_PY`` if set,
next to this Python, or on PATH. ``--stub-wasi`` replaces every WASI import with a stub that
traps, so the component imports nothing and loads under a policy that grants no WASI (plugsafe
denies WASI unless the policy grants ``Wasi(...)``). A plugin that needs WASI (files, clocks,
environment) is built with ``python build.py --wasi`` and loaded under such a policy.

The component is about 18 MB (the interpreter is inside): the build takes a minute, and
wasmtime compiles it in 10-90 s the first time a host loads it (test_plugin.py keeps the
compiled copy in ``.plugsafe-cache/``, so later runs load it in under a second).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORLD = "plugsafe-template"
OUT = HERE / "plugsafe_template.wasm"
INSTALL = "pip install componentize-py (in the environment you build from)"


def find_componentize_py() -> str | None:
    """The componentize-py to run: ``COMPONENTIZE_PY``, next to this Python, or on PATH."""
    chosen = os.environ.get("COMPONENTIZE_PY")
    if chosen:
        return chosen if Path(chosen).exists() or shutil.which(chosen) else None
    beside = Path(sys.executable).parent / "componentize-py"
    return str(beside) if beside.exists() else shutil.which("componentize-py")


def main(argv: list[str]) -> int:
    """Command-line entry point."""
    tool = find_componentize_py()
    if argv[:1] == ["--check"]:
        print(tool or f"componentize-py is not installed: {INSTALL}")
        return 0 if tool else 1
    if argv not in ([], ["--wasi"]):
        print("\n\n".join(__doc__.split("\n\n")[1:3]), file=sys.stderr)
        return 2
    if tool is None:
        print(f"error: componentize-py is not installed: {INSTALL}", file=sys.stderr)
        return 1
    # Built under a temporary name and renamed: a failed build never leaves a stale plugin.
    tmp = OUT.with_suffix(".wasm.tmp")
    stub = [] if argv == ["--wasi"] else ["--stub-wasi"]
    cmd = [tool, "-d", "wit", "-w", WORLD, "componentize", "app", *stub, "-o", tmp.name]
    res = subprocess.run(cmd, cwd=HERE, check=False)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        return res.returncode
    tmp.replace(OUT)
    print(f"built {OUT.name} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
