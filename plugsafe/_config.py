"""Host config files: several plugins, each pinned by hash, under a default policy with overrides.

The layout (``docs/policy.md`` has every key)::

    [defaults.imports]          # the default policy, in the policy-file layout
    allow = ["log"]
    [defaults.limits]
    timeout = "250ms"

    [plugins.greet]             # one table per plugin; the key is the plugin's name
    source = "plugins/greet.wasm"   # relative to this file
    sha256 = "9f86d0..."            # optional pin of the file's bytes
    [plugins.greet.limits]      # overrides, key by key, of the defaults
    fuel = 1_000_000
    [plugins.greet.imports]
    allow = ["log", "lookup"]   # replaces the default list: what you read is what it gets

    [host_functions]            # optional: the app's host functions, as the operator knows them
    lookup = "(key: str) -> str | None"

:func:`load_config` is what ``Host.load_config`` runs. The whole file is checked before any
plugin is loaded, and a failure while loading closes the plugins loaded so far, so a host
either gets every plugin of the file or none. Declared host functions (``[host_functions]``,
see ``_signatures``) must be registered on the host with those signatures before anything
loads: the file and the app cannot drift apart unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import _sha as hashlib  # hashlib.sha256 without OpenSSL at start-up (see _sha)
from ._errors import InvalidModuleError, PluginLoadError, PolicyError
from ._files import read_plugin_file
from ._lazyre import lazy_re
from ._policy import Policy, parse_policy
from ._policyfile import SECTIONS, as_table, describe, in_file, read_toml
from ._signatures import (
    HOST_FUNCTIONS_TABLE,
    DeclaredFunction,
    parse_host_functions,
    signature_text,
)

if TYPE_CHECKING:
    from dataclasses import dataclass, field
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass, field

if TYPE_CHECKING:
    from ._plugin import Plugin

__all__ = [
    "HostConfig",
    "PluginSpec",
    "check_declared",
    "load_config",
    "parse_config",
    "read_config",
    "read_module",
]

_PLUGIN_NAME = lazy_re(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SHA256 = lazy_re(r"^[0-9a-fA-F]{64}$")
_TOP_KEYS = ("defaults", "plugins", HOST_FUNCTIONS_TABLE)
_PLUGIN_KEYS = ("source", "sha256", *SECTIONS)


@dataclass(frozen=True)
class PluginSpec:
    """One ``[plugins.<name>]`` table: where the module is, its pin, its effective policy."""

    name: str
    source: Path
    sha256: str | None
    policy: Policy


@dataclass(frozen=True)
class HostConfig:
    """A parsed host config file; ``host_functions`` are its declared host functions."""

    defaults: Policy
    plugins: tuple[PluginSpec, ...]
    host_functions: Mapping[str, DeclaredFunction] = field(default_factory=dict)


def _check_keys(table: Mapping[str, Any], path: str, known: tuple[str, ...]) -> None:
    for key in table:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise PolicyError(
                f"{where}: unknown key (expected one of: {', '.join(known)})", path=where
            )


def parse_config(data: Mapping[str, Any], base_dir: str | os.PathLike[str]) -> HostConfig:
    """Check a host config (already parsed from TOML) and resolve its paths against base_dir.

    Raises:
        PolicyError: an unknown key or a bad value; ``.path`` names it.
    """
    root = as_table(data, "config")
    _check_keys(root, "", _TOP_KEYS)
    defaults_data = root.get("defaults", {})
    defaults = parse_policy(
        as_table(defaults_data, "defaults"),
        prefix="defaults.",
        base_dir=base_dir,
        units_required=True,
    )
    specs: list[PluginSpec] = []
    for name, body in as_table(root.get("plugins", {}), "plugins").items():
        path = f"plugins.{name}"
        if not isinstance(name, str) or not _PLUGIN_NAME.match(name):
            raise PolicyError(
                f"{path}: plugin names are letters, digits, '_', '-' and '.', not starting with "
                f"'-' or '.' (at most 128), got {describe(name)}",
                path=path,
            )
        table = as_table(body, path)
        _check_keys(table, path, _PLUGIN_KEYS)
        source = table.get("source")
        if not isinstance(source, str) or not source:
            raise PolicyError(
                f"{path}.source: expected the plugin's .wasm or .wat file as a path relative to "
                f"this file, got {'nothing' if source is None else describe(source)}",
                path=f"{path}.source",
            )
        pin = table.get("sha256")
        if pin is not None and (not isinstance(pin, str) or not _SHA256.match(pin)):
            raise PolicyError(
                f"{path}.sha256: expected 64 hexadecimal digits (run `plugsafe inspect` on the "
                f"file to get them), got {describe(pin)}",
                path=f"{path}.sha256",
            )
        overrides = {k: v for k, v in table.items() if k in SECTIONS}
        policy = parse_policy(
            overrides, prefix=f"{path}.", base=defaults, base_dir=base_dir, units_required=True
        )
        specs.append(
            PluginSpec(
                name=name,
                source=Path(base_dir, source),
                sha256=None if pin is None else pin.lower(),
                policy=policy,
            )
        )
    declared = (
        parse_host_functions(root[HOST_FUNCTIONS_TABLE]) if HOST_FUNCTIONS_TABLE in root else {}
    )
    return HostConfig(defaults=defaults, plugins=tuple(specs), host_functions=declared)


def read_config(path: str | os.PathLike[str]) -> HostConfig:
    """Read and check a host config file; relative paths in it are relative to its directory.

    Raises:
        PolicyError: unreadable file, invalid TOML, an unknown key or a bad value; the message
            names the file and ``.path`` the key.
    """
    data = read_toml(path)
    try:
        return parse_config(data, Path(path).parent)
    except PolicyError as exc:
        raise in_file(exc, path) from None


def read_module(spec: PluginSpec) -> bytes:
    """The plugin's file, read once, size-capped and checked against its pin.

    The same bytes are hashed and loaded, so the file cannot change between the check and the
    load.
    """
    data = read_plugin_file(
        spec.source, spec.policy.max_module_size, label=f"plugin {spec.name!r}: "
    )
    if spec.sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != spec.sha256:
            raise PluginLoadError(
                f"plugin {spec.name!r}: {str(spec.source)!r} does not match its sha256 pin: "
                f"the config pins {spec.sha256}, the file has {actual}"
            )
    return data


class _Loads(Protocol):
    """What load_config needs of a Host (``_host`` imports this module, not the reverse)."""

    def load(self, source: bytes, *, policy: Policy, name: str) -> Plugin: ...

    # name -> _hostfn.BoundFunction: read for .builtin and .signature (.params, .result).
    @property
    def _functions(self) -> Mapping[str, Any]: ...


def check_declared(host: _Loads, declared: Mapping[str, DeclaredFunction]) -> None:
    """Each declared host function must be registered on ``host`` with that signature.

    Raises:
        PolicyError: naming the declaration's key.
    """
    functions = host._functions
    for decl in declared.values():
        bound = functions.get(decl.name)
        if bound is None or bound.builtin:
            registered = sorted(n for n, b in functions.items() if not b.builtin)
            raise PolicyError(
                f"{decl.path}: declared as {decl.text!r}, but the host does not register "
                f"{decl.name!r} (register it with @host.function before loading; it registers: "
                f"{', '.join(registered) or 'nothing'})",
                path=decl.path,
            )
        sig = bound.signature
        if (tuple(sig.params), sig.result) != (decl.params, decl.result):
            raise PolicyError(
                f"{decl.path}: declared as {signature_text(decl.params, decl.result)}, but the "
                f"host registers {signature_text(tuple(sig.params), sig.result)}",
                path=decl.path,
            )


def load_config(host: _Loads, path: str | os.PathLike[str]) -> dict[str, Plugin]:
    """Load every plugin a host config file describes; see :meth:`Host.load_config`."""
    config = read_config(path)
    try:
        check_declared(host, config.host_functions)
    except PolicyError as exc:
        raise in_file(exc, path) from None
    plugins: dict[str, Plugin] = {}
    try:
        for spec in config.plugins:
            data = read_module(spec)
            try:
                plugins[spec.name] = host.load(data, policy=spec.policy, name=spec.name)
            except PolicyError as exc:
                # The only policy check left for load time: allow names a function this host
                # lacks. Point at the key that says so.
                where = f"plugins.{spec.name}.imports.allow"
                raise in_file(
                    PolicyError(
                        f"{where}: {str(exc).removeprefix('allow: ')}", field=exc.field, path=where
                    ),
                    path,
                ) from None
            except InvalidModuleError as exc:
                # Loaded from bytes, the message cannot say which file: add it.
                if type(exc) is not InvalidModuleError:
                    raise
                raise InvalidModuleError(
                    f"plugin {spec.name!r} from {str(spec.source)!r}: {exc}"
                ) from None
    except BaseException:
        for plugin in plugins.values():
            plugin.close()
        raise
    return plugins
