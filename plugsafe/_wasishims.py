"""WASI's host side: the WasiConfig of each instance, captured output, and plugsafe's own shims.

What a policy may grant and what a run returns are ``_wasi``'s; this is what enforces a grant,
loaded when the first plugin under a :class:`~plugsafe.Wasi` grant is loaded (issue 14: a cold
start of a plugin without WASI never needs it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._wasi import SHIMS, WASI_MODULE, OutputMode, Wasi

if TYPE_CHECKING:  # _runtime loads wasmtime
    from . import _runtime as rt
    from ._callpath import CallState
    from ._errors import Diagnosis

__all__ = ["OutputSink", "WasiShims"]

_EINVAL = 28
_EPERM = 63


class OutputSink:
    """Collects one captured stream of one instance, up to a cap.

    wasmtime writes a guest's output from a thread of its own, not the call's (measured on
    wasmtime 50: the worker its WASI output runs on; tests/test_tidy9_wasi_thread.py), but never
    for one sink twice at once, and the guest's ``fd_write`` waits for it: everything is written
    by the time the call returns, when ``value`` is read. Where ``plugsafe._speedups`` is in use
    a captured stream is kept in C (``rt.NativeCapture``: that thread then runs no Python, so a
    plugin still writing while the interpreter exits cannot make it abort the process);
    otherwise ``write`` takes each write in Python. No lock is needed for that; nothing here
    may rely on the call's thread (its thread-locals, its call state).
    """

    __slots__ = ("_chunks", "_left", "_native", "_read", "_truncated", "mode")

    def __init__(self, mode: OutputMode, cap: int, *, native: bool = True) -> None:
        self.mode = mode
        self._chunks: list[bytes] = []
        self._left = cap
        self._truncated = False
        self._read = False  # (native: value() read, and with it ``_truncated``)
        self._native: rt.NativeCapture | None = None
        if native and mode == "capture":
            from . import _runtime as rt

            self._native = rt.native_capture(cap)

    def target(self) -> Callable[[bytes], object] | rt.NativeCapture:
        """What wasmtime is given to write to: the native capture, or ``write``."""
        return self.write if self._native is None else self._native

    def write(self, data: bytes) -> int:
        """Take ``data``; always report it all written, so the guest never retries or fails."""
        if self.mode == "capture":
            keep = data[: self._left]
            if keep:
                self._chunks.append(keep)
                self._left -= len(keep)
            if len(keep) < len(data):
                self._truncated = True
        return len(data)

    def value(self) -> bytes:
        """Everything captured so far."""
        if self._native is not None:
            data, self._truncated = self._native.value()
            self._read = True
            return data
        return b"".join(self._chunks)

    @property
    def truncated(self) -> bool:
        """Whether anything written was dropped (past the cap)."""
        if self._native is not None and not self._read:
            self.value()
        return self._truncated


# The sinks of an instance whose output nobody reads (WasiShims.config(read=False)).
_UNREAD = OutputSink("discard", 0, native=False)


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
            stdout=(w.stdout if read or w.stdout == "inherit" else "discard", out.target()),
            stderr=(w.stderr if read or w.stderr == "inherit" else "discard", err.target()),
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
