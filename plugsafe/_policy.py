"""The sandbox policy: what one plugin may use and how much of it."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._dataclass_code import field_names
from ._errors import PolicyError, int_text
from ._lazymodule import import_now, lazy_function, lazy_module
from ._lazyre import lazy_re
from ._wasi import Wasi, restore_checked

if TYPE_CHECKING:
    import dataclasses
    from dataclasses import dataclass, field

    from ._policyfile import in_file, layout_of, parse_changes, read_toml, relocate
    from ._units import parse_duration, parse_size
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass, field

    dataclasses = lazy_module("dataclasses", globals(), "dataclasses")
    # Sizes and durations given as strings, when one first is (issue 14: cold start).
    parse_size = lazy_function("plugsafe._units", "parse_size", globals())
    parse_duration = lazy_function("plugsafe._units", "parse_duration", globals())
    # The policy-file parser (and the host-function signatures it reads), when a policy file or
    # table is first read (issue 14: cold start).
    for _name in ("in_file", "layout_of", "parse_changes", "read_toml", "relocate"):
        globals()[_name] = lazy_function("plugsafe._policyfile", _name, globals())
    del _name

__all__ = ["Policy", "parse_policy", "policy_from_toml"]

# wasm32 pointers cannot address more than 4 GiB, and a plugin input or output is a (pointer,
# length) pair whose length has 31 bits in the ABI's result word.
# _units' constants (tests/test_import_cost.py keeps them equal): _units itself, the parser
# of size and duration strings, is imported when a policy is first given one (issue 14).
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
_MAX_MEMORY = 4 * GiB
_MAX_PAYLOAD = 2**31 - 1
_MAX_FUEL = 2**63 - 1
# Epoch deadlines are counted in ticks; a day is far beyond any sane per-call timeout and keeps the
# tick count comfortably inside 64 bits.
_MAX_TIMEOUT = 86_400.0

_NAME = lazy_re(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What a component may be allowed to import (docs/components.md): a WIT interface
# ("test:host/logging", optionally "@1.0.0") or one of its functions ("...#host-log").
# A function a component's world imports itself ("import log: func(...)") is "#log": the same
# form without an interface.
_WIT_NAME = lazy_re(
    r"^[a-z][a-z0-9-]*:[a-z][a-z0-9-]*/[a-z][a-z0-9-]*(@[0-9A-Za-z.+-]+)?(#[a-z][a-z0-9-]*)?$"
    r"|^#[a-z][a-z0-9]*(-[a-z0-9]+)*$"
)

# The fields Policy(...) also takes as strings with units, read by the policy files' parsers
# (one grammar: "16MiB" means the same in Python, in a file and on the command line).
_SIZE_FIELDS = (
    "memory",
    "max_input",
    "max_output",
    "max_module_size",
    "log_message_size",
    "max_host_arg_size",
    "max_function_size",
    "compile_memory",
)
_DURATION_FIELDS = ("timeout", "compile_timeout")


def _check_int(name: str, value: object, *, lo: int, hi: int, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    # bool is an int subclass, but True as a memory size is a bug, not a number.
    if not isinstance(value, int) or isinstance(value, bool):
        what = "an integer or None" if allow_none else "an integer"
        raise PolicyError(
            f"{name}: expected {what}, got {type(value).__name__} {value!r}", field=name
        )
    if not lo <= value <= hi:
        raise PolicyError(
            f"{name}: expected an integer from {lo} to {hi}, got {int_text(value)}", field=name
        )


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What a plugin may do, and how much of each resource it may use per call.

    Everything is denied unless named: a plugin may import only the host functions in ``allow``.
    All limits are per call; fuel is refilled and the deadline re-armed at the start of each call.

    Attributes:
        fuel: WebAssembly instructions one call may execute; ``None`` means unmetered (the
            timeout still bounds it). Metered plugins run somewhat slower.
        timeout: wall-clock seconds one call (or the load, including the start function) may
            take, from the call's start: waiting for the plugin (busy in another thread) and
            the new instance a call may need count; ``None`` means no deadline.
        memory: bytes of linear memory the plugin may hold, all its memories together.
        allow: names of host functions (built-in such as ``"log"``, or registered with
            ``Host.function``) the plugin may import from the ``plugsafe`` module; for
            components, WIT interfaces (``"test:host/logging"``), their functions
            (``"test:host/logging#host-log"``) and functions the world imports itself
            (``"#log"``), registered with ``Host.component_function``.
        max_input: largest input, in bytes, that ``Plugin.call`` will pass in.
        max_output: largest output or error message, in bytes, the plugin may return.
        max_module_size: largest module, in bytes (wasm binary or WAT text), ``Host.load`` accepts.
        max_table_elements: elements any one table may hold.
        max_host_calls: host-function calls (``log`` included) one call may make; ``None``
            means unlimited.
        log_messages: ``log`` messages kept per call; later ones are dropped and counted.
        log_message_size: bytes of one ``log`` message kept; the rest is cut and marked.
        max_host_arg_size: largest ``bytes``/``str`` argument, in bytes, a plugin may pass to an
            app-defined host function (each one is copied out of its memory).
        wasi: the WASI capabilities granted (a :class:`Wasi`); None, the default, grants none and
            any ``wasi_snapshot_preview1`` import is refused at load.
        fresh_instance: run every call on a brand-new instance, so no state (memory, globals,
            tables) survives from one call to the next, e.g. between tenants. Costs one
            instantiation per call (tens of microseconds; the imports are resolved only once).
        max_functions: functions a module may define. Checked before compiling, like the four
            caps below, because compiling is not bounded by the per-call limits (a module of a
            million empty functions takes minutes and gigabytes). See ``docs/security.md``.
        max_imports: imports a module may declare.
        max_exports: exports a module may declare.
        max_function_size: bytes of any one function body (huge bodies compile superlinearly).
        max_nesting: how deeply blocks, loops and ifs may nest in a function body.
        compile_timeout: seconds compiling may take; setting this or ``compile_memory`` compiles
            the module in a child process that is killed when it runs over. ``None`` (the
            default, with ``compile_memory`` also ``None``) compiles in-process.
        compile_memory: bytes of memory the compiler child may use beyond its own start-up size
            (enforced with ``RLIMIT_AS``; POSIX only); ``None`` means no memory limit.

    Use :func:`dataclasses.replace` (or :meth:`replace`) to derive a changed policy.
    """

    fuel: int | None = None
    timeout: float | None = 1.0
    memory: int = 64 * MiB
    # Any set (or iterable) of names is accepted and stored as a frozenset.
    allow: AbstractSet[str] = field(default_factory=frozenset)
    max_input: int = 16 * MiB
    max_output: int = 16 * MiB
    max_module_size: int = 16 * MiB
    max_table_elements: int = 100_000
    max_host_calls: int | None = 100_000
    log_messages: int = 100
    log_message_size: int = 4 * KiB
    fresh_instance: bool = False
    max_host_arg_size: int = 1 * MiB
    wasi: Wasi | None = None
    max_functions: int = 100_000
    max_imports: int = 10_000
    max_exports: int = 10_000
    max_function_size: int = 1 * MiB
    max_nesting: int = 10_000
    compile_timeout: float | None = None
    compile_memory: int | None = None

    if TYPE_CHECKING:
        # What type checkers see: the generated __init__, except that sizes and durations
        # also take strings with units. Not defined at run time (the dataclass's own __init__
        # runs); tests/test_policy_units.py keeps it in step with the fields.
        def __init__(
            self,
            *,
            fuel: int | None = None,
            timeout: float | str | None = 1.0,
            memory: int | str = 64 * MiB,
            allow: Iterable[str] = frozenset(),
            max_input: int | str = 16 * MiB,
            max_output: int | str = 16 * MiB,
            max_module_size: int | str = 16 * MiB,
            max_table_elements: int = 100_000,
            max_host_calls: int | None = 100_000,
            log_messages: int = 100,
            log_message_size: int | str = 4 * KiB,
            fresh_instance: bool = False,
            max_host_arg_size: int | str = 1 * MiB,
            wasi: Wasi | None = None,
            max_functions: int = 100_000,
            max_imports: int = 10_000,
            max_exports: int = 10_000,
            max_function_size: int | str = 1 * MiB,
            max_nesting: int = 10_000,
            compile_timeout: float | str | None = None,
            compile_memory: int | str | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        self._read_units()
        self._plain_numbers()
        _check_int("fuel", self.fuel, lo=0, hi=_MAX_FUEL, allow_none=True)
        self._check_seconds("timeout")
        _check_int("memory", self.memory, lo=0, hi=_MAX_MEMORY, allow_none=False)
        object.__setattr__(self, "allow", self._normalise_allow(self.allow))
        _check_int("max_input", self.max_input, lo=0, hi=_MAX_PAYLOAD, allow_none=False)
        _check_int("max_output", self.max_output, lo=0, hi=_MAX_PAYLOAD, allow_none=False)
        _check_int("max_module_size", self.max_module_size, lo=8, hi=GiB, allow_none=False)
        _check_int(
            "max_table_elements", self.max_table_elements, lo=0, hi=2**32 - 1, allow_none=False
        )
        _check_int("max_host_calls", self.max_host_calls, lo=0, hi=2**63 - 1, allow_none=True)
        _check_int("log_messages", self.log_messages, lo=0, hi=2**31 - 1, allow_none=False)
        _check_int(
            "log_message_size", self.log_message_size, lo=0, hi=_MAX_PAYLOAD, allow_none=False
        )
        _check_int(
            "max_host_arg_size", self.max_host_arg_size, lo=0, hi=_MAX_PAYLOAD, allow_none=False
        )
        if self.wasi is not None and not isinstance(self.wasi, Wasi):
            raise PolicyError(
                f"wasi: expected a plugsafe.Wasi or None, got {type(self.wasi).__name__}",
                field="wasi",
            )
        if not isinstance(self.fresh_instance, bool):
            raise PolicyError(
                f"fresh_instance: expected True or False, got {self.fresh_instance!r}",
                field="fresh_instance",
            )
        for cap in ("max_functions", "max_imports", "max_exports", "max_function_size"):
            _check_int(cap, getattr(self, cap), lo=0, hi=2**32 - 1, allow_none=False)
        # A function body is itself one level of nesting, so 1 is the least that loads anything.
        _check_int("max_nesting", self.max_nesting, lo=1, hi=2**32 - 1, allow_none=False)
        self._check_seconds("compile_timeout")
        # Below a few MiB the compiler child cannot even start its threads.
        _check_int("compile_memory", self.compile_memory, lo=MiB, hi=2**48, allow_none=True)

    def _read_units(self) -> None:
        """Sizes and durations given as strings (``memory="16MiB"``, ``timeout="250ms"``).

        Through the policy files' parsers, with a unit required for durations, as in a file:
        a bare number given as a string is ambiguous (``"250"``: seconds or milliseconds?).
        Numbers stay what they were: bytes and seconds.
        """
        for names, parse in ((_SIZE_FIELDS, _size), (_DURATION_FIELDS, _duration)):
            for name in names:
                value = getattr(self, name)
                if isinstance(value, str):
                    try:
                        object.__setattr__(self, name, parse(value, name))
                    except PolicyError as exc:
                        # A Policy(...) error has no file path (docs/policy.md).
                        hint = " (in Python, None means no limit)" if value == "unlimited" else ""
                        raise PolicyError(f"{exc}{hint}", field=name) from None

    def _plain_numbers(self) -> None:
        """Subclasses of int and float stored as the plain number they hold.

        Read with ``int.__index__``/``float.__float__``, never through the subclass's own
        methods: a subclass whose comparisons always agree passed every range check below
        with any value (a negative fuel reached the runtime as an OverflowError, a negative
        ``max_module_size`` let every module through).
        """
        for name in field_names(Policy):
            value = getattr(self, name)
            kind = type(value)
            if kind is int or kind is float or kind is bool:
                continue
            if isinstance(value, int):
                object.__setattr__(self, name, int.__index__(value))
            elif isinstance(value, float):
                object.__setattr__(self, name, float.__float__(value))

    def _check_seconds(self, name: str) -> None:
        t = getattr(self, name)
        if t is None:
            return
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            raise PolicyError(
                f"{name}: expected seconds as a number or None, got {type(t).__name__} {t!r}",
                field=name,
            )
        # An int is compared as one: float() of a huge one raises OverflowError (fuzz9's note).
        finite = isinstance(t, int) or math.isfinite(t)
        if not (finite and 0 < t <= _MAX_TIMEOUT):
            got = int_text(t) if isinstance(t, int) else repr(t)
            raise PolicyError(
                f"{name}: expected seconds > 0 and <= {_MAX_TIMEOUT:g}, got {got}", field=name
            )
        object.__setattr__(self, name, float(t))

    @staticmethod
    def _normalise_allow(allow: object) -> frozenset[str]:
        # A bare string is iterable too; "log" must not become {"l", "o", "g"}.
        if isinstance(allow, (str, bytes)) or not isinstance(allow, Iterable):
            raise PolicyError(
                f"allow: expected a set of host function names, got {type(allow).__name__} "
                f"{allow!r}",
                field="allow",
            )
        names: set[str] = set()
        for name in allow:
            if not isinstance(name, str) or not (_NAME.match(name) or _WIT_NAME.match(name)):
                raise PolicyError(
                    f"allow: {name!r} is not a valid host function name "
                    "(letters, digits and _, not starting with a digit)",
                    field="allow",
                )
            # A subclass of str is kept as the plain str it holds: its own __hash__/__eq__
            # could make the set answer yes for a name it does not hold.
            names.add(str.__str__(name))
        return frozenset(names)

    def __setstate__(self, state: object) -> None:
        # Unpickled (or copied): the pickled fields are checked as Policy(...) checks them,
        # a PolicyError otherwise (see _wasi.restore_checked; tidy9).
        restore_checked(self, state, Policy)

    def replace(self, **changes: Any) -> Policy:
        """Return a copy with ``changes`` applied (validated like a new policy)."""
        return dataclasses.replace(self, **changes)

    # The file layout lives in _policyfile; these go through it so the layout has one
    # implementation.

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Policy:
        """Read a policy file (TOML; layout and units in ``docs/policy.md``).

        Raises:
            PolicyError: unreadable file, invalid TOML, an unknown key or a bad value; ``.path``
                names the key (e.g. ``"limits.fuel"``) and the message names the file.
        """
        return policy_from_toml(path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Build a policy from a dict in the policy-file layout (what :meth:`to_dict` returns).

        Sizes and durations may be numbers or strings with units (``"64MiB"``, ``"250ms"``).

        Raises:
            PolicyError: an unknown key or a bad value; ``.path`` names the key.
        """
        return parse_policy(data)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """This policy in the policy-file layout, every key present; ``from_dict`` inverts it.

        Sizes are in bytes, the timeout in seconds, ``None`` is ``"unlimited"`` and ``allow`` is
        a sorted list, so the result is also ready for JSON or a TOML writer.
        """
        return layout_of({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


def _size(value: str, name: str) -> int:
    return parse_size(value, name, name)


def _duration(value: str, name: str) -> float:
    return parse_duration(value, name, name, unit_required=True)


def parse_policy(
    data: object,
    *,
    prefix: str = "",
    base: Policy | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    units_required: bool = False,
) -> Policy:
    """Build a :class:`Policy` from a dict in the file layout (see ``_policyfile``).

    Args:
        data: ``{"imports": {...}, "limits": {...}}``; every key is optional.
        prefix: prepended to key paths in errors (``"plugins.greet."`` for a host config).
        base: the policy that keys left out keep their values from (default: ``Policy()``).
        base_dir: what relative ``[wasi]`` preopen paths are relative to (default: the current
            directory); the policy or config file's directory when read from a file.
        units_required: durations must carry a unit (a file, the command line).

    Raises:
        PolicyError: with ``.path`` set to the offending key's dotted path.
    """
    changes = parse_changes(data, prefix=prefix, base_dir=base_dir, units_required=units_required)
    try:
        return dataclasses.replace(base, **changes) if base is not None else Policy(**changes)  # type: ignore[arg-type]
    except PolicyError as exc:
        raise relocate(exc, prefix) from None


def policy_from_toml(path: str | os.PathLike[str]) -> Policy:
    """Read a policy file (see ``docs/policy.md``)."""
    data = read_toml(path)
    try:
        return parse_policy(data, base_dir=Path(path).parent, units_required=True)
    except PolicyError as exc:
        raise in_file(exc, path) from None


def _refuse_unknown_fields() -> None:
    """Make ``Policy(fuell=...)`` a PolicyError that suggests the field, not a bare TypeError."""
    import functools

    generated = Policy.__init__
    names = set(field_names(Policy))  # dataclasses.fields' names, without importing it

    @functools.wraps(generated)
    def __init__(self: Policy, *args: Any, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in names:
                # Only for a typo's suggestion (issue 14: import time).
                difflib: Any = import_now("difflib")

                close = difflib.get_close_matches(key, sorted(names), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise PolicyError(f"{key}: not a policy field{hint}", field=key)
        generated(self, *args, **kwargs)

    # Assigned after the class is built, so mypy and editors still see the dataclass signature.
    setattr(Policy, "__init__", __init__)  # noqa: B010


_refuse_unknown_fields()
