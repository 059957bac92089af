"""plugsafe's dataclasses compile their generated methods once, not per process (issue 14).

``plugsafe._dataclass_code`` keeps the code objects ``@dataclass`` compiles for plugsafe's
classes beside plugsafe's bytecode. Each test runs fresh processes with their own
``PYTHONPYCACHEPREFIX`` (so the cache goes to a temporary directory, never the checkout) and
without ``PYTHONDONTWRITEBYTECODE`` (set on this machine), as an installed plugsafe runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import plugsafe
from plugsafe import _dataclass_code

# Counts the texts dataclasses compiles for plugsafe's classes, then prints what the classes do:
# equal, hashable, frozen, printed and constructed (signatures) as without the cache.
_PROBE = r"""
import builtins, dataclasses, inspect, json, sys
compiled = []
_compile = builtins.compile
def counting(source, *args, **kwargs):
    if isinstance(source, str) and source.startswith("def __create_fn__"):
        compiled.append(source)
    return _compile(source, *args, **kwargs)
builtins.compile = counting
import plugsafe
from plugsafe import _dataclass_code
builtins.compile = _compile
p = plugsafe.Policy(fuel=5)
try:
    p.fuel = 6
    frozen = False
except dataclasses.FrozenInstanceError:
    frozen = True
print(json.dumps({
    "compiled": len(compiled),
    "hook_left": hasattr(dataclasses, "exec"),
    "cache": _dataclass_code._PATH,
    "eq": p == plugsafe.Policy(fuel=5) and p != plugsafe.Policy(fuel=6),
    "hash": hash(plugsafe.Wasi()) == hash(plugsafe.Wasi()),
    "frozen": frozen,
    "replace": dataclasses.replace(p, fuel=7).fuel,
    "repr": repr(plugsafe.Pooling(instances=3, memory_size=1 << 20)),
    "signatures": {
        name: str(inspect.signature(getattr(plugsafe, name)))
        for name in ("Policy", "Wasi", "Pooling", "CallStats", "ExportInfo", "Preopen")
    },
}))
"""


def _run(prefix: Path, *, write: bool = True) -> dict[str, object]:
    env = dict(os.environ)
    env["PYTHONPYCACHEPREFIX"] = str(prefix)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def _same_behaviour(a: dict[str, object], b: dict[str, object]) -> None:
    for key in ("eq", "hash", "frozen", "replace", "repr", "signatures"):
        assert a[key] == b[key], key
    assert a["eq"] is True and a["hash"] is True and a["frozen"] is True and a["replace"] == 7
    assert a["hook_left"] is False and b["hook_left"] is False


def test_the_second_process_compiles_nothing_and_its_classes_behave_the_same(
    tmp_path: Path,
) -> None:
    first = _run(tmp_path)
    cache = Path(str(first["cache"]))
    assert cache.is_file() and str(cache).startswith(str(tmp_path))
    assert isinstance(first["compiled"], int) and first["compiled"] > 20
    second = _run(tmp_path)
    assert second["compiled"] == 0
    _same_behaviour(first, second)
    # Nothing new was compiled, so the cache is not rewritten either.
    before = cache.stat().st_mtime_ns
    _run(tmp_path)
    assert cache.stat().st_mtime_ns == before


def test_a_corrupt_or_foreign_cache_is_ignored_and_replaced(tmp_path: Path) -> None:
    first = _run(tmp_path)
    cache = Path(str(first["cache"]))
    good = cache.read_bytes()
    for bad in (b"", b"garbage", b"\x00\x00\x00\x00" + good[4:], good[:4] + b"\xff" * 64):
        cache.write_bytes(bad)
        again = _run(tmp_path)
        assert again["compiled"] == first["compiled"]
        _same_behaviour(first, again)
        assert cache.read_bytes()[:4] == good[:4]  # written back, valid
        assert _run(tmp_path)["compiled"] == 0


def test_nothing_is_written_where_python_writes_no_bytecode(tmp_path: Path) -> None:
    first = _run(tmp_path, write=False)
    assert not Path(str(first["cache"])).exists()
    assert list(tmp_path.rglob("*.bin")) == []
    _same_behaviour(first, _run(tmp_path))


def test_texts_of_other_modules_pass_straight_through() -> None:
    # Another thread defining a dataclass while plugsafe imports: its text is run as exec would
    # run it, and never cached.
    ns: dict[str, object] = {}
    text = "def __create_fn__():\n def f(x):\n  return x + 1\n return f"
    _dataclass_code._exec(text, {"__name__": "someone_else"}, ns)
    assert text not in _dataclass_code._used
    assert text not in _dataclass_code._codes
    f = ns["__create_fn__"]()  # type: ignore[operator]
    assert f(1) == 2


def test_the_hook_is_gone_after_import() -> None:
    import dataclasses

    assert plugsafe.__name__ == "plugsafe"
    assert not hasattr(dataclasses, "exec")


@pytest.mark.parametrize("source", ["x = 1", "def __create_fn__():\n return 5"])
def test_exec_runs_the_text_in_the_given_namespaces(source: str) -> None:
    globals_: dict[str, object] = {"__name__": "plugsafe._probe"}
    locals_: dict[str, object] = {}
    _dataclass_code._exec(source, globals_, locals_)
    assert locals_ and "__builtins__" in globals_
    _dataclass_code._used.clear()
    _dataclass_code._codes.clear()
    _dataclass_code._state["new"] = False
