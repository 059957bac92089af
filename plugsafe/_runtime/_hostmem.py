"""Components' linear memories, allocated by plugsafe: how a component's memory cap is seen.

wasmtime's C API cannot read a component's memory, and a ``memory.grow`` refused by the store's
limits only returns -1 to the guest: the host never learns of it. So the component engines get
a *host memory creator* (``wasmtime_config_host_memory_creator_set``): wasmtime asks plugsafe
for every linear memory it makes on them and for every growth, and plugsafe

- reserves each memory with ``mmap`` (``PROT_NONE``: address space only) as big as wasmtime
  asks (its ``reserved_size_in_bytes``, 4 GiB on 64-bit hosts, plus the guard region after it:
  compiled code elides bounds checks on the strength of both), and makes the accessible part
  readable and writable with ``mprotect`` as the memory grows (fresh anonymous pages are zero,
  as the contract requires), never moving it;
- counts each memory's size in an :class:`Account`, one per instance (one Store), which caps
  the sum of the instance's memories: a growth past the cap is refused (the guest sees -1) and
  *recorded* (:attr:`Account.refused`), so a call that then traps is reported as the memory
  limit, not as a bare trap; an initial size over the cap fails instantiation, recorded too;
- unmaps the memory in its finalizer (wasmtime calls it when the Store is deleted).

wasmtime calls ``new_memory`` on the thread that instantiates, with no hint of which Store the
memory is for: :func:`creating` names the Account on that thread for the duration of one
instantiation. A memory asked for outside one is refused (measured: wasmtime makes memories
created through its API, ``wasmtime.Memory``, with its own allocator; plugsafe makes none).

Every callback is wrapped: no Python exception crosses into wasmtime. A failure is a
``wasmtime_error_t`` returned to wasmtime (a refused creation or growth), never a crash; the
``get_memory`` callback, which cannot fail in the C API, reads only Python data made before
the memory was handed over. A KeyboardInterrupt caught there is kept on the Account
(:attr:`Account.interrupt`) and raised by the instance once wasmtime has returned.

Copy-on-write initialisation (``memory_init_cow``) has to be off on such an engine (measured: it
aborts the process instantiating a componentize-py component), so data segments are copied in
at instantiation. The callbacks are ctypes callbacks on wasmtime-py's own declarations, under
either backend: they run at instantiation, on ``memory.grow`` and at deletion, never per call.

POSIX only (``mmap``/``mprotect``/``munmap`` from the C library); elsewhere :data:`AVAILABLE`
is False and components keep the store's limits (a refused growth is a plain trap there).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import mmap
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from wasmtime import _ffi as wf

from .._lazymodule import lazy_module
from .._wasmshape import COMPONENT_HEADER
from ._cffi import load_speedups

# The memory callbacks in C (see _compiled), where the optional extension was built and
# PLUGSAFE_SPEEDUPS=0 does not turn it off (one rule: _cffi.load_speedups; CI runs the
# component tests without it too, as a machine without a C compiler would).
_speedups: Any = load_speedups()

if TYPE_CHECKING:
    from .. import _wasmbin
else:
    # The binary reader, when a component's memories are first read (issue 14: cold start).
    _wasmbin = lazy_module("plugsafe._wasmbin", globals(), "_wasmbin")

__all__ = ["AVAILABLE", "Account", "creating", "data_fuel", "install", "live_memories"]

_PROT_NONE = 0
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
_MAP_FLAGS = (
    mmap.MAP_PRIVATE
    | getattr(mmap, "MAP_ANONYMOUS", getattr(mmap, "MAP_ANON", 0))
    # Linux: an address-space reservation must not count against overcommit.
    | getattr(mmap, "MAP_NORESERVE", 0)
)
_PAGE = mmap.PAGESIZE
_MAP_FAILED = ctypes.c_void_p(-1).value


def _libc() -> Any:
    if os.name != "posix" or not hasattr(mmap, "MAP_PRIVATE"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_ssize_t,  # off_t: 64-bit on every 64-bit POSIX host
        ]
        libc.mprotect.restype = ctypes.c_int
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
#: Whether component engines get plugsafe's memory creator (64-bit POSIX hosts with the C API).
AVAILABLE = (
    _LIBC is not None
    and ctypes.sizeof(ctypes.c_void_p) == 8
    and hasattr(wf, "wasmtime_config_host_memory_creator_set")
    and hasattr(wf, "wasmtime_config_memory_init_cow_set")
)


class Account:
    """The linear memories of one instance (one Store): their sizes and the cap on their sum.

    ``total`` is the bytes they hold, ``memories`` how many are alive. ``refused`` is the last
    growth (or creation) refused, as ``(total then, total asked for)``; the owner clears it
    before each call, so it tells whether *that* call had one.
    """

    __slots__ = ("cap", "interrupt", "memories", "refused", "total")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.total = 0
        self.memories = 0
        self.refused: tuple[int, int] | None = None
        #: A KeyboardInterrupt (or other BaseException that is not an Exception) a callback
        #: caught: it cannot cross into wasmtime, so the owner raises it once wasmtime returns.
        self.interrupt: BaseException | None = None


class _View(ctypes.Structure):
    """What the compiled get_memory callback reads of a memory (``HostMemView`` in
    plugsafe/_speedups.c): kept equal to its ``_Memory``'s fields."""

    _fields_ = (("base", ctypes.c_void_p), ("size", ctypes.c_size_t), ("reserved", ctypes.c_size_t))


def _compiled() -> tuple[Any, Any, Any] | None:
    """The get_memory, new_memory and grow_memory callbacks in C (plugsafe._speedups, where it
    was built), or None: then the Python callbacks themselves.

    A Python callback can fail before its first line (a signal handler's exception raised at
    the frame's start: its try never began), and a ctypes callback that raised returned 0: a
    null base from get_memory, "done" from new_memory for a memory never made; wasmtime then
    aborted the process (attack9: Ctrl-C while a component instantiated). get_memory is C
    (it reads a _View and cannot fail); the other two are C trampolines into the Python ones,
    which refuse and keep the interrupt on the Account when Python fails (_speedups.c).
    """
    if _speedups is None:
        return None
    get = getattr(_speedups, "HOSTMEM_GET", None)
    setup = getattr(_speedups, "hostmem_setup", None)
    size = getattr(_speedups, "HOSTMEM_VIEW_SIZE", 0)
    if not isinstance(get, int) or setup is None or size != ctypes.sizeof(_View):
        return None  # an extension built from other sources
    error_new = ctypes.cast(wf.dll.wasmtime_error_new, ctypes.c_void_p).value
    try:
        new, grow = setup(_new_memory_at, _grow_memory, _current, error_new)
    except RuntimeError:  # set up already (this module imported again): Python's, then
        return None
    return (
        ctypes.cast(get, wf.wasmtime_memory_get_callback_t),
        ctypes.cast(new, wf.wasmtime_new_memory_callback_t),
        ctypes.cast(grow, wf.wasmtime_memory_grow_callback_t),
    )


class _Memory:
    __slots__ = ("account", "base", "mapped", "reserved", "size", "view")

    def __init__(self, account: Account, base: int, mapped: int, reserved: int) -> None:
        self.account = account
        self.base = base
        self.mapped = mapped  # the whole mapping: the reservation and the guard after it
        self.reserved = reserved  # how far the memory may grow without moving
        self.size = 0  # bytes accessible (what wasmtime was told)
        # What the compiled get_memory reads (its env is this struct's address).
        self.view = _View(base, 0, reserved)


# The memories alive, by the env wasmtime hands back to the callbacks: a number never reused
# (the Python get_memory), or the address of the memory's _View (the compiled one; unique while
# the memory lives, and only then in _LIVE).
_LIVE: dict[int, _Memory] = {}
_IDS = itertools.count(1)
_current = threading.local()


def live_memories() -> int:
    """How many memories plugsafe's creator holds now (for tests: none may leak)."""
    return len(_LIVE)


@contextlib.contextmanager
def creating(account: Account) -> Iterator[None]:
    """Memories wasmtime asks for on this thread in the ``with`` block belong to ``account``
    (wrap exactly one instantiation)."""
    before = getattr(_current, "account", None)
    _current.account = account
    try:
        yield
    finally:
        _current.account = before


def _round(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


def _error(message: str) -> int:
    """A new ``wasmtime_error_t*`` as an address (wasmtime takes and frees it)."""
    err = wf.wasmtime_error_new(ctypes.create_string_buffer(message.encode()))
    return ctypes.cast(err, ctypes.c_void_p).value or 0


_FALLBACK = ctypes.create_string_buffer(b"plugsafe: the memory creator failed")


def _failed(exc: BaseException, what: str, account: Account | None) -> int:
    """The error a callback returns after catching ``exc``: never 0 if it can be helped (0
    means success to wasmtime, which would then use a memory that does not exist)."""
    try:
        if account is not None and not isinstance(exc, Exception):
            account.interrupt = exc  # a KeyboardInterrupt: raised by the owner afterwards
        return _error(f"plugsafe: {what} failed: {type(exc).__name__}")
    except BaseException:
        try:
            err = wf.wasmtime_error_new(_FALLBACK)  # no formatting, no new Python objects
            return ctypes.cast(err, ctypes.c_void_p).value or 0
        except BaseException:
            return 0  # nothing left to try


def _protect(mem: _Memory, new_size: int) -> bool:
    """Make ``[0, new_size)`` of ``mem`` readable and writable (it only ever grows)."""
    old, new = _round(mem.size), _round(new_size)
    if new > old and _LIBC.mprotect(mem.base + old, new - old, _PROT_RW) != 0:
        return False
    mem.size = mem.view.size = new_size
    return True


def _refuse(account: Account, asked: int) -> int:
    account.refused = (account.total, asked)
    return _error(
        f"plugsafe: memory limit: the instance's memories would take {asked} bytes, over the "
        f"policy's memory of {account.cap} bytes"
    )


def _new_memory(
    _env: Any,
    _ty: Any,
    minimum: int,
    maximum: int,
    reserved: int,
    guard: int,
    out: Any,
) -> int:
    try:
        account: Account | None = getattr(_current, "account", None)
        if account is None:
            return _error("plugsafe: a component memory was asked for outside an instantiation")
        if account.total + minimum > account.cap:
            return _refuse(account, account.total + minimum)
        if reserved == 0:
            # wasmtime left the size to us: the cap bounds the growth, and the memory never moves.
            reserved = _round(max(minimum, min(maximum, account.cap)))
        elif minimum > reserved:
            # Never the case with wasmtime's reservations; mprotect past the mapping would
            # change whatever mapping follows it.
            return _error("plugsafe: a memory's minimum size is over its reservation")
        mapped = reserved + guard
        base = _LIBC.mmap(None, mapped, _PROT_NONE, _MAP_FLAGS, -1, 0)
        if base is None or base == _MAP_FAILED:
            return _error(f"plugsafe: reserving {mapped} bytes failed (errno {ctypes.get_errno()})")
        try:
            mem = _Memory(account, base, mapped, reserved)
            if not _protect(mem, minimum):
                errno = ctypes.get_errno()
                _LIBC.munmap(base, mapped)
                return _error(f"plugsafe: mapping {minimum} bytes failed (errno {errno})")
            ret: Any = out.contents
            if _C_GET is not None:
                env = ctypes.addressof(mem.view)
                ret.get_memory = _C_GET
                ret.grow_memory = _C_GROW
            else:
                env = next(_IDS)
                ret.get_memory = _GET
                ret.grow_memory = _GROW
            ret.env = env
            ret.finalizer = _FREE
        except BaseException:
            _LIBC.munmap(base, mapped)  # handed to no one: ours to unmap
            raise
        # Only now is the memory wasmtime's (it calls the finalizer when it drops it).
        _LIVE[env] = mem
        account.total += minimum
        account.memories += 1
        return 0
    except BaseException as exc:  # nothing may cross into wasmtime
        return _failed(exc, "creating a memory", getattr(_current, "account", None))


def _new_memory_at(
    env: int, ty: int, minimum: int, maximum: int, reserved: int, guard: int, out: int
) -> int:
    """``_new_memory`` as the C trampoline calls it (every argument an int)."""
    pointer: Any = ctypes.cast(out, _OUT)
    return _new_memory(env, ty, minimum, maximum, reserved, guard, pointer)


def _get_memory(env: Any, size: Any, capacity: Any) -> int:
    try:
        mem = _LIVE[env]
        size[0] = mem.size
        capacity[0] = mem.reserved
        return mem.base
    except BaseException:  # nothing may cross into wasmtime (a bug of ours if ever reached)
        with contextlib.suppress(BaseException):
            size[0] = 0
            capacity[0] = 0
        return 0


def _grow_memory(env: Any, new_size: int) -> int:
    mem = None
    try:
        mem = _LIVE[env]
        account = mem.account
        delta = new_size - mem.size
        if delta <= 0:
            return 0
        if account.total + delta > account.cap:
            return _refuse(account, account.total + delta)
        if new_size > mem.reserved:
            return _error("plugsafe: a memory may not grow past its reservation")
        if not _protect(mem, new_size):
            return _error(f"plugsafe: growing a memory failed (errno {ctypes.get_errno()})")
        account.total += delta
        return 0
    except BaseException as exc:  # nothing may cross into wasmtime
        return _failed(exc, "growing a memory", None if mem is None else mem.account)


def _free_memory(env: Any, _live: dict[int, _Memory] = _LIVE, _libc: Any = _LIBC) -> None:
    # May run while the interpreter shuts down (a Store deleted late): what it needs is bound
    # as defaults, not looked up in module globals that may be gone by then.
    try:  # nothing may cross into wasmtime
        mem = _live.pop(env, None)
        if mem is not None:
            mem.account.memories -= 1
            _libc.munmap(mem.base, mem.mapped)
    except BaseException:  # a finalizer has no one to tell
        pass


def _free_creator(_env: Any) -> None:
    return None


# Made once and kept for the life of the process: wasmtime may call them until the last Store
# of a component engine is deleted (engines are never freed).
_GET = wf.wasmtime_memory_get_callback_t(_get_memory) if AVAILABLE else None
_GROW = wf.wasmtime_memory_grow_callback_t(_grow_memory) if AVAILABLE else None
_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_free_memory) if AVAILABLE else None
_NEW = wf.wasmtime_new_memory_callback_t(_new_memory) if AVAILABLE else None
# The type of new_memory's last argument (a pointer to the memory it makes).
_OUT: Any = wf.wasmtime_new_memory_callback_t._argtypes_[6] if AVAILABLE else None
# The compiled ones where _speedups was built (see _compiled).
_C_GET = _C_NEW = _C_GROW = None
if AVAILABLE:
    _C_GET, _C_NEW, _C_GROW = _compiled() or (None, None, None)
_FREE_CREATOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_free_creator) if AVAILABLE else None


def install(config: Any) -> bool:
    """Give the ``wasmtime.Config`` ``config`` plugsafe's memory creator (and turn copy-on-write
    initialisation off, which a host memory cannot have). False where :data:`AVAILABLE` is."""
    if not AVAILABLE:
        return False
    creator: Any = wf.wasmtime_memory_creator_t()  # (its stub types every field a pointer)
    creator.env = None
    creator.new_memory = _NEW if _C_NEW is None else _C_NEW
    creator.finalizer = _FREE_CREATOR
    # The config copies the struct; the callbacks it points to are the module's, kept above.
    wf.wasmtime_config_host_memory_creator_set(config.ptr(), ctypes.byref(creator))
    wf.wasmtime_config_memory_init_cow_set(config.ptr(), False)
    return True


# -- the fuel of copying data segments ------------------------------------------------------------

_COMPONENT_HEADER = COMPONENT_HEADER
_CORE_MODULE_SECTION = 1
_COMPONENT_SECTION = 4
_DATA_SECTION = 11
_MAX_DEPTH = 32  # components nest far less; deeper is not worth walking


def data_fuel(wasm: bytes) -> int:
    """The fuel wasmtime charges to copy the active data segments of every core module in the
    component ``wasm`` into memory when it is instantiated (nested components included).

    Without copy-on-write initialisation (off with plugsafe's memory creator), wasmtime copies
    data segments with ``memory.init``, which costs one unit of fuel per byte: measured, an
    instance costs the segments' bytes plus one per segment plus one. A componentize-py component
    has ~11 MB of them (~11M fuel, against ~6k for everything else its instantiation runs).
    Each core module is counted once (a module a component instantiates twice pays its second
    copy from the policy's fuel). 0 for bytes this reader cannot follow (wasmtime validated them:
    that would be a gap of this reader, and the instantiation is then metered as before).
    """
    try:
        return _component_data(wasm, 0, len(wasm), 0)
    except (_wasmbin.WasmFormatError, IndexError):
        return 0


def _component_data(wasm: bytes, start: int, end: int, depth: int) -> int:
    if depth > _MAX_DEPTH or wasm[start : start + 8] != _COMPONENT_HEADER:
        raise _wasmbin.WasmFormatError("not a component")
    total = 0
    pos = start + 8
    while pos < end:
        section = wasm[pos]
        r = _wasmbin._Reader(wasm, pos + 1, end)
        size = r.leb()
        body = r.pos
        if size > end - body:
            raise _wasmbin.WasmFormatError("truncated section")
        if section == _CORE_MODULE_SECTION:
            total += _module_data(wasm[body : body + size])
        elif section == _COMPONENT_SECTION:
            total += _component_data(wasm, body, body + size, depth + 1)
        pos = body + size
    return total


def _module_data(module: bytes) -> int:
    total = 0
    for section, start, end in _wasmbin._sections(module):
        if section != _DATA_SECTION:
            continue
        r = _wasmbin._Reader(module, start, end)
        for _ in range(r.leb()):
            flags = r.leb()
            if flags == 1:  # passive: copied by the guest's own memory.init, if ever
                r.skip(r.leb())
                continue
            if flags == 2:
                r.leb()  # the memory's index
            elif flags != 0:
                raise _wasmbin.WasmFormatError(f"unknown data segment flags {flags}")
            _wasmbin._skip_const_expr(r, "a data segment's offset")
            n = r.leb()
            r.skip(n)
            total += n + 1
        total += 1
    return total
