"""What one thread is running: the native stack its plugin calls may still use, and their deadlines.

wasmtime bounds a store's wasm stack (``max_stack``) from the store's first entry. A host function
that calls another plugin enters *another* store, which gets a full ``max_stack`` of its own on
top of the first: without a count per thread, nesting enough plugins (or running one on a thread
smaller than ``max_stack``) runs off the end of the thread's stack and kills the process.

So each thread has a :class:`ThreadRoom`: the bytes of stack its plugin calls may still take and
how many more calls may nest, packed into one int so that the per-call check is one attribute
read, one subtraction and one test (``CallPath`` inlines it on its short paths):

    room = (bytes left) * 16 + (levels left)        levels left <= NESTING_CAP = 8
    cost = (max_stack + LEVEL_RESERVE) * 16 + 1     per call

``left = room - cost`` is refused when ``left < 0`` (not enough bytes, or no level and no byte to
spare) or ``left & 8`` (no level left: the borrow sets the low nibble to 15). The short paths
test the equivalent ``room < cost or not room & 15``, which makes no new int object. Only a
call that can nest (its plugin imports host functions) stores ``left`` for the calls inside it,
and puts ``room`` back when it ends: calls on one thread nest strictly.

The second half is for waits: a call that waits for a plugin (its lock) or a PluginPool (a free
instance) busy in another thread waits no longer than its own deadline and those of the calls it
is nested in (:func:`wait_deadline`), and a wait that could never end (every thread it depends on
waits, in turn, for what this one holds) is refused at once (:func:`start_wait`), so plugins and
pools that call each other from several threads end with typed errors instead of a deadlock.
"""

from __future__ import annotations

import ctypes
import functools
import operator
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from ._errors import PluginCallError

T = TypeVar("T")

__all__ = [
    "BASE_RESERVE",
    "LEVEL_RESERVE",
    "NESTING_CAP",
    "Taker",
    "ThreadRoom",
    "Units",
    "bounded_wait",
    "call_cost",
    "deadlock_error",
    "describe",
    "end_wait",
    "inside_call",
    "is_lost",
    "register",
    "room_left",
    "seconds_until",
    "start_wait",
    "tls",
    "thread_room",
    "thread_stack_size",
    "track",
    "wait_deadline",
    "wait_for",
]


class Taker:
    """Takes a lock with no room for an asynchronous exception between taking it and knowing.

    CPython runs pending signal handlers as a call returns: a handler that raises (the default
    SIGINT handler's KeyboardInterrupt, a SIGALRM timeout's, a SIGTERM handler's SystemExit)
    raised right after ``lock.acquire(...)`` took a plugin's lock, before the ``try`` that
    releases it, and the lock stayed taken for good: every later call of the plugin waited its
    whole timeout (or for ever), and ``close()`` for ever (attack9). An attribute read runs no
    handler, and neither does this property's getter (C code, no Python frame): ``taken`` is
    ``take()``'s result (``lock.acquire`` with its arguments bound), and the code after the
    read, up to the ``try`` that releases the lock, must make no call: CPython 3.11 and later
    run handlers only at calls, function starts and backward jumps (tests/test_attack9_signals.py).
    CPython 3.10 (end of life since October 2026) runs them after most instructions, this
    read's included: there the window is narrower, not closed.
    """

    __slots__ = ("take",)

    taken = property(operator.methodcaller("take"))

    def __init__(self, take: Callable[[], object]) -> None:
        self.take = take


NESTING_CAP = 8
# Stack kept for what runs between two nested plugins (wasmtime's trampolines, cffi, the
# interpreter's C frames, plugsafe's own call path and the app's host function).
LEVEL_RESERVE = 64 * 1024
# Stack kept for the thread's own frames below its first plugin call.
BASE_RESERVE = 192 * 1024
_DEFAULT_STACK = 8 * 1024 * 1024

# ``tls.room`` is the thread's ThreadRoom once it made a plugin call (read inline by the call
# path; thread_room() makes it).
tls = threading.local()


class ThreadRoom:
    """One thread's packed room (see the module docstring)."""

    # ``call``: the innermost plugin call running on this thread whose plugin imports host
    # functions (a ``_callpath.CallPath``), for ``plugsafe.current_call()``; weakly referable:
    # per-thread ``last_call`` records are keyed by it.
    __slots__ = ("__weakref__", "call", "room", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.room = (max(size - BASE_RESERVE, 0) << 4) | NESTING_CAP
        self.call: object = None


def inside_call() -> bool:
    """Whether this thread is inside a plugin call that can run host functions (so it may hold
    plugin locks or pool instances another thread's call waits for)."""
    th: ThreadRoom | None = getattr(tls, "room", None)
    return th is not None and (th.room & 15) < NESTING_CAP


# One int object per max_stack, shared by every plugin's call path: the short paths read it on
# every call, and a shared object stays in the CPU caches when many plugins are called in turn.
_COSTS: dict[int, int] = {}


def call_cost(max_stack: int) -> int:
    """The packed cost of one call on an engine with ``max_stack``."""
    cost = _COSTS.get(max_stack)
    if cost is None:
        cost = _COSTS.setdefault(max_stack, ((max_stack + LEVEL_RESERVE) << 4) | 1)
    return cost


def room_left(room: int) -> tuple[int, int]:
    """(bytes, levels) still available in a packed ``room``."""
    return room >> 4, room & 15


def thread_room() -> ThreadRoom:
    """This thread's ThreadRoom (made on its first plugin call)."""
    try:
        t: ThreadRoom = tls.room
    except AttributeError:
        t = tls.room = ThreadRoom(thread_stack_size())
    return t


def _pthread_stack_size() -> int | None:
    """The current thread's stack size as the C library knows it (Linux, macOS), or None."""
    if sys.platform == "darwin":
        try:
            libc = ctypes.CDLL(None)
            libc.pthread_self.restype = ctypes.c_void_p
            get = libc.pthread_get_stacksize_np
            get.argtypes = [ctypes.c_void_p]
            get.restype = ctypes.c_size_t
            return int(get(libc.pthread_self())) or None
        except (OSError, AttributeError):
            return None
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        self_ = libc.pthread_self
        self_.restype = ctypes.c_ulong
        getattr_np = libc.pthread_getattr_np
        getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
        attr = ctypes.create_string_buffer(512)  # pthread_attr_t is 56-64 bytes
        if getattr_np(self_(), attr) != 0:
            return None
        try:
            addr = ctypes.c_void_p()
            size = ctypes.c_size_t()
            if libc.pthread_attr_getstack(attr, ctypes.byref(addr), ctypes.byref(size)) != 0:
                return None
            return size.value or None
        finally:
            libc.pthread_attr_destroy(attr)
    except (OSError, AttributeError):
        return None


def thread_stack_size() -> int:
    """The native stack size of the current thread, as well as it can be known.

    Linux: what ``pthread_getattr_np`` says (for the main thread, glibc derives it from
    RLIMIT_STACK); macOS: ``pthread_get_stacksize_np``. Elsewhere: the main thread's
    RLIMIT_STACK, for other threads ``threading.stack_size()`` if set, else 8 MiB.
    """
    size = _pthread_stack_size()
    if size is not None:
        return size
    if threading.current_thread() is threading.main_thread():
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
            if soft > 0 and soft != resource.RLIM_INFINITY:
                return soft
        except (ImportError, OSError, ValueError):
            pass
        return _DEFAULT_STACK
    return threading.stack_size() or _DEFAULT_STACK


# -- deadlines of the calls a thread is inside ----------------------------------------------------


if TYPE_CHECKING:  # typing only (issue 14: a Protocol class costs ~0.4 M instructions to create)

    class Active(Protocol):
        """What :func:`wait_deadline` reads of a call path (``_callpath.CallPath``)."""

        owner: int | None

        @property
        def active_deadline(self) -> float | None: ...

        def waited(self, detail: str) -> Exception:
            """The running call's DeadlineExceeded, for a wait nested in it that reached its
            deadline (``detail`` says what it waited for)."""
            ...


# Every call path whose plugin imports host functions (only those run app code mid-call): a
# plain dict of weak references, so that copying its values is atomic under the GIL.
_PATHS: dict[int, Callable[[], Active | None]] = {}


def register(path: Active) -> None:
    """Remember ``path`` (until it is garbage) for :func:`wait_deadline`."""
    key = id(path)
    _PATHS[key] = weakref.ref(path, lambda _r: _PATHS.pop(key, None))


def wait_deadline(me: int) -> tuple[float, Active] | None:
    """The earliest deadline of the calls thread ``me`` is inside, and whose it is (or None).

    Called only before a wait (a lock or a pool's free instance is taken by another thread):
    the wait must not outlast the calls it is nested in.
    """
    best: tuple[float, Active] | None = None
    for ref in list(_PATHS.values()):
        path = ref()
        if path is None or path.owner != me:
            continue
        deadline = path.active_deadline
        if deadline is not None and (best is None or deadline < best[0]):
            best = (deadline, path)
    return best


# -- waits for plugins and pools busy in other threads: refused when they can never end --------


if TYPE_CHECKING:

    class Lockable(Protocol):
        """What :func:`start_wait` reads of a call path: the thread inside its call, if any, and
        the plugin's name (for the error naming a cycle)."""

        owner: int | None
        name: str


class Units:
    """What the wait-for check knows of a :class:`~plugsafe.PluginPool`: which thread holds
    each of its instances that is checked out.

    A pool of ``size`` instances is a semaphore, not a lock: a wait for it ends as soon as
    *any* holder gives one back. The pool sets ``held[slot] = thread`` after taking an
    instance (and after its wait ended: a thread is never seen holding what it waits for) and
    removes it before giving it back, so an instance in between (just taken, or on its way
    back) is in neither ``held`` nor the pool's idle queue: ``len(held) < size`` then, and that
    reads as "one may come back" (never a false deadlock).

    In a forked child, the instances other threads held at the fork never come back (those
    threads are gone): they are counted in ``lost`` and no longer in ``size``.
    """

    __slots__ = ("__weakref__", "held", "lost", "name", "size")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.lost = 0
        # slot (the instance's index in the pool) -> thread id; plain dict stores, atomic
        # under the GIL (the pool's fast path takes no lock for them).
        self.held: dict[int, int] = {}
        _UNITS.add(self)

    def holders(self) -> list[int] | None:
        """The threads holding every instance, or None if one is free or on its way."""
        held = list(self.held.values())
        return held if len(held) >= self.size else None


# The plugin or pool each waiting thread waits for (thread id -> call path or Units), and the
# lock that makes "look for a deadlock, then register the wait" one step: of two threads
# closing a cycle at the same time, the second to take it sees the first one's wait.
# Re-entrant: a Python signal handler runs on the main thread between any two bytecodes, also
# while it holds this lock; one whose plugin call must wait would otherwise hang for ever. (A
# nested wait registers and ends before the outer one registers: still one wait a thread.)
_WAITING: dict[int, Lockable | Units] = {}
_waits = threading.RLock()
# Every pool's Units, for the fork handler below.
_UNITS: weakref.WeakSet[Units] = weakref.WeakSet()
# Every plugin's call path and its lock (id of the path -> (weak path, lock)), for the fork
# handler below; and, in a forked child, the paths whose lock a thread that did not survive the
# fork held: never released in this process.
_TRACKED: dict[int, tuple[Callable[[], Lockable | None], threading.Lock]] = {}
_LOST: weakref.WeakSet[Lockable] = weakref.WeakSet()


def track(path: Lockable, lock: threading.Lock) -> None:
    """Remember ``path`` and its plugin's ``lock`` (until the path is garbage), so that a
    forked child knows which plugins a thread gone at the fork was using (every plugin, with
    or without imports: made once per plugin, never per call)."""
    key = id(path)
    _TRACKED[key] = (weakref.ref(path, lambda _r: _TRACKED.pop(key, None)), lock)


def is_lost(path: Lockable) -> bool:
    """Whether ``path``'s lock was held at a fork by a thread gone in this (child) process."""
    return bool(_LOST) and path in _LOST


def _after_fork_in_child() -> None:
    # Only this thread survived the fork: the others' waits are gone, and the lock may have
    # been held by one of them (then held forever in the child).
    global _waits
    _waits = threading.RLock()
    _WAITING.clear()
    me = threading.get_ident()
    # So are the plugin locks they held (a call running, a close, a load): a wait for one
    # would last until its deadline, or for ever without one (a call of a plugin without
    # imports has no owner to look at). Such a plugin is lost here: a wait for it is refused
    # at once (start_wait: nobody can give it back), and close() does not wait for it. A lock
    # this thread holds is a call it is inside (fork from a host function): it ends normally.
    for ref, lock in list(_TRACKED.values()):
        path = ref()
        if path is None:
            continue
        owner = path.owner
        if owner == me:
            continue
        if owner is not None or not lock.acquire(False):
            _LOST.add(path)
        else:
            lock.release()
    # So are the pool instances they held: never given back here. A pool all of whose
    # instances are lost would otherwise be waited for forever (or until a deadline); now
    # such a wait is refused at once (start_wait: no holder can go on).
    for units in list(_UNITS):
        for slot, holder in list(units.held.items()):
            if holder != me:
                del units.held[slot]
                units.lost += 1
                units.size -= 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _holders(node: Lockable | Units) -> list[int] | None:
    """The threads that can end a wait for ``node`` (any one of them going on is enough),
    or None if it may end without any of them (a free pool instance, a lock between calls).

    A plugin's lock has an owner while a call of a plugin with imports runs; a plugin without
    imports has none, but its call cannot wait for anything.
    """
    if isinstance(node, Units):
        return node.holders()
    if _LOST and node in _LOST:
        return []  # held by a thread gone at a fork: nobody can give it back
    owner = node.owner
    return None if owner is None else [owner]


def start_wait(me: int, node: Lockable | Units) -> list[Lockable | Units] | None:
    """Register that thread ``me`` is about to wait for ``node`` (a plugin's lock, a pool's
    free instance), unless that wait can never end: then register nothing and return what
    the threads involved wait for (``node`` first).

    Each thread waits for at most one thing, and a wait ends when one of the thing's holders
    goes on (:func:`_holders`). From ``node``, follow holder -> what that holder waits for ->
    its holders ...: if every holder reached is ``me`` or itself waiting, and every one of
    their waits leads only back into that set, none of those threads can ever go on (each
    needs another of them to give something back): a certain deadlock. If any thread reached
    is running (not waiting), it may give back what it holds and the wait can end: it is
    allowed. For plugins alone (one holder each) this is the cycle owner -> plugin it waits
    for -> owner ... back to ``me``; a pool needs *all* its holders stuck. Every wait is
    registered before it starts, under one lock, so the thread that closes a deadlock always
    sees the others' waits.
    """
    with _waits:
        seen = {id(node)}
        found: list[Lockable | Units] = [node]
        todo = [node]
        while todo:
            holders = _holders(todo.pop())
            if holders is None:
                break
            stuck = True
            for owner in holders:
                if owner == me:
                    continue
                waited = _WAITING.get(owner)
                if waited is None:
                    stuck = False  # a running thread: it may give it back
                    break
                if id(waited) not in seen:
                    seen.add(id(waited))
                    found.append(waited)
                    todo.append(waited)
            if not stuck:
                break
        else:
            return found
        _WAITING[me] = node
    return None


def end_wait(me: int) -> None:
    """Thread ``me`` stopped waiting (it has the lock or instance, or gave up)."""
    with _waits:
        _WAITING.pop(me, None)


def describe(node: Lockable | Units) -> str:
    """``'name'`` for a plugin, ``pool 'name'`` for a pool, for messages."""
    return f"pool {node.name!r}" if isinstance(node, Units) else repr(node.name)


def deadlock_error(node: Lockable | Units, found: list[Lockable | Units]) -> PluginCallError:
    """The PluginCallError refusing a wait for ``node`` that could never end."""
    names = " -> ".join(describe(n) for n in found)
    if isinstance(node, Units):
        lost = (
            f"; {node.lost} of its instances were in use by threads that did not survive a "
            "fork, and never come back in this process"
            if node.lost
            else ""
        )
        return PluginCallError(
            f"every instance of pool {node.name!r} is held by this thread or by threads that "
            f"wait (through host functions) for what this thread holds; waiting for a free "
            f"instance would deadlock, so the call is refused (plugins and pools waited for: "
            f"{names}{lost})"
        )
    gone = [n for n in found if not isinstance(n, Units) and is_lost(n)]
    if gone:
        return PluginCallError(
            f"plugin {gone[0].name!r} was in use by a thread that did not survive a fork, and "
            "never comes back in this process; waiting for it would never end, so the call "
            f"is refused (plugins waited for, in turn: {names})"
        )
    return PluginCallError(
        f"plugin {node.name!r} is busy in another thread that waits (through host "
        f"functions) for a plugin this thread is using; waiting would deadlock, so the "
        f"call is refused (plugins waited for, in turn: {names})"
    )


def seconds_until(deadline: float) -> float:
    """Seconds from now until ``deadline`` (``time.perf_counter``), at least 0."""
    return max(deadline - time.perf_counter(), 0.0)


if TYPE_CHECKING:

    class Waiter(Active, Lockable, Protocol):
        """A plugin's call path as :func:`wait_for` sees it (``CallPath``, a component's path)."""


def bounded_wait(
    me: int,
    node: Lockable | Units,
    end: float | None,
    take: Callable[[float | None], T | None],
    own_deadline: Callable[[], Exception],
) -> T:
    """Wait with ``take`` for ``node`` (a plugin's lock, a pool's free instance) for thread
    ``me``, whose call must end by ``end`` (or None); the one way a call waits for something
    busy in another thread.

    ``take(timeout)`` blocks up to ``timeout`` seconds (None: for ever) and returns what it
    took, or None if the time ran out. The wait is bounded by ``end`` and by the deadlines of
    the calls this thread is inside, and refused if it could never end (:func:`start_wait`):
    without the bound and the check, two plugins (or pools) whose host functions call each
    other from two threads would each hold their own and wait for the other's forever. A
    deadlock raises PluginCallError at once (naming what is waited for); a wait that reaches
    ``end`` raises ``own_deadline()``, one that reaches an enclosing call's deadline that
    call's DeadlineExceeded (:meth:`Active.waited`).
    """
    bound: tuple[float, Active | None] | None = wait_deadline(me)
    if end is not None and (bound is None or end < bound[0]):
        bound = (end, None)
    found = start_wait(me, node)
    if found is not None:
        raise deadlock_error(node, found)
    try:
        got = take(None if bound is None else seconds_until(bound[0]))
    finally:
        end_wait(me)
    if got is not None:
        return got
    assert bound is not None
    outer = bound[1]
    if outer is None:
        raise own_deadline()
    what = (
        f"a free instance of pool {node.name!r}, all busy"
        if isinstance(node, Units)
        else f"plugin {node.name!r}, busy in another thread"
    )
    raise outer.waited(f" (waiting for {what})")


class Cancellable(Protocol):
    """An asynchronous call's token (``_callpath.CallToken``): whether its task was cancelled."""

    cancelled: bool


# How often a cancellable (asynchronous) call waiting for a plugin looks at its token.
CANCEL_POLL = 0.05


def wait_for(
    lock: threading.Lock,
    me: int,
    path: Waiter,
    end: float | None,
    own_deadline: Callable[[], Exception],
    token: Cancellable | None = None,
) -> None:
    """Take ``lock``, the lock of ``path``'s plugin, for thread ``me`` whose call must end by
    ``end`` (or None): :func:`bounded_wait` for a plugin busy in another thread. An
    asynchronous call's wait (``token``) also ends, with PluginCallError, once its task is
    cancelled: its worker thread (a Plugin has one) was held until the plugin was free, up to a
    whole timeout (attack12; a PluginPool's wait does the same).

    If it raises, the lock is not held (see Taker: an exception a signal handler raised as the
    wait ended, or in what follows it here, gives back a lock the wait took)."""
    if Taker(functools.partial(lock.acquire, False)).taken:
        return
    held = [False]

    def take(timeout: float | None) -> bool | None:
        if token is not None:
            return take_polled(timeout, token)
        wait = functools.partial(lock.acquire, True, -1 if timeout is None else timeout)
        if Taker(wait).taken:
            held[0] = True  # (no call since the lock was taken: see Taker)
            return True
        return None

    def take_polled(timeout: float | None, token: Cancellable) -> bool | None:
        # Short waits, looking at the token between them (a lock cannot be woken for one
        # waiter); only a cancellable call that found the plugin busy pays this.
        stop = None if timeout is None else time.perf_counter() + timeout
        while True:
            step = CANCEL_POLL if stop is None else min(CANCEL_POLL, stop - time.perf_counter())
            if Taker(functools.partial(lock.acquire, True, max(step, 0.0))).taken:
                held[0] = True
                return True
            if token.cancelled:
                raise PluginCallError(
                    f"plugin {path.name!r}: the call was cancelled while it waited for the "
                    "plugin, busy in another thread"
                )
            if stop is not None and time.perf_counter() >= stop:
                return None

    try:
        bounded_wait(me, path, end, take, own_deadline)
    except BaseException:
        if held[0]:
            lock.release()
        raise
