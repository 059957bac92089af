"""plugsafe.testing, the helpers and the pytest plugin plugin authors and app developers use.

The plugin's fixtures and helpers are exercised in a pytest run of their own, in a new process,
the way a user's project runs them: through the ``pytest11`` entry point of the installed
package, with no conftest and no import of the fixtures. (Importing ``plugsafe.testing`` in this
process would make it an attribute of the ``plugsafe`` package, which tests/test_api.py checks
has only the public names.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

USER_TESTS = """
from pathlib import Path

import pytest

import plugsafe
from plugsafe.testing import (
    HostCall,
    assert_imports_only,
    assert_within_policy,
    load_plugin,
    stub,
)

GREET = Path(WAT_DIR) / "greet.wat"
POLICY = Path(WAT_DIR).parent / "policy.toml"  # allows "log" only


HOSTS = []


def test_host_fixture_is_a_host_closed_after_the_test(plugsafe_host):
    assert isinstance(plugsafe_host, plugsafe.Host) and not plugsafe_host.closed
    HOSTS.append(plugsafe_host)


def test_the_host_of_the_previous_test_was_closed():
    assert [h.closed for h in HOSTS] == [True]


def test_a_policy_file_is_widened_for_a_stub(plugsafe_host):
    @stub(plugsafe_host)
    def lookup(key: str) -> str | None:
        return {"ada": "Countess of Lovelace"}.get(key)

    with pytest.raises(plugsafe.ImportNotAllowedError, match="lookup"):
        load_plugin(plugsafe_host, GREET, POLICY)
    plugin = load_plugin(plugsafe_host, GREET, POLICY, allow={"lookup"})
    assert plugin.policy.allow == {"log", "lookup"}
    assert plugin.call("describe", "ada") == b"Countess of Lovelace"
    with pytest.raises(plugsafe.GuestError):
        plugin.call("describe", "bob")
    assert lookup.calls == [("ada",), ("bob",)]
    assert lookup.call_count == 2
    assert lookup.history[0] == HostCall(("ada",), "Countess of Lovelace")
    assert lookup("ada") == "Countess of Lovelace"  # callable from the test too


def test_a_stub_records_what_it_raised(plugsafe_host):
    @stub(plugsafe_host, name="lookup")
    def failing(key: str) -> str | None:
        raise KeyError(key)

    plugin = load_plugin(plugsafe_host, GREET, POLICY, allow={"lookup"})
    with pytest.raises(plugsafe.HostFunctionError):
        plugin.call("describe", "ada")
    (call,) = failing.history
    assert call.args == ("ada",) and isinstance(call.error, KeyError)


def test_load_fixture_and_policy_objects(plugsafe_host, plugsafe_load):
    stub(plugsafe_host, name="lookup")(lambda_lookup)
    plugin = plugsafe_load(GREET, plugsafe.Policy(allow={"log", "lookup"}), name="g")
    assert plugin.name == "g"


def test_within_policy(plugsafe_host):
    stub(plugsafe_host, name="lookup")(lambda_lookup)
    plugin = load_plugin(plugsafe_host, GREET, POLICY, allow={"lookup"})
    with pytest.raises(AssertionError, match="has not been called yet"):
        assert_within_policy(plugin)
    plugin.call("greet", "world")
    stats = assert_within_policy(plugin, headroom=0.5)
    assert stats == plugin.last_call
    tight = plugin.policy.replace(fuel=10, max_host_calls=0)
    with pytest.raises(AssertionError, match=r"fuel: used \\d+ of 10; host calls: used 1 of 0"):
        assert_within_policy(plugin, policy=tight)
    with pytest.raises(ValueError, match="headroom"):
        assert_within_policy(plugin, headroom=0)


def lambda_lookup(key: str) -> str | None:
    return None


def test_pytest_does_not_rewrite_plugsafe():
    # The pytest11 entry point marks the distribution for assertion rewriting: the package
    # namespace and the call-path modules must stay as they are outside pytest.
    import plugsafe._callpath
    import plugsafe._plugin

    for module in (plugsafe, plugsafe._callpath, plugsafe._plugin):
        assert "@py_builtins" not in vars(module), module.__name__


def test_imports_only(plugsafe_host):
    stub(plugsafe_host, name="lookup")(lambda_lookup)
    plugin = load_plugin(plugsafe_host, GREET, POLICY, allow={"lookup"})
    assert_imports_only(plugin, {"log", "lookup"})
    with pytest.raises(AssertionError, match="imports lookup beyond"):
        assert_imports_only(plugin, {"log"})
"""


@pytest.mark.slow
def test_the_pytest_plugin_and_helpers_in_a_users_test_run(tmp_path: Path) -> None:
    test_file = tmp_path / "test_user.py"
    wat_dir = ROOT / "examples" / "wat"
    test_file.write_text(f"WAT_DIR = {str(wat_dir)!r}\n" + USER_TESTS, encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "8 passed" in res.stdout, res.stdout


def test_importing_plugsafe_does_not_import_the_test_helpers() -> None:
    """Apps import plugsafe; pytest and the helpers stay out of their processes."""
    code = "import sys, plugsafe; print('plugsafe.testing' in sys.modules, 'pytest' in sys.modules)"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert res.stdout.split() == ["False", "False"]
