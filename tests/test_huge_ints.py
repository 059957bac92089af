"""Ints past Python's 4,300-digit limit for ``str()`` (fuzz9's note): wherever the app, a policy
file or a dict hands plugsafe one, the error is the documented one with a readable message, never
the ValueError ``str()`` of the int raises, nor the OverflowError of ``float()`` of it."""

from __future__ import annotations

from pathlib import Path

import pytest

import plugsafe
from plugsafe import Policy, PolicyError, Pooling

HUGE = 10**5000

INT_FIELDS = [
    "fuel",
    "memory",
    "max_input",
    "max_output",
    "max_module_size",
    "max_table_elements",
    "max_host_calls",
    "log_messages",
    "log_message_size",
    "max_host_arg_size",
    "max_functions",
    "max_imports",
    "max_exports",
    "max_function_size",
    "max_nesting",
]


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("field", [*INT_FIELDS, "timeout", "compile_timeout"])
def test_a_policy_field_given_a_huge_int_is_a_policy_error(field: str, sign: int) -> None:
    with pytest.raises(PolicyError, match=rf"^{field}: expected .* integer of 16610 bits$") as info:
        Policy(**{field: sign * HUGE})
    assert info.value.field == field
    assert ("negative" in str(info.value)) is (sign < 0)


def test_a_policy_dict_with_a_huge_int_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match=r"limits.fuel: expected .* an integer of 16610 bits"):
        Policy.from_dict({"limits": {"fuel": HUGE}})


def test_a_policy_file_with_an_int_past_the_digit_limit_is_a_policy_error(tmp_path: Path) -> None:
    # tomllib itself refuses to make it (a ValueError, not a TOMLDecodeError).
    path = tmp_path / "policy.toml"
    path.write_text("[limits]\nfuel = " + "9" * 5000 + "\n")
    with pytest.raises(PolicyError, match=r"is not a usable TOML file"):
        Policy.from_toml(path)
    # Under the limit tomllib makes it, and the field's own check says what is wrong.
    path.write_text("[limits]\nfuel = " + "9" * 4000 + "\n")
    with pytest.raises(PolicyError, match=r"limits.fuel: expected .* integer of 13288 bits"):
        Policy.from_toml(path)


@pytest.mark.parametrize("field", ["instances", "memory_size"])
def test_pooling_given_a_huge_int_is_a_policy_error(field: str) -> None:
    kw = {"instances": 1, "memory_size": 2**20, field: HUGE}
    with pytest.raises(PolicyError, match=f"^{field} must be .* got an integer of 16610 bits"):
        Pooling(**kw)


def test_the_app_side_ranges_say_what_they_got() -> None:
    with pytest.raises(ValueError, match=r"max_stack must be .* got an integer of 16610 bits"):
        plugsafe.Host(max_stack=HUGE)
    with pytest.raises(ValueError, match=r"size must be .* got a negative integer of 16610 bits"):
        plugsafe.PluginPool(b"", size=-HUGE)


def test_small_ints_are_still_written_out() -> None:
    with pytest.raises(PolicyError, match=r"got -5$"):
        Policy(fuel=-5)
    with pytest.raises(PolicyError, match=rf"got {2**100}$"):
        Policy(memory=2**100)
