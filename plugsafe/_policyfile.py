"""Sandbox policy files: the TOML layout, human units, and errors that name the key.

A policy file has two tables, and every key in them is named after the :class:`Policy` field it
sets, so a reviewer can map the file to the API one to one::

    [imports]
    allow = ["log"]

    [limits]
    fuel = 50_000_000
    timeout = "250ms"
    memory = "64MiB"

``docs/policy.md`` lists every key. This module is the single implementation of the layout:
``Policy.from_toml``, ``Policy.from_dict`` and ``Policy.to_dict`` delegate here, and the host
config file (``_config``) parses its policy tables with :func:`parse_policy`.

Values are checked for type and unit here, with messages that name the key path; ranges are
left to ``Policy`` itself (one source of truth), and its errors are re-raised with the path.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from ._errors import PolicyError
from ._policy import Policy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "LAYOUT",
    "UNLIMITED",
    "describe",
    "parse_duration",
    "parse_policy",
    "parse_size",
    "policy_from_toml",
    "policy_to_dict",
    "read_toml",
]

Kind = Literal["names", "bool", "count", "count?", "size", "size?", "duration?"]

# The word a file uses for a ``None`` limit (TOML has no null): unmetered fuel, no deadline,
# no cap on host calls.
UNLIMITED = "unlimited"

# table -> key -> (Policy field, kind). Keys are the field names themselves, on purpose: the file
# and the Python API read the same. "?" kinds accept UNLIMITED (None).
LAYOUT: dict[str, dict[str, tuple[str, Kind]]] = {
    "imports": {
        "allow": ("allow", "names"),
    },
    "limits": {
        "fuel": ("fuel", "count?"),
        "timeout": ("timeout", "duration?"),
        "memory": ("memory", "size"),
        "max_input": ("max_input", "size"),
        "max_output": ("max_output", "size"),
        "max_module_size": ("max_module_size", "size"),
        "max_table_elements": ("max_table_elements", "count"),
        "max_host_calls": ("max_host_calls", "count?"),
        "max_host_arg_size": ("max_host_arg_size", "size"),
        "log_messages": ("log_messages", "count"),
        "log_message_size": ("log_message_size", "size"),
    },
    # Caps checked before a module is compiled (compiling is not bounded by the per-call limits).
    "compile": {
        "max_functions": ("max_functions", "count"),
        "max_imports": ("max_imports", "count"),
        "max_exports": ("max_exports", "count"),
        "max_function_size": ("max_function_size", "size"),
        "max_nesting": ("max_nesting", "count"),
        "compile_timeout": ("compile_timeout", "duration?"),
        "compile_memory": ("compile_memory", "size?"),
    },
    "instance": {
        "fresh_instance": ("fresh_instance", "bool"),
    },
}

# Policy field -> "table.key", for turning a Policy error back into a file location.
_FIELD_PATH = {
    field: f"{table}.{key}" for table, keys in LAYOUT.items() for key, (field, _) in keys.items()
}

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
}
_DURATION_UNITS = {
    "": Decimal(1),
    "s": Decimal(1),
    "us": Decimal("0.000001"),
    "µs": Decimal("0.000001"),
    "ms": Decimal("0.001"),
    "m": Decimal(60),
    "min": Decimal(60),
    "h": Decimal(3600),
}
# At most 30 digits before the point: enough for any real limit, and it keeps Decimal and int
# conversions cheap whatever a file holds.
_QUANTITY = re.compile(r"^\s*(\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})\s*([A-Za-zµ]*)\s*$")

_SIZE_EXPECTED = 'a size: bytes as an integer >= 0, or a string like "64MiB", "512KiB", "4096B"'
_DURATION_EXPECTED = 'a duration > 0: seconds as a number, or a string like "250ms", "1.5s", "2m"'


def describe(value: object) -> str:
    """Say what ``value`` is, in TOML's words, short enough for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        # The value came from a file someone else may have written: keep it on one line.
        text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    elif isinstance(value, Mapping):
        return "a table"
    elif isinstance(value, (list, tuple, set, frozenset)):
        return "an array"
    else:
        return f"a {type(value).__name__} value"
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path: str, expected: str, value: object, field: str | None = None) -> PolicyError:
    return PolicyError(
        f"{path}: expected {expected}, got {describe(value)}", field=field, path=path
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_size(value: object, path: str, field: str | None = None) -> int:
    """Bytes from an integer or a string with a unit (``"64MiB"``, ``"1.5KiB"``, ``"100kB"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise _fail(path, _SIZE_EXPECTED, value, field)
        return value
    if isinstance(value, str):
        m = _QUANTITY.match(value)
        unit = _SIZE_UNITS.get(m.group(2).lower()) if m else None
        if m is not None and unit is not None:
            n = Decimal(m.group(1)) * unit
            if n == n.to_integral_value():
                return int(n)
            raise PolicyError(
                f"{path}: {describe(value)} is not a whole number of bytes", field=field, path=path
            )
        raise PolicyError(
            f"{path}: expected {_SIZE_EXPECTED} (units: B, KiB, MiB, GiB, kB, MB, GB), "
            f"got {describe(value)}",
            field=field,
            path=path,
        )
    raise _fail(path, _SIZE_EXPECTED, value, field)


def parse_duration(value: object, path: str, field: str | None = None) -> float:
    """Seconds from a number or a string with a unit (``"250ms"``, ``"1.5s"``, ``"2m"``)."""
    seconds: float | None = None
    if _is_number(value):
        seconds = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str):
        m = _QUANTITY.match(value)
        unit = _DURATION_UNITS.get(m.group(2).lower()) if m else None
        if m is None or unit is None:
            raise PolicyError(
                f"{path}: expected {_DURATION_EXPECTED} (units: us, ms, s, m, h), "
                f"got {describe(value)}",
                field=field,
                path=path,
            )
        seconds = float(Decimal(m.group(1)) * unit)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise _fail(path, _DURATION_EXPECTED, value, field)
    return seconds


def _parse_count(value: object, path: str, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _fail(path, "an integer >= 0", value, field)


def _parse_value(value: object, path: str, field: str, kind: Kind) -> object:
    nullable = kind.endswith("?")
    if nullable and (value is None or value == UNLIMITED):
        return None
    try:
        if kind == "names":
            return _parse_names(value, path, field)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise _fail(path, "true or false", value, field)
        if kind.startswith("count"):
            return _parse_count(value, path, field)
        if kind.startswith("size"):
            return parse_size(value, path, field)
        return parse_duration(value, path, field)
    except PolicyError as exc:
        if not nullable or not isinstance(value, str):
            raise
        # A word that is not "unlimited" ("none", "off") was probably meant to switch the limit
        # off: say the spelling that does.
        raise PolicyError(
            f'{exc} (or "{UNLIMITED}" for no limit)', field=exc.field, path=exc.path
        ) from None


def _parse_names(value: object, path: str, field: str) -> frozenset[str]:
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise _fail(path, 'an array of host function names, like ["log"]', value, field)
    for i, name in enumerate(value):
        if not isinstance(name, str):
            raise _fail(f"{path}[{i}]", "a host function name (a string)", name, field)
    return frozenset(value)


def _unknown_key(path: str, key: str, known: list[str], hint: str = "") -> PolicyError:
    where = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, known, n=1)
    if not hint and close:
        hint = f"; did you mean {close[0]!r}?"
    return PolicyError(
        f"{where}: unknown key (expected one of: {', '.join(known)}){hint}", path=where
    )


def _table(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, "a table", value)
    for key in value:
        if not isinstance(key, str):
            raise PolicyError(f"{path}: keys must be strings, got {describe(key)}", path=path)
    return value


def parse_policy(data: object, *, prefix: str = "", base: Policy | None = None) -> Policy:
    """Build a :class:`Policy` from a dict in the file layout.

    Args:
        data: ``{"imports": {...}, "limits": {...}}``; every key is optional.
        prefix: prepended to key paths in errors (``"plugins.greet."`` for a host config).
        base: the policy that keys left out keep their values from (default: ``Policy()``).

    Raises:
        PolicyError: with ``.path`` set to the offending key's dotted path.
    """
    root = prefix.rstrip(".")
    table = _table(data, root or "policy")
    changes: dict[str, object] = {}
    for section, body in table.items():
        keys = LAYOUT.get(section)
        if keys is None:
            hint = ""
            if section in _FIELD_PATH:
                # The flat layout (``fuel = ...`` at the top) is a likely first guess.
                hint = f"; did you mean {prefix}{_FIELD_PATH[section]}?"
            raise _unknown_key(root, section, sorted(LAYOUT), hint)
        section_path = f"{prefix}{section}"
        for key, value in _table(body, section_path).items():
            spec = keys.get(key)
            if spec is None:
                raise _unknown_key(section_path, key, list(keys))
            field, kind = spec
            changes[field] = _parse_value(value, f"{section_path}.{key}", field, kind)
    try:
        return dataclasses.replace(base, **changes) if base is not None else Policy(**changes)  # type: ignore[arg-type]
    except PolicyError as exc:
        raise _relocate(exc, prefix) from None


def _relocate(exc: PolicyError, prefix: str) -> PolicyError:
    """Re-raise a Policy validation error with the file path of the field it names."""
    if exc.field is None or exc.field not in _FIELD_PATH:
        return exc
    path = prefix + _FIELD_PATH[exc.field]
    message = str(exc).removeprefix(f"{exc.field}: ")
    return PolicyError(f"{path}: {message}", field=exc.field, path=path)


def policy_to_dict(policy: Policy) -> dict[str, dict[str, Any]]:
    """The policy in the file layout: every key, plain numbers, ``"unlimited"`` for None."""
    out: dict[str, dict[str, Any]] = {}
    for section, keys in LAYOUT.items():
        body: dict[str, Any] = {}
        for key, (field, kind) in keys.items():
            value = getattr(policy, field)
            if kind == "names":
                body[key] = sorted(value)
            elif kind == "bool":
                body[key] = bool(value)
            elif value is None:
                body[key] = UNLIMITED
            else:
                body[key] = value
        out[section] = body
    return out


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file; any problem is a PolicyError that names the file."""
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read {str(file)!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{str(file)!r} is not UTF-8 text: {exc}") from None
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{str(file)!r} is not valid TOML: {exc}") from None
    return data


def in_file(exc: PolicyError, file: str | os.PathLike[str]) -> PolicyError:
    """The same error, saying which file it is in (for errors raised while parsing one)."""
    return PolicyError(f"{exc} (in {str(file)!r})", field=exc.field, path=exc.path)


def policy_from_toml(path: str | os.PathLike[str]) -> Policy:
    """Read a policy file (see ``docs/policy.md``)."""
    data = read_toml(path)
    try:
        return parse_policy(data)
    except PolicyError as exc:
        raise in_file(exc, path) from None
