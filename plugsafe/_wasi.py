"""WASI as an explicit, narrow capability: what a policy may grant and what a run returns.

The host side that enforces it (the WasiConfig of each instance and plugsafe's own shims) is
``_wasishims``, loaded when a plugin under a :class:`Wasi` grant is first loaded (issue 14: a
cold start of a plugin without WASI never needs it).

Nothing is granted by default: no arguments, no environment (never the host's), empty stdin,
output captured (and capped), no directories. ``docs/wasi.md`` has the threat table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._errors import PolicyError
from ._lazyre import lazy_re

if TYPE_CHECKING:
    from dataclasses import dataclass, field
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass, field

__all__ = [
    "SHIMS",
    "SHIM_SHAPES",
    "WASI_MODULE",
    "OutputMode",
    "Preopen",
    "Wasi",
    "check_c_text",
    "restore_checked",
]

WASI_MODULE = "wasi_snapshot_preview1"

OutputMode = Literal["capture", "discard", "inherit"]
_MODES = ("capture", "discard", "inherit")
_ENV_NAME = lazy_re(r"^[^=\x00]+$")


def check_c_text(value: str, where: str) -> None:
    """PolicyError for what wasmtime's C API cannot take as a C string of UTF-8 text (a NUL
    would end it early, unseen; a lone surrogate does not encode)."""
    if "\x00" in value:
        raise PolicyError(f"{where}: must not contain NUL characters", field="wasi")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (os.fsdecode of a non-UTF-8 file name): it failed every load
            # with a bare UnicodeEncodeError inside the runtime (attack8).
            raise PolicyError(
                f"{where}: {value!r} is not UTF-8 text (wasmtime takes only UTF-8)",
                field="wasi",
            ) from None


def restore_checked(obj: object, state: object, make: Callable[..., object]) -> None:
    """Unpickling ``obj`` (its ``__setstate__``): it becomes ``make(**state)``.

    Unpickling a dataclass sets its ``__dict__`` from the pickle without ``__init__``: a pickle
    made by hand or by an older plugsafe made a frozen Policy (or Pooling, Wasi, Preopen) with
    fields its constructor refuses, which the runtime then trusted (tidy9). So the pickled
    fields go through the constructor (``make``), its checks and conversions included, and the
    object takes what it made: a PolicyError otherwise. Fields an older version did not have
    get their defaults; private state (Preopen's checked directory) is never taken from a
    pickle. ``copy.copy`` and ``copy.deepcopy`` come through here too.
    """
    name = type(obj).__name__
    if type(state) is not dict or not all(type(k) is str for k in state):
        raise PolicyError(f"cannot unpickle a {name}: its state is not a dict of its fields")
    fields: dict[str, Any] = {k: v for k, v in state.items() if not k.startswith("_")}
    try:
        made = make(**fields)
    except TypeError as exc:  # an unknown field (Policy says which itself)
        raise PolicyError(f"cannot unpickle a {name}: {exc}") from None
    obj.__dict__.update(made.__dict__)


@dataclass(frozen=True)
class Preopen:
    """A host directory the plugin may see at ``guest`` (read-only unless ``writable``).

    The plugin can reach nothing outside it: ``..``, absolute paths and symlinks that point
    outside are refused by wasmtime's capability-based file system. A relative ``host`` is
    taken relative to the working directory when the policy is made, not when it is used.
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
        check_c_text(host, f"{where}.host")
        # Absolute now: every instance preopens it again, and a relative path would then name
        # another directory after a chdir than the one checked here (attack8).
        host = os.path.abspath(host)
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
        check_c_text(guest, f"{where}.guest")
        if not isinstance(self.writable, bool):
            raise PolicyError(f"{where}.writable: expected True or False", field="wasi")
        object.__setattr__(self, "guest", guest)
        # The directory checked, as a plain str: what every instance preopens (checked_host).
        # os.fspath(host) again could answer another one (attack6).
        object.__setattr__(self, "_host", host)

    def __setstate__(self, state: object) -> None:
        # Checked again (by Wasi, or by checked_host) rather than believed: see restore_checked.
        restore_checked(self, state, Preopen)

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
            check_c_text(a, f"wasi.args[{i}]")
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
            check_c_text(k, "wasi.env")
            check_c_text(v, f"wasi.env.{k}")
            env[k] = v
        object.__setattr__(self, "env", env)
        if not isinstance(self.stdin, (bytes, bytearray)):
            raise PolicyError("wasi.stdin: expected bytes", field="wasi")
        # Plain bytes of the buffer's own length (bytes() returns what a subclass's __bytes__
        # made, whose len() may lie about what it holds: attack7, see _abi.plain_bytes).
        stdin = bytes(self.stdin)
        if type(stdin) is not bytes:
            stdin = bytes(memoryview(stdin))
        object.__setattr__(self, "stdin", stdin)
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

    def __setstate__(self, state: object) -> None:
        restore_checked(self, state, Wasi)  # validated as by the constructor

    def __hash__(self) -> int:
        return hash((self.args, tuple(sorted(self.env.items())), self.stdin, self.stdout,
                     self.stderr, self.preopens))  # fmt: skip


_I32 = ("i32",)
# The WASI functions plugsafe serves itself: (name, params, results), in definition order.
SHIMS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("poll_oneoff", _I32 * 4, _I32),
    ("clock_time_get", ("i32", "i64", "i32"), _I32),
    ("path_symlink", _I32 * 5, _I32),
)
# Their (numeric, module, name) as a Linker records them (Linker.retarget).
SHIM_SHAPES: list[tuple[bool, str, str]] = [(False, WASI_MODULE, name) for name, _p, _r in SHIMS]
