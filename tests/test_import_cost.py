"""``import plugsafe`` pays only for what every host uses (issue 14: cold start).

Standard-library modules needed only on rare paths (compiling in a child process, writing a cache
entry, TOML files, typo suggestions, pools, asyncio) are imported where they are used: a deliberate
list, checked here, of the only imports allowed inside functions. Everything else is imported at
the top of its module, and plugsafe's own modules keep their one-way order
(``tests/test_loader.py`` checks the cycles).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import wasmtime

import plugsafe

from wat import ECHO

PACKAGE = Path(plugsafe.__file__).parent

# Heavy on a cold start, used on rare paths only: imported where they are used.
RARE = frozenset(
    {
        "asyncio",  # call_async and friends (_aio)
        "concurrent.futures",  # PluginPool's executor (_pool)
        "ctypes.util",  # librt on glibc < 2.34 (_runtime/_ticker)
        "decimal",  # parsing a size or duration string (_units)
        "hashlib",  # OpenSSL's sha256, after the first 256 KiB hashed (_sha)
        "difflib",  # "did you mean" in policy errors (_policy, _policyfile)
        "importlib.metadata",  # the wasmtime version, when asked (_runtime/_engine)
        "logging",  # when a plugin first logs (_log's lazy loggers)
        "mmap",  # trying a pool's reservation before its engine is made (_runtime/_engine)
        "pickle",  # pickling an error's cause (_errors)
        "platform",  # the machine's name on Windows, which has no os.uname (_runtime/_lib)
        "resource",  # the compiler child's memory cap, the stack size (_isolate, _nesting)
        "signal",  # how the compiler child died (_isolate)
        "subprocess",  # the compiler child (_isolate)
        "tempfile",  # writing a disk-cache entry (_cache)
        "tomli",  # TOML files on Python 3.10 (_policyfile)
        "tomllib",  # TOML files (_policyfile)
    }
)
# Deferred imports that are not about import time: cffi and the optional fast path are tried
# and may be missing; the CLI's entry point, the pytest plugin and errors reaching back into the
# runtime are loaded only when used.
OTHER = frozenset(
    {
        ("__main__", "._cli"),
        # _cli hands components to _component_cli, which reaches back for _cli's printing
        # helpers when a command runs (a one-way import order at import time).
        ("_component_cli", "."),
        ("_cdef", "cffi"),
        ("_errors", "._runtime"),
        ("_policy", "functools"),
        ("_pytest_plugin", "functools"),
        ("_pytest_plugin", "plugsafe.testing"),
        # Checking the cffi declarations against wasmtime-py's own, only when it is loaded.
        ("_runtime._cffi", "wasmtime"),
        ("_runtime._lib", ".._cdef"),
        ("_runtime._lib", ".._wasmtime_cffi"),
        ("_runtime._lib", "cffi"),
        ("_runtime._select", "._cffi"),
        # The optional compiled call (plugsafe._speedups), not built where there was no compiler.
        ("_runtime._cffi", ".."),
        # wasmtime-py's component API, on the first component load (most hosts never load one).
        ("_runtime._component", "wasmtime.component"),
        ("_wasishims", "."),
    }
)


def _deferred() -> set[tuple[str, str]]:
    """(module, what it imports) for every import inside a function of the package."""
    found: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)

        def visit(node: ast.AST, nested: bool, module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                if nested and isinstance(child, ast.Import):
                    found.update((module, alias.name) for alias in child.names)
                elif nested and isinstance(child, ast.ImportFrom):
                    found.add((module, "." * child.level + (child.module or "")))
                inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                visit(child, inner)

        visit(ast.parse(path.read_text()), False)
    return found


def test_only_listed_imports_are_deferred() -> None:
    unexpected = {(m, name) for m, name in _deferred() if name not in RARE} - OTHER
    assert unexpected == set(), (
        "an import inside a function: import it at the top of the module, or add it to RARE "
        f"with the reason if it is heavy and used only on a rare path: {sorted(unexpected)}"
    )


# Public names whose modules plugsafe/__init__.py imports on first use (PEP 562 __getattr__),
# with what those modules alone bring in.
LAZY_NAMES = {
    "CallInfo": "plugsafe._callinfo",
    "ComponentPlugin": "plugsafe._componentplugin",
    "PluginPool": "plugsafe._pool",
    "Pooling": "plugsafe._pooling",
    "Record": "plugsafe._runtime._component",
    "RunResult": "plugsafe._runresult",
    "Variant": "plugsafe._runtime._component",
}
LAZY_MODULES = frozenset({*LAZY_NAMES.values(), "queue"})


def _less_wasmtime_py_on_310(loaded: set[str]) -> set[str]:
    """``loaded`` without what wasmtime-py's own import brings on Python 3.10 while a start-up
    still imports it: its _ffi imports platform, whose top imports subprocess (with signal
    and selectors) before 3.11 (3.11+ imports it only to run a command)."""
    if sys.version_info < (3, 11) and "wasmtime._ffi" in loaded:
        return loaded - {"signal", "subprocess", "selectors"}
    return loaded


def test_import_plugsafe_does_not_import_the_rare_path_modules() -> None:
    code = "import sys, json; import plugsafe; print(json.dumps(sorted(m for m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = _less_wasmtime_py_on_310(set(json.loads(out)))
    assert RARE.isdisjoint(loaded), sorted(RARE & loaded)
    # What those pulled in with them (tempfile: random, shutil, bz2, lzma; TOML: datetime).
    assert {"shutil", "random", "bz2", "lzma", "datetime", "selectors"}.isdisjoint(loaded), sorted(
        {"shutil", "random", "bz2", "lzma", "datetime", "selectors"} & loaded
    )
    # What logging pulled in with it; the modules of the lazy public names.
    assert {"traceback", "textwrap", "string"}.isdisjoint(loaded), sorted(
        {"traceback", "textwrap", "string"} & loaded
    )
    assert LAZY_MODULES.isdisjoint(loaded), sorted(LAZY_MODULES & loaded)


def test_a_cold_start_imports_nothing_rare(tmp_path: Path) -> None:
    # The cold start the benchmark measures (import, load from a cache_dir, call) twice, so the
    # second process loads from the cache: none of the rare modules, logging included.
    wat = '(module (func (export "f") (result i32) i32.const 7))'
    code = f"""
import sys, json, plugsafe
host = plugsafe.Host(cache_dir={str(tmp_path / "cache")!r})
assert host.load({wat!r}.encode()).invoke("f") == 7
print(json.dumps(sorted(sys.modules)))
"""
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    loaded = _less_wasmtime_py_on_310(set(json.loads(out)))
    assert (RARE | LAZY_MODULES).isdisjoint(loaded), sorted((RARE | LAZY_MODULES) & loaded)


def test_the_lazy_public_names_behave_as_imported_ones() -> None:
    # ``from plugsafe import X``, ``plugsafe.X``, dir() and ``import *`` work as before; the class
    # is plugsafe.X however it is reached first (here: through its private module).
    code = f"""
import sys, typing
import plugsafe
lazy = {LAZY_NAMES!r}
assert set(lazy) <= set(plugsafe.__all__) and set(lazy) <= set(dir(plugsafe))
assert not any(m in sys.modules for m in lazy.values())
import importlib
for name, module in lazy.items():
    obj = getattr(importlib.import_module(module), name)
    assert obj.__module__ == "plugsafe", obj
    typing.get_type_hints(obj)
    assert getattr(plugsafe, name) is obj
from plugsafe import PluginPool
assert PluginPool is plugsafe.PluginPool
ns = {{}}
exec("from plugsafe import *", ns)
assert set(plugsafe.__all__) <= set(ns), set(plugsafe.__all__) - set(ns)
try:
    plugsafe.NoSuchName
except AttributeError as exc:
    assert "NoSuchName" in str(exc)
else:
    raise AssertionError("no AttributeError")
assert not hasattr(plugsafe, "TYPE_CHECKING")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_type_checkers_see_the_lazy_names(tmp_path: Path) -> None:
    # mypy --strict on user code: the lazy names have their real types (TYPE_CHECKING imports in
    # plugsafe/__init__.py), and a misspelt name is still an error (no module __getattr__ for
    # type checkers to fall back on).
    user = tmp_path / "user.py"
    user.write_text(
        "import plugsafe\n"
        "from plugsafe import PluginPool\n"
        "def f(pool: PluginPool) -> None:\n"
        "    pool.close()\n"
        "reveal_type(plugsafe.PluginPool)\n"
        "plugsafe.PluginPoool\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(user)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(PACKAGE.parent)},
    )
    out = done.stdout
    assert 'Revealed type is "def (' in out and "plugsafe._pool.PluginPool" in out, out
    assert 'Module has no attribute "PluginPoool"' in out, out
    # (MYPYPATH makes plugsafe's own sources checked too, without the project's per-module
    # settings: only the user's file counts here; tests/test_quality.py checks plugsafe.)
    errors = [line for line in out.splitlines() if line.startswith("user.py") and "error:" in line]
    assert len(errors) == 1, out


def test_log_levels_are_loggings() -> None:
    # _log spells logging's level numbers out so that importing plugsafe does not import logging.
    import logging

    from plugsafe._log import LEVELS

    assert LEVELS == (logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)


def test_a_lazy_logger_is_the_real_one_once_used() -> None:
    import logging

    from plugsafe._log import lazy_logger, logger_for

    logger = logger_for("lazy/test")
    assert logger.name == "plugsafe.plugin.lazy_test"
    real = logging.getLogger("plugsafe.plugin.lazy_test")
    assert logger.level == real.level and logger.handlers is real.handlers
    assert logger.log == real.log and logger.exception == real.exception
    assert logger_for("lazy/test") is logger
    assert lazy_logger("plugsafe").isEnabledFor(logging.CRITICAL)


def test_the_rare_paths_still_work_after_a_bare_import(tmp_path: Path) -> None:
    # Each rare path imports its module itself: run them in a fresh process that imported only
    # plugsafe, so nothing imported by the test session hides a missing import.
    (tmp_path / "p.toml").write_text("[limits]\nfuel = 1000\n")
    code = f"""
import asyncio, plugsafe
policy = plugsafe.Policy.from_toml({str(tmp_path / "p.toml")!r})
assert policy.fuel == 1000
try:
    plugsafe.Policy(fuell=1)
except plugsafe.PolicyError as exc:
    assert "did you mean 'fuel'" in str(exc), exc
wat = '(module (func (export "f") (result i32) i32.const 7))'
with plugsafe.Host(cache_dir={str(tmp_path / "cache")!r}) as host:
    p = host.load(wat.encode(), policy=plugsafe.Policy(compile_timeout=60))
    assert p.invoke("f") == 7
    assert asyncio.run(p.invoke_async("f")) == 7
    with plugsafe.PluginPool(wat.encode(), size=2, host=host) as pool:
        assert pool.invoke("f") == 7
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert any((tmp_path / "cache").iterdir())


def test_typing_extensions_is_not_imported_where_typing_has_what_plugsafe_uses() -> None:
    # ~15 ms of CPU on 3.11 for one annotation (Self): every host paid it at start-up. On 3.10
    # too (type checkers alone read typing_extensions' Self there: plugsafe/_closing.py).
    code = "import sys; import plugsafe; print('typing_extensions' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_an_error_and_its_cause_pickle_after_a_bare_import() -> None:
    # pickle is imported only when an error is pickled: in a fresh process that imported
    # nothing else, the round trip (and its cause) still works.
    code = """
import plugsafe, sys
err = plugsafe.HostFunctionError("boom", function="f")
err.__cause__ = KeyError("k")
assert "pickle" not in sys.modules
import pickle
back = pickle.loads(pickle.dumps(err))
assert type(back) is plugsafe.HostFunctionError and str(back) == str(err), back
assert isinstance(back.__cause__, KeyError) and back.__cause__.args == ("k",), back.__cause__
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_sizes_and_durations_parse_after_a_bare_import() -> None:
    # decimal is imported only when a size or duration string is parsed.
    code = """
import plugsafe, sys
assert "decimal" not in sys.modules
p = plugsafe.Policy(timeout="250ms", memory="1.5KiB")
assert (p.timeout, p.memory) == (0.25, 1536), (p.timeout, p.memory)
assert plugsafe.Policy(timeout="1e-06s").timeout == 1e-06
assert plugsafe.Policy(timeout="2m").timeout == 120.0
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# A fresh process's prelude: records every pattern plugsafe's own modules compile (in ``seen``).
_RE_SPY = """
import re, sys
seen = []
compile_ = re._compile
def spy(pattern, flags):
    caller = sys._getframe(2).f_globals.get("__name__", "")
    if caller.startswith("plugsafe"):
        seen.append((caller, pattern))
    return compile_(pattern, flags)
re._compile = spy
"""


def test_import_plugsafe_compiles_no_regular_expression_of_its_own() -> None:
    # plugsafe's patterns are lazy_re: compiled when first used (a fresh process that only
    # imports plugsafe compiles none of them; the standard library's own are not counted).
    code = _RE_SPY + "import plugsafe\nprint(seen)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out


def test_a_cold_start_compiles_no_regular_expression_of_its_own(tmp_path: Path) -> None:
    # Loading a core module (from a file, then from the disk cache, then from bytes) under a
    # plain name compiles none of plugsafe's patterns: is_component_source tells b"\0asm" from
    # text by its first byte, logger_for keeps a name of [A-Za-z0-9_-] as it is (re's compiler
    # is Python code: about 0.5 M instructions a pattern; issue 14).
    wasm = tmp_path / "seven.wasm"
    wasm.write_bytes(wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 7))'))
    code = (
        _RE_SPY
        + f"""
import plugsafe
host = plugsafe.Host(cache_dir={str(tmp_path / "cache")!r})
assert host.load({str(wasm)!r}, name="seven_7-x").invoke("f") == 7
assert host.load({str(wasm)!r}).invoke("f") == 7
assert host.load(open({str(wasm)!r}, "rb").read(), name="Seven").invoke("f") == 7
print(seen)
"""
    )
    for _ in range(2):  # the second process loads from the disk cache
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == "[]", out


def test_the_pattern_free_checks_agree_with_the_patterns(tmp_path: Path) -> None:
    # What the cold start decides without compiling a pattern is what the pattern decides.
    from plugsafe import _component, _log

    texts = [
        b"",
        b"\0asm\x01\0\0\0",
        b"(component)",
        b"  (component)",
        b"\t\n\r\f\v(component)",
        b";; c\n(component)",
        b"(; c ;) (component)",
        b"(module)",
        b"x(component)",
        b";(component)",
        b"\x85(component)",
        b"\xa0(component)",
    ]
    for text in texts:
        expected = text[:8] == _component.COMPONENT_HEADER or bool(_component._TEXT.match(text))
        assert _component.is_component_source(text) is expected, text
    names = ["", "a", "Plug_in-7", "a b", "a.b", "é", "x/y", "\uff46ull", "\u0663", "a\n", "_-"]
    for name in names:
        expected = f"plugsafe.plugin.{_log._UNSAFE_NAME.sub('_', name) or '_'}"
        assert _log.logger_for(name).name == expected, name


def test_a_lazy_pattern_is_the_compiled_one_once_used() -> None:
    import copy
    import re

    from plugsafe._lazyre import lazy_re

    text = lazy_re(r"(?P<word>[a-z]+)(\d*)", re.I)
    assert "word" in repr(text)
    assert text.fullmatch("Abc12") is not None and text.fullmatch("-") is None
    compiled = re.compile(r"(?P<word>[a-z]+)(\d*)", re.I)
    assert (text.pattern, text.flags, text.groups, text.groupindex) == (
        compiled.pattern,
        compiled.flags,
        compiled.groups,
        compiled.groupindex,
    )
    assert text.sub("x", "ab1 cd") == "x x" and text.findall("ab1 cd") == [("ab", "1"), ("cd", "")]
    found = text.match("zz9")
    assert found is not None and found.group("word") == "zz"
    raw = lazy_re(rb"\x00+")
    assert raw.split(b"a\x00\x00b") == [b"a", b"b"]
    copy.copy(raw)  # probing dunders (copy, pickle) does not compile or fail


def test_sha256_is_the_same_before_and_after_openssl_is_loaded() -> None:
    # _sha hashes with CPython's built-in SHA-256 until its budget is spent, then with hashlib's
    # (OpenSSL): the digests are the same either way, for every kind of buffer plugsafe hashes.
    code = """
import sys
from plugsafe import _sha
assert "hashlib" not in sys.modules
datas = [b"", b"abc", bytes(range(256)) * 300, bytearray(b"x" * 1000), memoryview(b"y" * 999)]
before = [(_sha.sha256(d).digest(), _sha.sha256(d).hexdigest()) for d in datas]
assert "hashlib" not in sys.modules  # all within the budget
big = b"z" * (_sha._BUDGET + 1)
big_digest = _sha.sha256(big).hexdigest()  # over the budget: OpenSSL's
assert "hashlib" in sys.modules
import hashlib
assert big_digest == hashlib.sha256(big).hexdigest()
for d, (digest, hexdigest) in zip(datas, before):
    assert digest == hashlib.sha256(d).digest() == _sha.sha256(d).digest()
    assert hexdigest == hashlib.sha256(d).hexdigest()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_sha256_uses_hashlib_once_the_app_imported_it() -> None:
    code = """
import hashlib
from plugsafe import _sha
h = _sha.sha256(b"abc")
assert type(h) is type(hashlib.sha256(b"abc")), type(h)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_component_loads_after_a_bare_import(tmp_path: Path) -> None:
    # _component's runtime half (rc) is a stand-in until a component is loaded; then it is the
    # module itself, and Record/Variant are plugsafe's whichever way they were reached first.
    tests = Path(__file__).parent
    code = f"""
import sys
sys.path.insert(0, {str(tests)!r})
from component_wat import WORLD
import plugsafe
from plugsafe import _component
assert "plugsafe._runtime._component" not in sys.modules
assert repr(_component.rc).startswith("<lazy module"), _component.rc
with plugsafe.Host() as host:
    plugin = host.load(WORLD.encode(), name="world")
    assert plugin.invoke("add", 2, 3) == 5
    plugin.close()
from plugsafe._runtime import _component as rc
assert _component.rc is rc
assert rc.COMPONENT_HEADER == _component.COMPONENT_HEADER
assert plugsafe.Record is rc.Record and plugsafe.Record.__module__ == "plugsafe"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_lazy_module_stands_in_until_first_used() -> None:
    from plugsafe._lazymodule import lazy_module

    namespace: dict[str, object] = {}
    namespace["cs"] = stand_in = lazy_module("colorsys", namespace, "cs")
    assert "colorsys" in repr(stand_in)
    assert stand_in.rgb_to_hsv(0.0, 0.0, 0.0) == (0.0, 0.0, 0.0)
    import colorsys

    assert namespace["cs"] is colorsys


def test_host_functions_work_after_a_bare_import() -> None:
    # inspect (and ast, dis, tokenize with it) is imported when a host function is first
    # registered, not by import plugsafe (issue 14): register, refuse an async one, call one.
    code = """
import sys, plugsafe
assert "inspect" not in sys.modules
host = plugsafe.Host()
@host.function
def double(x: int) -> int:
    return 2 * x
assert "inspect" in sys.modules
async def later(x: int) -> int:
    return x
try:
    host.function(later)
except TypeError:
    pass
else:
    raise AssertionError("async host function accepted")
wat = '''(module (import "plugsafe" "double" (func $d (param i32) (result i32)))
  (func (export "f") (param i32) (result i32) local.get 0 call $d))'''
plugin = host.load(wat.encode(), policy=plugsafe.Policy(allow={"double"}))
assert plugin.invoke("f", 21) == 42
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_collector_is_as_the_app_left_it_after_import_plugsafe() -> None:
    # plugsafe's import holds the cyclic collector off (_dataclass_code.start): enabled again
    # after it if it was enabled, left disabled if the app had disabled it, and enabled again
    # when the import fails half-way (a module that cannot be imported).
    code = """
import gc, sys
assert gc.isenabled()
gc.disable()
import plugsafe
assert not gc.isenabled()
print("ok")
"""
    failing = """
import gc, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "plugsafe._wasi":
            raise ImportError("refused")
sys.meta_path.insert(0, Refuse())
try:
    import plugsafe
except ImportError:
    pass
else:
    raise AssertionError("imported")
assert gc.isenabled()
assert "exec" not in vars(sys.modules.get("dataclasses") or sys)
print("ok")
"""
    enabled = "import gc, plugsafe; assert gc.isenabled(); print('ok')"
    for source in (code, failing, enabled):
        done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok"


def test_what_the_import_made_is_old_and_nothing_stays_frozen() -> None:
    # _dataclass_code.finish moves what the import made to the oldest generation unscanned
    # (gc.freeze() then gc.unfreeze(), issue 14): nothing stays frozen, the app's garbage from
    # before the import is still collected, and what the app froze itself stays frozen.
    code = """
import gc
class Cycle:
    pass
def garbage():
    a, b = Cycle(), Cycle()
    a.other, b.other = b, a
    import weakref
    return weakref.ref(a)
ref = garbage()
assert ref() is not None
import plugsafe
assert gc.isenabled() and gc.get_freeze_count() == 0
assert gc.get_count()[0] < 700, gc.get_count()  # no young collection pending
assert any(o is plugsafe.Host for o in gc.get_objects(generation=2))
gc.collect()
assert ref() is None  # collected, not kept
print("ok")
"""
    frozen = """
import gc
keep = [[] for _ in range(100)]
gc.freeze()
count = gc.get_freeze_count()
import plugsafe
# The app's frozen objects stay frozen (in no generation; a few frozen ones died meanwhile).
assert not any(o is keep for o in gc.get_objects())
assert gc.get_freeze_count() > count // 2
print("ok")
"""
    for source in (code, frozen):
        done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok"


# plugsafe's own modules that only rare paths use, bound as lazy_function stand-ins by the
# modules that call them (issue 14): a cold start from a cache_dir loads none of them.
LAZY_OWN = frozenset(
    {
        "plugsafe._aio",  # call_async and friends
        "plugsafe._config",  # Host.load_config
        "plugsafe._isolate",  # the compiler child (compile_timeout / compile_memory)
        "plugsafe._policyfile",  # policy files and tables
        "plugsafe._runtime._ctypes",  # the ctypes fallback backend
        "plugsafe._signatures",  # declared host functions (config and policy files)
        "plugsafe._units",  # sizes and durations given as strings ("64MiB", "250ms")
    }
)


def test_the_policy_s_unit_constants_are_the_parser_s() -> None:
    from plugsafe import _policy, _units

    assert (_policy.KiB, _policy.MiB, _policy.GiB) == (_units.KiB, _units.MiB, _units.GiB)


def test_a_cold_start_without_site_imports_no_importlib_package(tmp_path: Path) -> None:
    # plugsafe takes the import system's functions from the modules Python starts with
    # (_frozen_importlib, _frozen_importlib_external), not from the importlib package (1.4 M
    # instructions of a cold start, issue 14). Only without site (-S) is importlib absent at
    # start-up: the development environment's .pth hook imports it.
    import sysconfig

    wat = '(module (func (export "f") (result i32) i32.const 7))'
    code = f"""
import sys
assert "importlib" not in sys.modules, "importlib before plugsafe"
import plugsafe
from plugsafe import _dataclass_code, _lazymodule
host = plugsafe.Host(cache_dir={str(tmp_path / "cache")!r})
assert host.load({wat!r}.encode()).invoke("f") == 7
assert plugsafe.PluginPool.__module__ == "plugsafe"  # a lazy name, through import_module
loaded = "importlib" in sys.modules
import importlib, importlib.util
assert _lazymodule._bootstrap is importlib._bootstrap
assert _dataclass_code._MAGIC == importlib.util.MAGIC_NUMBER
assert _dataclass_code._PATH.endswith(".bin")
print(loaded)
"""
    paths = [
        str(PACKAGE.parent),
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    for _ in range(2):  # the second process loads from the disk cache
        done = subprocess.run(
            [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "False"


def test_a_cold_start_loads_none_of_the_rare_own_modules(tmp_path: Path) -> None:
    wat = '(module (func (export "f") (result i32) i32.const 7))'
    code = f"""
import sys, json, plugsafe
host = plugsafe.Host(cache_dir={str(tmp_path / "cache")!r})
assert host.load({wat!r}.encode()).invoke("f") == 7
print(json.dumps(sorted(sys.modules)))
"""
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    loaded = set(json.loads(out))
    assert LAZY_OWN.isdisjoint(loaded), sorted(LAZY_OWN & loaded)
    heavy = {"dataclasses", "inspect"}
    assert heavy.isdisjoint(loaded), sorted(heavy & loaded)


def test_the_rare_own_modules_work_after_a_bare_import(tmp_path: Path) -> None:
    # Each in a fresh process: a host config file, a policy table, the compiler child, and the
    # ctypes backend forced by the environment.
    wat = '(module (func (export "f") (result i32) i32.const 7))'
    (tmp_path / "p.wat").write_text(wat)
    (tmp_path / "host.toml").write_text(
        '[plugins.p]\nsource = "p.wat"\n[plugins.p.limits]\nfuel = 1000\n'
    )
    code = f"""
import sys, plugsafe
from plugsafe import _host, _loader, _policy
assert repr(_host.load_config).startswith("<lazy plugsafe._config.load_config")
with plugsafe.Host() as host:
    plugins = host.load_config({str(tmp_path / "host.toml")!r})
    assert plugins["p"].invoke("f") == 7 and plugins["p"].policy.fuel == 1000
    import plugsafe._config
    assert _host.load_config is plugsafe._config.load_config
    assert plugsafe.Policy.from_dict({{"limits": {{"fuel": 5}}}}).fuel == 5
    assert _policy.parse_changes is sys.modules["plugsafe._policyfile"].parse_changes
    p = host.load(b{wat!r}, policy=plugsafe.Policy(compile_timeout=60))
    assert p.invoke("f") == 7 and "plugsafe._isolate" in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    ctypes_code = f"""
import sys, plugsafe
assert "plugsafe._runtime._ctypes" in sys.modules and plugsafe._runtime.BACKEND == "ctypes"
with plugsafe.Host() as host:
    assert host.load(b{wat!r}).invoke("f") == 7
print("ok")
"""
    env = {**os.environ, "PLUGSAFE_BACKEND": "ctypes"}
    done = subprocess.run(
        [sys.executable, "-c", ctypes_code], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_lazy_function_stands_in_until_first_called() -> None:
    from plugsafe._lazymodule import lazy_function

    namespace: dict[str, object] = {}
    namespace["hls_to_rgb"] = stand_in = lazy_function("colorsys", "hls_to_rgb", namespace)
    assert "colorsys.hls_to_rgb" in repr(stand_in)
    assert stand_in(0.0, 0.0, 0.0) == (0.0, 0.0, 0.0)
    import colorsys

    assert namespace["hls_to_rgb"] is colorsys.hls_to_rgb
    other = lazy_function("colorsys", "rgb_to_hsv", {})  # not bound: stays a stand-in
    assert other(0.0, 0.0, 0.0) == (0.0, 0.0, 0.0)


def test_public_annotations_are_what_get_type_hints_gives() -> None:
    # _public.resolve evaluates a public class's annotation strings as one cached expression
    # instead of get_type_hints' one compile per string: the same values, for every public
    # class (evaluated again from the strings, in the class's own module), and get_type_hints
    # itself for what it would change (a forward reference left in a string).
    import dataclasses
    import typing

    from plugsafe import _public

    checked = 0
    for name in plugsafe.__all__:
        cls = getattr(plugsafe, name)
        own = vars(cls).get("__annotations__") if isinstance(cls, type) else None
        if not own:
            continue
        texts = {f.name: f.type for f in dataclasses.fields(cls) if f.name in own}
        assert set(texts) == set(own) and all(isinstance(t, str) for t in texts.values())
        home = cls.__init__.__globals__["__name__"]
        shadow = type(name, (), {"__annotations__": texts, "__module__": home})
        expected = typing.get_type_hints(shadow, include_extras=True)
        assert _public.resolve(shadow, texts) == expected == own, name
        checked += 1
    assert checked >= 9
    odd = type("Odd", (), {"__annotations__": {"a": "None", "b": "list['int']"}})
    odd.__module__ = __name__
    assert _public.resolve(odd, dict(odd.__annotations__)) == typing.get_type_hints(odd)
    assert _public.resolve(odd, dict(odd.__annotations__))["a"] is type(None)


def test_a_cold_start_reads_no_json(tmp_path: Path) -> None:
    # The disk cache entry's description is in marshal's format (issue 14: json was about 2 % of
    # a cold start's instructions). The modules are printed without json, which would hide it.
    wat = '(module (func (export "f") (result i32) i32.const 7))'
    code = f"""
import sys, plugsafe
host = plugsafe.Host(cache_dir={str(tmp_path / "cache")!r})
assert host.load({wat!r}.encode()).invoke("f") == 7
print(chr(10).join(sorted(sys.modules)))
"""
    for _ in range(2):  # the first compiles and writes the entry, the second reads it
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    loaded = set(out.split())
    assert "plugsafe._loader" in loaded
    assert "json" not in loaded


def test_call_json_works_after_a_bare_import() -> None:
    # _plugin imports json on the first call_json (issue 14): in a process that imported only
    # plugsafe, so nothing imported by the test session hides a missing import.
    code = f"""
import sys, plugsafe
with plugsafe.Host() as host:
    p = host.load({ECHO!r}.encode())
    assert "json" not in sys.modules
    assert p.call_json("echo", {{"a": [1, "x"]}}) == {{"a": [1, "x"]}}
    try:
        p.call_json("echo", float("nan"))
    except ValueError:
        pass
    else:
        raise AssertionError("nan encoded")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


_PLAIN = '(module (func (export "f") (result i32) i32.const 7))'
_IMPORTS = """(module (import "plugsafe" "double" (func $d (param i32) (result i32)))
  (func (export "g") (param i32) (result i32) (call $d (local.get 0))))"""
_WASI = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1) (data (i32.const 16) "hello")
  (func (export "hi") (result i32)
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 5))
    (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))"""


def test_a_cold_start_never_imports_wasmtime_py(tmp_path: Path) -> None:
    # Issue 14, goal 2: wasmtime-py costs a fresh process ~190 M instructions to import, and the
    # core runtime speaks to libwasmtime through its own declarations instead. Import, a Host
    # with a disk cache, loads (a plain module; one with a host function, metered and timed; a
    # WASI module with arguments, variables, stdin, captured output and a read-only preopen),
    # calls, close: twice, the first compiling, the second from the disk cache.
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("hi")
    code = f"""
import json, sys
import plugsafe
from plugsafe import Policy, Preopen, Wasi

host = plugsafe.Host(cache_dir={str(tmp_path / "cache")!r})

@host.function
def double(x: int) -> int:
    return 2 * x

plain = host.load({_PLAIN!r}.encode())
assert plain.invoke("f") == 7
imports = host.load(
    {_IMPORTS!r}.encode(), policy=Policy(allow=["double"], fuel=100_000, timeout=5.0)
)
assert imports.invoke("g", 21) == 42
wasi = host.load(
    {_WASI!r}.encode(),
    policy=Policy(wasi=Wasi(args=["p", "-x"], env={{"A": "1"}}, stdin=b"in",
                            preopens=[Preopen({str(shared)!r}, "/data")])),
)
assert wasi.invoke("hi") == 0
for p in (plain, imports, wasi):
    p.close()
host.close()
print(json.dumps(sorted(m for m in sys.modules if m == "wasmtime" or m.startswith("wasmtime."))))
"""
    for _ in range(2):  # the second process loads every module from the disk cache
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == []
