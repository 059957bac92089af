"""Shared fixtures (a Host per test, closed afterwards; helpers to load inline WAT) and the
summary line that says how many tests were skipped and why."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import plugsafe

import toolchains  # importable once tests/ is on the path


@pytest.fixture
def host() -> Iterator[plugsafe.Host]:
    with plugsafe.Host() as h:
        yield h


LoadFn = Callable[..., plugsafe.Plugin]


@pytest.fixture
def load(host: plugsafe.Host) -> LoadFn:
    """load(wat_text, **policy_fields) -> Plugin, with name='t'."""

    def _load(wat_text: str, name: str = "t", **policy: object) -> plugsafe.Plugin:
        return host.load(wat_text.encode(), policy=plugsafe.Policy(**policy), name=name)  # type: ignore[arg-type]

    return _load


# Wrong arguments for an (i32, i32) export, and what the SignatureError says about each.
BAD_I32_PAIRS: list[tuple[tuple[object, ...], str]] = [
    ((1,), "takes 2 argument"),
    ((1, 2, 3), "takes 2 argument"),
    (("1", 2), "argument 0 is i32; got str"),
    ((1.5, 2), "argument 0 is i32; got float"),
    ((1, None), "argument 1 is i32; got NoneType"),
    ((2**32, 0), "out of range"),
    ((-(2**31) - 1, 0), "out of range"),
]


# The slow tests (seconds each, or many subprocesses), marked here in one place so that
# `pytest -m "not slow"` is a quick run (under a minute) while the full run stays the one CI runs.
# Any test that needs a guest toolchain is slow too (it compiles plugins): see SLOW_FIXTURES.
SLOW_FIXTURES = frozenset({"fresh_rust", "fresh_c", "require", "build_wasi", "rust_wasi"})
SLOW_FILES = (
    "tests/test_cli.py",  # every test starts the command line in a new process
    "tests/test_examples.py",  # runs the demo in a new process
    "tests/test_quality.py",  # mypy --strict and ruff
    "tests/test_toolchain_skips.py",  # runs pytest in a new process
    "tests/sdk/test_sdk_apps.py",
    "tests/sdk/test_sdk_build_script.py",
    "tests/sdk/test_sdk_quality.py",
    "tests/sdk/test_sdk_scaffold.py",
    "tests/security/test_sec_compile.py",
    "tests/security/test_sec_fuzz.py",
    "tests/security/test_sec_holds_c4_hangs.py",
    "tests/security/test_sec_holds_c5_deadlines.py",
    "tests/security/test_sec_soak.py",
)
SLOW_TESTS = (
    "tests/security/test_sec_holds_c2_forged.py::"
    "test_c2_recursion_limit_inside_nested_host_calls_never_forges_a_result",
    "tests/security/test_sec_holds_c2_forged.py::"
    "test_c2_recursion_limit_inside_nested_host_calls_never_forges_a_result_ctypes",
    "tests/test_policy_files.py::test_every_policy_round_trips",
    "tests/test_policy_files.py::test_random_dicts_give_a_policy_or_a_policy_error",
    "tests/test_speed_features.py::test_cache_is_used_by_a_fresh_process",
    "tests/test_speed_features.py::test_forced_fallback_backend_runs",
    "tests/test_threads.py::test_wasm_runs_without_holding_the_gil",
    # New processes, with and without the compiled call.
    "tests/test_speedups.py::test_plugsafe_speedups_0_turns_it_off",
    "tests/test_speedups.py::test_without_the_extension_the_cffi_call_is_used",
    "tests/test_speedups.py::test_traps_and_errors_are_the_same_on_both_calls",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tests ``slow`` (the marker is registered in pyproject.toml)."""
    root = Path(str(config.rootpath))
    for item in items:
        path = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        node = f"{path}::{item.name.split('[')[0]}"
        fixtures = getattr(item, "fixturenames", ())
        # plugin_path(..., "fresh") asks for a fresh build through request.getfixturevalue.
        fresh = "plugin_path" in fixtures and "fresh" in item.name
        if (
            path in SLOW_FILES
            or node in SLOW_TESTS
            or fresh
            or SLOW_FIXTURES.intersection(fixtures)
        ):
            item.add_marker(pytest.mark.slow)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line: how many tests were skipped for a missing guest toolchain, and what to install.

    ``-ra`` (in pyproject) lists each skip; this line is the answer to "is anything untested
    here, and why" without reading them all.
    """
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    reasons = Counter(
        "toolchain" if _skip_reason(r).startswith(toolchains.SKIP_PREFIX) else "other"
        for r in skipped
    )
    if reasons["toolchain"]:
        line = (
            f"plugsafe: {reasons['toolchain']} test(s) skipped because a guest toolchain is "
            f"missing; to run them: {toolchains.INSTALL} "
            f"(set {toolchains.REQUIRE_ENV}=1 to make this a failure)"
        )
    else:
        line = "plugsafe: no test skipped for a missing guest toolchain"
    if reasons["other"]:
        line += f"; {reasons['other']} skipped for other reasons (listed above)"
    terminalreporter.write_line(line, yellow=bool(reasons["toolchain"]))
