"""Issue 14, goal 2: what a cold start costs at the floor, in instructions.

Runs four fresh processes under ``valgrind --tool=callgrind`` (instructions executed: the one
figure a shared machine cannot disturb; ``PYTHONHASHSEED=0`` makes them repeat exactly) and
prints each one's count and its ratio to wasmtime-py by hand:

- ``python``: the interpreter starting and exiting, nothing imported;
- ``wasmtime C API by hand``: the same ABI echo as the cold-start row, through cffi in ABI mode
  on the ``libwasmtime`` inside the wasmtime wheel, *without importing wasmtime-py* (the library
  is found with ``importlib.util.find_spec``, which runs no code of the package): deserialize,
  a store, a linker, instantiate, ``plugsafe_alloc``, write, ``echo``, read;
- ``wasmtime-py by hand``: the cold-start row's peer (``test_bench_issue14._COLD_WASMTIME``);
- ``plugsafe``: the cold-start row's plugsafe script (import, ``Host(cache_dir=)``, load from
  the disk cache, call).

It answered one question: how much of a cold start is ``import wasmtime`` itself, which plugsafe
paid while its runtime was built on wasmtime-py's objects; now that it speaks to the library
through its own declarations (``plugsafe._runtime._lib``), the C API row is its floor. Usage
(valgrind installed; the interpreter of the development environment)::

    python benchmarks/coldstart_floor.py

Without valgrind it prints the children's CPU time instead (medians of 15, interleaved), which
this shared machine disturbs.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import wasmtime  # noqa: E402
from test_bench_issue14 import _COLD_PLUGSAFE, _COLD_WASMTIME  # noqa: E402

from plugsafe._cdef import CDEF  # noqa: E402

from conftest import U64  # noqa: E402
from guests import PLUGSAFE_PURE_GUEST  # noqa: E402

# What the echo needs beyond plugsafe's own declarations (plugsafe/_cdef.py: the handles, value
# slots, the unchecked call, and what plugsafe makes and frees itself: configs, engines, modules,
# linkers), for the C API's plainest path: a default engine, a store and Linker.instantiate.
_CDEF = (
    CDEF
    + """
typedef struct wasmtime_store wasmtime_store_t;
wasm_engine_t *wasm_engine_new(void);
wasmtime_store_t *wasmtime_store_new(wasm_engine_t *, void *, void (*)(void *));
wasmtime_context_t *wasmtime_store_context(wasmtime_store_t *);
wasmtime_error_t *wasmtime_linker_instantiate(const wasmtime_linker_t *, wasmtime_context_t *,
    const wasmtime_module_t *, wasmtime_instance_t *, wasm_trap_t **);
void wasmtime_store_delete(wasmtime_store_t *);
"""
)

_COLD_C_API = """
import importlib.util, os, sys
sys.path.insert(0, {dir!r})
from floor_ffi import ffi
here = importlib.util.find_spec("wasmtime").submodule_search_locations[0]
lib = ffi.dlopen(os.path.join(here, {libdir!r}, {libname!r}))
engine = lib.wasm_engine_new()
with open({cwasm!r}, "rb") as f:
    data = f.read()
module = ffi.new("wasmtime_module_t **")
assert lib.wasmtime_module_deserialize(engine, data, len(data), module) == ffi.NULL
store = lib.wasmtime_store_new(engine, ffi.NULL, ffi.NULL)
ctx = lib.wasmtime_store_context(store)
linker = lib.wasmtime_linker_new(engine)
instance = ffi.new("wasmtime_instance_t *")
trap = ffi.new("wasm_trap_t **")
assert lib.wasmtime_linker_instantiate(linker, ctx, module[0], instance, trap) == ffi.NULL
def export(name):
    out = ffi.new("wasmtime_extern_t *")
    assert lib.wasmtime_instance_export_get(ctx, instance, name, len(name), out)
    return out
memory, alloc, echo = export(b"memory"), export(b"plugsafe_alloc"), export(b"echo")
slots = ffi.new("wasmtime_val_raw_t[2]")
slots[0].i32 = 4
call = lib.wasmtime_func_call_unchecked
assert call(ctx, ffi.addressof(alloc.of.func), slots, 2, trap) == ffi.NULL
ptr = slots[0].i32 & 0xFFFFFFFF
base = lib.wasmtime_memory_data(ctx, ffi.addressof(memory.of.memory))
ffi.memmove(base + ptr, b"ping", 4)
slots[0].i32, slots[1].i32 = ptr, 4
assert call(ctx, ffi.addressof(echo.of.func), slots, 2, trap) == ffi.NULL
word = slots[0].i64 & {u64}
assert ffi.unpack(ffi.cast("char *", base + (word >> 32)), word & 0x7FFFFFFF) == b"ping"
lib.wasmtime_store_delete(store)
lib.wasmtime_linker_delete(linker)
lib.wasmtime_module_delete(module[0])
lib.wasm_engine_delete(engine)
"""


_SERIALIZE = """
import wasmtime
with open({wasm!r}, "rb") as f:
    module = wasmtime.Module(wasmtime.Engine(), f.read())
with open({cwasm!r}, "wb") as f:
    f.write(module.serialize())
"""


def _library() -> tuple[str, str]:
    """wasmtime-py's bundled library, relative to its package directory."""
    from wasmtime import _ffi

    path = Path(_ffi.dll._name)  # only to find the file, in the parent
    return path.parent.name, path.name


def _instructions(argv: list[str], env: dict[str, str], cwd: str) -> int:
    with tempfile.NamedTemporaryFile() as out:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}", *argv],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    if done.returncode:
        raise RuntimeError(f"{argv[-1][:60]!r} failed under callgrind:\n{done.stderr[-3000:]}")
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def _cpu(argv: list[str], env: dict[str, str], cwd: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, env=env, cwd=cwd, check=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    """Measure the four processes and print a Markdown table."""
    import cffi

    with tempfile.TemporaryDirectory() as d:
        wasm = bytes(wasmtime.wat2wasm(PLUGSAFE_PURE_GUEST))
        Path(d, "g.wasm").write_bytes(wasm)
        Path(d, "cache").mkdir(mode=0o700)
        ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        ffi.set_source("floor_ffi", None)
        ffi.emit_python_code(str(Path(d, "floor_ffi.py")))
        libdir, libname = _library()
        fmt = {
            "dir": d,
            "cache": str(Path(d, "cache")),
            "wasm": str(Path(d, "g.wasm")),
            "cwasm": str(Path(d, "g.cwasm")),
            "u64": str(U64),
            "libdir": libdir,
            "libname": libname,
        }
        env = dict(os.environ, PYTHONHASHSEED="0")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        # Bytecode compiled, as an installed plugsafe has it (see the cold-start row).
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(REPO / "plugsafe")], check=True
        )
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        scripts = {
            "python": "pass",
            "wasmtime C API by hand (cffi, no wasmtime-py)": _COLD_C_API,
            "wasmtime-py by hand": _COLD_WASMTIME,
            "plugsafe": _COLD_PLUGSAFE,
        }
        argvs = {who: [sys.executable, "-c", code.format(**fmt)] for who, code in scripts.items()}
        # The artifact and plugsafe's disk cache are made in the same environment as the
        # measured runs: under valgrind the CPU wasmtime detects differs, and an artifact
        # compiled for the real one is refused (plugsafe would then compile: not a cold start).
        grind = ["valgrind", "-q", "--tool=none"] if shutil.which("valgrind") else []
        serialize = _SERIALIZE.format(wasm=fmt["wasm"], cwasm=fmt["cwasm"])
        subprocess.run([*grind, sys.executable, "-c", serialize], env=env, cwd=d, check=True)
        for argv in argvs.values():
            subprocess.run([*grind, *argv], env=env, cwd=d, check=True, timeout=600)  # warm
        if grind:
            unit = "instructions (callgrind)"
            figures = {who: float(_instructions(argv, env, d)) for who, argv in argvs.items()}
        else:
            unit = "CPU seconds (children's rusage, median of 15, interleaved)"
            samples: dict[str, list[float]] = {who: [] for who in argvs}
            for _ in range(15):
                for who, argv in argvs.items():
                    samples[who].append(_cpu(argv, env, d))
            figures = {who: statistics.median(v) for who, v in samples.items()}
    peer = figures["wasmtime-py by hand"]
    print(f"| fresh process | {unit} | ÷ wasmtime-py by hand |")
    print("| --- | ---: | ---: |")
    for who, value in figures.items():
        shown = f"{value / 1e6:.1f} M" if unit.startswith("instructions") else f"{value:.4f} s"
        print(f"| {who} | {shown} | {value / peer:.2f}x |")


if __name__ == "__main__":
    main()
