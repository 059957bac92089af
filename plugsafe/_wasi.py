"""WASI as an explicit, narrow capability: what a policy may grant, what a run returns, and
the host side that enforces it (the WasiConfig of each instance and plugsafe's own shims).

Nothing is granted by default: no arguments, no environment (never the host's), empty stdin,
output captured (and capped), no directories. ``docs/wasi.md`` has the threat table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._errors import Diagnosis, PolicyError
from ._lazyre import lazy_re

if TYPE_CHECKING:
    from dataclasses import dataclass, field
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass, field

if TYPE_CHECKING:  # _runtime loads wasmtime; policies must not need it
    from . import _runtime as rt
    from ._callpath import CallState

__all__ = ["WASI_MODULE", "OutputMode", "OutputSink", "Preopen", "RunResult", "Wasi", "WasiShims"]

WASI_MODULE = "wasi_snapshot_preview1"
_EINVAL = 28
_EPERM = 63

OutputMode = Literal["capture", "discard", "inherit"]
_MODES = ("capture", "discard", "inherit")
_ENV_NAME = lazy_re(r"^[^=\x00]+$")


def _no_nul(value: str, where: str) -> None:
    if "\x00" in value:
        raise PolicyError(f"{where}: must not contain NUL characters", field="wasi")


@dataclass(frozen=True)
class Preopen:
    """A host directory the plugin may see at ``guest`` (read-only unless ``writable``).

    The plugin can reach nothing outside it: ``..``, absolute paths and symlinks that point
    outside are refused by wasmtime's capability-based file system.
    """

    host: str | os.PathLike[str]
    guest: str
    writable: bool = False

    def _check(self, where: str) -> None:
        if not isinstance(self.host, (str, os.PathLike)):
            raise PolicyError(f"{where}.host: expected a path, got {self.host!r}", field="wasi")
        host = os.fspath(self.host)
        if not isinstance(host, str) or not host:
            raise PolicyError(f"{where}.host: expected a non-empty path", field="wasi")
        host = str.__str__(host)  # (a subclass of str: the text it holds)
        _no_nul(host, f"{where}.host")
        if not Path(host).is_dir():
            raise PolicyError(f"{where}.host: {host!r} is not a directory", field="wasi")
        guest = self.guest
        if isinstance(guest, str):
            guest = str.__str__(guest)
        if not isinstance(guest, str) or not guest.startswith("/"):
            raise PolicyError(
                f"{where}.guest: expected an absolute guest path like '/data', got {guest!r}",
                field="wasi",
            )
        _no_nul(guest, f"{where}.guest")
        if not isinstance(self.writable, bool):
            raise PolicyError(f"{where}.writable: expected True or False", field="wasi")
        object.__setattr__(self, "guest", guest)
        # The directory checked, as a plain str: what every instance preopens (checked_host).
        # os.fspath(host) again could answer another one (attack6).
        object.__setattr__(self, "_host", host)

    def checked_host(self) -> str:
        """The host directory as it was checked (checked now if it never was)."""
        host = self.__dict__.get("_host")
        if host is None:
            self._check("wasi.preopens")
            host = self.__dict__["_host"]
        assert isinstance(host, str)
        return host


@dataclass(frozen=True)
class Wasi:
    """The WASI capabilities a policy grants. Every default grants nothing.

    Attributes:
        args: the program's argv (``args[0]`` is conventionally its name).
        env: environment variables; never the host's own.
        stdin: the bytes the program reads from stdin (an in-memory buffer: reads never block).
        stdout, stderr: ``"capture"`` (kept, up to the policy's ``max_output``), ``"discard"`` or
            ``"inherit"`` (the host process's own stream).
        preopens: directories the program may open files in.
    """

    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    stdout: OutputMode = "capture"
    stderr: OutputMode = "capture"
    preopens: Sequence[Preopen] = ()

    def __post_init__(self) -> None:
        # Each value is read once, copied, and the copy checked and kept: a sequence or mapping
        # that answers differently the second time, or a subclass of str with its own
        # ``__contains__``, must not slip a NUL or a bad name past the checks (attack6).
        if isinstance(self.args, (str, bytes)):
            raise PolicyError("wasi.args: expected a list of strings", field="wasi")
        args = tuple(self.args)
        if not all(isinstance(a, str) for a in args):
            raise PolicyError("wasi.args: expected a list of strings", field="wasi")
        args = tuple(str.__str__(a) for a in args)
        for i, a in enumerate(args):
            _no_nul(a, f"wasi.args[{i}]")
        object.__setattr__(self, "args", args)
        if not isinstance(self.env, Mapping):
            raise PolicyError("wasi.env: expected a mapping of names to strings", field="wasi")
        env: dict[str, str] = {}
        for k, v in list(self.env.items()):
            if not isinstance(k, str) or not _ENV_NAME.match(k):
                raise PolicyError(f"wasi.env: {k!r} is not a valid variable name", field="wasi")
            if not isinstance(v, str):
                raise PolicyError(f"wasi.env.{k}: expected a string, got {v!r}", field="wasi")
            k, v = str.__str__(k), str.__str__(v)
            if not _ENV_NAME.match(k):
                raise PolicyError(f"wasi.env: {k!r} is not a valid variable name", field="wasi")
            _no_nul(v, f"wasi.env.{k}")
            env[k] = v
        object.__setattr__(self, "env", env)
        if not isinstance(self.stdin, (bytes, bytearray)):
            raise PolicyError("wasi.stdin: expected bytes", field="wasi")
        object.__setattr__(self, "stdin", bytes(self.stdin))
        for name in ("stdout", "stderr"):
            mode = getattr(self, name)
            if mode not in _MODES:
                raise PolicyError(
                    f"wasi.{name}: expected one of {', '.join(_MODES)}, got {mode!r}",
                    field="wasi",
                )
        if isinstance(self.preopens, (str, bytes)):
            raise PolicyError("wasi.preopens: expected a list of Preopen", field="wasi")
        preopens = tuple(self.preopens)
        guests: set[str] = set()
        for i, p in enumerate(preopens):
            if not isinstance(p, Preopen):
                raise PolicyError(
                    f"wasi.preopens[{i}]: expected a Preopen, got {p!r}", field="wasi"
                )
            p._check(f"wasi.preopens[{i}]")
            if p.guest in guests:
                raise PolicyError(
                    f"wasi.preopens[{i}].guest: {p.guest!r} is preopened twice", field="wasi"
                )
            guests.add(p.guest)
        object.__setattr__(self, "preopens", preopens)

    def __hash__(self) -> int:
        return hash((self.args, tuple(sorted(self.env.items())), self.stdin, self.stdout,
                     self.stderr, self.preopens))  # fmt: skip


@dataclass(frozen=True)
class RunResult:
    """What :meth:`Plugin.run` returns: the exit code and the captured output.

    ``stdout_truncated``/``stderr_truncated`` say the stream went past the policy's
    ``max_output`` and the rest was dropped.
    """

    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False


class OutputSink:
    """Collects one captured stream up to a cap (wasmtime's WASI calls it on the call's thread)."""

    __slots__ = ("_chunks", "_left", "mode", "truncated")

    def __init__(self, mode: OutputMode, cap: int) -> None:
        self.mode = mode
        self._chunks: list[bytes] = []
        self._left = cap
        self.truncated = False

    def write(self, data: bytes) -> int:
        """Take ``data``; always report it all written, so the guest never retries or fails."""
        if self.mode == "capture":
            keep = data[: self._left]
            if keep:
                self._chunks.append(keep)
                self._left -= len(keep)
            if len(keep) < len(data):
                self.truncated = True
        return len(data)

    def value(self) -> bytes:
        """Everything captured so far."""
        return b"".join(self._chunks)


# The sinks of an instance whose output nobody reads (WasiShims.config(read=False)).
_UNREAD = OutputSink("discard", 0)


_I32 = ("i32",)
# The WASI functions plugsafe serves itself: (name, params, results), in definition order.
SHIMS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("poll_oneoff", _I32 * 4, _I32),
    ("clock_time_get", ("i32", "i64", "i32"), _I32),
    ("path_symlink", _I32 * 5, _I32),
)
# Their (numeric, module, name) as a Linker records them (Linker.retarget).
SHIM_SHAPES: list[tuple[bool, str, str]] = [(False, WASI_MODULE, name) for name, _p, _r in SHIMS]


class WasiShims:
    """The host side of one plugin's WASI: each instance's WasiConfig, and plugsafe's shims.

    wasmtime's own WASI functions serve everything except three, which plugsafe replaces:
    ``poll_oneoff`` (wasmtime's sleeps in the host, where no epoch can interrupt it; ours sleeps
    only until the call's deadline), ``clock_time_get`` (the guest's monotonic clock is ours, so
    "sleep until T" agrees with poll_oneoff, and starts near 0 so the guest learns nothing of the
    host's uptime; CPU-time clocks are refused) and ``path_symlink`` (refused: wasmtime never
    follows a link out of a preopen, but a link planted in a writable preopen, say to
    ../secret, waits for the host app to follow it).
    """

    def __init__(self, wasi: Wasi, max_output: int, state: CallState, diagnosis: Diagnosis) -> None:
        self.wasi = wasi
        self.max_output = max_output
        self.state = state
        self.diagnosis = diagnosis
        self.clock_base = time.monotonic_ns()
        # An instance made for calls, under a Wasi with nothing to set (no arguments, variables,
        # stdin or preopens; output not inherited, so discarded): a bare WASI context, made in
        # C with no WasiConfig object (``rt.DEFAULT_WASI``, Plugin._new_instance).
        self.bare = not (
            wasi.args
            or wasi.env
            or wasi.stdin
            or wasi.preopens
            or wasi.stdout == "inherit"
            or wasi.stderr == "inherit"
        )

    def define(self, linker: rt.Linker, on_error: rt.ErrorSink) -> None:
        """Offer WASI preview 1 in ``linker``, with plugsafe's shims shadowing wasmtime's."""
        linker.define_wasi()
        for binding in self.bindings(on_error):
            linker.define(binding)

    def bindings(self, on_error: rt.ErrorSink) -> list[rt.Binding]:
        """plugsafe's shims as this plugin serves them (defined after wasmtime's WASI)."""
        from . import _runtime as rt

        return [
            rt.Binding(False, WASI_MODULE, name, params, results, target, on_error)
            for (name, params, results), target in zip(SHIMS, self.targets(), strict=True)
        ]

    def targets(self) -> list[Callable[[rt.Caller, list[Any]], list[Any]]]:
        """What serves each of :data:`SHIMS` for this plugin, in order."""
        return [self.poll_oneoff, self.clock_time_get, _refuse_symlink]

    def config(
        self, args: Sequence[str] | None, stdin: bytes | None, *, read: bool = True
    ) -> tuple[object, OutputSink, OutputSink]:
        """A WasiConfig for one new instance, with its fresh stdout and stderr sinks.

        ``args`` and ``stdin`` replace the policy's for this instance (``Plugin.run``).
        ``read=False``: nobody will read what the instance writes (an instance for calls), so
        captured streams are discarded instead, by wasmtime itself (the guest sees every write
        succeed in full, as with a capture); the sinks returned are then empty stand-ins.
        """
        from . import _runtime as rt

        w = self.wasi
        if read:
            out = OutputSink(w.stdout, self.max_output)
            err = OutputSink(w.stderr, self.max_output)
        else:
            out = err = _UNREAD
        cfg = rt.wasi_config(
            args=w.args if args is None else args,
            env=w.env,
            stdin=w.stdin if stdin is None else stdin,
            stdout=(w.stdout if read or w.stdout == "inherit" else "discard", out.write),
            stderr=(w.stderr if read or w.stderr == "inherit" else "discard", err.write),
            preopens=[(p.checked_host(), p.guest, p.writable) for p in w.preopens],
        )
        return cfg, out, err

    def clock_time_get(self, caller: rt.Caller, args: list[Any]) -> list[Any]:
        """WASI clock_time_get: realtime, and a monotonic clock shared with our poll_oneoff."""
        clock_id, _precision, out_ptr = args
        if clock_id == 0:
            now = time.time_ns()
        elif clock_id == 1:
            now = time.monotonic_ns() - self.clock_base
        else:  # process or thread CPU time: not offered
            return [_EINVAL]
        caller.write(out_ptr, now.to_bytes(8, "little"))
        return [0]

    def poll_oneoff(self, caller: rt.Caller, args: list[Any]) -> list[Any]:
        """WASI poll_oneoff that never sleeps past the call's deadline.

        Clock subscriptions sleep (in Python, releasing the GIL) until the earliest one is due,
        or the deadline, whichever comes first; fd subscriptions are always ready (stdin is an
        in-memory buffer and outputs never block), so they end the poll at once.
        """
        state = self.state
        sub_ptr, out_ptr, n, nevents_ptr = (a & 0xFFFF_FFFF for a in args)
        if n == 0 or n > 4096:
            return [_EINVAL]
        subs = caller.read(sub_ptr, 48 * n)
        clocks: list[tuple[int, float]] = []  # (index, seconds from now)
        fds: list[int] = []
        # Deadlines are on the perf_counter clock (monotonic), like the call's start time.
        now_mono = time.perf_counter()
        for i in range(n):
            rec = subs[48 * i : 48 * (i + 1)]
            tag = rec[8]
            if tag == 0:
                clock_id = int.from_bytes(rec[16:20], "little")
                timeout = int.from_bytes(rec[24:32], "little") / 1e9
                if rec[40] & 1:  # absolute time, on the clocks clock_time_get reports
                    if clock_id == 0:
                        timeout -= time.time()
                    else:
                        timeout -= (time.monotonic_ns() - self.clock_base) / 1e9
                clocks.append((i, max(timeout, 0.0)))
            elif tag in (1, 2):
                fds.append(i)
            else:
                return [_EINVAL]
        ready: list[int] = list(fds)
        if not fds and clocks:
            wait = min(t for _, t in clocks)
            deadline = state.deadline
            if deadline is not None and now_mono + wait > deadline:
                time.sleep(max(deadline - now_mono, 0.0))
                raise self.diagnosis.deadline(state.function, "call", " (while it slept)")
            time.sleep(wait)
            ready = [i for i, t in clocks if t <= wait]
        events = bytearray()
        for i in ready:
            rec = subs[48 * i : 48 * (i + 1)]
            event = bytearray(32)
            event[0:8] = rec[0:8]  # userdata
            event[10] = rec[8]  # type
            if rec[8] in (1, 2):
                event[16:24] = (0).to_bytes(8, "little")
            events += event
        caller.write(out_ptr, bytes(events))
        caller.write(nevents_ptr, len(ready).to_bytes(4, "little"))
        return [0]


def _refuse_symlink(_caller: rt.Caller, _args: list[Any]) -> list[Any]:
    return [_EPERM]
