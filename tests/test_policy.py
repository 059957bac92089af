"""Policy validation: bad values are PolicyErrors that name the field."""

from __future__ import annotations

import dataclasses

import pytest

import plugsafe
from plugsafe import Policy, PolicyError


def test_defaults_deny_everything_and_bound_time_and_memory() -> None:
    p = Policy()
    assert p.allow == frozenset()
    assert p.timeout is not None and p.timeout > 0
    assert p.memory > 0
    assert p.max_input > 0 and p.max_output > 0 and p.max_module_size > 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fuel", -1),
        ("fuel", 1.5),
        ("fuel", True),
        ("timeout", -0.1),
        ("timeout", 0),
        ("timeout", float("nan")),
        ("timeout", float("inf")),
        # A string is read with its unit (issue 13: Policy(timeout="250ms")); these are not.
        ("timeout", "1 fortnight"),
        ("timeout", "250"),
        ("memory", "16 parsecs"),
        ("memory", -1),
        ("memory", 5 * 2**30),
        ("memory", None),
        ("max_input", -5),
        ("max_output", 2**31),
        ("max_module_size", 0),
        ("max_table_elements", -1),
        ("max_host_calls", -1),
        ("log_messages", -1),
        ("log_message_size", "big"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(PolicyError) as info:
        Policy(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


def test_allow_must_be_a_collection_of_names() -> None:
    with pytest.raises(PolicyError, match="allow") as info:
        Policy(allow="log")  # type: ignore[arg-type]
    assert info.value.field == "allow"
    with pytest.raises(PolicyError, match="not a valid host function name"):
        Policy(allow={"bad name"})
    assert Policy(allow=["log", "log"]).allow == frozenset({"log"})


def test_unknown_allow_name_is_refused_at_load(host: plugsafe.Host) -> None:
    with pytest.raises(PolicyError, match="'lookup' is not a host function") as info:
        host.load(b"(module)", policy=Policy(allow={"lookup"}))
    assert info.value.field == "allow"


def test_policy_is_frozen_and_replace_validates() -> None:
    p = Policy(fuel=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.fuel = 20  # type: ignore[misc]
    assert p.replace(fuel=20).fuel == 20
    with pytest.raises(PolicyError):
        p.replace(fuel=-1)
    assert Policy(timeout=1).timeout == 1.0
    assert isinstance(Policy(timeout=1).timeout, float)


def test_none_means_unlimited_where_allowed() -> None:
    p = Policy(fuel=None, timeout=None, max_host_calls=None)
    assert p.fuel is None and p.timeout is None and p.max_host_calls is None


def test_unknown_field_is_a_policy_error_with_a_suggestion() -> None:
    with pytest.raises(PolicyError, match="fuell: not a policy field; did you mean 'fuel'") as info:
        Policy(fuell=10)  # type: ignore[call-arg]
    assert info.value.field == "fuell"
    assert isinstance(info.value, ValueError)
