"""Policy files: TOML layout, human units, round trips, and errors that name the key path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plugsafe
from plugsafe import Policy, PolicyError
from plugsafe._policyfile import LAYOUT, parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_from_toml_reads_every_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [imports]
        allow = ["log"]
        [limits]
        fuel = 50_000_000
        timeout = "250ms"
        memory = "64MiB"
        max_input = 1024
        max_output = "1KiB"
        max_module_size = "2MiB"
        max_table_elements = 10
        max_host_calls = "unlimited"
        log_messages = 3
        log_message_size = "100B"
        """,
    )
    p = Policy.from_toml(path)
    assert p == Policy(
        allow={"log"},
        fuel=50_000_000,
        timeout=0.25,
        memory=64 * 2**20,
        max_input=1024,
        max_output=1024,
        max_module_size=2 * 2**20,
        max_table_elements=10,
        max_host_calls=None,
        log_messages=3,
        log_message_size=100,
    )


def test_empty_file_is_the_default_policy(tmp_path: Path) -> None:
    assert Policy.from_toml(write(tmp_path, "# nothing\n")) == Policy()
    assert Policy.from_dict({}) == Policy()


def test_plain_numbers_work_too() -> None:
    p = Policy.from_dict({"limits": {"memory": 1048576, "timeout": 2, "fuel": 7}})
    assert (p.memory, p.timeout, p.fuel) == (2**20, 2.0, 7)
    assert Policy.from_dict({"limits": {"timeout": 0.5}}).timeout == 0.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64MiB", 64 * 2**20),
        ("64 MiB", 64 * 2**20),
        ("64mib", 64 * 2**20),
        ("512KiB", 512 * 1024),
        ("1GiB", 2**30),
        ("1.5KiB", 1536),
        ("100kB", 100_000),
        ("3MB", 3_000_000),
        ("2GB", 2_000_000_000),
        ("4096B", 4096),
        ("4096", 4096),
    ],
)
def test_size_units(text: str, expected: int) -> None:
    assert parse_size(text, "limits.memory") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("1s", 1.0),
        ("500us", 0.0005),
        ("2m", 120.0),
        ("2min", 120.0),
        ("1h", 3600.0),
        ("3", 3.0),
    ],
)
def test_duration_units(text: str, expected: float) -> None:
    assert parse_duration(text, "limits.timeout") == pytest.approx(expected)


def test_unlimited_means_none() -> None:
    p = Policy.from_dict(
        {"limits": {"fuel": "unlimited", "timeout": "unlimited", "max_host_calls": "unlimited"}}
    )
    assert (p.fuel, p.timeout, p.max_host_calls) == (None, None, None)


def test_issue_example_error_message() -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict({"limits": {"fuel": -5}})
    assert str(info.value) == "limits.fuel: expected an integer >= 0, got -5"
    assert info.value.path == "limits.fuel"
    assert info.value.field == "fuel"


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ({"limits": {"fuel": 1.5}}, "limits.fuel", "expected an integer >= 0, got 1.5"),
        ({"limits": {"fuel": True}}, "limits.fuel", "got true"),
        ({"limits": {"fuel": "lots"}}, "limits.fuel", '"unlimited"'),
        ({"limits": {"memory": -1}}, "limits.memory", "expected a size"),
        ({"limits": {"memory": "64 parsecs"}}, "limits.memory", "units: B, KiB"),
        ({"limits": {"memory": "1.5B"}}, "limits.memory", "not a whole number of bytes"),
        ({"limits": {"memory": "5GiB"}}, "limits.memory", "expected an integer from 0 to"),
        ({"limits": {"memory": "unlimited"}}, "limits.memory", "expected a size"),
        ({"limits": {"timeout": 0}}, "limits.timeout", "expected a duration > 0"),
        ({"limits": {"timeout": "-1s"}}, "limits.timeout", "expected a duration > 0"),
        ({"limits": {"timeout": "2 fortnights"}}, "limits.timeout", "units: us, ms"),
        ({"limits": {"timeout": float("inf")}}, "limits.timeout", "expected a duration > 0"),
        ({"limits": {"timeout": "2d"}}, "limits.timeout", "units"),
        ({"limits": {"timeout": 10**9}}, "limits.timeout", "<= 86400"),
        ({"limits": {"max_module_size": 3}}, "limits.max_module_size", "from 8 to"),
        ({"imports": {"allow": "log"}}, "imports.allow", "expected an array"),
        ({"imports": {"allow": [1]}}, "imports.allow[0]", "a host function name"),
        ({"imports": {"allow": ["no such"]}}, "imports.allow", "not a valid host function name"),
        ({"limits": {"fule": 1}}, "limits.fule", "did you mean 'fuel'?"),
        ({"limits": 5}, "limits", "expected a table, got 5"),
        ({"imports": {"deny": []}}, "imports.deny", "unknown key"),
        ({"wasi": True}, "wasi", "expected a table"),
        ({"wasi": {"argv": []}}, "wasi.argv", "unknown key"),
        ({"wasi": {"stdout": "tty"}}, "wasi.stdout", "capture"),
        (
            {"wasi": {"preopens": [{"host": ".", "guest": "data"}]}},
            "wasi.preopens[0].guest",
            "absolute guest path",
        ),
    ],
)
def test_errors_name_the_key_path(data: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(data)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")
    assert words in str(info.value)


def test_flat_layout_gets_a_hint() -> None:
    # The SDK's first templates wrote the Policy fields at the top level.
    with pytest.raises(PolicyError, match=r"did you mean limits\.fuel\?") as info:
        Policy.from_dict({"fuel": 10})
    assert info.value.path == "fuel"
    with pytest.raises(PolicyError, match=r"did you mean imports\.allow\?"):
        Policy.from_dict({"allow": []})


def test_from_toml_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nfuel = -5\n")
    with pytest.raises(PolicyError) as info:
        Policy.from_toml(path)
    assert str(info.value).startswith("limits.fuel: expected an integer >= 0, got -5")
    assert str(path) in str(info.value)
    assert info.value.path == "limits.fuel"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = write(tmp_path, "[limits\nfuel = 1\n")
    with pytest.raises(PolicyError, match="not valid TOML") as info:
        Policy.from_toml(bad)
    assert info.value.path is None
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.from_toml(tmp_path / "missing.toml")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="not UTF-8"):
        Policy.from_toml(binary)


def test_policy_error_path_is_none_for_direct_construction() -> None:
    with pytest.raises(PolicyError) as info:
        Policy(fuel=-1)
    assert info.value.path is None
    assert info.value.field == "fuel"


def test_to_dict_round_trips() -> None:
    p = Policy(fuel=None, timeout=None, memory=12345, allow={"log", "b", "a"}, max_host_calls=None)
    d = p.to_dict()
    assert d["imports"]["allow"] == ["a", "b", "log"]
    assert d["limits"]["fuel"] == "unlimited"
    assert Policy.from_dict(d) == p
    assert Policy.from_dict(Policy().to_dict()) == Policy()


def test_to_dict_round_trips_through_toml(tmp_path: Path) -> None:
    p = Policy(fuel=99, timeout=0.125, allow={"log"}, memory=3 * 2**20, fresh_instance=True)
    lines = []
    for section, body in p.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in body.items():
            # JSON's spelling of these values (lists of strings, true, numbers) is TOML's too.
            lines.append(f"{key} = {json.dumps(value)}")
    assert Policy.from_toml(write(tmp_path, "\n".join(lines) + "\n")) == p


def test_layout_covers_every_policy_field() -> None:
    # A field added to Policy must get a key in the file layout, or files could not set it.
    fields = {f.name for f in dataclasses.fields(Policy)}
    covered = {field for keys in LAYOUT.values() for field, _ in keys.values()}
    assert covered | {"wasi"} == fields  # [wasi] is a table of its own (see docs/policy.md)
    written = {key for body in Policy().to_dict().values() for key in body}
    assert written == fields - {"wasi"}


def test_example_policy_file_loads() -> None:
    p = Policy.from_toml(ROOT / "examples" / "policy.toml")
    assert p.allow == {"log"}
    assert p.timeout == 0.25
    assert p.memory == 16 * 2**20


def test_policy_error_is_exported_with_path() -> None:
    err = plugsafe.PolicyError("x", field="fuel", path="limits.fuel")
    assert (err.field, err.path) == ("fuel", "limits.fuel")


# -- never a crash: random dicts through the loader --------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["64MiB", "250ms", "unlimited", "1.5KiB", "0.1s", "9" * 40 + "GiB", "-1"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
_keys = st.sampled_from(sorted({k for keys in LAYOUT.values() for k in keys} | {"x", ""}))
_sections = st.dictionaries(_keys, _values, max_size=5)
_policy_dicts = st.dictionaries(
    st.sampled_from(["limits", "imports", "compile", "instance", "log", "fuel"]),
    st.one_of(_sections, _values),
    max_size=3,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_policy_dicts)
def test_random_dicts_give_a_policy_or_a_policy_error(data: dict[str, Any]) -> None:
    try:
        policy = Policy.from_dict(data)
    except PolicyError as exc:
        assert exc.path is not None
        assert str(exc).startswith(exc.path.split("[")[0])
    else:
        assert Policy.from_dict(policy.to_dict()) == policy


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        Policy,
        fuel=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
        timeout=st.one_of(st.none(), st.floats(min_value=1e-6, max_value=86_400)),
        memory=st.integers(0, 4 * 2**30),
        allow=st.frozensets(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), max_size=4),
        max_host_calls=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
    )
)
def test_every_policy_round_trips(policy: Policy) -> None:
    assert Policy.from_dict(policy.to_dict()) == policy


def test_compile_and_instance_tables() -> None:
    p = Policy.from_dict(
        {
            "compile": {
                "max_functions": 10,
                "max_function_size": "64KiB",
                "max_nesting": 5,
                "compile_timeout": "10s",
                "compile_memory": "512MiB",
            },
            "instance": {"fresh_instance": True},
        }
    )
    assert (p.max_functions, p.max_function_size, p.max_nesting) == (10, 65536, 5)
    assert (p.compile_timeout, p.compile_memory, p.fresh_instance) == (10.0, 512 * 2**20, True)
    with pytest.raises(PolicyError) as info:
        Policy.from_dict({"instance": {"fresh_instance": "yes"}})
    assert str(info.value) == 'instance.fresh_instance: expected true or false, got "yes"'
    with pytest.raises(PolicyError, match=r"^compile\.max_nesting: expected an integer from 1"):
        Policy.from_dict({"compile": {"max_nesting": 0}})
    assert Policy.from_dict({"compile": {"compile_memory": "unlimited"}}).compile_memory is None
