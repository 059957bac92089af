"""Sandbox policy files: the TOML layout, human units, and errors that name the key.

A policy file has two tables, and every key in them is named after the :class:`Policy` field it
sets, so a reviewer can map the file to the API one to one::

    [imports]
    allow = ["log"]

    [limits]
    fuel = 50_000_000
    timeout = "250ms"
    memory = "64MiB"

``docs/policy.md`` lists every key. This module is the single implementation of the layout,
and it knows nothing of the ``Policy`` class: it turns a file's tables into field values
(:func:`parse_changes`) and field values back into tables (:func:`layout_of`). ``_policy``
builds on it (``parse_policy``, ``Policy.from_toml``/``from_dict``/``to_dict``), so the
dependency runs one way and neither module needs to import the other late.

Values are checked for type and unit here (units in ``_units``), with messages that name the key
path; ranges are left to ``Policy`` itself (one source of truth), and its errors are re-raised
with the path (:func:`relocate`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ._errors import PolicyError
from ._lazymodule import import_now
from ._signatures import HOST_FUNCTIONS_TABLE, parse_host_functions
from ._units import describe, fail, fmt_duration, parse_duration, parse_size
from ._wasi import Preopen, Wasi

__all__ = [
    "LAYOUT",
    "SECTIONS",
    "WASI_TABLE",
    "UNLIMITED",
    "as_table",
    "describe",
    "in_file",
    "layout_of",
    "parse_changes",
    "parse_duration",
    "parse_size",
    "read_toml",
    "relocate",
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

# The [wasi] table sets one field, Policy.wasi, from several keys (see _parse_wasi).
WASI_TABLE = "wasi"
_WASI_KEYS = ("args", "env", "stdin", "stdout", "stderr", "preopens")
_PREOPEN_KEYS = ("host", "guest", "writable")
# Every table a policy may have.
SECTIONS: tuple[str, ...] = (*LAYOUT, WASI_TABLE)

# Policy field -> "table.key", for turning a Policy error back into a file location.
_FIELD_PATH = {
    field: f"{table}.{key}" for table, keys in LAYOUT.items() for key, (field, _) in keys.items()
}


def _parse_count(value: object, path: str, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise fail(path, "an integer >= 0", value, field)


def _parse_value(
    value: object, path: str, field: str, kind: Kind, *, units_required: bool = False
) -> object:
    nullable = kind.endswith("?")
    if nullable and (value is None or value == UNLIMITED):
        return None
    try:
        if kind == "names":
            return _parse_names(value, path, field)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise fail(path, "true or false", value, field)
        if kind.startswith("count"):
            return _parse_count(value, path, field)
        if kind.startswith("size"):
            return parse_size(value, path, field)
        return parse_duration(value, path, field, unit_required=units_required)
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
        raise fail(path, 'an array of host function names, like ["log"]', value, field)
    for i, name in enumerate(value):
        if not isinstance(name, str):
            raise fail(f"{path}[{i}]", "a host function name (a string)", name, field)
    return frozenset(value)


def _unknown_key(path: str, key: str, known: list[str], hint: str = "") -> PolicyError:
    where = f"{path}.{key}" if path else key
    # Only for a typo's suggestion: not worth every import of plugsafe.
    difflib: Any = import_now("difflib")

    close = difflib.get_close_matches(key, known, n=1)
    if not hint and close:
        hint = f"; did you mean {close[0]!r}?"
    return PolicyError(
        f"{where}: unknown key (expected one of: {', '.join(known)}){hint}", path=where
    )


def as_table(value: object, path: str) -> Mapping[str, Any]:
    """``value`` if it is a table with string keys, else a PolicyError naming ``path``."""
    if not isinstance(value, Mapping):
        raise fail(path, "a table", value)
    for key in value:
        if not isinstance(key, str):
            raise PolicyError(f"{path}: keys must be strings, got {describe(key)}", path=path)
    return value


def _parse_wasi(body: Mapping[str, Any], path: str, base_dir: Path | None) -> Wasi:
    for key in body:
        if key not in _WASI_KEYS:
            raise _unknown_key(path, key, list(_WASI_KEYS))
    args = body.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise fail(f"{path}.args", "an array of strings", args, "wasi")
    env = as_table(body.get("env", {}), f"{path}.env")
    for k, v in env.items():
        if not isinstance(v, str):
            raise fail(f"{path}.env.{k}", "a string", v, "wasi")
    stdin = body.get("stdin", "")
    if isinstance(stdin, str):
        stdin_bytes = stdin.encode("utf-8")
    elif isinstance(stdin, list) and all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in stdin
    ):
        stdin_bytes = bytes(stdin)
    else:
        raise fail(f"{path}.stdin", "a string (or an array of byte values)", stdin, "wasi")
    modes: dict[str, Any] = {}
    for name in ("stdout", "stderr"):
        mode = body.get(name, "capture")
        if mode not in ("capture", "discard", "inherit"):
            raise fail(f"{path}.{name}", '"capture", "discard" or "inherit"', mode, "wasi")
        modes[name] = mode
    raw = body.get("preopens", [])
    if not isinstance(raw, list):
        raise fail(f"{path}.preopens", "an array of tables {host, guest, writable}", raw, "wasi")
    preopens = []
    for i, item in enumerate(raw):
        where = f"{path}.preopens[{i}]"
        table = as_table(item, where)
        for key in table:
            if key not in _PREOPEN_KEYS:
                raise _unknown_key(where, key, list(_PREOPEN_KEYS))
        host, guest = table.get("host"), table.get("guest")
        if not isinstance(host, str) or not host:
            raise fail(f"{where}.host", "a directory path (relative to this file)", host, "wasi")
        if not isinstance(guest, str):
            raise fail(f"{where}.guest", 'an absolute guest path like "/data"', guest, "wasi")
        writable = table.get("writable", False)
        if not isinstance(writable, bool):
            raise fail(f"{where}.writable", "true or false", writable, "wasi")
        host_path = Path(host) if base_dir is None else Path(base_dir, host)
        preopens.append(Preopen(host=str(host_path), guest=guest, writable=writable))
    try:
        return Wasi(
            args=args,
            env=dict(env),
            stdin=stdin_bytes,
            stdout=modes["stdout"],
            stderr=modes["stderr"],
            preopens=preopens,
        )
    except PolicyError as exc:
        message = str(exc).replace("wasi.", f"{path}.", 1)
        where = message.split(": ", 1)[0] if message.startswith(path) else path
        raise PolicyError(message, field="wasi", path=where) from None


def parse_changes(
    data: object,
    *,
    prefix: str = "",
    base_dir: str | os.PathLike[str] | None = None,
    units_required: bool = False,
) -> dict[str, object]:
    """The Policy fields a dict in the file layout sets, by field name, checked for type and unit.

    Args:
        data: ``{"imports": {...}, "limits": {...}}``; every key is optional.
        prefix: prepended to key paths in errors (``"plugins.greet."`` for a host config).
        base_dir: what relative ``[wasi]`` preopen paths are relative to (default: the current
            directory); the policy or config file's directory when read from a file.
        units_required: durations must carry a unit (files and the command line: a bare
            ``timeout = 250`` is refused, not read as four minutes). ``from_dict`` keeps
            reading numbers as seconds, as ``Policy(timeout=0.25)`` does.

    A ``[host_functions]`` table (declared host-function signatures, see ``_signatures``) is
    checked here, so a mistake in it is found wherever the file is read, but it sets no field:
    it describes the host, not the policy.

    Ranges are left to ``Policy`` itself; ``_policy.parse_policy`` builds the policy and turns
    its errors into file locations with :func:`relocate`.

    Raises:
        PolicyError: with ``.path`` set to the offending key's dotted path.
    """
    root = prefix.rstrip(".")
    table = as_table(data, root or "policy")
    changes: dict[str, object] = {}
    for section, body in table.items():
        if section == HOST_FUNCTIONS_TABLE:
            parse_host_functions(body, prefix)
            continue
        if section == WASI_TABLE:
            path = f"{prefix}{section}"
            changes["wasi"] = _parse_wasi(
                as_table(body, path), path, None if base_dir is None else Path(base_dir)
            )
            continue
        keys = LAYOUT.get(section)
        if keys is None:
            hint = ""
            if section in _FIELD_PATH:
                # The flat layout (``fuel = ...`` at the top) is a likely first guess.
                hint = f"; did you mean {prefix}{_FIELD_PATH[section]}?"
            raise _unknown_key(root, section, sorted(SECTIONS), hint)
        section_path = f"{prefix}{section}"
        for key, value in as_table(body, section_path).items():
            spec = keys.get(key)
            if spec is None:
                raise _unknown_key(section_path, key, list(keys))
            field, kind = spec
            changes[field] = _parse_value(
                value, f"{section_path}.{key}", field, kind, units_required=units_required
            )
    return changes


def relocate(exc: PolicyError, prefix: str) -> PolicyError:
    """Re-raise a Policy validation error with the file path of the field it names."""
    if exc.field is None or exc.field not in _FIELD_PATH:
        return exc
    path = prefix + _FIELD_PATH[exc.field]
    message = str(exc).removeprefix(f"{exc.field}: ")
    return PolicyError(f"{path}: {message}", field=exc.field, path=path)


def layout_of(fields: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A policy's fields (by name) in the file layout: every key, plain numbers, ``"unlimited"``
    for None."""
    out: dict[str, dict[str, Any]] = {}
    for section, keys in LAYOUT.items():
        body: dict[str, Any] = {}
        for key, (field, kind) in keys.items():
            value = fields[field]
            if kind == "names":
                body[key] = sorted(value)
            elif kind == "bool":
                body[key] = bool(value)
            elif value is None:
                body[key] = UNLIMITED
            elif kind == "duration?":
                # With its unit: what to_dict writes must read back from a file, where a bare
                # number is refused.
                body[key] = fmt_duration(value)
            else:
                body[key] = value
        out[section] = body
    w: Wasi | None = fields["wasi"]
    if w is not None:
        try:
            stdin: Any = w.stdin.decode("utf-8")
        except UnicodeDecodeError:
            stdin = list(w.stdin)
        out[WASI_TABLE] = {
            "args": list(w.args),
            "env": dict(w.env),
            "stdin": stdin,
            "stdout": w.stdout,
            "stderr": w.stderr,
            "preopens": [
                {"host": os.fspath(p.host), "guest": p.guest, "writable": p.writable}
                for p in w.preopens
            ],
        }
    return out


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file; any problem is a PolicyError that names the file."""
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:  # before ValueError, of which it is one
        raise PolicyError(f"{str(file)!r} is not UTF-8 text: {exc}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise PolicyError(f"cannot read {str(file)!r}: {reason}") from exc
    # Imported here (issue 14): only policy and host config files are TOML, and tomllib (with
    # datetime) would cost every import of plugsafe.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{str(file)!r} is not valid TOML: {exc}") from None
    except (ValueError, RecursionError) as exc:
        # tomllib makes ints with int(): one of more than Python's 4,300 digits (a file
        # someone else wrote) raises ValueError, not a TOMLDecodeError (fuzz9's note); its
        # parser recurses once per nested array or inline table (tidy10).
        raise PolicyError(f"{str(file)!r} is not a usable TOML file: {exc}") from None
    return data


def in_file(exc: PolicyError, file: str | os.PathLike[str]) -> PolicyError:
    """The same error, saying which file it is in (for errors raised while parsing one)."""
    return PolicyError(f"{exc} (in {str(file)!r})", field=exc.field, path=exc.path)
