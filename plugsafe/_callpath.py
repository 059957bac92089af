"""How one call into a plugin runs: its state, the lock, the short paths, the ABI round trip.

A :class:`CallPath` belongs to one Plugin and serializes its calls. ``call`` and ``invoke`` take
a short path when the lock is free, the instance is live and the function was already checked
(the per-call cost users see, docs/performance.md); anything else goes through ``guarded``.
Every call, short or not, ends in the one :meth:`CallPath.settle`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import operator
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    NoReturn,
    Protocol,
    SupportsFloat,
    SupportsIndex,
    TypeVar,
)

if TYPE_CHECKING:  # logging is imported when a plugin first logs (_log, issue 14)
    import logging
    from types import FrameType

from . import _abi, _nesting
from . import _runtime as rt
from ._errors import (
    AbiError,
    Diagnosis,
    ExportNotFoundError,
    GuestError,
    LimitExceeded,
    Phase,
    PluginCallError,
    PluginClosedError,
    PluginLoadError,
    PlugsafeError,
    SignatureError,
    StackLimitExceeded,
    fmt_bytes,
    int_text,
    raise_clean,
    text_of,
    type_name,
)
from ._policy import Policy
from ._runtime import _ticker
from ._runtime._daemon import Daemon
from ._runtime._instance import InputBufferError
from ._types import CallStats, ExportInfo

__all__ = [
    "PYTHON_FAILED",
    "PYTHON_FAILED_MESSAGE",
    "CallPath",
    "CallState",
    "CallToken",
]

T = TypeVar("T")

_I32 = (-(2**31), 2**32 - 1)
_I64 = (-(2**63), 2**64 - 1)
_F32_MAX = 3.4028234663852886e38
# The ABI's result word, split as _abi.decode_result does (round_trip, inline).
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_LENGTH_MASK = 0x7FFF_FFFF
_ERROR_BIT = 0x8000_0000
_perf_counter = time.perf_counter
_get_ident = threading.get_ident
_thread_room = _nesting.thread_room
_tls = _nesting.tls
# What CallPath._fn / _abi_fn hold while the short paths aim at no function: no caller's name.
_UNAIMED: object = object()
_NO_ARMING: list[float] = []
_NO_VIEW = memoryview(b"")
# ABI functions looked up and checked at load (CallPath.prepare_abi): each costs the load ~10 µs.
_PREPARED_AT_LOAD = 8

# What Python itself raises when it fails around a call into wasm (the recursion limit reached
# in a host callback or in converting a trap; ctypes wraps the RecursionError of an argument
# conversion): a guest can drive this by nesting host calls through its allocator, so the call
# raises a documented error. Built from constants: this runs near the recursion limit.
PYTHON_FAILED = (RecursionError, MemoryError, ctypes.ArgumentError)
PYTHON_FAILED_MESSAGE = (
    "the call failed in Python itself, around the plugin's wasm (the recursion limit, or out "
    "of memory); its instance was discarded"
)
# The same failure as a call ended (recording its stats): its lock is released all the same
# (attack6).
PYTHON_FAILED_END = (
    "the call failed in Python itself as it ended (the recursion limit, or out of memory); "
    "its stats were not recorded"
)


class CallState:
    """What is happening in the plugin's current call; host callbacks write here.

    One per plugin: its calls never overlap. The counters and ``error`` are zero/None whenever
    no call is running: :meth:`CallPath.settle` resets the counters of a call that made host
    calls, and whoever reads ``error`` (:meth:`take_error`) clears it.
    """

    __slots__ = (
        "call_start",
        "context",
        "error",
        "function",
        "host_calls",
        "limit",
        "log_count",
        "log_dropped",
        "making",
        "path",
        "phase",
        "quota",
        "start",
        "timeout",
    )

    def __init__(
        self,
        timeout: float | None,
        max_host_calls: int | None = None,
        path: Callable[[], CallPath | None] | None = None,
    ) -> None:
        self.timeout = timeout
        # The host calls one call may make (Policy.max_host_calls; None: no practical limit).
        self.quota = 2**64 if max_host_calls is None else max_host_calls
        # A host call numbered over ``limit`` takes HostCalls.over: the quota, except while a
        # short path's call that has made no host call yet runs (-1: its first host call does
        # the bookkeeping the short path left to it, CallPath.host_calls_begin).
        self.limit = self.quota
        # The call path this state is of (weakly: the path owns it), for that bookkeeping.
        self.path: Callable[[], CallPath | None] = _no_path if path is None else path
        self.start = _perf_counter()
        # The first failure of this call's host functions: the error to raise (or a nested
        # WasmFailure to translate), never what wasmtime-py's module-global says.
        self.error: BaseException | None = None
        self.function = ""
        # The running call's ``context=`` (plugsafe.current_call()); None whenever no call runs.
        # Set only by calls that pass one, to plugins with imports (nothing else can read it).
        self.context: object = None
        # "load" while the plugin is being loaded (instantiation, start function, _initialize,
        # the ABI check), else "call": what every limit error's ``phase`` says (the one
        # translation, Diagnosis.translate, reads it here). Idle state: "call".
        self.phase: Phase = "call"
        self.host_calls = 0
        self.log_count = 0
        self.log_dropped = 0
        # The start of the call an instantiation is made for (CallPath.guarded), else None:
        # the start function then runs on what is left of that call's timeout (see begin).
        self.call_start: float | None = None
        # While an instance is made for an asynchronous call (CallPath.guarded): what marks
        # that call running on the instance as soon as its store exists (CallToken.making),
        # so that a cancel stops its start function or _initialize too; else None.
        self.making: Callable[[rt.Instance], None] | None = None

    @property
    def deadline(self) -> float | None:
        """When the call runs out of time (``time.perf_counter`` seconds), or None."""
        return None if self.timeout is None else self.start + self.timeout

    def begin(self, function: str, phase: Phase = "call") -> None:
        """Start timing ``function`` in ``phase`` (instantiation, the ABI check, ``run``).

        The short paths set ``function`` and ``start`` themselves; their phase is the idle
        state's "call".
        """
        self.function = function
        self.phase = phase
        call_start = self.call_start
        self.start = _perf_counter() if call_start is None else call_start

    @property
    def call_deadline(self) -> float | None:
        """The deadline of the call an instantiation is made for, or None (not for a call, or
        no timeout): the instance's deadline until the call begins (``Instance(until=)``)."""
        return None if self.call_start is None else self.deadline

    def take_error(self) -> BaseException | None:
        """The recorded host failure, cleared."""
        err, self.error = self.error, None
        return err

    def first_host_call(self) -> None:
        """A host call found ``limit`` negative: do what the short path left to it."""
        path = self.path()
        if path is not None:
            path.host_calls_begin()
        self.limit = self.quota

    def reset(self) -> None:
        """Back to the idle state (after work that is not a call: instantiation, the ABI check)."""
        self.host_calls = self.log_count = self.log_dropped = 0
        self.error = None
        self.phase = "call"


class Running(Protocol):
    """What a call runs on, as CallToken sees it: an ``rt.Instance``, or a component's (both
    ``rt.Interruptible``)."""

    @property
    def ticker(self) -> _ticker.Ticker | None: ...

    def interrupt_stands(self) -> bool: ...


class Stoppable(Protocol):
    """What interrupts a call, as CallToken sees it: a CallPath, or a component's own."""

    @property
    def name(self) -> str: ...

    @property
    def has_imports(self) -> bool:
        """Whether the call may call host functions (and through them other plugins)."""
        ...

    def interrupt(self, inst: Any) -> None: ...


class CallToken:
    """One asynchronous call, so that cancelling the task awaiting it can stop it.

    The call marks itself running (``begin``) and done (``end``) while it holds its plugin's
    lock: whoever cancels it under the token's lock then interrupts exactly this call, never a
    later one on the same instance. ``path`` is the plugin's CallPath (or a ComponentPlugin's
    equivalent: anything Stoppable), ``inst`` the instance the call runs on.
    """

    __slots__ = ("cancelled", "inst", "lock", "path", "thread")

    def __init__(self) -> None:
        # The thread the call runs on (set with ``path``): see _interrupt.
        self.thread = 0
        self.lock = threading.Lock()
        self.cancelled = False
        self.path: Stoppable | None = None
        self.inst: Running | None = None

    def begin(self, path: Stoppable, inst: Running) -> None:
        """The call starts on ``inst`` (lock held); PluginCallError if it was cancelled."""
        with self.lock:
            if self.cancelled:
                raise PluginCallError(f"plugin {path.name!r}: the call was cancelled")
            self.path, self.inst = path, inst
            self.thread = _get_ident()

    def _interrupt(self, path: Stoppable, inst: Running) -> None:
        """(``lock`` held, the call running.) Interrupt the call, and the calls of other
        plugins its host functions make on its thread: those ran to their own timeouts before
        it could stop (attack12). Every guard on its thread traps until ``end`` (see
        _ticker.CANCELLED), and every other engine's epoch is moved past their deadlines; the
        guards of calls on other threads find theirs early and go on."""
        if path.has_imports:
            _ticker.CANCELLED[self.thread] = self
            _ticker.bump_armed(_ticker.MAX_DEADLINE_TICKS + 2, inst.ticker)
        path.interrupt(inst)

    def making(self, path: Stoppable, inst: Running) -> None:
        """An instance is being made for the call (``inst``: its store exists, nothing of it
        ran yet): a cancel from now on interrupts its start function or ``_initialize``, which
        run inside the call, on its timeout (attack12: they ran to the whole timeout). Never
        raises (wasm runs next): a call cancelled already is interrupted at once, and
        ``begin`` refuses it afterwards. The caller ends the token (``end``) whatever
        happens."""
        with self.lock:
            self.path, self.inst = path, inst
            self.thread = _get_ident()
            if not self.cancelled:
                return
            self._interrupt(path, inst)
        CallToken._insist(self)

    def end(self) -> None:
        """The call is over (still under its plugin's lock)."""
        with self.lock:
            self.path = self.inst = None
            cancelled = _ticker.CANCELLED
            if cancelled and cancelled.get(self.thread) is self:
                del cancelled[self.thread]

    def cancel(self) -> None:
        """The awaiting task was cancelled: do not start, or stop the call now."""
        with self.lock:
            self.cancelled = True
            if self.path is None or self.inst is None:
                return
            self._interrupt(self.path, self.inst)
        # The call marks itself running before it arms its deadline, and arming overwrites an
        # interrupt that came first: such a call ran its whole timeout (attack9). So it is
        # interrupted again, a little later each time, until it ends (never a later call:
        # end() runs under the token's lock). One shared thread does that for every cancelled
        # running call (tidy10: a thread each made a storm of cancelled tasks a storm of
        # threads); each call ends within milliseconds of an interrupt after its arming.
        CallToken._insist(self)

    # The re-sender: the tokens to interrupt again, each with [when next, back-off, when an
    # interrupt that stands is next sent again, its back-off] (this process's: a forked child
    # starts afresh), and its thread (_daemon.Daemon: re-entrant lock, fork safety). The tokens
    # are read and changed under its lock.
    _resend: ClassVar[dict[CallToken, list[float]]] = {}
    _resender: ClassVar[Daemon]
    _RESEND_LINGER = 0.5  # seconds the re-sender waits, idle, for another cancel
    # An interrupt that stands is sent again this long after the last (doubling to
    # _STANDING_MAX): its increments may have gone to waste (see _resend_due).
    _STANDING_FIRST = 0.1
    _STANDING_MAX = 1.0

    @staticmethod
    def _insist(token: CallToken) -> None:
        """Have the shared re-sender interrupt ``token``'s call until it ends (a thread started
        if none runs; it stops when no cancelled call is left running)."""

        def add() -> None:
            now = time.monotonic()
            first = CallToken._STANDING_FIRST
            CallToken._resend[token] = [now + 0.001, 0.001, now + first, first]

        CallToken._resender.request(add)

    @staticmethod
    def _forget_resends() -> None:
        CallToken._resend = {}

    @staticmethod
    def _resend_due() -> None:
        """The shared re-sender's thread: interrupt each due token's call again, doubling its
        delay (1 ms to 50 ms; an interrupt that stands: 0.1 s to 1 s), until every call in the
        set has ended; then stop."""
        cls = CallToken
        resender = cls._resender
        wake, pending = resender.lock(), cls._resend  # this process's (a fork replaces them)
        while True:
            with wake:
                now = time.monotonic()
                if not pending:
                    # A storm's cancels reach their tokens one event-loop turn apart, often
                    # further apart than a call takes to stop: wait a little for the next
                    # before stopping, or a storm would start a thread for nearly each.
                    wake.wait(cls._RESEND_LINGER)
                    if not pending:
                        resender.stopping()
                        return
                    continue
                due = [t for t, entry in pending.items() if entry[0] <= now]
                if not due:
                    wake.wait(min(entry[0] for entry in pending.values()) - now)
                    continue
            for token in due:
                standing_due = False
                with wake:
                    entry = pending.get(token)
                    if entry is not None:
                        standing_due = entry[2] <= now
                sent = False
                with token.lock:
                    path, inst = token.path, token.inst
                    running = path is not None and inst is not None
                    if (
                        path is not None
                        and inst is not None
                        and (standing_due or not inst.interrupt_stands())
                    ):
                        # An interrupt an arming overwrote is sent again at once. One that
                        # stands is too, but seldom: its increments are lost when the call set
                        # its epoch deadline (an arming's, or the guard's extension) while they
                        # were made, relative to an epoch that already counted some (the GIL
                        # can pass to the cancelling thread between the two): the call then
                        # ran up to MAX_DEADLINE_TICKS (2 s) after its cancel (CI, Python
                        # 3.10). Seldom, because each still moves the engine's epoch up to
                        # MAX_DEADLINE_TICKS (~1 ms of CPU, one for all re-sends at once), and
                        # a cancelled call can wait in a host function for long: sent every
                        # 50 ms, 200 such calls kept the machine's two cores busy
                        # (tests/test_tidy10.py's storm, when each moved a whole timeout).
                        token._interrupt(path, inst)
                        sent = True
                with wake:
                    entry = pending.get(token)
                    if entry is None:
                        continue
                    if running:
                        now = time.monotonic()
                        entry[1] = min(entry[1] * 2, 0.05)
                        entry[0] = now + entry[1]
                        if sent:
                            if not standing_due:
                                entry[3] = cls._STANDING_FIRST  # an arming came: count afresh
                            else:
                                entry[3] = min(entry[3] * 2, cls._STANDING_MAX)
                            entry[2] = now + entry[3]
                    else:
                        del pending[token]


CallToken._resender = Daemon("plugsafe-cancel", CallToken._resend_due, CallToken._forget_resends)


# A CallPath's HostRecord until its Plugin sets its Linker's (before anything can run): one for
# all (a HostRecord per CallPath, made to be replaced at once, cost every load ~2 us).
_NO_RECORD = rt.HostRecord(lambda _trap: None)


class CallPath:
    """The call machinery of one plugin: lock and owner, current instance, state and stats.

    ``exports`` are the module's; ``new_instance(phase)`` makes a fresh instance (the Plugin's
    lifecycle); ``on_closed()`` runs once the plugin is closed.

    Slotted, and the short paths :meth:`call` and :meth:`invoke` are its methods (the Plugin
    sets them, bound, on its instance): a call reads what it needs from this one object, with
    no closure cells and no per-function lookups (issue 14: with 1,000 plugins called in turn,
    every further object a call touches is a cache miss).
    """

    # The slots the short paths read on every call start with "_": CPython lays slots out in
    # sorted order, so those come first, together, in a few cache lines (issue 14: calling
    # 1,000 plugins in turn, each line a call touches is a cache miss). ``_cost``, ``_lock``,
    # ``_imports``, ``_lean`` and ``_max_input`` are copies of ``cost``, ``lock``,
    # ``has_imports``, ``lean`` and ``max_input`` (constants) for that reason.
    # A __dict__ too, for attributes code off the per-call path adds (kept out of the hot
    # lines: the dict is touched only by what reads them).
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_abi_fn",
        "_abi_ref",
        "_arming",
        "_cost",
        "_ctx",
        "_failure",
        "_fn",
        "_fuel",
        "_horizon",
        "_imports",
        "_inst",
        "_last",
        "_last_th",
        "_lean",
        "_lock",
        "_many",
        "_max_input",
        "_once",
        "_period",
        "_pn",
        "_ps",
        "_put",
        "_pv",
        "_raw",
        "_ref",
        "_rv",
        "_set_at",
        "_set_fuel",
        "_ticker",
        "_try",
        "_tw",
        "abi",
        "close_pending",
        "closed",
        "cost",
        "diagnosis",
        "exports",
        "fresh",
        "fuel",
        "has_imports",
        "host_record",
        "lean",
        "linker",
        "lock",
        "logger",
        "max_input",
        "max_output",
        "max_stack",
        "name",
        "new_instance",
        "on_closed",
        "others",
        "outer",
        "owner",
        "plugin",
        "policy",
        "state",
        "unsent",
    )

    # ``self._taken`` takes the plugin's lock if it is free (``_try`` is its ``acquire``):
    # ``lock.acquire(False)`` as an attribute read, so that no exception a signal handler
    # raises can fall between taking the lock and the ``try`` that gives it back (see
    # _nesting.Taker; attack9: a KeyboardInterrupt there left the plugin locked for good).
    _try: Callable[[bool], bool]
    _taken = property(operator.methodcaller("_try", False))
    # What the short paths aim at (see _aim): set together, dropped with the instance.
    _fn: object
    _ref: rt.FuncRef | None
    # How the arguments are packed: ``_pn`` of them (0-3) by item assignment into the typed
    # view ``_pv`` (``_ps`` items per slot), or (``_pn`` -1) by ``_put(*args)`` (rt.FuncRef).
    _put: Callable[..., None]
    _pv: Any  # a typed memoryview (Any: its items' type is the signature's)
    _ps: int
    _pn: int
    # The C call with its arguments bound (FuncRef.call), and the instance's context.
    _raw: Callable[[], object]
    _ctx: Any  # the backend's Ctx
    # The results: a single one is ``_rv[0]`` (``_rv`` None: not one result, then ``_many()``
    # unpacks them as a tuple); ``_tw[0]`` is the trap pointer (null between calls).
    _rv: memoryview | None
    _tw: memoryview
    _many: Callable[[], tuple[Any, ...]]
    _ticker: rt.Ticker | None
    _arming: list[float]
    # When the call path last set the instance's epoch deadline itself, and how long such a
    # deadline stays far enough ahead (see invoke: re-arming).
    _set_at: float
    _horizon: float
    _period: float
    _fuel: int | None
    _set_fuel: Callable[[Any, int], None]
    _failure: Callable[[object, int], rt.WasmFailure]
    _abi_fn: object
    _abi_ref: rt.FuncRef | None

    def __init__(
        self,
        *,
        name: str,
        policy: Policy,
        diagnosis: Diagnosis,
        logger: logging.Logger,
        has_imports: bool,
        exports: Mapping[str, ExportInfo],
        new_instance: Callable[[Phase], rt.Instance],
        on_closed: Callable[[], None],
        max_stack: int = 512 * 1024,
    ) -> None:
        self.name = name
        self.exports = exports
        self.policy = policy
        self.diagnosis = diagnosis
        self.logger = logger
        self.new_instance = new_instance
        self.on_closed = on_closed
        self.lock = self._lock = threading.Lock()
        self._try = self._lock.acquire
        # The thread inside a call of a plugin with imports: a host function calling back into
        # its own plugin is refused rather than deadlocked.
        self.owner: int | None = None
        self.closed = False
        self.close_pending = False
        # A BaseException that is not an Exception (KeyboardInterrupt) raised while invoke()'s
        # short path packed the arguments, until its handler has seen it: no wasm ran, so the
        # instance stays (see invoke).
        self.unsent: BaseException | None = None
        # The current instance (``instance``: setting it forgets the aimed functions below).
        self._inst: rt.Instance | None = None
        self._forget()
        self.state = CallState(policy.timeout, policy.max_host_calls, weakref.ref(self))
        # Set once the plugin passed the ABI check at load.
        self.abi = False
        # Set with it if the plugin exports plugsafe_input_buffer with its type (prepare_abi).
        self.input_buffer = False
        # With fresh_instance, once the ABI check passed: the module's exports of the ABI's
        # type, called on a new instance without FuncRefs (see call_abi); empty until then.
        self._once: frozenset[str] = frozenset()
        # Stats of the last call as a plain tuple; CallStats is built only when asked for.
        # The memory size is read when asked for: memory changes only during calls, and the
        # instance is kept only while it is the current one (a discarded one is measured now).
        # Per thread (Plugin.last_call): ``last_th`` is the ThreadRoom of the thread whose
        # record ``last`` is (free in the short paths); when a call from another thread ends,
        # the record moves to ``others`` (see keep), which forgets a thread once its ThreadRoom
        # is gone.
        self._last: Last = _NO_LAST
        self._last_th: _nesting.ThreadRoom | None = None
        self.others: weakref.WeakKeyDictionary[_nesting.ThreadRoom, Last] = (
            weakref.WeakKeyDictionary()
        )
        # The Plugin (weakly: it owns this path), for plugsafe.current_call(); set by the Plugin.
        self.plugin: Callable[[], object | None] = _no_plugin
        # While a call of a plugin with imports runs: the ThreadRoom.call it replaced (calls
        # on a thread nest strictly, and a plugin's own calls never overlap).
        self.outer: object = None
        # Plugins without imports run no Python during a call: no owner, no state to set.
        self.has_imports = self._imports = has_imports
        self.max_input = self._max_input = policy.max_input
        self.max_output = policy.max_output
        self.fuel = policy.fuel
        self.fresh = policy.fresh_instance
        # Unmetered and reusing its instance: stats need no fuel read and no eager memory size.
        self.lean = self._lean = policy.fuel is None and not policy.fresh_instance
        # The native stack one call may use, and its packed cost in a thread's room (_nesting;
        # one int object shared by every plugin of the same max_stack).
        self.max_stack = max_stack
        self.cost = self._cost = _nesting.call_cost(max_stack)
        # The Plugin's current Linker (Plugin.memory reads through its Caller while the start
        # function runs: there is no instance yet) and its HostRecord (set with it).
        self.linker: rt.Linker | None = None
        self.host_record = _NO_RECORD
        if has_imports:
            _nesting.register(self)
        # A forked child must know whether a thread gone at the fork held the lock (_nesting).
        _nesting.track(self, self.lock)

    def __repr__(self) -> str:
        # Shown in the repr of plugin.call and plugin.invoke (this object's bound methods).
        return f"<plugsafe call path of plugin {self.name!r}>"

    # -- the current instance, and the functions the short paths aim at ----------------------

    @property
    def instance(self) -> rt.Instance | None:
        """The current instance (None: the next call makes one)."""
        return self._inst

    @instance.setter
    def instance(self, inst: rt.Instance | None) -> None:
        # Every change of instance goes through here, so the short paths' aimed functions
        # (bound to the old instance's store: calling one with another store aborts the
        # process) are never used past it. Nothing is aimed while there is no instance (aiming
        # reads the live instance's functions, and every way to None came through here): from
        # None, there is nothing to forget (a fresh_instance call sets one from None every
        # time: issue 14, goal 6).
        before = self._inst
        if before is not None:
            # The short paths' keys first, inline: if _forget() fails (Python at the recursion
            # limit), nothing aimed at the old instance is used with the new one, or with none
            # (aiming again sets everything the short paths read; attack6).
            self._fn = self._abi_fn = _UNAIMED
            self._set_at = -math.inf
        self._inst = inst
        if before is not None:
            self._forget()

    def _forget(self) -> None:
        """Drop the aimed functions (the instance changed)."""
        # A sentinel no caller passes: ``function is self._fn`` is then never true.
        self._fn = self._abi_fn = _UNAIMED
        self._ctx = self._ticker = self._fuel = None
        self._rv = None
        self._ps = 0
        self._pn = -1
        self._pv = self._tw = _NO_VIEW
        self._arming = _NO_ARMING
        self._set_at = -math.inf
        self._horizon = self._period = 0.0
        self._put = self._raw = self._set_fuel = self._failure = self._many = _unaimed
        # Last (aiming sets them first): while either is set, something may still be aimed at
        # an old instance, and settle() calls this again (see there).
        self._abi_ref = None
        self._ref = None

    def _aim(self, function: str) -> bool:
        """Make ``function`` (already checked for invoke() on the current instance) the one
        :meth:`invoke`'s short path calls directly; False if it is not such a function.

        The short path then finds everything in this object while ``function`` is the same
        string object: a call of another function, or on another instance, comes here first.
        """
        inst = self._inst
        if inst is None or self.fresh or type(function) is not str:
            # (fresh: a current instance between calls is an earlier call's that an exception
            # left behind: the general path drops it. Never aimed at, it never takes this.)
            return False  # the general path says what is wrong
        ref = inst.funcs.get(function)
        if ref is None or not ref.invoke_ok or ref.budget is None:
            return False
        put, many = ref.put, ref.get_results
        assert put is not None and many is not None
        # Aimed at nothing while the fields change, at ``function`` only once all are set: an
        # exception a signal handler raises midway (at a call below) left the old function
        # aimed with some of the new one's fields, and its next call called the new one (or
        # raised _unaimed's RuntimeError) (attack9).
        self._fn = _UNAIMED
        self._ref = ref
        self._put, self._pn, self._ps = put, ref.arity, ref.stride
        self._pv = _NO_VIEW if ref.pview is None else ref.pview
        self._rv, self._tw, self._many = ref.rview, ref.trap_word, many
        self._failure = ref.failure
        backend, self._ctx, ticker, self._arming, ticks, self._fuel = ref.budget
        self._ticker = ticker
        if ticker is not None:
            self._period = ticker.period
            # Half the deadline's ticks: a deadline set this long ago is still far ahead.
            self._horizon = ticks * ticker.period / 2
        # The C call with its arguments bound (compiled where plugsafe._speedups was built).
        self._raw = inst.fast_call(ref)
        self._set_fuel = backend.set_fuel
        self._fn = function
        return True

    def _aim_abi(self, function: str) -> rt.FuncRef | None:
        """The ABI function ``function`` of the current instance if :meth:`call`'s short path
        may call it (checked by an earlier call), remembered for the next call; else None."""
        inst = self._inst
        if inst is None or self.fresh or type(function) is not str:
            return None  # (as in _aim)
        ref = inst.funcs.get(function)
        if ref is None or not ref.abi_ok:
            return None
        if not ref.abi_seen:
            # Its first call on this instance: not aimed, so that its second one comes back
            # here. Binding the compiled call costs about what three compiled calls save, which
            # a function called once on its instance (``fresh_instance``, every plugin's first
            # call: issue 14, goals 4 and 6) would pay for nothing, as _aim's callers do.
            ref.abi_seen = True
            return ref
        # Its C call compiled from now on; the allocator's once an input goes through it on
        # a compiled call (Instance.abi_call): a guest with an input buffer may never call it.
        inst.fast_call(ref)
        # The function last, the pair never half changed (as in _aim).
        self._abi_fn = _UNAIMED
        self._abi_ref = ref
        self._abi_fn = function
        return ref

    # -- the two short paths ------------------------------------------------------------------

    # ``context`` is not keyword-only here (Plugin.call documents it so): CPython 3.11
    # specializes calls of functions without keyword-only parameters (~30 ns a call).
    def call(
        self, function: str, data: bytes | bytearray | memoryview | str = b"", context: Any = None
    ) -> bytes:
        """``Plugin.call`` (the Plugin sets it on its instance, bound: see Plugin.call).

        The common case (an uncontended lock, a live instance, a function already checked) goes
        straight to the round trip; anything else goes to :meth:`guarded`.
        """
        payload = data if type(data) is bytes else _payload(data)
        if len(payload) > self._max_input:
            raise AbiError(
                f"plugin {self.name!r}: input of {len(payload)} bytes is over the policy's "
                f"max_input of {self._max_input}"
            )
        # The thread's stack room (_nesting): refused before anything is taken. Inlined
        # (a threading.local read): this runs on every call.
        try:
            th = _tls.room
        except AttributeError:
            th = _thread_room()
        room = th.room
        # _nesting's ``left < 0 or left & 8`` for ``left = room - cost``, without making
        # ``left`` (a new int object every call): refused when fewer bytes are left than the
        # call costs, or no level (the low nibble) is.
        if room < self._cost or not room & 15:
            raise self.too_deep(th)
        lock = self._lock
        # No instance (a fresh_instance plugin between calls, or a new one needed): the general
        # path makes one; the lock is not taken here only to be given back at once (issue 14,
        # goal 6). Read unlocked: an instance made or dropped meanwhile is found by guarded().
        if self._inst is not None and self._taken:  # (_taken: see there)
            inst = self._inst
            try:
                ref = self._abi_ref if function is self._abi_fn else self._aim_abi(function)
                start = _perf_counter()
            except BaseException:
                # Python failed before the call began (the app at its recursion limit:
                # _aim_abi's frame, or on 3.10 even the clock's C call): nothing to undo but
                # the lock, which must not stay held for good (Python 3.10 scan, attack6).
                lock.release()
                raise
            if ref is not None:
                assert inst is not None
                has_imports = self._imports
                if has_imports:
                    # What host functions read of the call. The rest (the owner, the thread's
                    # room and current_call()) only host functions can see: the first host call
                    # does it (host_calls_begin), so calls that make none skip it.
                    state = self.state
                    state.function = function
                    state.start = start
                    state.limit = -1
                    if context is not None:
                        state.context = context
                try:
                    return self.round_trip(inst, ref, function, payload)
                except rt.WasmFailure as failure:
                    raise_clean(self.failed(failure, function, inst))
                except PlugsafeError:
                    raise
                except PYTHON_FAILED as exc:
                    # Python failed around the C call: plain stores only (see
                    # rt.HostRecord), then a documented error made from constants.
                    self.host_record.spent = self.host_record.leak = True
                    self.instance = None  # (a setter: a frame, after the plain stores)
                    raise PluginCallError(PYTHON_FAILED_MESSAGE) from exc
                except BaseException:
                    # An exception raised asynchronously (KeyboardInterrupt): as above,
                    # and it propagates as itself.
                    self.host_record.spent = self.host_record.leak = True
                    self.instance = None  # (a setter: a frame, after the plain stores)
                    raise
                finally:
                    try:
                        if has_imports and state.host_calls:
                            # host_calls_begin ran: undo it, and settle() the rest.
                            state.limit = state.quota
                            th.room = room
                            # (Unless Python failed before it got that far: at the
                            # recursion limit, in the first host call.)
                            if th.call is self:
                                th.call = self.outer
                            if context is not None:
                                state.context = None
                            self.settle(inst, start, function, th)
                        else:
                            if has_imports:
                                state.limit = state.quota
                                if context is not None:
                                    state.context = None
                            if self._last_th is not th:
                                self.keep(th)
                            if self._lean and inst is self._inst:
                                # settle(), its first case: provably the same (see settle); a
                                # call that made no host call set no owner.
                                self._last = (None, _perf_counter() - start, inst, 0, function)
                            else:
                                self.settle(inst, start, function, th)
                    except BaseException as exc:
                        # The end of the call failed in Python itself (settle at the
                        # recursion limit, out of memory): the plugin must not stay locked,
                        # nor owned by this thread, for ever (attack6). Plain stores and a
                        # C call only: no frame to overflow again.
                        self.owner = None
                        lock.release()
                        if isinstance(exc, Exception) and not isinstance(exc, PlugsafeError):
                            raise PluginCallError(PYTHON_FAILED_END) from exc
                        raise
                    lock.release()
            lock.release()
        if type(function) is not str:  # (see _plain)
            function = _plain(function)
        # (No ``op``: guarded calls call_abi with ``payload`` itself, a closure and a frame less
        # for every call that comes here, as every fresh_instance call does: issue 14, goal 6.)
        return self.guarded(function, None, context, None, payload)

    def invoke(
        self, function: str, *args: SupportsIndex | SupportsFloat, context: Any = None
    ) -> Any:
        """``Plugin.invoke`` (the Plugin sets it on its instance, bound: see Plugin.invoke).

        The common case (an uncontended lock, a live instance, the function of the last call,
        already checked) packs the arguments, re-arms the budget and makes the C call itself:
        one Python frame. Anything else goes to :meth:`guarded`.
        """
        try:  # as in call()
            th = _tls.room
        except AttributeError:
            th = _thread_room()
        room = th.room
        if room < self._cost or not room & 15:  # as in call()
            raise self.too_deep(th)
        lock = self._lock
        if self._taken:  # as in call()
            try:
                aimed = function is self._fn or self._aim(function)
                # One clock reading: the call's start, its stats' and its deadline's arming.
                start = _perf_counter()
            except BaseException:
                lock.release()  # as in call()
                raise
            if aimed:
                # Aimed: there is a live instance (no assert: this runs on every call).
                inst: rt.Instance = self._inst  # type: ignore[assignment]
                # Read now: a host function may close the plugin during the call, which
                # forgets the aimed function (and this with it) before the result is read.
                rv = self._rv
                has_imports = self._imports
                if has_imports:
                    # What host functions read of the call. The rest (the owner, the thread's
                    # room and current_call()) only host functions can see: the first host call
                    # does it (host_calls_begin), so calls that make none skip it.
                    state = self.state
                    state.function = function
                    state.start = start
                    state.limit = -1
                    if context is not None:
                        state.context = context
                try:
                    # The numeric invoke closure (_runtime/_funcref.invoker), inlined. Up to
                    # three arguments of one integer type (or f64) are stored by item
                    # assignment into a typed view of the slots (type and range checked as
                    # struct does: ~0.1 us less than a call of the packing partial with
                    # *args); what does not fit goes to repack, as the general path does.
                    n = self._pn
                    try:
                        if n == 2:
                            a, b = args
                            pv = self._pv
                            pv[0] = a
                            pv[self._ps] = b
                        elif n == 1:
                            (a,) = args
                            self._pv[0] = a
                        elif n == 0:
                            if args:
                                self.repack(function, args)
                        elif n == 3:
                            a, b, c = args
                            pv = self._pv
                            step = self._ps
                            pv[0] = a
                            pv[step] = b
                            pv[step + step] = c
                        else:
                            self._put(*args)
                    except Exception:
                        # Refused as given (type or range), or an argument's own conversion
                        # raised (a lying __index__ or __float__: fuzz9): converted as the
                        # general path does, which says what is wrong (SignatureError).
                        self.repack(function, args)
                    except BaseException as exc:
                        # KeyboardInterrupt, SystemExit, ... (an argument's, or a signal's)
                        # before any wasm ran: it propagates as itself and, unlike one raised
                        # later in the call, keeps the instance (the handler below reads this).
                        self.unsent = exc
                        raise
                    fuel = self._fuel
                    if fuel is not None:
                        self._set_fuel(self._ctx, fuel)
                    ticker = self._ticker
                    if ticker is not None:
                        # The ticker protocol (see _ticker.Ticker): stamp, arm if idle, and
                        # re-arm when the last arming is over a period old. Re-arming stamps
                        # the arming (what the store's guard reads); the epoch deadline itself
                        # is set again only once the one set last is no longer far ahead
                        # (_horizon): an older epoch deadline is an earlier one, which the
                        # guard extends by the wall clock (never early). With many plugins
                        # called in turn, every call found its arming a period old and paid a
                        # C call and two Python frames for it (issue 14).
                        ticker.last = start
                        if not ticker.armed:
                            ticker.arm()
                        arming = self._arming
                        if start - arming[0] > self._period:
                            arming[0] = start
                            if start - self._set_at > self._horizon:
                                self.rearm(ticker, start)
                    # FuncRef.call: compiled (plugsafe._speedups, a few hundred instructions)
                    # or cffi's ABI-mode call through a partial (about 3,000).
                    error = self._raw()
                    if error or self._tw[0]:
                        raise self._failure(error, self._tw[0])
                    # One result read from its typed view: no tuple to build and index.
                    out = rv[0] if rv is not None else self._many()
                except rt.WasmFailure as failure:
                    raise_clean(self.failed(failure, function, inst))
                except PlugsafeError:
                    raise
                except PYTHON_FAILED as exc:
                    self.host_record.spent = self.host_record.leak = True  # as in call() above
                    self.instance = None  # (a setter: a frame, after the plain stores)
                    raise PluginCallError(PYTHON_FAILED_MESSAGE) from exc
                except BaseException as exc:
                    if exc is not self.unsent:
                        self.host_record.spent = self.host_record.leak = True
                        self.instance = None  # (a setter: a frame, after the plain stores)
                    self.unsent = None
                    raise
                finally:
                    try:
                        if has_imports and state.host_calls:
                            # host_calls_begin ran: undo it, and settle() the rest.
                            state.limit = state.quota
                            th.room = room
                            # (Unless Python failed before it got that far: at the
                            # recursion limit, in the first host call.)
                            if th.call is self:
                                th.call = self.outer
                            if context is not None:
                                state.context = None
                            self.settle(inst, start, function, th)
                        else:
                            if has_imports:
                                state.limit = state.quota
                                if context is not None:
                                    state.context = None
                            if self._last_th is not th:
                                self.keep(th)
                            if self._lean and inst is self._inst:
                                # settle(), its first case: provably the same (see settle); a
                                # call that made no host call set no owner.
                                self._last = (None, _perf_counter() - start, inst, 0, function)
                            else:
                                self.settle(inst, start, function, th)
                    except BaseException as exc:
                        # The end of the call failed in Python itself (settle at the
                        # recursion limit, out of memory): the plugin must not stay locked,
                        # nor owned by this thread, for ever (attack6). Plain stores and a
                        # C call only: no frame to overflow again.
                        self.owner = None
                        lock.release()
                        if isinstance(exc, Exception) and not isinstance(exc, PlugsafeError):
                            raise PluginCallError(PYTHON_FAILED_END) from exc
                        raise
                    lock.release()
                # One result, or a tuple of several (none: an empty one, returned as None).
                return out if rv is not None or out else None
            lock.release()
        if type(function) is not str:  # (see _plain)
            function = _plain(function)
        return self.guarded(
            function, lambda inst: self.invoke_checked(inst, function, args), context
        )

    def host_calls_begin(self) -> None:
        """The first host call of a call a short path began: the bookkeeping it left.

        Only host functions (app code, on this thread, inside the call) read it: the owner
        (re-entry refused, ``with_instance`` served, the wait-for graph), the thread's room
        for calls nested in this one, and ``plugsafe.current_call()``. The short path undoes
        it as the call ends (a call's host calls on a thread nest strictly, so the thread's
        room and innermost call are what they were when the call began).
        """
        th: _nesting.ThreadRoom = _tls.room
        th.room -= self.cost
        self.outer = th.call
        th.call = self
        self.owner = _get_ident()

    def rearm(self, ticker: rt.Ticker, now: float) -> None:
        """Set the aimed instance's epoch deadline afresh at ``now`` (armed at ``now``)."""
        ref = self._ref
        assert ref is not None and ref.budget is not None
        budget = ref.budget
        self._set_at = now
        budget.backend.set_deadline(budget.ctx, ticker.deadline(now, budget.ticks))

    def repack(self, function: str, args: Sequence[object]) -> None:
        """Pack ``args`` for the aimed ``function`` once they did not fit as given: converted
        (SignatureError saying which is wrong), as the general path does."""
        ref = self._ref
        assert ref is not None and ref.put is not None
        try:
            converted = self.convert_args(ref, function, args)
        except SignatureError as exc:
            # Not "during handling of" the packer's own error; the cause (what an argument's
            # own conversion raised) stays.
            raise exc from exc.__cause__
        except Exception:
            raise
        except BaseException as exc:
            # (struct turns what a __float__ raised into its own error: the argument's
            # KeyboardInterrupt shows up only now.) No wasm ran: see invoke.
            self.unsent = exc
            raise
        try:
            ref.put(*converted)
        except (struct.error, TypeError, OverflowError):
            raise rt.ArgumentsDoNotFit(function) from None

    def call_tracked(
        self,
        function: str,
        data: bytes | bytearray | memoryview | str,
        context: object,
        token: CallToken,
        begun: float | None = None,
    ) -> bytes:
        """``call`` for an asynchronous call: the general path, marking ``token`` running.

        ``begun``: when the call began, if before now (a PluginPool's call that waited for a
        free instance): its timeout runs from then."""
        payload = data if type(data) is bytes else _payload(data)
        if len(payload) > self.max_input:
            raise AbiError(
                f"plugin {self.name!r}: input of {len(payload)} bytes is over the policy's "
                f"max_input of {self.max_input}"
            )

        if type(function) is not str:  # (see _plain)
            function = _plain(function)

        def op(inst: rt.Instance) -> bytes:
            token.begin(self, inst)
            try:
                return self.call_abi(inst, function, payload)
            finally:
                token.end()

        return self.guarded(function, op, context, begun, token=token)

    def invoke_tracked(
        self,
        function: str,
        args: Sequence[object],
        context: object,
        token: CallToken,
        begun: float | None = None,
    ) -> Any:
        """``invoke`` for an asynchronous call (as call_tracked)."""
        if type(function) is not str:  # (see _plain)
            function = _plain(function)

        def op(inst: rt.Instance) -> Any:
            token.begin(self, inst)
            try:
                return self.invoke_checked(inst, function, args)
            finally:
                token.end()

        return self.guarded(function, op, context, begun, token=token)

    def invoke_checked(self, inst: rt.Instance, function: str, args: Sequence[object]) -> Any:
        """Invoke ``function`` on ``inst``, checking it first if not yet done (general path)."""
        if type(function) is not str:
            raise self.not_a_name(function)
        ref = inst.func(function)
        if ref is None or not ref.invoke_ok:
            ref = self.check_invoke(inst, function)
        for a in args:
            if type(a) is not int and type(a) is not float:
                # An argument of another kind is converted here, not by struct (which turns
                # some of what its __index__ or __float__ raises into its own error and lets
                # the rest through: fuzz9): a SignatureError, or a KeyboardInterrupt as itself.
                try:
                    args = self.convert_args(ref, function, args)
                except Exception:
                    raise
                except BaseException as exc:
                    self.unsent = exc  # no wasm ran: guarded keeps the instance
                    raise
                break
        try:
            out = inst.invoke(ref, args)
        except rt.ArgumentsDoNotFit:
            out = inst.invoke(ref, self.convert_args(ref, function, args))
        n = len(out)
        return None if n == 0 else out[0] if n == 1 else out

    # -- the general path ---------------------------------------------------------------------

    def guarded(
        self,
        function: str,
        op: Callable[[rt.Instance], T] | None,
        context: object = None,
        begun: float | None = None,
        payload: bytes = b"",
        token: CallToken | None = None,
    ) -> T:
        """Run one call the general way: wait for the lock, make an instance if there is none.

        ``call`` and ``invoke`` come here only when their short path does not apply; ``op``
        does the lookups and checks that the short path finds already done (None: ``call_abi``
        of ``function`` with ``payload``, call()'s general path). ``context`` is
        the call's ``context=`` (what ``plugsafe.current_call()`` shows its host functions);
        ``begun`` when the call began if before now (a pool's wait for a free instance);
        ``token`` an asynchronous call's (``op`` marks it running): an instance made for the
        call marks it running while it is made (CallToken.making), and it is ended here.
        """
        # The call's timeout runs from here: it covers waiting for the lock and making an
        # instance (the start function, _initialize) as well as the call itself.
        if begun is None:
            begun = _perf_counter()
        me = _get_ident()
        if self.closed or self.owner == me:
            self.refuse()
        try:  # _thread_room(), inline (as in the short paths)
            th = _tls.room
        except AttributeError:
            th = _thread_room()
        room = th.room
        left = room - self.cost
        if left < 0 or left & 8:
            raise self.too_deep(th)
        state = self.state
        timeout = state.timeout
        end = None if timeout is None else begun + timeout
        lock = self.lock
        if not self._taken:  # (acquire's own first step, without its frames; see _taken)
            self.acquire(me, end, function, token)
        inst: rt.Instance | None = None
        try:
            if self.has_imports:
                th.room = left
                # plugsafe.current_call(), from before the instance is made (a start function
                # may call host functions): restored below.
                self.outer = th.call
                th.call = self
                state.context = context
            if self.closed:
                raise PluginClosedError(f"plugin {self.name!r} is closed")
            inst = self._inst
            if inst is not None and self.fresh:
                # An earlier call's, left current by a signal handler's exception that landed
                # in that call's end before settle() dropped it (lead13): never run a call on
                # it (nothing of one call may reach the next), and free it (with pooling, its
                # slot) now.
                self.instance = None
                inst.release()
                inst = None
            made = inst is None
            if inst is None:
                # Made within the call's deadline (limited to it: see Instance.limit_deadline).
                # (instantiate(), inline: a fresh_instance plugin comes here on every call.)
                self.owner = me
                state.call_start = begun
                if token is not None:
                    state.making = functools.partial(token.making, self)
                try:
                    inst = self.new_instance("call")
                except PYTHON_FAILED as exc:
                    self.host_record.spent = self.host_record.leak = True  # see the short paths
                    raise PluginCallError(PYTHON_FAILED_MESSAGE) from exc
                finally:
                    state.call_start = state.making = None
                    self.owner = None
                if self._inst is None:
                    # The instance setter's case from None, inline: nothing aimed to forget.
                    self._inst = inst
                else:  # (only if the start function's host calls could set one: never now)
                    self.instance = inst
            start = _perf_counter()
            if end is not None:
                if start >= end:
                    raise self.diagnosis.deadline(
                        function, "call", " (waiting for the plugin and instantiating it)"
                    )
                if not made:
                    # What is left of the call's time, not a timeout of its own from now. (An
                    # instance made just now for this call holds that very limit already:
                    # Instance(until=begun + timeout), state.call_deadline.)
                    inst.limit_deadline(end)
            if self.has_imports:
                self.owner = me
                state.function = function
                state.start = begun
            try:
                if op is None:
                    if type(function) is str and function in self._once:
                        # (call_abi's first case, inline: every fresh_instance call.)
                        return self.round_trip(inst, None, function, payload)  # type: ignore[return-value]
                    return self.call_abi(inst, function, payload)  # type: ignore[return-value]
                return op(inst)
            except rt.WasmFailure as failure:
                raise_clean(self.failed(failure, function, inst))
            except PlugsafeError:
                raise
            except PYTHON_FAILED as exc:
                self.host_record.spent = self.host_record.leak = True  # see the short paths
                self.instance = None  # (a setter: a frame, after the plain stores)
                raise PluginCallError(PYTHON_FAILED_MESSAGE) from exc
            except BaseException as exc:
                if exc is not self.unsent:  # (see invoke_checked)
                    self.host_record.spent = self.host_record.leak = True
                    self.instance = None  # (a setter: a frame, after the plain stores)
                self.unsent = None
                raise
            finally:
                try:
                    self.settle(inst, start, function, th)
                except Exception as exc:
                    # Python failed in it (the recursion limit; ctypes wraps that in an
                    # ArgumentError): a documented error, as for the call itself (attack6).
                    if isinstance(exc, PlugsafeError):
                        raise
                    raise PluginCallError(PYTHON_FAILED_END) from exc
        except PYTHON_FAILED as exc:
            # Python failed before op (the recursion limit, arming the deadline; ctypes wraps
            # it in an ArgumentError): the instance may be half armed, so it is dropped, and
            # the error is a documented one (attack6).
            if self._inst is not None:
                self.instance = None
            raise PluginCallError(PYTHON_FAILED_MESSAGE) from exc
        finally:
            th.room = room
            if self.has_imports:
                th.call = self.outer
                state.context = None
            try:
                if token is not None:
                    # Marked running while its instance was made (an instantiation that
                    # failed never reached op): ended before the lock goes, so that no
                    # interrupt of it can reach a later call (see CallToken).
                    token.end()
                if inst is not None and inst is self._inst and self.fresh:
                    # settle() did not drop it: an exception (a signal handler's) landed in
                    # it first. Dropped here, so that an idle plugin holds no instance (with
                    # pooling, no slot); if this is cut short too, the next call drops it.
                    self.instance = None
                    inst.release()
                if end is not None and inst is not None and inst is self._inst:
                    # Before the lock goes: see _ticker.limit. (An instance no longer
                    # current, released or dropped, runs no call again: a fresh_instance
                    # call's, or one a failure discarded, keeps its limit.)
                    inst.limit_deadline(None)
                if self.close_pending:
                    self.complete_close()
            finally:
                # Even if settle() or the above failed in Python itself (the recursion
                # limit): never keep the lock, nor this thread as owner (attack6).
                self.owner = None
                lock.release()

    def instantiate(self, me: int, begun: float | None = None) -> rt.Instance:
        """A new instance for calls, made with thread ``me`` as owner (lock held).

        The start function may call host functions, and they may touch the plugin: as owner,
        they are served (``with_instance``) or refused (calls), never deadlocked. ``begun``:
        the start of the call it is made for, whose timeout it runs under (else its own).
        """
        self.owner = me
        state = self.state
        state.call_start = begun
        try:
            return self.new_instance("call")
        except PYTHON_FAILED as exc:
            self.host_record.spent = self.host_record.leak = True  # see the short paths
            raise PluginCallError(PYTHON_FAILED_MESSAGE) from exc
        finally:
            state.call_start = None
            self.owner = None

    def acquire(
        self,
        me: int,
        end: float | None = None,
        function: str = "",
        token: CallToken | None = None,
    ) -> None:
        """Take the lock, for a call of ``function`` that must end by ``end`` (or None).

        The wait is :func:`_nesting.wait_for`'s: bounded by ``end`` and the deadlines of the
        calls this thread is inside, refused if it would close a wait-for cycle, and, for an
        asynchronous call (``token``), ended once it is cancelled.
        """
        lock = self.lock
        if self._taken:  # (see _taken)
            return
        if self.owner is None and _running_here(self):
            raise self.reentered()
        _nesting.wait_for(
            lock,
            me,
            self,
            end,
            lambda: self.diagnosis.deadline(
                function,
                "call",
                " (all of it spent waiting for the plugin, busy in another thread)",
            ),
            token,
        )

    @property
    def active_deadline(self) -> float | None:
        """The deadline of the call running now (read only by a thread it owns)."""
        return self.state.deadline

    def waited(self, detail: str) -> PlugsafeError:
        """The DeadlineExceeded of the running call, for a wait nested in it (a host function
        waiting for a busy plugin or pool) that reached the call's deadline."""
        return self.diagnosis.deadline(self.state.function, "call", detail)

    @contextlib.contextmanager
    def nested_load(self) -> Iterator[None]:
        """Count loading the plugin (its start function, ``_initialize``, the ABI check: wasm
        on this thread's stack) in the thread's nesting budget, as a call: a host function
        that loads plugins whose start functions load plugins ... is refused at the cap with
        StackLimitExceeded (``phase="load"``) instead of running off the thread's stack."""
        th = _thread_room()
        room = th.room
        left = room - self.cost
        if left < 0 or left & 8:
            raise self.too_deep(th, "load")
        th.room = left
        try:
            yield
        finally:
            th.room = room

    def too_deep(self, th: _nesting.ThreadRoom, phase: Phase = "call") -> StackLimitExceeded:
        """Why a call on this thread is refused: too deeply nested, or not enough stack left."""
        size, levels = _nesting.room_left(th.room)
        what = "loaded" if phase == "load" else "called"
        if levels == 0:
            return StackLimitExceeded(
                f"plugin {self.name!r} was {what} {_nesting.NESTING_CAP} plugin calls deep on "
                "one thread (host functions calling or loading plugins); plugsafe allows no "
                "deeper nesting",
                limit="nesting",
                value=_nesting.NESTING_CAP,
                phase=phase,
            )
        return StackLimitExceeded(
            f"plugin {self.name!r} may use {fmt_bytes(self.max_stack)} of stack (Host "
            f"max_stack), but this thread ({fmt_bytes(th.size)} of stack) has only "
            f"{fmt_bytes(size)} left for plugin calls; call it from a thread with a larger "
            "stack (threading.stack_size) or nest fewer plugin calls",
            limit="max_stack",
            value=self.max_stack,
            phase=phase,
        )

    def with_instance(self, op: Callable[[Any], T]) -> T:
        """Run ``op`` on the current instance under the lock (no wasm call budget).

        From one of the plugin's own host functions (this thread owns the plugin) ``op`` runs at
        once, on the instance of the running call, or while the start function runs (there is
        no instance yet) on the calling guest's :class:`~plugsafe._runtime.Caller`. Otherwise
        the lock is taken as for a call (a wait is bounded by the deadlines of the calls this
        thread is inside), and an instance made if there is none, with this thread as owner.
        """
        if self.closed:
            raise PluginClosedError(f"plugin {self.name!r} is closed")
        me = _get_ident()
        if self.owner == me:  # from one of the plugin's own host functions
            inst = self.instance
            if inst is not None:
                return op(inst)
            caller = None if self.linker is None else self.linker.caller()
            if caller is None:
                self.refuse()
            return op(caller)
        th = _thread_room()
        room = th.room
        self.acquire(me)
        try:
            if self.closed:
                raise PluginClosedError(f"plugin {self.name!r} is closed")
            inst = self.instance
            if inst is None:
                left = room - self.cost
                if left < 0 or left & 8:
                    raise self.too_deep(th)
                if self.has_imports:
                    th.room = left
                try:
                    inst = self.instance = self.instantiate(me)
                finally:
                    th.room = room
            return op(inst)
        finally:
            if self.close_pending:
                self.complete_close()
            self.lock.release()

    def reentered(self) -> PluginCallError:
        """A call from a signal handler that interrupted this plugin's call on this thread (the
        lock is this thread's own: waiting for it would never end)."""
        return PluginCallError(
            f"plugin {self.name!r} was called again on a thread inside one of its calls (from "
            "a signal handler); re-entrant calls are not allowed"
        )

    def refuse(self) -> NoReturn:
        """Raise why this thread may not call now: closed, or re-entering from a host function."""
        if self.closed:
            raise PluginClosedError(f"plugin {self.name!r} is closed")
        raise PluginCallError(
            f"plugin {self.name!r} was called again from inside one of its own host "
            "functions; re-entrant calls are not allowed"
        )

    def interrupt(self, inst: rt.Instance) -> None:
        """Stop the call running on ``inst`` (see CallToken): the next host call it makes and
        its next step in wasm fail with DeadlineExceeded (only with a policy ``timeout``)."""
        if self.has_imports:
            # HostCalls.enter compares the clock with state.start + timeout (a call of a
            # plugin with imports sets it afresh).
            self.state.start = -math.inf
        inst.interrupt()

    def failed(
        self, failure: rt.WasmFailure | LimitExceeded, function: str, inst: rt.Instance
    ) -> BaseException:
        """The error a failed call raises; the instance is thrown away.

        ``failure`` is what the runtime reported, or a limit error the call path itself found
        (the input could not be allocated): every limit error of a call comes through here, so
        none leaves the instance behind (docs/errors.md).
        The caller raises it from its ``__cause__`` (``raise_clean``): a host function's
        exception stays visible, wasmtime's internals do not.
        """
        # After any trap or limit the instance may be in any state.
        self.instance = None
        err: BaseException = failure
        if not isinstance(failure, LimitExceeded):
            err = self.diagnosis.translate(failure, self.state, function, inst)
        # Its memory (and, with pooling, its slot) back now, not when the GC finds it; the
        # stats read afterwards (settle) get the sizes it had.
        inst.release()
        return err

    # -- the end of every call ----------------------------------------------------------------

    def settle(
        self,
        inst: rt.Instance,
        start: float,
        function: str,
        th: _nesting.ThreadRoom | None = None,
    ) -> None:
        """End a call (lock still held): record its stats, drop what must not outlive it.

        The short paths inline the first case for a call that made no host call, where it is
        provably the whole of it: ``log_dropped`` is 0 (dropping a log message is a host call),
        there are no counters to reset, and ``close_pending`` is False (only a host function
        can close the plugin during its call). They still clear ``owner``.
        """
        state = self.state
        calls = state.host_calls
        if self.lean and inst is self.instance and not state.log_dropped:
            # Memory is read lazily from the live instance.
            if th is None:
                th = _thread_room()
            if self._last_th is not th:
                self.keep(th)
            self._last = (None, _perf_counter() - start, inst, calls, function)
        elif self.fresh:
            duration = _perf_counter() - start
            # Nothing of this call may reach the next one: drop the instance, and free it now
            # (with pooling, its slot is needed by the next call). Its stats are then what
            # release() measured (the memory is read once, not twice: issue 14, goal 6).
            if self._inst is not None:
                # (The instance setter, inline: a frame less on every fresh call.)
                self._fn = self._abi_fn = _UNAIMED
                self._set_at = -math.inf
                self._inst = None
                if self._ref is not None or self._abi_ref is not None:
                    # Something was aimed at it. (Aiming sets these first, _forget clears them
                    # last: with neither set, every field is as _forget leaves it. A fresh
                    # call's instance, called once through the general path, is never aimed at:
                    # a frame and 20 stores less per call.)
                    self._forget()
            memory, fuel_left = inst.release()
            # record(), inline, with what release() measured.
            if th is None:
                th = _thread_room()
            if self._last_th is not th:
                self.keep(th)
            fuel = self.fuel
            consumed = None if fuel is None else max(fuel - fuel_left, 0)
            self._last = (consumed, duration, memory, calls, function)
            if state.log_dropped:
                self.warn_dropped()
        else:
            self.record(inst, start, function, th)
        if calls:  # log calls count as host calls: log_count/log_dropped are 0 otherwise
            state.host_calls = state.log_count = state.log_dropped = 0
        self.owner = None
        if self.close_pending:
            self.complete_close()

    def record(
        self,
        inst: rt.Instance,
        start: float,
        function: str,
        th: _nesting.ThreadRoom | None = None,
        duration: float | None = None,
    ) -> None:
        """Record the full stats of a call on ``inst`` (fuel, memory) and warn of dropped logs.

        ``th`` is the calling thread's ThreadRoom (None: looked up here); ``duration`` the
        call's, if measured already (None: it ends now).
        """
        if duration is None:
            duration = _perf_counter() - start
        if th is None:
            th = _thread_room()
        if self._last_th is not th:
            self.keep(th)
        state = self.state
        fuel = self.fuel
        consumed = None if fuel is None else max(fuel - inst.fuel_left(), 0)
        memory: int | rt.Instance = inst
        if inst is not self.instance or self.fresh:
            memory = inst.memory_total()
        self._last = (consumed, duration, memory, state.host_calls, function)
        if state.log_dropped:
            self.warn_dropped()

    def warn_dropped(self) -> None:
        """Warn that the call ending now dropped log messages over the policy's limit."""
        self.logger.warning(
            "plugin %s dropped %d log message(s) beyond its limit of %d per call",
            self.name,
            self.state.log_dropped,
            self.policy.log_messages,
        )

    def keep(self, th: _nesting.ThreadRoom) -> None:
        """Thread ``th``'s call ends and ``last`` is another thread's: move that one aside.

        Called before ``last`` is replaced (rare in a plugin used from one thread). ``th``'s
        own earlier record, if any, is taken back out of ``others`` (it is replaced now).
        """
        before = self._last_th
        if before is not None:
            self.others[before] = self._last
            self.others.pop(th, None)
        # (None: the plugin's first call, and ``others`` is empty: only here does anything go
        # in, and never with None. No weak reference made and dropped on every first call.)
        self._last_th = th

    def raw_last(self, th: _nesting.ThreadRoom) -> Last | None:
        """This thread's last record (``th`` is its ThreadRoom), or None."""
        if self._last_th is th:
            return self._last
        return self.others.get(th)

    def last_call(self) -> CallStats | None:
        """``Plugin.last_call``: the stats of this thread's last call of the plugin."""
        last = self.raw_last(_thread_room())
        if last is None:
            return None
        return self.stats(last)

    def stats(
        self, last: Last, error: type[BaseException] | None = None, context: object = None
    ) -> CallStats:
        """The CallStats of a record (memory measured now if it was left to be read lazily)."""
        fuel, duration, memory, host_calls, function = last
        if not isinstance(memory, int):
            memory = memory.memory_total()
        return CallStats(fuel, duration, memory, host_calls, self.name, function, error, context)

    # -- closing --------------------------------------------------------------------------------

    def close(self) -> bool:
        """Mark closed; True if the plugin is released now, False if when its call ends."""
        me = _get_ident()
        if self.owner == me:
            # Called from one of this plugin's own host functions: finish when the call ends.
            self.closed = True
            self.close_pending = True
            return False
        lock = self.lock
        if not self._taken:  # (see _taken)
            if self.owner is None and _running_here(self):
                # From a signal handler that interrupted this plugin's call on this thread:
                # finish when that call ends (settle; not the short paths' lean ending).
                self.closed = True
                self.close_pending = True
                self._lean = False
                return False
            # Busy in another thread: wait for its call, registered like any wait for a plugin
            # (_nesting.start_wait), unless that call waits in turn (through host functions)
            # for what this thread holds (close() from a host function): then it could never
            # end while we wait, so it finishes the close itself as it ends (attack finding).
            if _nesting.start_wait(me, self) is not None:
                self.closed = True
                self.close_pending = True
                # Unless it ended between the check and now: then no call is left to do it.
                if self._taken:
                    try:
                        if self.close_pending:
                            self.complete_close()
                    finally:
                        lock.release()
                return False
            held = False
            try:
                held = _nesting.Taker(lock.acquire).taken  # lock.acquire() (see _taken)
            finally:
                try:
                    _nesting.end_wait(me)
                except BaseException:
                    if held:
                        lock.release()
                    raise
        try:
            self.closed = True
            inst, self.instance = self.instance, None
            if inst is not None:
                # The guest's memory goes back now, not when the GC finds the store (issue 14).
                inst.release()
        finally:
            lock.release()
        return True

    def complete_close(self) -> None:
        """Finish a close() made from a host function, as the call ends (lock held)."""
        inst, self.instance = self.instance, None
        if inst is not None:
            inst.release()
        self.close_pending = False
        self.on_closed()

    # -- checks made once per function and instance -------------------------------------------

    def check_invoke(self, inst: rt.Instance, function: str) -> rt.FuncRef:
        """Check ``function`` can be invoked (numeric types only) and prepare its short path."""
        if function in ("_start", "_initialize"):
            # WASI entry points: _start runs only through run() (with its own args, stdin and a
            # fresh instance), and _initialize only once per instance, by plugsafe.
            raise SignatureError(
                f"plugin {self.name!r}: {function} is a WASI entry point; "
                + ("use run()" if function == "_start" else "plugsafe calls it itself")
            )
        ref = self.lookup(inst, function)
        for t in (*ref.params, *ref.results):
            if t not in rt.NUMERIC_TYPES:
                raise SignatureError(
                    f"plugin {self.name!r} export {function!r} uses type {t}; invoke() "
                    "handles only i32, i64, f32 and f64"
                )
        inst.prepare_invoke(ref)  # the short path calls ref.invoke directly
        ref.invoke_ok = True
        return ref

    def not_a_name(self, function: object) -> SignatureError:
        """The error for a function name that is no str (nor a str subclass, see _plain): said
        without asking the object anything (fuzz9: its ``__hash__`` or ``__eq__``, asked by
        the lookup, or its ``__repr__``, by the message, raised their own errors)."""
        return SignatureError(
            f"plugin {self.name!r}: a function name is a str, not {type_name(type(function))}"
        )

    def lookup(self, inst: rt.Instance, function: str) -> rt.FuncRef:
        """The exported function ``function``, or ExportNotFoundError listing what there is."""
        ref = inst.func(function)
        if ref is None:
            exports = self.exports
            info = exports.get(function)
            if info is None:
                names = sorted(n for n, e in exports.items() if e.kind == "func")
                raise ExportNotFoundError(
                    f"plugin {self.name!r} has no export {function!r} "
                    f"(its functions: {', '.join(names) or 'none'})"
                )
            raise ExportNotFoundError(
                f"plugin {self.name!r} export {function!r} is a {info.kind}, not a function"
            )
        return ref

    def call_abi(self, inst: rt.Instance, function: str, payload: bytes) -> bytes:
        """Check ``function`` fits the plugin ABI, mark it for the short path, and call it."""
        if type(function) is not str:
            raise self.not_a_name(function)
        if not self.abi:
            raise AbiError(
                f"plugin {self.name!r} does not implement the plugsafe ABI (it exports no "
                f"{_abi.VERSION_EXPORT!r}); use invoke() for plain numeric exports"
            )
        if self.fresh:
            # An instance made for this one call: a function the module exports with the
            # ABI's type (every instance of it has it) is called without a FuncRef
            # (Instance.abi_once; issue 14, goal 6). Anything else: the checks below say what.
            once = self._once
            if not once:
                once = self._once = frozenset(
                    name
                    for name, info in self.exports.items()
                    if info.kind == "func" and (info.params, info.results) == _abi.FUNCTION_TYPE
                )
            if function in once:
                return self.round_trip(inst, None, function, payload)
        ref = inst.func(function)
        if ref is None:
            ref = self.lookup(inst, function)  # (raises: which export is missing)
        if ref.params != ("i32", "i32") or ref.results != ("i64",):
            raise SignatureError(
                f"plugin {self.name!r} export {function!r} has type "
                f"({', '.join(ref.params)}) -> ({', '.join(ref.results)}); an ABI function "
                "must be (i32, i32) -> i64"
            )
        if self.input_buffer:
            # The allocator is looked up when an input does not fit the buffer (abi_call): on
            # a fresh instance per call, one export lookup less (issue 14, goal 6).
            # (_use_input_buffer, inline.)
            query = inst.func(_abi.INPUT_BUFFER_EXPORT)
            if query is not None:
                inst.use_input_buffer(query)
        else:
            # Looked up now, so that the short path finds it in inst.funcs.
            inst.func(_abi.ALLOC_EXPORT)
        ref.abi_ok = True
        return self.round_trip(inst, ref, function, payload)

    def _ask_input_buffer_at_load(self, inst: rt.Instance) -> None:
        """Ask ``inst`` for its input buffer as part of the load: failures are the load's
        (as for ``plugsafe_abi_version``): a trap or a bad buffer is a PluginLoadError, a
        limit its own error."""
        state = self.state
        state.begin(_abi.INPUT_BUFFER_EXPORT, "load")
        try:
            inst.ask_input_buffer()
        except rt.WasmFailure as failure:
            err: BaseException | None = self.diagnosis.translate(
                failure, state, _abi.INPUT_BUFFER_EXPORT, inst
            )
            try:
                if isinstance(err, LimitExceeded):
                    raise err from err.__cause__
                raise PluginLoadError(f"plugin {self.name!r}: {err}") from err
            finally:
                err = None  # no cycle through this frame (see raise_clean)
        except InputBufferError as exc:
            raise PluginLoadError(
                f"plugin {self.name!r}: {_abi.INPUT_BUFFER_EXPORT} returned a bad input "
                f"buffer: {exc}"
            ) from None
        except PlugsafeError:
            raise
        except PYTHON_FAILED as exc:
            self.host_record.spent = self.host_record.leak = True  # see the short paths
            raise PluginLoadError(PYTHON_FAILED_MESSAGE) from exc
        except BaseException:
            self.host_record.spent = self.host_record.leak = True
            raise
        finally:
            state.reset()

    def _use_input_buffer(self, inst: rt.Instance) -> None:
        """Have ``inst`` ask for the guest's input buffer at its first call with input.

        Every instance asks its own (a fresh one may place it elsewhere); an instance reaches
        the short path only through here or prepare_abi, so none is missed.
        """
        query = inst.func(_abi.INPUT_BUFFER_EXPORT)
        if query is not None:
            inst.use_input_buffer(query)

    def prepare_abi(self, inst: rt.Instance) -> None:
        """At load, what the first call of an ABI function would do (issue 14: a first call cost
        several later ones).

        Looks up the allocator, the memory window and the first few functions of the ABI's type,
        and marks those checked exactly as ``call_abi`` would, so that their first call takes
        the short path. A few only: each costs the load a lookup. Checks the optional
        ``plugsafe_input_buffer`` export's type once (a wrong one is ignored, with a warning).
        """
        if not self.abi:
            return
        problem = _abi.export_problem(
            self.exports, _abi.INPUT_BUFFER_EXPORT, _abi.INPUT_BUFFER_TYPE
        )
        if problem is None:
            self.input_buffer = True
            self._use_input_buffer(inst)
            if not self.fresh:
                # The instance the first call runs on: asked now, so that the first call is
                # no dearer than later ones (issue 14, goal 4). A fresh_instance plugin's
                # calls never run on this instance: each of theirs asks at its first input.
                self._ask_input_buffer_at_load(inst)
        elif _abi.INPUT_BUFFER_EXPORT in self.exports:
            # Never called with a type it does not have (issue 12, class 1), and not a load
            # error either: the export is optional, a v1 plugin that happens to have one of
            # its own keeps loading, and calls take plugsafe_alloc as before.
            self.logger.warning(
                "plugin %s: %s; its input buffer is not used (inputs go through %s)",
                self.name,
                problem,
                _abi.ALLOC_EXPORT,
            )
        names = [
            name
            for name, info in self.exports.items()
            if info.kind == "func" and (info.params, info.results) == _abi.FUNCTION_TYPE
        ][:_PREPARED_AT_LOAD]
        inst.warm((_abi.ALLOC_EXPORT, *names))
        for name in names:
            ref = inst.funcs.get(name)
            if ref is not None:
                ref.abi_ok = True

    # -- the ABI round trip ---------------------------------------------------------------------

    def round_trip(
        self, inst: rt.Instance, ref: rt.FuncRef | None, function: str, payload: bytes
    ) -> bytes:
        """Input in, call, output out, for an ABI function already checked (``abi_ok``; None:
        ``function``, checked by call_abi, on an instance made for this call)."""
        try:
            if ref is not None:
                word = inst.abi_call(inst.funcs.get(_abi.ALLOC_EXPORT), ref, payload)
            else:
                once = inst.abi_once(function, payload, self.input_buffer)
                if once is None:  # no such function now (a released instance): as call_abi
                    ref = self.lookup(inst, function)  # (raises: which export is missing)
                    once = inst.abi_call(None, ref, payload)
                word = once
        except rt.GuestAllocError:
            self._raise_alloc_failure(inst, function, len(payload))
        except InputBufferError as exc:
            # The buffer is asked for once per instance: this one goes, so that every call
            # (each on a fresh instance) reports it, not only the first one.
            self.instance = None
            inst.release()
            raise AbiError(
                f"plugin {self.name!r}: {_abi.INPUT_BUFFER_EXPORT} returned a bad input "
                f"buffer: {exc}"
            ) from None
        except rt.GuestMemoryError as exc:
            raise AbiError(
                f"plugin {self.name!r}: {_abi.ALLOC_EXPORT} returned a bad buffer for "
                f"{len(payload)} input bytes: {exc}"
            ) from None
        # _abi.decode_result, inline (a frame less on every call): pointer high, length low,
        # the error bit above the length; unsigned.
        word &= _U64
        out_ptr = word >> 32
        out_len = word & _LENGTH_MASK
        is_error = word & _ERROR_BIT
        if out_len > self.max_output:
            what = "error message" if is_error else "output"
            raise AbiError(
                f"plugin {self.name!r} function {function!r} returned a {out_len}-byte {what}, "
                f"over the policy's max_output of {self.max_output}"
            )
        try:
            # docs/abi.md: an empty output may use any pointer, as for host-function arguments.
            out = inst.read(out_ptr, out_len) if out_len else b""
        except rt.GuestMemoryError as exc:
            what = "error message" if is_error else "output"
            raise AbiError(
                f"plugin {self.name!r} function {function!r} returned a bad {what} pointer: {exc}"
            ) from None
        if is_error:
            raise GuestError(self.name, function, out.decode("utf-8", "replace"))
        return out

    def _raise_alloc_failure(self, inst: rt.Instance, function: str, n: int) -> NoReturn:
        limit = self.diagnosis.memory_per
        if inst.memory_size() + n > limit:
            raise_clean(
                self.failed(
                    self.diagnosis.memory_error(
                        f"plugin {self.name!r} could not allocate {n} input bytes: its memory "
                        f"({fmt_bytes(inst.memory_size())}) cannot grow past the policy's "
                        f"{fmt_bytes(limit)}",
                        "call",
                    ),
                    function,
                    inst,
                )
            )
        raise AbiError(f"plugin {self.name!r}: {_abi.ALLOC_EXPORT}({n}) returned 0")

    # -- invoke()'s arguments -------------------------------------------------------------------

    def convert_args(
        self, ref: rt.FuncRef, function: str, args: Sequence[object]
    ) -> list[int | float]:
        """The arguments as the call path packs them, or SignatureError saying which is wrong."""
        params = ref.params
        if len(args) != len(params):
            raise SignatureError(
                f"plugin {self.name!r} export {function!r} takes {len(params)} "
                f"argument(s) ({', '.join(params)}), got {len(args)}"
            )
        return [
            self._convert_arg(function, i, t, a)
            for i, (t, a) in enumerate(zip(params, args, strict=True))
        ]

    def _convert_arg(self, function: str, i: int, t: str, a: object) -> int | float:
        """One argument as a plain int or float for type ``t``.

        Everything about ``a`` is the app's and may lie or raise: its conversions, its class's
        attributes, ``isinstance`` (through ``__class__``), the text of what it raised. Any
        Exception on the way is a SignatureError with it as the cause (fuzz9: a ValueError
        from ``__index__`` escaped raw and dropped the instance); a PlugsafeError (from a
        plugin it called) and a BaseException that is not an Exception propagate as
        themselves.
        """
        cls = type(a)
        try:
            if t in ("i32", "i64"):
                try:
                    # Any integer, including numpy's: what operator.index accepts (not floats).
                    # (Always an exact int: an int subclass is the int it holds.)
                    v = operator.index(a)  # type: ignore[arg-type]
                except TypeError:
                    raise SignatureError(
                        f"{self._where(function, i)} is {t}; got {type_name(cls)}"
                    ) from None
                lo, hi = _I32 if t == "i32" else _I64
                if not lo <= v <= hi:
                    raise SignatureError(
                        f"{self._where(function, i)} ({t}) is out of range: {int_text(v)}"
                    )
                bits = 32 if t == "i32" else 64
                return v - (1 << bits) if v >= 1 << (bits - 1) else v
            # Any real number: what struct packs as a double (__float__, or __index__); asked
            # of its class, as Python asks (an instance's own attributes may raise).
            if issubclass(cls, (str, bytes, bytearray)) or not (
                hasattr(cls, "__float__") or hasattr(cls, "__index__")
            ):
                raise SignatureError(f"{self._where(function, i)} is {t}; got {type_name(cls)}")
            # A float subclass is the float it holds, as struct and the short path's typed
            # views read it (attack7: its own __float__ was asked only when the held value
            # was refused, so an out-of-range f32 passed as whatever that answered).
            x = float.__float__(a) if issubclass(cls, float) else float(a)  # type: ignore[arg-type]
            if t == "f32" and math.isfinite(x) and abs(x) > _F32_MAX:
                raise SignatureError(f"{self._where(function, i)} (f32) is out of range: {x!r}")
            return x
        except PlugsafeError:
            # Its own, or what a call it made raised (a plugin called from its __index__: the
            # re-entry refused, attack7): as itself.
            raise
        except Exception as exc:
            raise SignatureError(
                f"{self._where(function, i)} is {t}; its {type_name(cls)} did not convert: "
                f"{_exc_text(exc)}"
            ) from exc

    def _where(self, function: str, i: int) -> str:
        return f"plugin {self.name!r} export {function!r} argument {i}"


# A call's record: fuel, duration, memory (or the live instance to measure), host calls and
# the function (see CallPath.last).
Last = tuple[int | None, float, "int | rt.Instance", int, str]
_NO_LAST: Last = (None, 0.0, 0, 0, "")


def _unaimed(*_args: object) -> Any:
    raise RuntimeError("CallPath used an aimed function while none was aimed")


def _no_plugin() -> object | None:
    return None


def _no_path() -> CallPath | None:
    return None


# The frames of a call that holds a plugin's lock (see _running_here).
_CALL_CODES = frozenset(
    {
        CallPath.call.__code__,
        CallPath.invoke.__code__,
        CallPath.guarded.__code__,
        CallPath.with_instance.__code__,
    }
)


_GUARDED_CODE = CallPath.guarded.__code__
_WITH_INSTANCE_CODE = CallPath.with_instance.__code__
_SHORT_CODES = frozenset({CallPath.call.__code__, CallPath.invoke.__code__})


def _running_here(path: CallPath) -> bool:
    """Whether this thread is inside a call of ``path`` whose lock it may hold: a frame of it
    is on this thread's stack. Asked only when the lock is taken and no thread owns the call
    (a short path's call before its first host call, a plugin without imports): then only a
    signal handler can be asking, and waiting for the lock would never end (attack6: a call
    from a SIGALRM handler waited for ever with no timeout). Never on a call's own path."""
    frame: FrameType | None = sys._getframe(2)
    codes = _CALL_CODES
    # The asking call's own frames first (neither holds the lock): with_instance, or guarded
    # and at most the one short path that fell through to it. Only those: a frame of this
    # plugin's call right below them is the call that holds the lock (attack7: a signal
    # handler, or an argument's __index__, that is ``plugin.invoke`` itself, bound or in a
    # functools.partial, has no frame of its own between the two; skipping every such frame
    # skipped the interrupted call too, and its re-entry waited for ever).
    if frame is not None and frame.f_locals.get("self") is path:
        if frame.f_code is _GUARDED_CODE:
            frame = frame.f_back
            if frame is not None and frame.f_code in _SHORT_CODES:
                # (Necessarily the asking call's: a short path holding the lock never calls
                # guarded; it releases the lock first.)
                frame = frame.f_back if frame.f_locals.get("self") is path else frame
        elif frame.f_code is _WITH_INSTANCE_CODE:
            frame = frame.f_back
    while frame is not None:
        if frame.f_code in codes and frame.f_locals.get("self") is path:
            return True
        frame = frame.f_back
    return False


def _plain(function: object) -> Any:
    """The function name a caller passed, as the plain str it holds.

    The general path compares the name (the WASI entry points are refused) and looks it up
    (in dicts, and through ``encode()`` in the runtime): a str subclass answering each its own
    way (attack7) ran ``_initialize`` again, or called one export through another's signature
    (an unchecked call with the wrong number of results: the process died). The short paths
    take exact str only. Anything else is left as it is, and refused by the general path's
    ``op`` once the plugin is taken (CallPath.not_a_name); its class decides, not
    ``isinstance`` (fuzz9: a ``__class__`` that claimed str raised a raw TypeError here).
    """
    return str.__str__(function) if issubclass(type(function), str) else function


def _exc_text(exc: BaseException) -> str:
    """``Type: text`` of an exception an argument raised, whatever its ``__str__`` does."""
    text = text_of(exc)
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type_name(type(exc))}: {text}" if text else type_name(type(exc))


def _payload(data: object) -> bytes:
    """Plain bytes of the buffer's own length, whatever a subclass answers (_abi.plain_bytes),
    or a SignatureError (a TypeError, as this always raised for other types) with what failed
    as its cause: a released memoryview, a str UTF-8 cannot encode, a raising ``__bytes__``
    (fuzz9: each escaped raw). The class decides, not ``isinstance`` (a ``__class__`` may lie).
    """
    cls = type(data)
    try:
        if issubclass(cls, str):
            return str.encode(data, "utf-8")  # type: ignore[arg-type]
        if issubclass(cls, (bytes, bytearray, memoryview)):
            return _abi.plain_bytes(data)  # type: ignore[arg-type]
    except Exception as exc:
        raise SignatureError(
            f"call() data ({type_name(cls)}) could not be read as bytes: {_exc_text(exc)}"
        ) from exc
    raise SignatureError(f"call() data must be bytes or str, not {type_name(cls)}")
