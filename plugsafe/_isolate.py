"""Compiling a module in a child process with a time and a memory limit.

wasmtime's threat model excludes compilation, and the precheck (``_wasmbin.precheck``) only
bounds a module's *shape*: a module that passes it can still take seconds and hundreds of MiB to
compile.
With ``Policy(compile_timeout=..., compile_memory=...)`` the Host compiles in a child instead:

- the child is this same Python running this same plugsafe (its package directory is put first
  on ``sys.path`` in isolated mode ``-I``, so neither the environment nor the working directory
  can swap the code), and it builds its engine with the same ``_runtime.Engine`` constructor and
  arguments as the parent (fuel, stack and the pooling allocator's limits: before tidy9 it left
  the pool out, and only wasmtime's tolerance of that made its artifacts load), so the compiled
  artifact matches the parent's engine configuration. It sends its engine's ``settings`` back
  with the artifact and the parent refuses any other (wasmtime also checks what it can when
  deserializing, and refuses a mismatch);
- the wasm goes to the child over its stdin pipe and the serialized module comes back over its
  stdout pipe, framed with a magic line and a length. The parent deserializes only bytes read
  from the pipe of a child it started for this very module: ``Module.deserialize`` runs
  arbitrary code if handed crafted bytes, so it never sees bytes from anywhere else (no file, no
  cache directory, no caller);
- the timeout kills the child (``subprocess.run`` kills it when the time is up); the memory
  limit is ``RLIMIT_AS`` set inside the child to its size after start-up plus ``compile_memory``,
  so the compiler's allocations fail and the child dies instead of the host.

Failures come out as plugsafe errors: ``DeadlineExceeded`` / ``MemoryLimitExceeded`` with
``limit`` ``"compile_timeout"`` / ``"compile_memory"`` and ``phase="load"``, ``InvalidModuleError``
when wasmtime rejects the module, ``PluginLoadError`` for anything else.

Compiling, serializing and deserializing go through ``_runtime`` (``Engine.compile``,
``Module.serialize``, ``Engine.deserialize``), the one module that calls wasmtime.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import _runtime as rt
from ._errors import (
    DeadlineExceeded,
    InvalidModuleError,
    MemoryLimitExceeded,
    PluginLoadError,
)

__all__ = ["compile_isolated"]

# v2: the frame line, the child engine's settings and a newline, the length, the artifact.
_FRAME = b"plugsafe-compiled-module-v2\n"
_LENGTH_BYTES = 8
_EXIT_INVALID = 3
_EXIT_MEMORY = 4
# The bootstrap the child runs: the parent's package directory first on sys.path, then main().
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from plugsafe._isolate import _child_main; _child_main(sys.argv[2:])"
)


def _tail(stderr: bytes, limit: int = 500) -> str:
    """The child's last words: its stderr's last ``limit`` characters, as one tidy string."""
    text = stderr.decode("utf-8", "replace").strip()
    return text[-limit:] if text else "(no message)"


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1].strip()[:200] if lines else "no message"


def compile_isolated(
    engine: rt.Engine,
    wasm: bytes,
    *,
    max_stack: int,
    timeout: float | None,
    memory: int | None,
    name: str,
) -> rt.Module:
    """Compile ``wasm`` for ``engine`` in a child process; return the deserialized module."""
    # Imported here (issue 14): only policies with compile_timeout/compile_memory come here,
    # and subprocess (with selectors, signal, ...) would cost every import of plugsafe.
    import signal
    import subprocess

    package_parent = str(Path(__file__).resolve().parent.parent)
    args = [
        sys.executable,
        "-I",
        "-c",
        _BOOTSTRAP,
        package_parent,
        "1" if engine.metered else "0",
        str(max_stack),
        "-" if memory is None else str(memory),
        "-" if engine.pooling is None else ",".join(map(str, engine.pooling)),
    ]
    try:
        done = subprocess.run(
            args,
            input=wasm,
            capture_output=True,
            timeout=timeout,
            check=False,
            # No inherited descriptors, and its own session so a terminal's Ctrl-C reaches
            # only the host, which decides what to do.
            close_fds=True,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        # subprocess.run has killed and reaped the child already.
        raise DeadlineExceeded(
            f"compiling plugin {name!r} took longer than the policy's compile_timeout of "
            f"{timeout:g} s; the compiler process was killed",
            limit="compile_timeout",
            value=timeout,
            phase="load",
        ) from None
    except OSError as exc:
        raise PluginLoadError(
            f"cannot start the compiler process for plugin {name!r}: {exc}"
        ) from exc
    code = done.returncode
    if code == _EXIT_INVALID:
        raise InvalidModuleError(
            f"plugin {name!r} is not a valid WebAssembly module: {_tail(done.stderr)}"
        )
    if code != 0:
        died = -code if code < 0 else None
        crashed = code == _EXIT_MEMORY or died in (signal.SIGABRT, signal.SIGKILL, signal.SIGSEGV)
        if memory is not None and crashed:
            # Rust aborts when an allocation fails; that is the memory limit biting.
            raise MemoryLimitExceeded(
                f"compiling plugin {name!r} needed more than the policy's compile_memory of "
                f"{memory} bytes; the compiler process died ({_last_line(done.stderr)})",
                limit="compile_memory",
                value=memory,
                phase="load",
            )
        how = f"signal {died}" if died is not None else f"exit status {code}"
        raise PluginLoadError(
            f"the compiler process for plugin {name!r} failed ({how}): {_tail(done.stderr)}"
        )
    return _deserialize(engine, done.stdout, name, wasm)


def _deserialize(engine: rt.Engine, out: bytes, name: str, wasm: bytes) -> rt.Module:
    settings_end = out.find(b"\n", len(_FRAME))
    head = settings_end + 1 + _LENGTH_BYTES
    if not out.startswith(_FRAME) or settings_end < 0 or len(out) < head:
        raise PluginLoadError(f"the compiler process for plugin {name!r} sent no module")
    settings = out[len(_FRAME) : settings_end].decode("utf-8", "replace")
    if settings != engine.settings:
        raise PluginLoadError(
            f"the compiler process for plugin {name!r} compiled for other engine settings "
            f"({settings!r}, not {engine.settings!r})"
        )
    length = int.from_bytes(out[settings_end + 1 : head], "little")
    if length != len(out) - head:
        raise PluginLoadError(
            f"the compiler process for plugin {name!r} sent {len(out) - head} bytes, "
            f"announced {length}"
        )
    try:
        description = rt.describe_binary(wasm)
    except rt.WasmFailure as exc:
        raise InvalidModuleError(f"plugin {name!r}: {exc.message}") from None
    try:
        return engine.deserialize(out[head:], description)
    except rt.WasmFailure as exc:
        raise PluginLoadError(
            f"cannot load the module the compiler process built for plugin {name!r}: {exc.message}"
        ) from None


def _set_memory_limit(extra: int) -> None:
    import resource

    baseline = 0
    try:
        with open("/proc/self/statm") as f:
            baseline = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass  # not Linux: the limit is absolute then
    limit = baseline + extra
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child_main(argv: list[str]) -> None:
    """The compiler child: read wasm from stdin, write the framed serialized module to stdout."""
    metered, max_stack, memory, pool = argv
    wasm = sys.stdin.buffer.read()
    # The parent's engine, pooling allocator included (made before the memory limit: a pool
    # reserves address space, which RLIMIT_AS counts, and the limit is on top of that).
    pooling = None if pool == "-" else rt.PoolLimits(*map(int, pool.split(",")))
    engine = rt.Engine(metered=metered == "1", max_stack=int(max_stack), pooling=pooling)
    if memory != "-":
        _set_memory_limit(int(memory))
    try:
        data = engine.compile(wasm).serialize()
    except rt.WasmFailure as exc:
        sys.stderr.write(exc.message)
        sys.stderr.flush()
        os._exit(_EXIT_INVALID)
    except MemoryError:
        os._exit(_EXIT_MEMORY)
    out = sys.stdout.buffer
    out.write(
        _FRAME + engine.settings.encode() + b"\n" + len(data).to_bytes(_LENGTH_BYTES, "little")
    )
    out.write(data)
    out.flush()
