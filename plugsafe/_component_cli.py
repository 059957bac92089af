"""The command line for components: ``plugsafe inspect``, ``check`` and ``run`` of a component.

``_cli`` hands a component here (one line in each command); the printing and exit-code helpers
stay ``_cli``'s, imported when a command runs (``_cli`` imports this module, not the reverse, at
import time).

``run`` takes the function's arguments as JSON (``--input '[{"width": 1, ...}]'``): a JSON array
of the arguments, or, for a function of one parameter, that one value. JSON objects become
records, arrays lists or tuples, and a ``list<u8>`` is an array of numbers or ``{"base64": ...}``.
Results print as JSON the same way (bytes as ``{"base64": ...}``, records as objects, variants as
``{"tag": ..., "value": ...}``, flags as sorted arrays).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
from collections.abc import Mapping
from typing import IO, Any

from ._component import is_component_source
from ._componentplugin import ComponentPlugin, import_problems, prepare_component
from ._errors import AbiError, PlugsafeError, SignatureError
from ._host import Host
from ._policy import Policy
from ._runtime import _component as rc

__all__ = ["cmd_check", "cmd_inspect", "cmd_run", "is_component_source"]


def _from_json(value: Any) -> Any:
    """JSON arguments as plugsafe takes them: ``{"base64": ...}`` objects become bytes."""
    if isinstance(value, dict):
        if set(value) == {"base64"} and isinstance(value["base64"], str):
            try:
                return base64.b64decode(value["base64"], validate=True)
            except binascii.Error:
                raise SignatureError("a {'base64': ...} value is not valid base64") from None
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def to_json(value: Any) -> Any:
    """A result as JSON-ready data (see the module docstring)."""
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, rc.Record):
        return {k: to_json(v) for k, v in vars(value).items()}
    if isinstance(value, rc.Variant):
        return {"tag": value.tag, "value": to_json(value.value)}
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def _arguments(plugin: ComponentPlugin, function: str, data: bytes) -> list[Any]:
    params = plugin._resolve(function).params
    text = data.decode("utf-8", "replace").strip()
    if not text:
        return []
    try:
        value = json.loads(text)
        if len(params) == 1 and not (isinstance(value, list) and len(value) == 1):
            value = [value]
        if not isinstance(value, list):
            raise SignatureError("the input must be a JSON array of the function's arguments")
        return [_from_json(v) for v in value]
    except json.JSONDecodeError as exc:
        raise SignatureError(f"the input is not JSON ({exc}): give the arguments as JSON") from None
    except RecursionError:
        # json's decoder and _from_json recurse once per level: "[[[[..." on stdin would
        # otherwise end as an internal error.
        raise SignatureError(
            "the input is nested too deeply for Python's JSON decoder (its recursion limit)"
        ) from None


def cmd_run(
    args: argparse.Namespace, policy: Policy, data: bytes, out: IO[str], err: IO[str]
) -> int:
    """``plugsafe run COMPONENT FUNCTION``: call one function with JSON arguments."""
    from . import _cli

    result: Any = None
    failure: PlugsafeError | None = None
    with Host() as host:
        try:
            with host.load_component(args.plugin, policy=policy) as plugin:
                result = plugin.invoke(args.function, *_arguments(plugin, args.function, data))
        except PlugsafeError as exc:
            failure = exc
    try:
        text = _shown(args.json, result, failure)
    except RecursionError:
        # A result is as deep as its type, which the guest's binary declares, and the JSON
        # encoder recurses once per level: a result too deep for it is the guest's fault.
        failure = AbiError(
            f"component function {args.function!r} returned a value nested too deeply for "
            "Python's JSON encoder (its recursion limit)"
        )
        text = _shown(args.json, None, failure)
    out.write(text)
    if failure is not None and not args.json:
        _cli._report_error(failure, err)
    return _cli.EXIT_OK if failure is None else _cli._exit_code(failure)


def _shown(as_json: bool, result: Any, failure: PlugsafeError | None) -> str:
    """What ``run`` prints on stdout (made whole before anything is written)."""
    from . import _cli

    if not as_json:
        return "" if failure is not None else json.dumps(to_json(result), ensure_ascii=True) + "\n"
    report: dict[str, Any] = {"ok": failure is None}
    if failure is None:
        report["result"] = to_json(result)
    else:
        report["error"] = _cli._error_json(failure)
    buffer = io.StringIO()
    _cli._print_json(report, buffer)
    return buffer.getvalue()


def _world(host: Host, path: str, policy: Policy) -> rc.World:
    """Read and compile ``path`` (through the Host's caches) without instantiating it."""
    _, compiled = prepare_component(
        path, policy, name=None, engine=host._component_engine, loader=host._components
    )
    return compiled.world


def _world_json(world: rc.World) -> dict[str, Any]:
    return {
        "imports": [
            {
                "name": i.name,
                "kind": i.kind,
                "functions": {f.name: f.wit() for f in i.functions},
            }
            for i in world.imports
        ],
        "exports": {f.qualified: f.unsupported or f.wit() for f in world.exports},
    }


def cmd_inspect(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """``plugsafe inspect COMPONENT``: its world (imports and exports with WIT signatures)."""
    from . import _cli

    with Host() as host:
        world = _world(host, args.plugin, Policy(max_module_size=1 << 30))
    report = {"file": args.plugin, "format": "component", **_world_json(world)}
    if args.json:
        _cli._print_json(report, out)
        return _cli.EXIT_OK
    safe = _cli._safe
    lines = [f"file:        {safe(args.plugin)}", "format:      component"]
    lines.append(f"imports ({len(world.imports)}):")
    for imp in world.imports:
        lines.append(f"  {safe(imp.name)} ({imp.kind})")
        lines.extend(f"    {safe(f.name)}: {safe(f.wit())}" for f in imp.functions)
    lines.append(f"exports ({len(world.exports)}):")
    lines.extend(f"  {safe(f.qualified)}: {safe(f.unsupported or f.wit())}" for f in world.exports)
    out.write("\n".join(lines) + "\n")
    return _cli.EXIT_OK


def cmd_check(args: argparse.Namespace, policy: Policy, out: IO[str], err: IO[str]) -> int:
    """``plugsafe check COMPONENT``: would it load under the policy? Every offender listed."""
    from . import _cli

    failure: PlugsafeError | None = None
    problems: list[Mapping[str, str]] = []
    with Host() as host:
        try:
            world = _world(host, args.plugin, policy)
            problems = [
                {"import": f"{p.module}#{p.name}", "status": p.reason, "detail": p.detail}
                for p in import_problems(world, policy)
            ]
            if not problems:
                host.load_component(args.plugin, policy=policy).close()
        except PlugsafeError as exc:
            failure = exc
    loads = failure is None and not problems
    if args.json:
        _cli._print_json(
            {
                "plugin": args.plugin,
                "loads": loads,
                "imports": problems,
                "error": None if failure is None else _cli._error_json(failure),
            },
            out,
        )
    else:
        for p in problems:
            out.write(f"  {_cli._safe(p['import'])}  {p['status']}  ({_cli._safe(p['detail'])})\n")
        if loads:
            out.write("would load under this policy\n")
        elif failure is not None:
            out.write(f"would NOT load: {type(failure).__name__}: {failure}\n")
        else:
            out.write(f"would NOT load: {len(problems)} import(s) it may not have\n")
    return _cli.EXIT_OK if loads else _cli.EXIT_CHECK_FAILED
