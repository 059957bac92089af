"""WASI I/O and fork: refuse what would hang, in a child forked after the parent ran WASI.

wasmtime runs WASI file I/O (everything under a preopened directory) and custom outputs
(plugsafe's captured stdout/stderr) as tasks on a tokio runtime of its own, made once per
process, with worker threads, the first time a guest uses WASI output or files (even output
that is discarded). A forked child has a copy of that runtime but none of its threads: a task
it hands the runtime is never run, and the guest waits for it for ever, inside a host call,
where no epoch deadline (no ``timeout``) can stop it (measured on wasmtime 50: a child's first
read under a preopen, or first captured write, hung past a 2 s timeout in children of a parent
that had written output, discarded or captured, or read a file). Discarded or inherited
output, arguments, clocks and in-memory stdin need no such task and work in the child.

So: every WASI context notes that WASI is in use (``note``); at each fork the parent then
looks for the runtime's threads (named ``tokio-*`` on Linux; elsewhere they are assumed to
run once WASI was used); a child forked while they ran is *broken*: ``use_io`` (a context with
file access or a custom output) raises WasmFailure there (the callers make it a
PluginLoadError or PluginCallError), and the callbacks registered with ``on_broken`` drop what
the child inherited (a plugin's instance with preopens: its next call makes a new one, and is
refused).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from ._backend import WasmFailure

__all__ = ["FORK_MESSAGE", "broken", "note", "on_broken", "use_io"]

FORK_MESSAGE = (
    "WASI file access and captured output do not work in a process forked after its parent "
    "ran WASI plugins (wasmtime's I/O threads do not survive fork(); the call would wait for "
    "ever): run WASI plugins in the parent only after forking, or start child processes with "
    "'spawn' or 'forkserver'"
)

# used: this process made a WASI context; threads: wasmtime's runtime threads ran at this
# process's last fork; broken: this process is a child forked while they ran (and stays one,
# as do its own children).
_state = {"used": False, "threads": False, "broken": False}
_on_broken: list[Callable[[], None]] = []


def note() -> None:
    """Note that WASI is in use in this process (a plugin or a context was made)."""
    _state["used"] = True


def use_io() -> None:
    """A WASI context with file access or a custom output: WasmFailure in a broken child."""
    _state["used"] = True
    if _state["broken"]:
        raise WasmFailure(FORK_MESSAGE)


def broken() -> bool:
    """Whether this process is a child forked while wasmtime's WASI I/O threads ran."""
    return _state["broken"]


def on_broken(callback: Callable[[], None]) -> None:
    """Call ``callback`` in a child found broken at the fork (only its own state: no locks)."""
    _on_broken.append(callback)


# Threads that stayed unnamed through one whole wait (see _runtime_threads), by (tid, start
# time): not a runtime thread starting, so later forks do not wait for them again.
_settled: set[tuple[str, bytes]] = set()
# How long a fork waits at most for unnamed threads to name themselves (or end).
NAMING_WAIT = 0.2


def _thread_name(tid: str) -> tuple[bytes, bytes] | None:
    """(comm, start time) of this process's thread ``tid``, or None if it has ended."""
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as stat:
            fields = stat.read()
    except OSError:
        return None
    # "tid (comm) state ... starttime ...": the comm may hold spaces and parentheses.
    head, _, rest = fields.rpartition(b")")
    comm = head.partition(b"(")[2]
    parts = rest.split()
    return comm, (parts[19] if len(parts) > 19 else b"")


def _runtime_threads() -> bool:
    # Linux names every thread in /proc; tokio's are "tokio-runtime-worker" (wasmtime 50:
    # "tokio-rt-worker"), cut to 15 bytes. Elsewhere: assume they run once I/O was used.
    #
    # A thread names itself once it first runs: one created just before the fork (the runtime
    # is built when a guest first writes output, and its threads may not have run yet on a
    # loaded machine) still has its creator's name, and a child forked then hung (lead12: 12
    # in 80 under three CPU burners). So threads the interpreter does not know (not a
    # threading.Thread's) and not named tokio are waited for, up to NAMING_WAIT, until each
    # takes a name or ends; one unnamed through a whole wait is no runtime thread starting
    # (glibc's timer helper, an app's native thread) and is not waited for again.
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return True
    known = {str(t.native_id) for t in threading.enumerate()}
    waiting: dict[str, bytes] = {}
    for tid in tasks:
        found = _thread_name(tid)
        if found is None:  # (the thread ended meanwhile)
            continue
        comm, start = found
        if comm.startswith(b"tokio"):
            return True
        if tid not in known and (tid, start) not in _settled:
            waiting[tid] = comm
    deadline = time.monotonic() + NAMING_WAIT
    pause = 0.0005
    while waiting and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
        for tid, first in list(waiting.items()):
            found = _thread_name(tid)
            if found is None:
                del waiting[tid]
            elif found[0].startswith(b"tokio"):
                return True
            elif found[0] != first:
                del waiting[tid]  # named, and not a runtime thread
    for tid in waiting:
        found = _thread_name(tid)
        if found is not None:
            _settled.add((tid, found[1]))
    return False


def _before_fork() -> None:
    if _state["used"] and not _state["broken"]:
        _state["threads"] = _runtime_threads()


def _after_fork_in_child() -> None:
    if _state["broken"] or _state["threads"]:
        _state["broken"] = True
        for callback in _on_broken:
            callback()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
