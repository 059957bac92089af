"""The ``plugsafe`` command line: run, check and inspect plugins, and start new ones.

``docs/cli.md`` documents the commands and the exit codes. The CLI is a plain host: it offers
plugins the built-in host functions (``log``, routed to stderr) and, for the app's functions,
either stubs built from the signatures the policy file (``[host_functions]``) or
``--host-function`` declares, answering canned values, or the app's own Host
(``--host module:factory``). A stub is registered like any app function, so its answers go
through the same result checks as the app's would.
Everything a plugin produces (output, names of its imports and exports, arguments it passes to
stubs) is untrusted, so text meant for a terminal is escaped and JSON is ASCII-only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib
import inspect
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from . import _component_cli
from ._abi import ABI_VERSION, VERSION_EXPORT
from ._config import read_config, read_module
from ._errors import (
    AbiVersionError,
    ImportNotAllowedError,
    ImportProblem,
    LimitExceeded,
    PluginExitError,
    PluginLoadError,
    PluginTrap,
    PlugsafeError,
    PolicyError,
)
from ._files import read_capped
from ._host import Host
from ._hostfn import HostSignature, signature_from_annotations
from ._loader import LoadedModule
from ._log import escape
from ._plugin import Plugin
from ._policy import Policy, parse_policy
from ._policyfile import in_file, read_toml
from ._signatures import (
    HOST_FUNCTIONS_TABLE,
    DeclaredFunction,
    empty_answer,
    parse_answer_text,
    parse_host_functions,
    parse_signature,
    signature_text,
)
from ._types import CallStats, ExportInfo, ImportInfo
from ._units import fmt_bytes
from ._version import __version__

__all__ = [
    "EXIT_CHECK_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_LIMIT",
    "EXIT_LOAD",
    "EXIT_OK",
    "EXIT_PLUGIN",
    "EXIT_USAGE",
    "main",
]

# Exit codes (docs/cli.md). 2 is also what argparse uses for bad arguments.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # check: the plugin would not load under the policy
EXIT_USAGE = 2  # bad arguments, unreadable or invalid policy/input file, `new` cannot proceed
EXIT_LOAD = 3  # PluginLoadError: the plugin could not be loaded
EXIT_LIMIT = 4  # LimitExceeded: fuel, timeout, memory or host calls ran out (load or call)
EXIT_PLUGIN = 5  # PluginCallError: trap, guest error, bad ABI value, no such export
EXIT_INTERNAL = 70  # a bug in plugsafe (EX_SOFTWARE); a traceback is printed
EXIT_INTERRUPTED = 130  # Ctrl-C

PROG = "plugsafe"
# inspect reads, prechecks and compiles under this policy (the default structural caps, and
# the largest module any policy can admit), and runs the plugin's start function and
# ABI-version export under it.
_MAX_READ = 2**30
_INSPECT_POLICY = Policy(
    fuel=10_000_000,
    timeout=2.0,
    memory=256 * 2**20,
    max_host_calls=1000,
    max_module_size=_MAX_READ,
)
# Control characters except newline and tab: a plugin's output must not drive the terminal.
_TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


class UsageError(Exception):
    """The command cannot run as asked (exit code 2); the message says why."""


def _exit_code(exc: BaseException) -> int:
    """The exit code for an error, following the error tree (docs/cli.md)."""
    if isinstance(exc, (UsageError, PolicyError)):
        return EXIT_USAGE
    if isinstance(exc, LimitExceeded):
        return EXIT_LIMIT
    if isinstance(exc, PluginLoadError):
        return EXIT_LOAD
    if isinstance(exc, PlugsafeError):  # PluginCallError, PluginClosedError
        return EXIT_PLUGIN
    return EXIT_INTERNAL


def _error_json(exc: BaseException) -> dict[str, Any]:
    report: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc),
        "exit_code": _exit_code(exc),
    }
    if isinstance(exc, PluginTrap):
        report["trap_code"] = exc.trap_code
        report["backtrace"] = exc.backtrace
    return report


def _print_json(value: object, out: IO[str]) -> None:
    # ASCII-only: names and messages from a plugin cannot smuggle control characters through.
    out.write(json.dumps(value, indent=2, ensure_ascii=True) + "\n")


def _safe(text: str) -> str:
    """One line of untrusted text, safe for a terminal."""
    return escape(text)


# -- policy and input options ---------------------------------------------------------------


def _policy_from_args(args: argparse.Namespace) -> Policy:
    """The policy file (or the default policy) with the command line's overrides on top.

    The file is read once: its ``[host_functions]`` table is kept in ``args.declared_table``
    for :func:`_declared`.
    """
    args.declared_table = None
    args.source = args.plugin
    args.name = _plugin_name(args.plugin)
    if args.config:
        config = read_config(args.config)
        specs = {spec.name: spec for spec in config.plugins}
        spec = specs.get(args.plugin)
        if spec is None:
            raise UsageError(
                f"with --config, PLUGIN is the name of a plugin in it; {args.config!r} has no "
                f"plugin {args.plugin!r} (it has: {', '.join(specs) or 'none'})"
            )
        # Read once, pin checked: the bytes checked are the bytes loaded.
        args.source = read_module(spec)
        args.name = spec.name
        args.declared_config = config.host_functions
        policy = spec.policy
    elif args.policy:
        data = read_toml(args.policy)
        try:
            policy = parse_policy(data, base_dir=Path(args.policy).parent, units_required=True)
        except PolicyError as exc:
            raise in_file(exc, args.policy) from None
        args.declared_table = data.get(HOST_FUNCTIONS_TABLE)
    else:
        policy = Policy()
    overrides: list[tuple[str, str, str, object]] = []
    for option, table, key in (
        ("--fuel", "limits", "fuel"),
        ("--timeout", "limits", "timeout"),
        ("--memory", "limits", "memory"),
    ):
        raw = getattr(args, key)
        if raw is not None:
            # A count on the command line is text; "50_000_000" reads as it would in TOML.
            value: object = raw
            if key == "fuel" and re.fullmatch(r"-?\d[\d_]*", raw):
                value = int(raw.replace("_", ""))
            overrides.append((option, table, key, value))
    if args.allow:
        overrides.append(("--allow", "imports", "allow", sorted(policy.allow | set(args.allow))))
    for option, table, key, value in overrides:
        try:
            policy = parse_policy({table: {key: value}}, base=policy, units_required=True)
        except PolicyError as exc:
            message = str(exc).replace(f"{table}.{key}", option, 1)
            raise PolicyError(message, field=exc.field, path=exc.path) from None
    return policy


def _read_input(args: argparse.Namespace, limit: int, stdin: IO[bytes]) -> bytes:
    if args.input is not None:
        data = str(args.input).encode("utf-8")
        what = "--input"
    elif args.input_file is not None and args.input_file != "-":
        what = f"input file {args.input_file!r}"
        try:
            with open(args.input_file, "rb") as f:
                data = read_capped(f, limit)
        except OSError as exc:
            raise UsageError(f"cannot read {what}: {exc.strerror or exc}") from None
    elif args.input_file == "-" or not stdin.isatty():
        what = "standard input"
        data = read_capped(stdin, limit)
    else:
        # Nothing given and a terminal on stdin: an empty input rather than a silent wait.
        return b""
    if len(data) > limit:
        raise UsageError(f"{what} is over the policy's max_input of {limit} bytes")
    return data


# -- the app's host functions: declared stubs, or the app's own Host ----------------------------


def _declared(args: argparse.Namespace) -> dict[str, DeclaredFunction]:
    """The host functions the policy file and ``--host-function`` declare, with their answers."""
    if args.host is not None and args.returns:
        raise UsageError("--returns answers for stubs; with --host the app's own functions answer")
    declared: dict[str, DeclaredFunction] = {}
    if args.config:
        declared = dict(args.declared_config)
    elif args.declared_table is not None:
        try:
            declared = parse_host_functions(args.declared_table)
        except PolicyError as exc:
            raise in_file(exc, args.policy) from None
    for spec in args.host_function:
        name, sep, text = spec.partition("=")
        name = name.strip()
        where = f"--host-function {name}"
        if not sep or not name:
            raise UsageError(
                f"--host-function: expected NAME=SIGNATURE, like 'lookup=(str) -> bytes | None', "
                f"got {spec!r}"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(
                f"--host-function: {name!r} is not a valid host function name (letters, "
                "digits and _, not starting with a digit)"
            )
        params, result = parse_signature(text, where)
        declared[name] = DeclaredFunction(name, text, params, result, empty_answer(result), where)
    for spec in args.returns:
        name, sep, text = spec.partition("=")
        name = name.strip()
        found = declared.get(name)
        if found is None:
            raise UsageError(
                f"--returns {name}: no signature is declared for {name!r} (declare it in the "
                f"policy file's [{HOST_FUNCTIONS_TABLE}] table or with --host-function)"
            )
        answer = parse_answer_text(text if sep else None, found.result, f"--returns {name}")
        declared[name] = found.with_answer(answer)
    return declared


# What a stub shows of a plugin's argument or its own answer, at most.
_SHOWN = 120


def _shown(value: object) -> str:
    text = repr(value)
    if len(text) > _SHOWN:
        text = text[: _SHOWN - 3] + "..."
    return _safe(text)


def _stub(decl: DeclaredFunction) -> Callable[..., Any]:
    """A host function with ``decl``'s annotations that answers ``decl.answer``.

    It is registered with ``Host.function`` like an app's function: the annotations become
    its wasm types through ``_hostfn.signature_from_annotations``, and its answer passes the
    result checks an app function's answer passes (type, range, the plugin's allocator and
    memory cap).
    """
    params, returns = decl.annotations()
    answer = decl.answer
    name = decl.name
    logger = logging.getLogger("plugsafe.plugin.stub")

    def stub(*args: Any) -> Any:
        # Each call on stderr (with --log-level debug, the default): what the plugin asked the
        # app. The arguments are the plugin's: shown as repr, escaped, cut.
        logger.debug(
            "%s(%s) -> %s",
            name,
            ", ".join(_shown(a) for a in args),
            _shown(answer),
            extra={"plugsafe_plugin": "stub"},
        )
        return answer

    names = [f"arg{i}" for i in range(len(params))]
    setattr(  # noqa: B010 - a function's signature, for inspect and typing
        stub,
        "__signature__",
        inspect.Signature(
            [
                inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY, annotation=t)
                for n, t in zip(names, params, strict=True)
            ],
            return_annotation=returns,
        ),
    )
    stub.__annotations__ = {**dict(zip(names, params, strict=True)), "return": returns}
    stub.__name__ = stub.__qualname__ = name
    return stub


def _signature_text(sig: HostSignature) -> str:
    """A host function's signature in the declarations' spelling."""
    return signature_text(tuple(sig.params), sig.result)


def _app_host(spec: str) -> Host:
    """The app's Host from ``--host MODULE:FACTORY`` (a Host, or a callable returning one)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(
            f"--host: expected MODULE:FACTORY (a module and, in it, a plugsafe.Host or a function "
            f"returning one), like 'myapp.plugins:make_host', got {spec!r}"
        )
    # As `python -m` would: the app's modules are found from the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"--host: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"--host: {module_name!r} has no {attr!r}") from None
    if not isinstance(obj, Host):
        if not callable(obj):
            raise UsageError(
                f"--host: {spec} is a {type(obj).__name__}, not a plugsafe.Host or a function "
                "returning one"
            )
        try:
            obj = obj()
        except Exception as exc:
            raise UsageError(f"--host: {spec}() raised {type(exc).__name__}: {exc}") from None
        if not isinstance(obj, Host):
            raise UsageError(
                f"--host: {spec}() returned a {type(obj).__name__}, not a plugsafe.Host"
            )
    if obj.closed:
        raise UsageError(f"--host: the Host {spec} gave is closed")
    return obj


def _host_for(args: argparse.Namespace, declared: dict[str, DeclaredFunction]) -> Host:
    """The Host a command runs plugins on: the app's (``--host``), or one with the stubs."""
    if args.host is not None:
        host = _app_host(args.host)
        try:
            _check_declared(host, declared, args.host)
        except PolicyError as exc:
            host.close()
            raise _located(exc, args) from None
        except BaseException:
            host.close()
            raise
        return host
    host = Host()
    try:
        for decl in declared.values():
            try:
                host.function(_stub(decl), name=decl.name)
            except (TypeError, ValueError) as exc:
                # The parser admits only what a host function can be; a name the Host refuses
                # (a built-in such as log) is the declaration's mistake.
                bad = PolicyError(f"{decl.path}: {exc}", path=decl.path)
                raise _located(bad, args) from None
    except BaseException:
        host.close()
        raise
    return host


def _located(exc: PolicyError, args: argparse.Namespace) -> PolicyError:
    """A declaration's error, naming the file when the declaration came from one."""
    file = args.config or args.policy
    if file is None or (exc.path or "").startswith("--"):
        return exc
    return in_file(exc, file)


def _check_declared(host: Host, declared: dict[str, DeclaredFunction], spec: str) -> None:
    """Each declared function must be registered on the app's Host, with that signature."""
    functions = host._functions
    for decl in declared.values():
        bound = functions.get(decl.name)
        if bound is None or bound.builtin:
            raise PolicyError(
                f"{decl.path}: declared as {decl.text!r}, but the Host from {spec} does not "
                f"register {decl.name!r} (it has: {', '.join(host.functions)})",
                path=decl.path,
            )
        want = signature_from_annotations(_stub(decl), decl.name)
        if bound.signature != want:
            raise PolicyError(
                f"{decl.path}: declared as {_signature_text(want)}, but the Host from {spec} "
                f"registers {_signature_text(bound.signature)}",
                path=decl.path,
            )


def _cli_policy(policy: Policy, host: Host) -> Policy:
    """The policy as the CLI host can honour it: only the functions a CLI host has.

    A policy file written for an app may allow the app's functions; that is no reason to
    refuse a plugin that does not import them. One that does is refused at load, as unknown.
    """
    return policy.replace(allow=policy.allow & set(host.functions))


# -- logging ----------------------------------------------------------------------------------


class _PluginLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        name = getattr(record, "plugsafe_plugin", None) or record.name.rsplit(".", 1)[-1]
        return f"[{_safe(str(name))}] {record.levelname.lower()}: {record.getMessage()}"


@contextlib.contextmanager
def _plugin_logs_to(stream: IO[str], level: str) -> Iterator[None]:
    """Send plugin logs (logger ``plugsafe.plugin``) to ``stream`` while the command runs."""
    logger = logging.getLogger("plugsafe.plugin")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_PluginLogFormatter())
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.CRITICAL + 1 if level == "off" else getattr(logging, level.upper()))
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# -- reading modules --------------------------------------------------------------------------
# Every command reads, prechecks and compiles through the Host's loader (``_loader``), so the
# command line refuses exactly what ``Host.load`` refuses, as fast.


def _plugin_name(path: str) -> str:
    return Path(path).stem or "plugin"


# -- run --------------------------------------------------------------------------------------


def _stats_json(stats: CallStats | None, policy: Policy) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {
        "fuel_consumed": stats.fuel_consumed,
        "fuel_limit": policy.fuel,
        "duration_seconds": stats.duration,
        "memory_bytes": stats.memory_bytes,
        "memory_limit": policy.memory,
        "host_calls": stats.host_calls,
    }


def _print_stats(stats: CallStats | None, policy: Policy, err: IO[str]) -> None:
    if stats is None:
        return
    fuel = "unmetered" if stats.fuel_consumed is None else f"{stats.fuel_consumed:,}"
    if policy.fuel is not None:
        fuel += f" of {policy.fuel:,}"
    err.write(
        f"fuel:       {fuel}\n"
        f"time:       {stats.duration * 1000:.3f} ms\n"
        f"memory:     {fmt_bytes(stats.memory_bytes)} peak of {fmt_bytes(policy.memory)}\n"
        f"host calls: {stats.host_calls}\n"
    )


def _write_output(data: bytes, out: IO[str]) -> None:
    buffer = getattr(out, "buffer", None)
    if out.isatty() or buffer is None:
        # A plugin's output must not move the cursor or recolour the terminal.
        text = data.decode("utf-8", "replace")
        text = _TERMINAL_UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
        out.write(text if text.endswith("\n") or not out.isatty() else text + "\n")
        out.flush()
    else:
        out.flush()
        buffer.write(data)
        buffer.flush()


def _output_json(data: bytes) -> dict[str, Any]:
    try:
        return {"output": data.decode("utf-8"), "output_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"output": base64.b64encode(data).decode("ascii"), "output_encoding": "base64"}


def cmd_run(args: argparse.Namespace, out: IO[str], err: IO[str], stdin: IO[bytes]) -> int:
    """``plugsafe run``: load, call one ABI function, print its output."""
    policy = _policy_from_args(args)
    declared = _declared(args)
    data = _read_input(args, policy.max_input, stdin)
    if _component_cli.is_component_source(args.plugin):  # components: _component_cli
        return _component_cli.cmd_run(args, policy, data, out, err)
    plugin: Plugin | None = None
    result: bytes | None = None
    failure: PlugsafeError | None = None
    with _host_for(args, declared) as host:
        try:
            plugin = host.load(args.source, policy=_cli_policy(policy, host), name=args.name)
            if args.function == "_start" and policy.wasi is not None:
                # A WASI command: run it with the input as its stdin; its stderr is passed on.
                ran = plugin.run(stdin=data if data else None)
                result = ran.stdout
                if ran.stderr:
                    _write_output(ran.stderr, err)
                if ran.exit_code != 0:
                    failure = PluginExitError(
                        f"plugin {plugin.name!r} exited with code {ran.exit_code}",
                        exit_code=ran.exit_code,
                    )
            else:
                result = plugin.call(args.function, data)
        except PlugsafeError as exc:
            failure = exc
        stats = plugin.last_call if plugin is not None else None
    if args.json:
        report: dict[str, Any] = {"ok": failure is None}
        if result is not None:
            report.update(_output_json(result))
        if failure is not None:
            report["error"] = _error_json(failure)
        if args.stats:
            report["stats"] = _stats_json(stats, policy)
        _print_json(report, out)
    else:
        if result is not None:
            _write_output(result, out)
        if args.stats:
            _print_stats(stats, policy, err)
        if failure is not None:
            _report_error(failure, err)
    return EXIT_OK if failure is None else _exit_code(failure)


# -- check ------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace, out: IO[str], err: IO[str], stdin: IO[bytes]) -> int:
    """``plugsafe check``: would the plugin load under the policy? Every import's verdict."""
    policy = _policy_from_args(args)
    if _component_cli.is_component_source(args.plugin):  # components: _component_cli
        return _component_cli.cmd_check(args, policy, out, err)
    declared = _declared(args)
    path = args.plugin
    rows: list[dict[str, Any]] = []
    failure: PlugsafeError | None = None
    note: str | None = None
    with _host_for(args, declared) as host:
        # The functions the policy allows that this host has no stand-in for.
        app_functions = sorted(policy.allow - set(host.functions))
        provided = {
            name: "declared: " + _signature_text(bound.signature)
            if args.host is None
            else f"registered by the Host from {args.host}: {_signature_text(bound.signature)}"
            for name, bound in host._functions.items()
            if not bound.builtin
        }
        try:
            cli_policy = _cli_policy(policy, host)
            loaded = host._prepare(args.source, policy=cli_policy, name=args.name)
            module = loaded.module
            problems: dict[tuple[str, str], ImportProblem] = {}
            try:
                # The same bytes again: a hit in the host's module cache, no second compile.
                host.load(loaded.wasm, policy=cli_policy, name=loaded.name).close()
            except ImportNotAllowedError as exc:
                problems = {(p.module, p.name): p for p in exc.problems}
            except PolicyError:
                raise
            except PlugsafeError as exc:
                # The imports passed (they are checked first); something later failed.
                failure = exc
            needed_app: list[str] = []
            for imp in module.imports:
                row = _import_row(imp, problems.get((imp.module, imp.name)), app_functions)
                if (
                    row["status"] == "allowed"
                    and imp.module == "plugsafe"
                    and imp.name in provided
                    and not row["detail"]
                ):
                    row["detail"] = provided[imp.name]
                rows.append(row)
                if row["status"] == "allowed" and imp.name in app_functions:
                    needed_app.append(imp.name)
            bad = [r for r in rows if r["status"] != "allowed"]
            if failure is not None:
                pass
            elif bad:
                failure = ImportNotAllowedError(
                    args.name, [problems[(r["module"], r["name"])] for r in bad]
                )
            elif needed_app:
                note = (
                    f"the plugin imports {', '.join(needed_app)}, which the host app must "
                    "register; nothing declares their signatures, so their types were not "
                    "checked and the start function and ABI version were not tried (declare "
                    f"them in the policy's [{HOST_FUNCTIONS_TABLE}] table, or use --host)"
                )
        except PolicyError:
            raise
        except PlugsafeError as exc:
            failure = exc
    loads = failure is None
    if args.json:
        _print_json(
            {
                "plugin": path,
                "policy": args.policy,
                "config": args.config,
                "host": args.host,
                "declared": {name: d.text for name, d in sorted(declared.items())},
                "loads": loads,
                "imports": rows,
                "error": None if failure is None else _error_json(failure),
                "note": note,
            },
            out,
        )
    else:
        width = max((len(_safe(r["import"])) for r in rows), default=0)
        out.write(f"{_safe(path)}: {len(rows)} import(s)\n")
        for r in rows:
            detail = f"  ({_safe(r['detail'])})" if r["detail"] else ""
            out.write(f"  {_safe(r['import']).ljust(width)}  {r['status']}{detail}\n")
        if loads:
            out.write("would load under this policy\n")
            if note:
                out.write(f"note: {note}\n")
        else:
            assert failure is not None
            out.write(f"would NOT load: {type(failure).__name__}: {failure}\n")
    return EXIT_OK if loads else EXIT_CHECK_FAILED


def _import_row(
    imp: ImportInfo, problem: ImportProblem | None, app_functions: Sequence[str]
) -> dict[str, Any]:
    status = "allowed"
    detail = ""
    if problem is not None:
        if (
            problem.reason == "unknown"
            and imp.module == "plugsafe"
            and imp.kind == "func"
            and imp.name in app_functions
        ):
            # Allowed by the policy; the app, not the command line, provides it.
            detail = "app-defined and not declared: the host app must register it"
        elif problem.reason == "unknown" and imp.module == "plugsafe" and imp.kind == "func":
            # The command line cannot tell an app's function from a made-up one; what matters
            # for the policy under review is that it does not allow the name.
            status = "not allowed"
            detail = (
                "the policy's allow list does not include it (it is not built in; only a host "
                "app could provide it)"
            )
        else:
            status = problem.reason
            detail = problem.detail
    return {
        "import": f"{imp.module}.{imp.name}",
        "module": imp.module,
        "name": imp.name,
        "kind": imp.kind,
        "type": str(imp),
        "status": status,
        "detail": detail,
    }


# -- inspect ----------------------------------------------------------------------------------


def _abi_version(host: Host, loaded: LoadedModule) -> tuple[int | None, str]:
    """Ask the plugin its ABI version by loading it under a strict policy."""
    module = loaded.module
    if VERSION_EXPORT not in module.exports:
        return None, f"no {VERSION_EXPORT} export: not a plugsafe ABI plugin (numeric exports only)"
    wanted = {i.name for i in module.imports if i.module == "plugsafe"}
    policy = loaded.policy.replace(allow=wanted & set(host.functions))
    try:
        host.load(loaded.wasm, policy=policy, name=loaded.name).close()
    except AbiVersionError as exc:
        return exc.declared, f"this plugsafe implements ABI version {exc.supported}"
    except ImportNotAllowedError as exc:
        return None, (
            "unknown: asking means instantiating the plugin, and it imports "
            f"{', '.join(exc.imports)}, which the command line cannot provide"
        )
    except PlugsafeError as exc:
        return None, f"could not be asked: {type(exc).__name__}: {exc}"
    return ABI_VERSION, ""


def _export_json(e: ExportInfo) -> dict[str, Any]:
    return {
        "name": e.name,
        "kind": e.kind,
        "params": list(e.params),
        "results": list(e.results),
        "detail": e.detail,
        "signature": str(e),
    }


def _import_json(i: ImportInfo) -> dict[str, Any]:
    return {
        "module": i.module,
        "name": i.name,
        "kind": i.kind,
        "params": list(i.params),
        "results": list(i.results),
        "detail": i.detail,
        "signature": str(i),
    }


def cmd_inspect(args: argparse.Namespace, out: IO[str], err: IO[str], stdin: IO[bytes]) -> int:
    """``plugsafe inspect``: what a plugin imports, exports and declares."""
    path = args.plugin
    if _component_cli.is_component_source(path):  # components: _component_cli
        return _component_cli.cmd_inspect(args, out, err)
    with Host() as host:
        # Read, precheck and compile as Host.load would under the inspect policy: a module
        # built to be expensive to compile is refused here as it would be there.
        loaded = host._prepare(path, policy=_INSPECT_POLICY, name=_plugin_name(path))
        version, abi_note = _abi_version(host, loaded)
    module = loaded.module
    fmt = loaded.format
    wasm = loaded.wasm
    decls = loaded.memories
    memories = [
        {"index": i, "min_bytes": m.minimum, "max_bytes": m.maximum} for i, m in enumerate(decls)
    ]
    report: dict[str, Any] = {
        "file": path,
        "format": fmt,
        "size": loaded.source_size,
        "wasm_size": len(wasm),
        "sha256": loaded.source_sha256,
        "abi_version": version,
        "abi_note": abi_note,
        "imports": [_import_json(i) for i in module.imports],
        "exports": [_export_json(e) for e in module.exports.values()],
        "memories": memories,
    }
    if args.json:
        _print_json(report, out)
        return EXIT_OK
    size = f"{loaded.source_size} bytes"
    if fmt == "wat":
        size += f" of WAT text, {len(wasm)} bytes of wasm"
    lines = [
        f"file:        {_safe(path)}",
        f"size:        {size}",
        f"sha256:      {report['sha256']}",
        f"ABI version: {'none' if version is None else version}"
        + (f"  ({_safe(abi_note)})" if abi_note else ""),
        f"imports ({len(module.imports)}):",
        *(f"  {_safe(str(i))}" for i in module.imports),
        f"exports ({len(module.exports)}):",
        *(f"  {_safe(str(e))}" for e in module.exports.values()),
        f"memories defined ({len(memories)}):",
        *(
            f"  memory {i}: min {fmt_bytes(m.minimum)}, max "
            + ("none" if m.maximum is None else fmt_bytes(m.maximum))
            for i, m in enumerate(decls)
        ),
    ]
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


# -- new --------------------------------------------------------------------------------------


def cmd_new(args: argparse.Namespace, out: IO[str], err: IO[str], stdin: IO[bytes]) -> int:
    """``plugsafe new``: a plugin project from the SDK templates."""
    try:
        # Imported here: the templates are optional package data, and the other commands must
        # work without them.
        scaffold = importlib.import_module("plugsafe._scaffold")
    except ImportError:
        raise UsageError(
            "`plugsafe new` needs the plugin SDK templates, and this installation of plugsafe "
            "does not include them (the module plugsafe._scaffold is missing)"
        ) from None
    dest = Path(args.dir) if args.dir else Path.cwd() / args.name
    try:
        project = scaffold.new_project(args.lang, args.name, dest)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    out.write(f"created {args.lang} plugin project {args.name!r} in {project}\n")
    out.write("see its README.md for how to build and test it\n")
    return EXIT_OK


# -- the parser -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``plugsafe --help``)."""
    parser = _Parser(
        prog=PROG,
        description="Run, check and inspect untrusted WebAssembly plugins under a sandbox policy.",
        epilog="Exit codes: 0 ok, 1 check says no, 2 usage error (bad arguments, policy file, "
        "host-function declaration or --host), 3 load failure, 4 limit hit, 5 plugin error, "
        "70 internal error, 130 interrupted. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    policy_opts = _Parser(add_help=False)
    group = policy_opts.add_argument_group("policy")
    files = group.add_mutually_exclusive_group()
    files.add_argument("--policy", metavar="FILE", help="policy file (TOML; docs/policy.md)")
    files.add_argument(
        "--config",
        metavar="FILE",
        help="host config file (docs/policy.md): PLUGIN is then the name of one of its plugins, "
        "loaded from its source, pin checked, under its policy, with the file's host functions",
    )
    group.add_argument(
        "--allow",
        metavar="NAME",
        action="append",
        default=[],
        help="also allow this host function (repeatable)",
    )
    group.add_argument("--fuel", metavar="N", help='fuel per call, or "unlimited"')
    group.add_argument("--timeout", metavar="T", help='time per call, e.g. "250ms", "2s"')
    group.add_argument("--memory", metavar="SIZE", help='memory cap, e.g. "64MiB"')
    app = policy_opts.add_argument_group(
        "the app's host functions",
        "stubs for the functions the policy file's [host_functions] table or --host-function "
        "declares (each answers a canned value), or the app's own Host",
    )
    app.add_argument(
        "--host-function",
        metavar="NAME=SIGNATURE",
        action="append",
        default=[],
        help="declare a host function, e.g. 'lookup=(str) -> bytes | None' (repeatable)",
    )
    app.add_argument(
        "--returns",
        metavar="NAME[=VALUE]",
        action="append",
        default=[],
        help="what the stub NAME answers: VALUE as its result type reads it (text for str and "
        "bytes), or None without '=VALUE' (repeatable; default: the file's returns, else empty)",
    )
    app.add_argument(
        "--host",
        metavar="MODULE:FACTORY",
        help="run on the app's own Host: MODULE's FACTORY, a plugsafe.Host or a function "
        "returning one (MODULE is found from the working directory)",
    )
    logs = _Parser(add_help=False)
    logs.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error", "off"),
        default="debug",
        help="plugin log messages shown on stderr (default: debug, i.e. all)",
    )

    run = sub.add_parser(
        "run",
        parents=[policy_opts, logs],
        help="call a plugin function and print its output",
        description="Load PLUGIN under the policy, call FUNCTION (a plugsafe ABI function) with "
        "the input, and write its output to stdout. Without --input or --input-file the input "
        "is read from stdin unless stdin is a terminal.",
    )
    run.add_argument(
        "plugin", metavar="PLUGIN", help=".wasm or .wat file (with --config: a plugin's name)"
    )
    run.add_argument("function", metavar="FUNCTION", help="the exported function to call")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="TEXT", help="the input, as UTF-8 text")
    source.add_argument(
        "--input-file", metavar="FILE", help="read the input from FILE ('-': stdin)"
    )
    run.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    run.add_argument(
        "--stats", action="store_true", help="report fuel used, time and peak memory (on stderr)"
    )
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser(
        "check",
        parents=[policy_opts, logs],
        help="would a plugin load under a policy? (exit 0 yes, 1 no)",
        description="List each import of PLUGIN as allowed, not allowed, unknown or wrong type "
        "under the policy, and say whether the plugin would load.",
    )
    check.add_argument(
        "plugin", metavar="PLUGIN", help=".wasm or .wat file (with --config: a plugin's name)"
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(handler=cmd_check)

    inspect = sub.add_parser(
        "inspect",
        parents=[logs],
        help="show a plugin's imports, exports, memories, ABI version, size and sha256",
    )
    inspect.add_argument("plugin", metavar="PLUGIN", help=".wasm or .wat file")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(handler=cmd_inspect)

    new = sub.add_parser("new", help="create a plugin project from the SDK templates")
    new.add_argument(
        "lang",
        choices=("rust", "c", "python", "c-component"),
        help="the plugin's language (python and c-component make WebAssembly components)",
    )
    new.add_argument("name", metavar="NAME", help="the plugin's name")
    new.add_argument("--dir", metavar="DEST", help="project directory (default: ./NAME)")
    new.set_defaults(handler=cmd_new)
    return parser


def _report_error(exc: BaseException, err: IO[str]) -> None:
    kind = "" if isinstance(exc, UsageError) else f"{type(exc).__name__}: "
    err.write(f"{PROG}: error: {kind}{exc}\n")
    if isinstance(exc, ImportNotAllowedError) and any(
        p.reason == "unknown" and p.module == "plugsafe" for p in exc.problems
    ):
        err.write(
            f"{PROG}: note: the command line offers plugins the built-in host functions (log) "
            f"and stubs of the functions the policy's [{HOST_FUNCTIONS_TABLE}] table or "
            "--host-function declares; --host MODULE:FACTORY runs on the app's own Host\n"
        )


Handler = Callable[[argparse.Namespace, IO[str], IO[str], IO[bytes]], int]


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    stdin: IO[bytes] | None = None,
) -> int:
    """Run the command line; return the exit code (docs/cli.md)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    inp = stdin if stdin is not None else sys.stdin.buffer
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        with _plugin_logs_to(err, getattr(args, "log_level", "debug")):
            return handler(args, out, err, inp)
    except (UsageError, PlugsafeError) as exc:
        if getattr(args, "json", False):
            _print_json({"ok": False, "error": _error_json(exc)}, out)
        else:
            _report_error(exc, err)
        return _exit_code(exc)
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`plugsafe run ... | head`): nothing left to say, and nobody to
        # say it to. Point stdout at devnull so the interpreter's final flush stays quiet.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception:
        err.write(f"{PROG}: internal error (a bug in plugsafe; please report it):\n")
        err.write(traceback.format_exc())
        return EXIT_INTERNAL
