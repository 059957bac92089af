"""The app's host functions on the command line: declared signatures, stubs, --host.

A policy file's ``[host_functions]`` table (or ``--host-function``) declares the app's
functions; ``plugsafe check`` then verifies the plugin's imports against their wasm types and
``plugsafe run`` runs the plugin with stubs answering canned values. ``--host module:factory``
runs on the app's own Host instead. Most tests run the command line in this process
(``_cli.main``); the ``--host`` ones that import an app module run it in a new process.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plugsafe
from plugsafe import _cli
from plugsafe._hostfn import signature_from_annotations
from plugsafe._signatures import (
    MAX_PARAMS,
    parse_answer_text,
    parse_host_functions,
    parse_signature,
)

from wat import abi_module

ROOT = Path(__file__).resolve().parent.parent

# ask: calls the app's lookup(str) with its input and returns the answer, or "<none>".
ASKS = abi_module(
    """
  (data (i32.const 16) "<none>")
  (func (export "ask") (param $p i32) (param $n i32) (result i64)
    (local $r i64)
    (local.set $r (call $lookup (local.get $p) (local.get $n)))
    (if (i64.eq (local.get $r) (i64.const -1))
      (then (return (call $ok (i32.const 16) (i32.const 6)))))
    (call $ok (i32.wrap_i64 (i64.shr_u (local.get $r) (i64.const 32)))
              (i32.wrap_i64 (i64.and (local.get $r) (i64.const 0x7fffffff)))))
""",
    imports='(import "plugsafe" "lookup" (func $lookup (param i32 i32) (result i64)))',
)


def cli(*args: str | Path, stdin: bytes = b"") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        code = _cli.main([str(a) for a in args], stdout=out, stderr=err, stdin=io.BytesIO(stdin))
    except SystemExit as exc:  # argparse's own refusals exit (status 2, on sys.stderr)
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def cli_process(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "plugsafe", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


@pytest.fixture
def asks(tmp_path: Path) -> Path:
    path = tmp_path / "asks.wat"
    path.write_text(ASKS)
    return path


def policy_file(tmp_path: Path, host_functions: str, allow: str = '["lookup"]') -> Path:
    path = tmp_path / "policy.toml"
    # The declarations first: a top-level key must come before any table.
    path.write_text(
        textwrap.dedent(host_functions)
        + f'\n[imports]\nallow = {allow}\n[limits]\ntimeout = "5s"\n'
    )
    return path


# -- check ----------------------------------------------------------------------------------------


def test_check_verifies_a_declared_signature_that_fits(asks: Path, tmp_path: Path) -> None:
    policy = policy_file(tmp_path, '[host_functions]\nlookup = "(str) -> bytes | None"\n')
    code, out, _ = cli("check", asks, "--policy", policy)
    assert code == _cli.EXIT_OK, out
    assert "plugsafe.lookup  allowed  (declared: (str) -> bytes | None)" in out
    assert "would load under this policy" in out
    assert "note:" not in out  # it was really loaded: start function and ABI version tried


def test_check_refuses_an_import_of_the_wrong_type(asks: Path, tmp_path: Path) -> None:
    # Today's answer without declarations was "would load" (with a note).
    code, out, _ = cli("check", asks, "--allow", "lookup")
    assert code == _cli.EXIT_OK and "note:" in out and "not declared" in out
    policy = policy_file(tmp_path, '[host_functions]\nlookup = "(int) -> int"\n')
    code, out, _ = cli("check", asks, "--policy", policy)
    assert code == _cli.EXIT_CHECK_FAILED, out
    assert "wrong type" in out
    # A plain int binds to i32 or i64, whichever the plugin imports (issue 13 §2).
    assert "the host defines (i32|i64) -> (i32|i64), the plugin imports (i32, i32) -> (i64)" in out
    assert "would NOT load: ImportNotAllowedError" in out
    code, out, _ = cli("check", asks, "--policy", policy, "--json")
    report = json.loads(out)
    assert report["loads"] is False
    assert report["declared"] == {"lookup": "(int) -> int"}
    (row,) = report["imports"]
    assert (row["import"], row["status"]) == ("plugsafe.lookup", "wrong type")
    assert report["error"]["exit_code"] == _cli.EXIT_LOAD


def test_check_with_a_declaration_on_the_command_line(asks: Path) -> None:
    code, out, _ = cli(
        "check", asks, "--allow", "lookup", "--host-function", "lookup=(key: str) -> str | None"
    )
    assert code == _cli.EXIT_OK, out
    assert "declared: (str) -> str | None" in out
    code, out, _ = cli("check", asks, "--allow", "lookup", "--host-function", "lookup=() -> None")
    assert code == _cli.EXIT_CHECK_FAILED
    assert "wrong type" in out


def test_a_declared_but_not_allowed_function_is_still_not_allowed(
    asks: Path, tmp_path: Path
) -> None:
    policy = policy_file(tmp_path, '[host_functions]\nlookup = "(str) -> bytes"\n', allow="[]")
    code, out, _ = cli("check", asks, "--policy", policy)
    assert code == _cli.EXIT_CHECK_FAILED
    assert "plugsafe.lookup  not allowed" in out


# -- run ------------------------------------------------------------------------------------------


def test_run_with_a_stub_answering_the_files_value(asks: Path, tmp_path: Path) -> None:
    policy = policy_file(
        tmp_path,
        """
        [host_functions.lookup]
        signature = "(str) -> bytes | None"
        returns = "hello from the stub"
        """,
    )
    code, out, err = cli("run", asks, "ask", "--policy", policy, "--input", "key")
    assert code == _cli.EXIT_OK, err
    assert out == "hello from the stub"
    # Each call to the stub is shown on stderr: what the plugin asked, what it got.
    assert "[stub] debug: lookup('key') -> b'hello from the stub'" in err
    # The command line overrides the file; a bare NAME answers None.
    assert cli("run", asks, "ask", "--policy", policy, "--returns", "lookup=bye")[1] == "bye"
    assert cli("run", asks, "ask", "--policy", policy, "--returns", "lookup")[1] == "<none>"


def test_run_with_a_stub_declared_on_the_command_line(asks: Path) -> None:
    base = ("run", asks, "ask", "--allow", "lookup", "--input", "k")
    declared = ("--host-function", "lookup=(str) -> str | None")
    # Nothing given: an optional result answers None, others their empty value.
    assert cli(*base, *declared)[1] == "<none>"
    assert cli(*base, "--host-function", "lookup=(str) -> bytes")[1] == ""
    assert cli(*base, *declared, "--returns", "lookup=é")[1] == "é"
    code, _, err = cli(*base)
    assert code == _cli.EXIT_LOAD
    assert "stubs of the functions the policy's [host_functions] table" in err


def test_a_stubs_answer_passes_the_same_result_checks(asks: Path, tmp_path: Path) -> None:
    # (str) -> int has the same wasm type as (str) -> bytes | None; an answer outside i64 is
    # refused as an app function's would be.
    code, _, err = cli(
        "run",
        asks,
        "ask",
        "--allow",
        "lookup",
        "--host-function",
        "lookup=(str) -> int",
        "--returns",
        f"lookup={2**64}",
    )
    assert code == _cli.EXIT_PLUGIN, err
    assert "HostFunctionError" in err and "does not fit in i64" in err
    # An answer the plugin's memory cannot hold is the memory limit, as for any host function.
    policy = policy_file(
        tmp_path,
        f"""
        [limits]
        memory = "64KiB"
        [host_functions.lookup]
        signature = "(str) -> bytes"
        returns = "{"x" * 100_000}"
        """,
    ).read_text()
    (tmp_path / "small.toml").write_text(policy.replace('[limits]\ntimeout = "5s"\n', "", 1))
    code, _, err = cli("run", asks, "ask", "--policy", tmp_path / "small.toml")
    assert code == _cli.EXIT_LIMIT, err
    assert "MemoryLimitExceeded" in err


def test_a_plugins_arguments_to_a_stub_are_escaped_on_stderr(asks: Path) -> None:
    code, _, err = cli(
        "run",
        asks,
        "ask",
        "--allow",
        "lookup",
        "--host-function",
        "lookup=(str) -> str | None",
        "--input",
        "\x1b[2J\nforged" + "y" * 500,
    )
    assert code == _cli.EXIT_OK
    stub_lines = [line for line in err.splitlines() if line.startswith("[stub]")]
    assert len(stub_lines) == 1
    assert "\x1b" not in err
    assert len(stub_lines[0]) < 200  # cut


# -- declaration errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "words"),
    [
        (
            'lookup = "(strr) -> bytes"',
            "host_functions.lookup: expected a parameter type (int, float, bool, bytes or str), "
            'found "strr" at column 2 of "(strr) -> bytes"',
        ),
        ('lookup = "(str) -> int | None"', "only bytes and str can be None"),
        ('lookup = "(str | None) -> int"', "a parameter cannot be optional"),
        ('lookup = "(i32) -> int"', "(did you mean int?)"),
        ('lookup = "(str) bytes"', "expected '->' and the result type"),
        ('lookup = "(str) -> bytes extra"', 'unexpected "extra" after the result type'),
        ("lookup = 5", "host_functions.lookup: expected a signature"),
        ('log = "(str) -> None"', "host_functions.log: host function name 'log' is built in"),
        ('[host_functions.lookup]\nreturns = "x"', "host_functions.lookup.signature: missing"),
        (
            '[host_functions.lookup]\nsignature = "(str) -> int"\nreturns = "x"',
            'host_functions.lookup.returns: expected an integer, got "x"',
        ),
        (
            '[host_functions.lookup]\nsignature = "() -> None"\nreturns = 1',
            "takes no canned answer",
        ),
        (
            '[host_functions.lookup]\nsignature = "() -> int"\nanswer = 1',
            "host_functions.lookup.answer: unknown key",
        ),
        ("host_functions = 3", "host_functions: expected a table of host function signatures"),
    ],
)
def test_a_bad_declaration_names_the_file_and_key(
    asks: Path, tmp_path: Path, table: str, words: str
) -> None:
    if not table.startswith(("[", "host_functions")):
        table = "[host_functions]\n" + table
    policy = policy_file(tmp_path, table + "\n")
    code, _, err = cli("run", asks, "ask", "--policy", policy)
    assert code == _cli.EXIT_USAGE, err
    assert words in err
    assert "policy.toml" in err


def test_policy_from_toml_reads_a_file_with_declarations(tmp_path: Path) -> None:
    good = policy_file(tmp_path, '[host_functions]\nlookup = "(str) -> bytes | None"\n')
    assert plugsafe.Policy.from_toml(good) == plugsafe.Policy(allow={"lookup"}, timeout=5)
    bad = policy_file(tmp_path, '[host_functions]\nlookup = "(str) ->"\n')
    with pytest.raises(plugsafe.PolicyError) as info:
        plugsafe.Policy.from_toml(bad)
    assert info.value.path == "host_functions.lookup"
    assert "found the end at column 9 of" in str(info.value)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--host-function", "lookup"], "expected NAME=SIGNATURE"),
        (["--host-function", "9x=() -> None"], "'9x' is not a valid host function name"),
        (["--host-function", "lookup=(str) => bytes"], "--host-function lookup: expected '->'"),
        (["--returns", "lookup=x"], "--returns lookup: no signature is declared"),
        (
            ["--host-function", "lookup=(str) -> int", "--returns", "lookup=many"],
            '--returns lookup: expected an integer, got "many"',
        ),
        (
            ["--host-function", "lookup=(str) -> int", "--returns", "lookup"],
            "only a 'bytes | None' or 'str | None' result can answer None",
        ),
        (["--timeout", "2"], '--timeout: "2" has no unit'),
        (["--host", "nocolon"], "--host: expected MODULE:FACTORY"),
        (["--host", "no_such_module_xyz:make"], "--host: cannot import 'no_such_module_xyz'"),
        (["--host", "plugsafe:nothing_here"], "--host: 'plugsafe' has no 'nothing_here'"),
        (["--host", "plugsafe:ABI_VERSION"], "is a int, not a plugsafe.Host"),
        (["--host", "plugsafe:Policy"], "returned a Policy, not a plugsafe.Host"),
        (["--host", "plugsafe:Host", "--returns", "x=1"], "--returns answers for stubs"),
    ],
)
def test_command_line_mistakes_are_usage_errors(asks: Path, args: list[str], words: str) -> None:
    code, _, err = cli("run", asks, "ask", "--allow", "lookup", *args)
    assert code == _cli.EXIT_USAGE, err
    assert words in err


# -- --host module:factory ------------------------------------------------------------------------

APP = """
import plugsafe

calls = []


def make_host() -> plugsafe.Host:
    host = plugsafe.Host()

    @host.function
    def lookup(key: str) -> bytes | None:
        return b"the app says " + key.encode()

    return host


HOST = make_host()
"""


def test_run_and_check_on_the_apps_own_host(asks: Path, tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    for spec in ("myapp:make_host", "myapp:HOST"):
        result = cli_process(
            "run", asks, "ask", "--allow", "lookup", "--host", spec, "--input", "hi", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "the app says hi"
    policy = policy_file(tmp_path, '[host_functions]\nlookup = "(str) -> bytes | None"\n')
    result = cli_process(
        "check", asks, "--policy", policy, "--host", "myapp:make_host", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "registered by the Host from myapp:make_host: (str) -> bytes | None" in result.stdout


def test_a_declaration_the_apps_host_does_not_match_is_a_usage_error(
    asks: Path, tmp_path: Path
) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    policy = policy_file(tmp_path, '[host_functions]\nlookup = "(str) -> bytes"\n')
    result = cli_process(
        "check", asks, "--policy", policy, "--host", "myapp:make_host", cwd=tmp_path
    )
    assert result.returncode == _cli.EXIT_USAGE
    assert (
        "host_functions.lookup: declared as (str) -> bytes, but the Host from myapp:make_host "
        "registers (str) -> bytes | None"
    ) in result.stderr
    policy = policy_file(tmp_path, '[host_functions]\nmissing = "(str) -> bytes"\n')
    result = cli_process("check", asks, "--policy", policy, "--host", "myapp:HOST", cwd=tmp_path)
    assert result.returncode == _cli.EXIT_USAGE
    assert "does not register 'missing'" in result.stderr


# -- the signature language: never anything but a signature or a PolicyError ---------------------

_KINDS = ["int", "float", "bool", "bytes", "str"]
_RESULTS = [*_KINDS, "None", "bytes | None", "str | None", "None | str"]


@given(
    st.lists(st.sampled_from(_KINDS), max_size=6),
    st.sampled_from(_RESULTS),
    st.booleans(),
)
def test_every_valid_signature_binds_as_annotations_would(
    params: list[str], result: str, named: bool
) -> None:
    inside = ", ".join(f"p{i}: {k}" if named else k for i, k in enumerate(params))
    text = f"({inside}) -> {result}"
    table = parse_host_functions({"f": text})
    decl = table["f"]
    assert decl.params == tuple(params)
    sig = signature_from_annotations(_cli._stub(decl), "f")
    assert list(sig.params) == params
    canonical = "str | None" if result == "None | str" else result
    assert _cli._signature_text(sig) == f"({', '.join(params)}) -> {canonical}"


_pieces = st.sampled_from(
    [
        "(",
        ")",
        ",",
        "->",
        "-",
        ">",
        "|",
        ":",
        " ",
        "None",
        "none",
        "int",
        "str",
        "bytes",
        "x",
        "\x00",
        "é",
        "\u2028",
        "1",
        "((",
        "))",
        "=>",
    ]
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(_pieces, max_size=12).map("".join), st.text(max_size=40)))
def test_any_text_is_a_signature_or_a_policy_error(text: str) -> None:
    try:
        params, result = parse_signature(text, "host_functions.f")
    except plugsafe.PolicyError as exc:
        assert exc.path == "host_functions.f"
        assert str(exc).startswith("host_functions.f: ")
        assert "\n" not in str(exc) and "\x00" not in str(exc)
    else:
        assert all(p in _KINDS for p in params)
        assert result in {*_KINDS, "none", "bytes?", "str?"}


_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        _values,
        st.dictionaries(
            st.one_of(st.sampled_from(["lookup", "f", "log", "9", ""]), st.text(max_size=5)),
            st.one_of(
                _values,
                st.sampled_from(["(str) -> bytes | None", "() -> int", "(int,) -> None"]),
                st.fixed_dictionaries(
                    {"signature": st.sampled_from(["(str) -> int", "() -> bytes | None", "x"])},
                    optional={"returns": _values, "other": _values},
                ),
            ),
            max_size=3,
        ),
    )
)
def test_any_table_is_declarations_or_a_policy_error(table: object) -> None:
    try:
        declared = parse_host_functions(table)
    except plugsafe.PolicyError as exc:
        assert exc.path is not None and exc.path.startswith("host_functions")
        assert str(exc).startswith(exc.path)
    else:
        for name, decl in declared.items():
            assert decl.name == name
            _cli._stub(decl)


def test_a_signature_is_bounded() -> None:
    many = "(" + ", ".join(["int"] * (MAX_PARAMS + 1)) + ") -> None"
    with pytest.raises(plugsafe.PolicyError, match=f"more than {MAX_PARAMS} parameters"):
        parse_signature(many, "k")
    with pytest.raises(plugsafe.PolicyError, match="at most 1000 are read"):
        parse_signature("(" * 5000, "k")


# -- host config files ----------------------------------------------------------------------------

CONFIG = """
[host_functions]
lookup = "(key: str) -> str | None"

[defaults.limits]
timeout = "5s"

[plugins.asks]
source = "asks.wat"
[plugins.asks.imports]
allow = ["lookup"]
"""


def test_load_config_checks_the_declared_functions_against_the_host(
    asks: Path, tmp_path: Path
) -> None:
    config = tmp_path / "host.toml"
    config.write_text(CONFIG)
    with plugsafe.Host() as host:
        with pytest.raises(plugsafe.PolicyError) as missing:
            host.load_config(config)
        assert missing.value.path == "host_functions.lookup"
        assert "the host does not register 'lookup'" in str(missing.value)
        assert "host.toml" in str(missing.value)

        @host.function
        def lookup(key: str) -> bytes | None:
            return None

        with pytest.raises(plugsafe.PolicyError) as drift:
            host.load_config(config)
        assert (
            "host_functions.lookup: declared as (str) -> str | None, but the host registers "
            "(str) -> bytes | None"
        ) in str(drift.value)

    with plugsafe.Host() as host:

        @host.function(name="lookup")
        def lookup_str(key: str) -> str | None:
            return key.upper()

        plugins = host.load_config(config)
        assert plugins["asks"].call("ask", b"abc") == b"ABC"


def test_a_bad_declaration_in_a_host_config_names_its_key(tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    config.write_text('[host_functions]\nlookup = "(str) -> str | bytes"\n')
    with plugsafe.Host() as host, pytest.raises(plugsafe.PolicyError) as info:
        host.load_config(config)
    assert info.value.path == "host_functions.lookup"
    assert "expected None after '|'" in str(info.value)


def test_cli_runs_and_checks_a_plugin_of_a_host_config(asks: Path, tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    config.write_text(CONFIG)
    code, out, err = cli("check", "asks", "--config", config)
    assert code == _cli.EXIT_OK, out + err
    assert "declared: (str) -> str | None" in out
    code, out, err = cli("run", "asks", "ask", "--config", config, "--returns", "lookup=yes")
    assert (code, out) == (_cli.EXIT_OK, "yes"), err
    code, _, err = cli("check", "nosuch", "--config", config)
    assert code == _cli.EXIT_USAGE
    assert "has no plugin 'nosuch' (it has: asks)" in err
    code, _, err = cli("check", "asks", "--config", config, "--policy", config)
    assert code == _cli.EXIT_USAGE
    # The pin is checked: the bytes checked are the bytes loaded.
    pinned = 'source = "asks.wat"\nsha256 = "' + "0" * 64 + '"'
    config.write_text(CONFIG.replace('source = "asks.wat"', pinned))
    code, _, err = cli("run", "asks", "ask", "--config", config)
    assert code == _cli.EXIT_LOAD
    assert "does not match its sha256 pin" in err


def test_the_example_host_config_checks_on_the_command_line() -> None:
    code, out, err = cli("check", "greet", "--config", ROOT / "examples" / "host.toml")
    assert code == _cli.EXIT_OK, out + err
    assert "plugsafe.lookup" in out and "declared: (str) -> str | None" in out
    code, out, err = cli(
        "run",
        "greet",
        "describe",
        "--config",
        ROOT / "examples" / "host.toml",
        "--input",
        "ada",
        "--returns",
        "lookup=Lovelace",
    )
    assert (code, out) == (_cli.EXIT_OK, "Lovelace"), err


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.text(max_size=30), st.sampled_from(["\udcff", "1" * 50, "nan", "-0"])),
    st.sampled_from([*_KINDS, "none", "bytes?", "str?"]),
)
def test_any_answer_text_is_an_answer_or_a_policy_error(text: str | None, result: str) -> None:
    try:
        answer = parse_answer_text(text, result, "--returns f")
    except plugsafe.PolicyError as exc:
        assert exc.path == "--returns f" and str(exc).startswith("--returns f: ")
        str(exc).encode("utf-8")  # printable on any terminal
    else:
        expected = {"int": int, "float": float, "bool": bool, "bytes": bytes, "str": str}
        if answer is None:
            assert result.endswith("?") and text is None
        else:
            assert type(answer) is expected[result.rstrip("?")]


def test_a_non_utf8_command_line_answer() -> None:
    # What Python makes of the argument bytes b"\xff" on a UTF-8 system (surrogateescape).
    assert parse_answer_text("\udcff", "bytes", "--returns f") == b"\xff"
    with pytest.raises(plugsafe.PolicyError, match="expected UTF-8 text"):
        parse_answer_text("\udcff", "str?", "--returns f")
