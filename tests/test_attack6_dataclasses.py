"""Attack pass 6: the hand-made dataclasses' code cache (cold2, ``_dataclass_code``).

The cache (``__pycache__/_dataclass_code.<tag>.bin``, or under ``PYTHONPYCACHEPREFIX``) may be
corrupt, truncated, another interpreter's, unwritable, or written by two first imports at
once: ``import plugsafe`` must work every time, the classes behave the same, and a bad cache
is replaced. Its temporary file must not follow a link planted in its place (a shared
``PYTHONPYCACHEPREFIX``). Pickles cross ``PLUGSAFE_STDLIB_DATACLASSES`` on and off.
"""

from __future__ import annotations

import base64
import json
import marshal
import os
import random
import subprocess
import sys
from importlib.util import MAGIC_NUMBER
from pathlib import Path

import pytest

from plugsafe import _dataclass_code

_PROBE = """
import json, pickle, base64, sys, dataclasses
from plugsafe import _dataclass_code
compiled = []
real = _dataclass_code.compile if hasattr(_dataclass_code, "compile") else None
import builtins
original = builtins.compile
def counting(*a, **k):
    compiled.append(1)
    return original(*a, **k)
builtins.compile = counting
import plugsafe
builtins.compile = original
objs = [plugsafe.Policy(fuel=5, allow={"log"}), plugsafe.Pooling(2, "1MiB", keep_resident=4096),
        plugsafe.Wasi(args=("a",))]
if len(sys.argv) > 1:
    got = pickle.loads(base64.b64decode(sys.argv[1]))
    same = [a == b and hash(a) == hash(b) for a, b in zip(got, objs)]
    same.append(dataclasses.replace(got[0], fuel=9) == dataclasses.replace(objs[0], fuel=9))
else:
    same = []
print(json.dumps({
    "compiled": len(compiled),
    "cache": _dataclass_code._PATH,
    "repr": [repr(o) for o in objs],
    "pickle": base64.b64encode(pickle.dumps(objs)).decode(),
    "same": same,
}))
"""


def _run(prefix: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    full = dict(os.environ)
    full.pop("PYTHONDONTWRITEBYTECODE", None)
    full.pop("PLUGSAFE_STDLIB_DATACLASSES", None)
    full["PYTHONPYCACHEPREFIX"] = str(prefix)
    full.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True, text=True, env=full, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _system_error_payload() -> bytes:
    """A marshal payload whose loading raises SystemError (a code object with a bad field):
    found by flipping bytes of a real one, deterministically."""
    good = marshal.dumps({"def f(): pass": compile("def f(): pass", "<string>", "exec")})
    rng = random.Random(6)
    for _ in range(100_000):
        bad = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        try:
            marshal.loads(bytes(bad))
        except SystemError:
            return bytes(bad)
        except Exception:
            continue
    raise AssertionError("no payload found")  # pragma: no cover


def test_a_cache_marshal_cannot_load_never_breaks_the_import(tmp_path: Path) -> None:
    # Before: _load caught OSError, ValueError, EOFError and TypeError only; a corrupt code
    # object makes marshal raise SystemError, and `import plugsafe` failed with it.
    first = _run(tmp_path)
    cache = Path(str(first["cache"]))
    good = cache.read_bytes()
    payload = _system_error_payload()
    with pytest.raises(SystemError):
        marshal.loads(payload)
    for bad in (MAGIC_NUMBER + payload, good[: len(good) // 2], good + b"\xff"):
        cache.write_bytes(bad)
        again = _run(tmp_path)
        assert again["repr"] == first["repr"]
        assert cache.read_bytes() != bad or bad == good + b"\xff"
        assert _run(tmp_path)["compiled"] == 0  # rewritten, and used


def test_a_cache_that_cannot_be_written_is_skipped(tmp_path: Path) -> None:
    # The cache's directory cannot be made (a file is in its way; as root, a read-only mode
    # would not stop the write): the import works and compiles, as without a cache.
    first = _run(tmp_path / "ok")
    cache_dir = Path(str(first["cache"])).parent
    blocked = tmp_path / "blocked"
    relative = cache_dir.relative_to(tmp_path / "ok")
    (blocked / relative).parent.mkdir(parents=True)
    (blocked / relative).write_bytes(b"a file, not a directory")
    for _ in range(2):
        again = _run(blocked)
        assert again["repr"] == first["repr"] and again["compiled"] == first["compiled"]
    assert not list(blocked.rglob("*.tmp"))


def test_first_imports_at_once_leave_one_valid_cache(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path)
    procs = [
        subprocess.Popen([sys.executable, "-c", _PROBE], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(4)
    ]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({json.dumps(o["repr"]) for o in outs}) == 1
    assert not list(tmp_path.rglob("*.tmp"))
    assert _run(tmp_path)["compiled"] == 0


def test_the_temporary_file_never_follows_a_planted_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a shared PYTHONPYCACHEPREFIX, another user can plant "<cache>.<pid>.tmp" as a link
    # to a file of ours: writing the cache must not write through it (as importlib's own
    # .pyc writer does not: O_EXCL).
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "cache" / "_dataclass_code.tag.bin"
    path.parent.mkdir()
    monkeypatch.setattr(_dataclass_code, "_PATH", str(path))
    link = Path(f"{path}.{os.getpid()}.tmp")
    link.symlink_to(victim)
    monkeypatch.setitem(_dataclass_code._state, "new", True)
    monkeypatch.setitem(_dataclass_code._state, "importing", False)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    _dataclass_code.finish()
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize(("dump_native", "load_native"), [(True, False), (False, True)])
def test_pickles_cross_the_stdlib_switch(
    tmp_path: Path, dump_native: bool, load_native: bool
) -> None:
    def env(native: bool) -> dict[str, str]:
        return {} if native else {"PLUGSAFE_STDLIB_DATACLASSES": "1"}

    dumped = _run(tmp_path, env=env(dump_native))
    loaded = _run(tmp_path, str(dumped["pickle"]), env=env(load_native))
    assert loaded["same"] == [True, True, True, True]
    assert base64.b64decode(str(dumped["pickle"]))
