"""Host-function signatures written as text, for policy and host config files and the CLI.

An operator declares the app's host functions next to the policy that allows them, so that
``plugsafe check`` can verify a plugin's imports against their wasm types and ``plugsafe run``
can run the plugin with stubs that answer canned values::

    [host_functions]
    lookup = "(str) -> bytes | None"        # a signature alone: the stub answers None
    [host_functions.count]
    signature = "(key: str) -> int"         # parameter names are optional and only read
    returns = 3                             # the stub's canned answer

The mini-language is Python's annotation spelling, limited to what a host function may take and
return (``docs/abi.md``): parameters ``int``, ``float``, ``bool``, ``bytes``, ``str``; a result
of one of those, ``bytes | None``, ``str | None`` or ``None``. :func:`parse_signature` turns the
text into kinds, :meth:`DeclaredFunction.annotations` into Python annotations, and
``_hostfn.signature_from_annotations`` (the one place that maps annotations to wasm types) does
the rest, so a declared function binds exactly as an app's function with the same annotations
would. This module knows nothing of wasm or of ``_hostfn`` (it sits with the policy files).

Everything here is operator input, checked with errors that name the file's key and the column;
nothing in it is trusted to be well formed (``tests/test_cli_hosts.py`` fuzzes it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._errors import PolicyError
from ._lazyre import lazy_re
from ._units import describe, fail

if TYPE_CHECKING:
    from dataclasses import dataclass
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass

__all__ = [
    "HOST_FUNCTIONS_TABLE",
    "MAX_PARAMS",
    "DeclaredFunction",
    "empty_answer",
    "parse_answer",
    "parse_answer_text",
    "parse_host_functions",
    "parse_signature",
    "signature_text",
]

# The table that declares host functions, in a policy file and at the top of a host config.
HOST_FUNCTIONS_TABLE = "host_functions"
# More parameters than any real host function has, far below wasm's own limit of 1000: a
# longer declaration is a mistake, and refusing it keeps every message short.
MAX_PARAMS = 32
_MAX_TEXT = 1000
_DECLARATION_KEYS = ("signature", "returns")

_PARAM_TYPES: dict[str, type] = {
    "int": int,
    "float": float,
    "bool": bool,
    "bytes": bytes,
    "str": str,
}
_OPTIONAL = ("bytes", "str")
_NAME = lazy_re(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN = lazy_re(r"\s*(->|[A-Za-z_][A-Za-z0-9_]*|[(),:|]|\S)")
_TYPES_WORDS = "int, float, bool, bytes or str"


@dataclass(frozen=True)
class DeclaredFunction:
    """One declared host function: its name, signature text, kinds and canned answer.

    ``params`` are the parameter kinds (``"int"``, ``"bytes"``, ...); ``result`` is ``"none"``,
    a kind, or ``"bytes?"``/``"str?"`` for ``bytes | None``/``str | None`` (the vocabulary of
    ``_hostfn.HostSignature``). ``answer`` is what a stub returns: the file's ``returns``, or
    the result kind's empty value when none is given (``None`` for an optional result).
    ``path`` is the key it was declared at (``"host_functions.lookup"``).
    """

    name: str
    text: str
    params: tuple[str, ...]
    result: str
    answer: Any
    path: str

    def annotations(self) -> tuple[tuple[type, ...], Any]:
        """The Python annotations of a function with this signature: (params, return)."""
        params = tuple(_PARAM_TYPES[p] for p in self.params)
        if self.result == "none":
            return params, None
        base = _PARAM_TYPES[self.result.rstrip("?")]
        return params, (base | None) if self.result.endswith("?") else base

    def with_answer(self, answer: Any) -> DeclaredFunction:
        """The same declaration answering ``answer`` (checked by a ``parse_answer*`` function)."""
        return DeclaredFunction(self.name, self.text, self.params, self.result, answer, self.path)


def parse_signature(text: object, path: str) -> tuple[tuple[str, ...], str]:
    """The parameter kinds and result kind of a signature like ``"(str) -> bytes | None"``.

    Raises:
        PolicyError: naming ``path`` and the column where the text stops making sense.
    """
    if not isinstance(text, str):
        raise fail(path, 'a signature such as "(str) -> bytes | None"', text)
    if len(text) > _MAX_TEXT:
        raise PolicyError(
            f"{path}: a signature of {len(text)} characters; at most {_MAX_TEXT} are read",
            path=path,
        )
    return _Parser(text, path).signature()


class _Parser:
    """A recursive-descent reader of one signature; every error names the column."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.tokens: list[tuple[str, int]] = []
        pos = 0
        while True:
            m = _TOKEN.match(text, pos)
            if m is None:  # only whitespace is left
                break
            self.tokens.append((m.group(1), m.start(1) + 1))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, int]:
        if self.i < len(self.tokens):
            return self.tokens[self.i]
        return "", len(self.text) + 1

    def bad(self, message: str, column: int | None = None) -> PolicyError:
        col = self.peek()[1] if column is None else column
        # Columns count from 1, as in an editor; the text is shown escaped, on one line.
        return PolicyError(
            f"{self.path}: {message} at column {col} of {describe(self.text)}", path=self.path
        )

    def take(self, expected: str, what: str) -> None:
        tok = self.peek()[0]
        if tok != expected:
            raise self.bad(f"expected {what}, found {_shown(tok)}")
        self.i += 1

    def kind(self, what: str, words: str = _TYPES_WORDS) -> str:
        tok = self.peek()[0]
        if tok not in _PARAM_TYPES:
            raise self.bad(f"expected {what} ({words}), found {_shown(tok)}{_hint(tok)}")
        self.i += 1
        return tok

    def signature(self) -> tuple[tuple[str, ...], str]:
        self.take("(", "'(' to open the parameter list")
        params: list[str] = []
        while self.peek()[0] != ")":
            if len(params) == MAX_PARAMS:
                raise self.bad(f"more than {MAX_PARAMS} parameters")
            tok, col = self.peek()
            nxt = self.tokens[self.i + 1][0] if self.i + 1 < len(self.tokens) else ""
            if nxt == ":":
                # A parameter name, for the reader only: "(key: str)".
                if not _NAME.match(tok) or tok in _PARAM_TYPES or tok == "None":
                    raise self.bad(f"expected a parameter name, found {_shown(tok)}", col)
                self.i += 2
            params.append(self.kind("a parameter type"))
            tok = self.peek()[0]
            if tok == "|":
                raise self.bad("a parameter cannot be optional (only a result can be None)")
            if tok == ",":
                self.i += 1
            elif tok != ")":
                raise self.bad(f"expected ',' or ')', found {_shown(tok)}")
        self.i += 1
        self.take("->", "'->' and the result type")
        result = self.result()
        if self.i < len(self.tokens):
            raise self.bad(f"unexpected {_shown(self.peek()[0])} after the result type")
        return tuple(params), result

    def result(self) -> str:
        tok, col = self.peek()
        if tok == "None":
            self.i += 1
            if self.peek()[0] != "|":
                return "none"
            self.i += 1
            base = self.kind("the result type")
            optional_col = col
        else:
            base = self.kind("the result type", "int, float, bool, bytes, str or None")
            if self.peek()[0] != "|":
                return base
            self.i += 1
            self.take("None", "None after '|' (the only union is 'bytes | None' or 'str | None')")
            optional_col = col
        if base not in _OPTIONAL:
            raise self.bad(
                f"'{base} | None' is not a host function result: only bytes and str can be None",
                optional_col,
            )
        return base + "?"


def signature_text(params: tuple[str, ...] | list[str], result: str) -> str:
    """Kinds as a declaration spells them: ``("str",), "bytes?"`` -> ``"(str) -> bytes | None"``."""

    def spelled(kind: str) -> str:
        return f"{kind[:-1]} | None" if kind.endswith("?") else kind

    shown = "None" if result == "none" else spelled(result)
    return f"({', '.join(spelled(p) for p in params)}) -> {shown}"


def _shown(token: str) -> str:
    return "the end" if not token else describe(token)


def _hint(token: str) -> str:
    spelled = {
        "i32": "int",
        "i64": "int",
        "u32": "int",
        "f32": "float",
        "f64": "float",
        "string": "str",
        "bytearray": "bytes",
        "boolean": "bool",
        "none": "None",
        "Optional": "'bytes | None'",
    }.get(token)
    return f" (did you mean {spelled}?)" if spelled else ""


def parse_answer(value: object, result: str, path: str) -> Any:
    """A canned answer from a file (``returns``), checked against the result kind."""
    kind = result.rstrip("?")
    if result == "none":
        raise PolicyError(
            f"{path}: the function returns None, so it takes no canned answer", path=path
        )
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail(path, "an integer", value)
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail(path, "a number", value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise fail(path, "true or false", value)
    if kind == "str":
        if isinstance(value, str):
            return value
        raise fail(path, "a string", value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list) and all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value
    ):
        return bytes(value)
    raise fail(path, "a string (its UTF-8 bytes) or an array of byte values", value)


def parse_answer_text(text: str | None, result: str, path: str) -> Any:
    """A canned answer from the command line (``--returns NAME=TEXT``, or ``NAME`` for None)."""
    if text is None:
        if result.endswith("?"):
            return None
        raise PolicyError(
            f"{path}: give the answer as NAME=VALUE; only a 'bytes | None' or 'str | None' "
            "result can answer None",
            path=path,
        )
    kind = result.rstrip("?")
    if kind == "str":
        # A command line that is not UTF-8 reaches Python with its bad bytes as lone
        # surrogates, which no str result can carry to a plugin.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise fail(path, "UTF-8 text", text) from None
        return text
    if kind == "bytes":
        # The argument's own bytes, as the shell passed them (surrogate escapes undone).
        return os.fsencode(text)
    if kind == "bool":
        if text in ("true", "false"):
            return text == "true"
        raise fail(path, "true or false", text)
    if kind == "int":
        if re.fullmatch(r"[-+]?\d{1,40}", text.replace("_", "")):
            return int(text.replace("_", ""))
        raise fail(path, "an integer", text)
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise fail(path, "a number", text) from None
    raise PolicyError(f"{path}: the function returns None, so it takes no canned answer", path=path)


def empty_answer(result: str) -> Any:
    """What a stub answers when nothing was given: None, or the kind's empty value."""
    return {"none": None, "int": 0, "float": 0.0, "bool": False, "bytes": b"", "str": ""}.get(
        result
    )


def parse_host_functions(table: object, prefix: str = "") -> dict[str, DeclaredFunction]:
    """The ``[host_functions]`` table: name -> declaration, every entry checked.

    An entry is a signature string, or a table with ``signature`` and an optional ``returns``.

    Raises:
        PolicyError: with ``.path`` the offending key (``"host_functions.lookup.returns"``).
    """
    root = f"{prefix}{HOST_FUNCTIONS_TABLE}"
    if not isinstance(table, Mapping):
        raise fail(root, "a table of host function signatures", table)
    out: dict[str, DeclaredFunction] = {}
    for name, entry in table.items():
        path = f"{root}.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise PolicyError(
                f"{root}: {describe(name)} is not a valid host function name (letters, digits "
                "and _, not starting with a digit)",
                path=root,
            )
        if isinstance(entry, Mapping):
            for key in entry:
                if key not in _DECLARATION_KEYS:
                    where = f"{path}.{key}" if isinstance(key, str) else path
                    raise PolicyError(
                        f"{where}: unknown key (expected one of: {', '.join(_DECLARATION_KEYS)})",
                        path=where,
                    )
            if "signature" not in entry:
                raise PolicyError(
                    f'{path}.signature: missing (write signature = "(str) -> bytes | None")',
                    path=f"{path}.signature",
                )
            text = entry["signature"]
            params, result = parse_signature(text, f"{path}.signature")
            answer = (
                parse_answer(entry["returns"], result, f"{path}.returns")
                if "returns" in entry
                else empty_answer(result)
            )
        else:
            text = entry
            params, result = parse_signature(text, path)
            answer = empty_answer(result)
        assert isinstance(text, str)
        out[name] = DeclaredFunction(name, text, params, result, answer, path)
    return out
