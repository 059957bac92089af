"""Units everywhere: Policy(memory="16MiB", timeout="250ms"), durations that need a unit in files,
and what a PluginPool without host= says about the app's functions."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path

import pytest
from errors_worker import ASKS
from hypothesis import given
from hypothesis import strategies as st

import plugsafe
from plugsafe import Policy, PolicyError
from plugsafe._units import fmt_duration, parse_duration

ROOT = Path(__file__).resolve().parent.parent


def test_sizes_and_durations_as_strings_in_python() -> None:
    p = Policy(memory="16MiB", timeout="250ms")
    assert p == Policy(memory=16 * 2**20, timeout=0.25)
    assert isinstance(p.memory, int) and isinstance(p.timeout, float)
    every = Policy(
        max_input="1KiB",
        max_output="2 KiB",
        max_module_size="3MB",
        log_message_size="100B",
        max_host_arg_size="64KiB",
        max_function_size="1.5KiB",
        compile_memory="512MiB",
        compile_timeout="10s",
    )
    assert (every.max_input, every.max_output, every.max_module_size) == (1024, 2048, 3 * 10**6)
    assert (every.log_message_size, every.max_host_arg_size) == (100, 65536)
    assert (every.max_function_size, every.compile_memory) == (1536, 512 * 2**20)
    assert every.compile_timeout == 10.0
    # replace() reads them the same way.
    assert p.replace(timeout="2m").timeout == 120.0
    assert p.replace(memory="1GiB").memory == 2**30


def test_a_string_in_python_is_checked_like_the_file_would_check_it() -> None:
    with pytest.raises(PolicyError) as info:
        Policy(timeout="250")
    assert str(info.value).startswith('timeout: "250" has no unit')
    assert '"250ms" for milliseconds' in str(info.value)
    assert (info.value.field, info.value.path) == ("timeout", None)
    with pytest.raises(PolicyError, match=r"^memory: .*not a whole number") as size:
        Policy(memory="1.5B")
    assert (size.value.field, size.value.path) == ("memory", None)
    # The range is still Policy's own: a string does not get around it.
    with pytest.raises(PolicyError, match=r"^memory: expected an integer from 0 to"):
        Policy(memory="5GiB")
    with pytest.raises(PolicyError, match=r"^timeout: expected seconds > 0 and <= 86400"):
        Policy(timeout="25h")
    # Numbers keep their meaning: bytes and seconds.
    assert Policy(timeout=2).timeout == 2.0
    assert Policy(memory=4096).memory == 4096


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        (
            "[limits]\ntimeout = 250\n",
            'limits.timeout: 250 has no unit; write the unit, e.g. "250s"',
        ),
        ("[limits]\ntimeout = 0.5\n", '"0.5ms" for milliseconds'),
        ('[limits]\ntimeout = "3"\n', 'limits.timeout: "3" has no unit'),
        ("[compile]\ncompile_timeout = 10\n", "compile.compile_timeout: 10 has no unit"),
    ],
)
def test_a_unitless_duration_in_a_file_asks_for_a_unit(
    tmp_path: Path, toml: str, words: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(toml)
    with pytest.raises(PolicyError) as info:
        Policy.from_toml(path)
    assert words in str(info.value)
    assert "(in " in str(info.value) and "policy.toml" in str(info.value)
    assert info.value.path is not None and info.value.path.endswith("timeout")


def test_a_unitless_duration_in_a_host_config_asks_for_a_unit(tmp_path: Path) -> None:
    (tmp_path / "p.wat").write_text("(module)")
    for table in ("defaults.limits", "plugins.p.limits"):
        path = tmp_path / "host.toml"
        path.write_text(
            textwrap.dedent(
                f"""
                [plugins.p]
                source = "p.wat"
                [{table}]
                timeout = 2
                """
            )
        )
        with plugsafe.Host() as host, pytest.raises(PolicyError) as info:
            host.load_config(path)
        assert f"{table}.timeout: 2 has no unit" in str(info.value)
        assert info.value.path == f"{table}.timeout"


def test_durations_with_units_still_read_and_from_dict_keeps_numbers(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[limits]\ntimeout = "250ms"\n[compile]\ncompile_timeout = "1e1s"\n')
    p = Policy.from_toml(path)
    assert (p.timeout, p.compile_timeout) == (0.25, 10.0)
    # from_dict is Python data, as Policy(...) is: a number is seconds.
    assert Policy.from_dict({"limits": {"timeout": 0.5}}).timeout == 0.5
    # The shipped examples and templates all carry units.
    for file in (
        ROOT / "examples" / "policy.toml",
        ROOT / "plugins-sdk" / "templates" / "c" / "policy.toml",
        ROOT / "plugins-sdk" / "templates" / "rust" / "policy.toml",
    ):
        Policy.from_toml(file)


def test_to_dict_writes_durations_with_their_unit(tmp_path: Path) -> None:
    p = Policy(timeout=0.125, compile_timeout=1e-06)
    limits = p.to_dict()["limits"]
    assert limits["timeout"] == "0.125s"
    assert p.to_dict()["compile"]["compile_timeout"] == "1e-06s"
    assert Policy().to_dict()["limits"]["timeout"] == "1s"


@given(st.floats(min_value=5e-324, max_value=86_400, allow_nan=False))
def test_every_duration_round_trips_through_its_text(seconds: float) -> None:
    assert parse_duration(fmt_duration(seconds), "t", unit_required=True) == seconds


def test_the_type_checkers_view_of_policy_matches_its_fields() -> None:
    # Policy declares, for type checkers only, an __init__ that also takes strings; it must
    # name every field with the field's own default.
    source = Path(inspect.getfile(plugsafe._policy)).read_text()
    tree = ast.parse(source)
    init = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and node.name == "__init__"
        and any(a.arg == "memory" for a in node.args.kwonlyargs)
    )
    names = [a.arg for a in init.args.kwonlyargs]
    fields = dataclasses.fields(Policy)
    assert names == [f.name for f in fields]
    for f, default in zip(fields, init.args.kw_defaults, strict=True):
        assert default is not None
        value = eval(compile(ast.Expression(default), "<default>", "eval"), vars(plugsafe._policy))
        expected = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        assert value == expected, f.name


# -- PluginPool without host= -------------------------------------------------------------------


def test_a_pool_without_host_says_to_pass_host_when_allow_names_app_functions() -> None:
    with pytest.raises(PolicyError) as info:
        plugsafe.PluginPool(ASKS.encode(), Policy(allow={"lookup"}), size=1)
    message = str(info.value)
    assert "'lookup' is not a host function" in message
    assert "pass host= a Host on which the app registered them" in message
    assert "to give its plugins 'lookup'" in message
    assert info.value.field == "allow"


def test_a_pool_without_host_says_to_pass_host_when_the_plugin_imports_app_functions() -> None:
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        plugsafe.PluginPool(ASKS.encode(), Policy(), size=1)
    assert "pass host=" in str(info.value)
    assert info.value.imports == ("plugsafe.lookup",)


def test_a_pool_with_host_gets_no_such_hint_and_works_with_the_apps_function() -> None:
    with plugsafe.Host() as host:
        with pytest.raises(PolicyError) as info:
            plugsafe.PluginPool(ASKS.encode(), Policy(allow={"lookup"}), size=1, host=host)
        assert "host=" not in str(info.value)

        def lookup(key: int) -> int:
            return key

        host.function(lookup)
        with plugsafe.PluginPool(
            ASKS.encode(), Policy(allow={"lookup"}), size=2, host=host
        ) as pool:
            assert pool.call("ask", b"ok") == b"ok"


def test_a_pool_refused_for_other_reasons_does_not_mention_host() -> None:
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        plugsafe.PluginPool(b'(module (import "env" "f" (func)))', Policy(), size=1)
    assert "host=" not in str(info.value)


def test_unlimited_is_a_file_word_and_python_says_so() -> None:
    with pytest.raises(PolicyError, match=r"in Python, None means no limit"):
        Policy(timeout="unlimited")
    assert Policy.from_dict({"limits": {"timeout": "unlimited"}}).timeout is None
