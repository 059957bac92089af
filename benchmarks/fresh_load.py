"""Child process for the "load in a fresh process" benchmark.

Usage: ``python benchmarks/fresh_load.py MODE WASM_PATH CACHE_DIR``. Imports what MODE needs,
then times, inside this process, the import of the library, the setup (a Host, an Engine) and
the first load of the module, and prints one JSON object
``{"import": seconds, "setup": seconds, "load": seconds}``. The parent runs it a few times and
keeps the medians; the "load" figure is the one the report compares, with import and setup
shown beside it.

Modes: ``plugsafe`` (Host, then Host.load, with plugsafe's compile cache when it has one),
``wasmtime-compile`` (Engine; Module from wasm + instantiate), ``wasmtime-deserialize`` (Engine;
Module.deserialize_file of an artifact made by the parent + instantiate), ``extism``
(extism.Plugin from the Extism guest's bytes, ``extism.wasm`` beside WASM_PATH).
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any


def plugsafe_cache_kwargs(cache_dir: str) -> dict[str, Any]:
    """The Host keyword that turns plugsafe's on-disk compile cache on, if this plugsafe has one."""
    import plugsafe

    params = inspect.signature(plugsafe.Host).parameters
    for name in ("cache_dir", "cache"):
        if name in params:
            return {name: cache_dir}
    return {}


def main(mode: str, wasm_path: str, cache_dir: str) -> dict[str, float]:
    wasm = Path(wasm_path).read_bytes()
    t_import = time.perf_counter()
    if mode == "plugsafe":
        import plugsafe

        imported = time.perf_counter() - t_import

        kwargs = plugsafe_cache_kwargs(cache_dir)
        t0 = time.perf_counter()
        host = plugsafe.Host(**kwargs)
        t1 = time.perf_counter()
        plugin = host.load(wasm_path, policy=plugsafe.Policy())
        t2 = time.perf_counter()
        assert plugin.call("echo", b"ping") == b"ping"
        host.close()
    elif mode in ("wasmtime-compile", "wasmtime-deserialize"):
        import wasmtime

        imported = time.perf_counter() - t_import
        t0 = time.perf_counter()
        engine = wasmtime.Engine()
        t1 = time.perf_counter()
        if mode == "wasmtime-compile":
            module = wasmtime.Module(engine, wasm)
        else:
            module = wasmtime.Module.deserialize_file(
                engine, str(Path(cache_dir) / "by-hand.cwasm")
            )
        store = wasmtime.Store(engine)
        instance = wasmtime.Linker(engine).instantiate(store, module)
        exports: Any = instance.exports(store)
        t2 = time.perf_counter()
        assert exports["add"](store, 1, 2) == 3
    elif mode == "extism":
        import extism

        imported = time.perf_counter() - t_import
        wasm = (Path(wasm_path).parent / "extism.wasm").read_bytes()
        t0 = t1 = time.perf_counter()
        plugin = extism.Plugin(wasm, functions=[])
        t2 = time.perf_counter()
        assert plugin.call("echo", b"ping") == b"ping"
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return {"import": imported, "setup": t1 - t0, "load": t2 - t1}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
