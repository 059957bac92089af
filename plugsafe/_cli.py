"""The ``plugsafe`` command line: run, check and inspect plugins, and start new ones.

``docs/cli.md`` documents the commands and the exit codes. The CLI is a plain host: it offers
plugins only the built-in host functions (``log``, routed to stderr), never app-defined ones.
Everything a plugin produces (output, names of its imports and exports) is untrusted, so text
meant for a terminal is escaped and JSON is ASCII-only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib
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
from ._loader import LoadedModule
from ._log import escape
from ._plugin import Plugin
from ._policy import Policy, parse_policy
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
    """The policy file (or the default policy) with the command line's overrides on top."""
    policy = Policy.from_toml(args.policy) if args.policy else Policy()
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
            policy = parse_policy({table: {key: value}}, base=policy)
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
    data = _read_input(args, policy.max_input, stdin)
    if _component_cli.is_component_source(args.plugin):  # components: _component_cli
        return _component_cli.cmd_run(args, policy, data, out, err)
    plugin: Plugin | None = None
    result: bytes | None = None
    failure: PlugsafeError | None = None
    with Host() as host:
        try:
            plugin = host.load(args.plugin, policy=_cli_policy(policy, host))
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
    path = args.plugin
    rows: list[dict[str, Any]] = []
    failure: PlugsafeError | None = None
    note: str | None = None
    with Host() as host:
        builtins = set(host.functions)
        app_functions = sorted(policy.allow - builtins)
        try:
            cli_policy = _cli_policy(policy, host)
            loaded = host._prepare(path, policy=cli_policy, name=_plugin_name(path))
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
                rows.append(_import_row(imp, problems.get((imp.module, imp.name)), app_functions))
                if rows[-1]["status"] == "allowed" and imp.name in app_functions:
                    needed_app.append(imp.name)
            bad = [r for r in rows if r["status"] != "allowed"]
            if failure is not None:
                pass
            elif bad:
                failure = ImportNotAllowedError(
                    _plugin_name(path), [problems[(r["module"], r["name"])] for r in bad]
                )
            elif needed_app:
                note = (
                    f"the plugin imports {', '.join(needed_app)}, which the host app must "
                    "register; the command line has no app functions, so its start function "
                    "and ABI version were not tried"
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
            detail = "app-defined: the host app must register it with this signature"
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
        epilog="Exit codes: 0 ok, 1 check says no, 2 usage error, 3 load failure, 4 limit hit, "
        "5 plugin error, 70 internal error. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    policy_opts = _Parser(add_help=False)
    group = policy_opts.add_argument_group("policy")
    group.add_argument("--policy", metavar="FILE", help="policy file (TOML; docs/policy.md)")
    group.add_argument(
        "--allow",
        metavar="NAME",
        action="append",
        default=[],
        help="also allow this host function (repeatable); the command line offers only 'log'",
    )
    group.add_argument("--fuel", metavar="N", help='fuel per call, or "unlimited"')
    group.add_argument("--timeout", metavar="T", help='time per call, e.g. "250ms", "2s"')
    group.add_argument("--memory", metavar="SIZE", help='memory cap, e.g. "64MiB"')
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
    run.add_argument("plugin", metavar="PLUGIN", help=".wasm or .wat file")
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
    check.add_argument("plugin", metavar="PLUGIN", help=".wasm or .wat file")
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
    new.add_argument("lang", choices=("rust", "c"), help="the plugin's language")
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
            f"{PROG}: note: the command line offers plugins only the built-in host functions "
            "(log); functions an app registers are not available here\n"
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
