"""A large C program built with wasi-libc, for the "load a module the process compiled" figures.

Issue 14 measured a real third-party WASI program (0.9 MiB, 1,205 functions); nothing here may be
copied from one, so this generates one of that size and shape: ``functions`` distinct C functions
calling printf, malloc, strtol, sqrt, qsort, ... (so wasi-libc links in its stdio, allocator and
number formatting, as real programs do), reached through a function table, and a ``main``. It is
built once with clang (``-O2``, ``--target=wasm32-wasi``) into ``benchmarks/.build/`` and reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

BUILD = Path(__file__).resolve().parent / ".build"

_OPS = (
    "acc = acc * 31u + (unsigned)x; acc ^= acc >> 7;",
    'char b[64]; snprintf(b, sizeof b, "%d:%u", x, acc); acc += (unsigned)strlen(b);',
    "double d = sqrt((double)(x & 1023) + 1.5); acc += (unsigned)(d * 100.0);",
    "char *p = malloc((size_t)(x & 255) + 1); "
    "if (p) { memset(p, x, (size_t)(x & 255)); acc += (unsigned)p[0]; free(p); }",
    "for (int i = 0; i < (x & 15); i++) { acc = (acc << 3) | (acc >> 29); "
    "acc += (unsigned)i * 2654435761u; }",
    'acc += (unsigned)strtol("12345", NULL, 10 + (x & 3)); if (isalpha(x & 127)) acc++;',
)


def source(functions: int) -> str:
    """The C program with ``functions`` generated functions (deterministic)."""
    out = [
        "#include <ctype.h>",
        "#include <math.h>",
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "#include <string.h>",
        "#include <time.h>",
    ]
    for i in range(functions):
        out.append(f"__attribute__((noinline)) unsigned f{i}(int x, unsigned acc) {{")
        out.append(f"  acc += {i}u;")
        out.extend("  { " + _OPS[(i + k) % len(_OPS)] + " }" for k in range(3))
        if i:
            out.append(f"  if ((x + {i}) % 7 == 0) acc = f{i - 1}(x - 1, acc);")
        out.append("  return acc;\n}")
    out.append("typedef unsigned (*fn_t)(int, unsigned);")
    out.append("static fn_t table[] = {" + ", ".join(f"f{i}" for i in range(functions)) + "};")
    out.append(
        """static int cmp(const void *a, const void *b) {
  return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}
int main(int argc, char **argv) {
  unsigned acc = 1;
  int v[64];
  for (int i = 0; i < 64; i++) v[i] = (i * 7919) % 64;
  qsort(v, 64, sizeof v[0], cmp);
  for (int i = 0; i < (int)(sizeof table / sizeof table[0]); i++) acc = table[i](argc + i, acc);
  double t = strtod(argc > 1 ? argv[1] : "3.25", NULL);
  printf("%u %g %s %d\\n", acc, t * v[3], getenv("HOME") ? "home" : "nohome", time(NULL) > 0);
  return 0;
}"""
    )
    return "\n".join(out) + "\n"


def build(functions: int = 1700) -> Path | None:
    """The built program's path (built on first use), or None without clang and wasi-libc."""
    clang = os.environ.get("CC") or shutil.which("clang")
    if clang is None:
        return None
    text = source(functions)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    out = BUILD / f"bigc-{functions}-{digest}.wasm"
    if out.exists():
        return out
    BUILD.mkdir(exist_ok=True)
    src = BUILD / f"bigc-{functions}-{digest}.c"
    src.write_text(text)
    cmd = [clang, "--target=wasm32-wasi", "-O2", "-o", str(out), str(src), "-lm"]
    if os.environ.get("WASI_SYSROOT"):
        cmd.insert(2, f"--sysroot={os.environ['WASI_SYSROOT']}")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        return None
    return out
