"""Attacks on the host side: host functions, the call lifecycle, the log, and threads.

Fuel barely counts work done in host functions, so a plugin that calls the host in a loop is the
cheapest way to burn the host's CPU: ``max_host_calls`` and the deadline check on every host call
stop it. The lifecycle tests (trap then reuse, use after close, re-entry) check that no state
leaks from a failed or closed plugin.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import plugsafe
from plugsafe import Policy

from sec import OK_FN, assert_healthy, attacker

TICKER = f"""(module (import "plugsafe" "tick" (func $t)) {OK_FN}
  (func (export "many") (param $n i32)
    (loop $l (call $t) (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (local.get $n)))))"""


def test_host_function_called_a_million_times_in_one_call(host: plugsafe.Host) -> None:
    """Attack: call a cheap host function 10^6 times in one call (fuel barely notices)."""
    runs = [0]

    @host.function
    def tick() -> None:
        runs[0] += 1

    p = host.load(TICKER.encode(), policy=Policy(allow={"tick"}, max_host_calls=1000))
    start = time.monotonic()
    with pytest.raises(plugsafe.HostCallLimitExceeded) as info:
        p.invoke("many", 10**6)
    assert time.monotonic() - start < 1.0  # stopped by the quota, not after a million calls
    assert info.value.limit == "max_host_calls" and info.value.value == 1000
    assert runs[0] == 1000  # the 1001st call was refused before the function ran
    assert_healthy(host, p)


def test_host_call_quota_is_on_by_default(host: plugsafe.Host) -> None:
    """Attack: the same 10^6 calls against the default policy, which has a quota too."""

    @host.function
    def tick() -> None:
        pass

    default = Policy().max_host_calls
    assert default is not None and default < 10**6
    p = host.load(TICKER.encode(), policy=Policy(allow={"tick"}, timeout=30))
    with pytest.raises(plugsafe.HostCallLimitExceeded):
        p.invoke("many", 10**6)
    assert p.last_call is not None and p.last_call.host_calls == default + 1
    assert_healthy(host, p)


def test_host_function_that_raises(host: plugsafe.Host) -> None:
    """Attack: make a host function fail; the failure must not cross into other calls."""

    class Backend(RuntimeError):
        pass

    @host.function
    def tick() -> None:
        raise Backend("database down")

    p = host.load(TICKER.encode(), policy=Policy(allow={"tick"}))
    for _ in range(3):
        with pytest.raises(plugsafe.HostFunctionError) as info:
            p.invoke("many", 1)
        assert isinstance(info.value.__cause__, Backend)
        assert info.value.function == "tick"
    assert_healthy(host, p)


def test_slow_host_function_versus_the_timeout(host: plugsafe.Host) -> None:
    """Attack: call a slow host function over and over to run far past the timeout.

    plugsafe cannot interrupt Python code, but it checks the deadline on every host call: the
    overrun is at most one host function's duration.
    """
    runs: list[float] = []

    @host.function
    def tick() -> None:
        runs.append(time.monotonic())
        time.sleep(0.06)

    p = host.load(TICKER.encode(), policy=Policy(allow={"tick"}, timeout=0.1))
    # Each try in full: never a host call begun past the deadline (a third would begin at
    # 0.12 s or later, two sleeps of 0.06 s), stopped by the timeout. On time means two runs
    # (the second begins at ~0.06 s) and back within timeout + one host call + slack; a loaded
    # machine can stretch the first sleep past 0.1 s (then one run, rightly) or the whole try
    # past the bound now and then (or delay the first host call past the deadline: no
    # run at all), so the best of three tries must be on time.
    tries: list[tuple[float, int]] = []
    while len(tries) < 3 and (not tries or not (tries[-1][0] < 0.26 and tries[-1][1] == 2)):
        runs.clear()
        start = time.monotonic()
        with pytest.raises(plugsafe.DeadlineExceeded) as info:
            p.invoke("many", 1000)
        tries.append((time.monotonic() - start, len(runs)))
        assert len(runs) <= 2, runs
        assert info.value.limit == "timeout"
    took, ran = tries[-1]
    assert took < 0.1 + 0.06 + 0.1, tries  # timeout + one host call + slack
    assert ran == 2, tries
    assert_healthy(host, p)


def test_reentrant_call_back_into_the_guest(host: plugsafe.Host) -> None:
    """Attack: a host function (steered by the guest) calls back into the same plugin."""
    me: list[plugsafe.Plugin] = []
    attempts: list[type[BaseException]] = []

    @host.function
    def tick() -> None:
        for attempt in (
            lambda: me[0].invoke("ok"),
            lambda: me[0].call("echo", b"x"),
            lambda: me[0].invoke("many", 1),
        ):
            try:
                attempt()
            except plugsafe.PluginCallError as exc:
                attempts.append(type(exc))

    wat = attacker(
        """(func (export "many") (param $n i32) (call $t))
           (func (export "ok") (result i32) i32.const 7)""",
        imports='(import "plugsafe" "tick" (func $t))',
    )
    p = host.load(wat.encode(), policy=Policy(allow={"tick"}))
    me.append(p)
    p.invoke("many", 1)
    assert attempts == [plugsafe.PluginCallError] * 3
    assert_healthy(host, p)


def test_trap_then_reuse(host: plugsafe.Host) -> None:
    """Attack: corrupt state, trap, and hope the next call sees the corrupted instance."""
    wat = attacker(
        """(global $g (mut i32) (i32.const 0))
           (func (export "poison") (param i32 i32) (result i64)
             (global.set $g (i32.const 666))
             (i32.store (i32.const 512) (i32.const 666))
             unreachable)
           (func (export "peek") (result i32)
             (i32.add (global.get $g) (i32.load (i32.const 512))))"""
    )
    p = host.load(wat.encode())
    for _ in range(3):
        with pytest.raises(plugsafe.PluginTrap) as info:
            p.call("poison", b"")
        assert info.value.trap_code == "UNREACHABLE"
        assert p.invoke("peek") == 0  # a fresh instance: no global, no memory survived
    assert_healthy(host, p)


def test_use_after_close(host: plugsafe.Host) -> None:
    """Attack: keep using a plugin (every entry point) after it was closed."""
    p = host.load(attacker(f"{OK_FN}").encode())
    p.close()
    p.close()  # idempotent
    for use in (
        lambda: p.call("echo", b"x"),
        lambda: p.call_json("echo", {}),
        lambda: p.invoke("ok"),
        lambda: p.memory.read(0, 1),
        lambda: p.memory.write(0, b"x"),
        lambda: p.memory.size,
    ):
        with pytest.raises(plugsafe.PluginClosedError):
            use()
    assert_healthy(host)


def test_close_from_inside_a_host_function(host: plugsafe.Host) -> None:
    """Attack: a host function closes the plugin mid-call; the call ends, later use fails."""
    me: list[plugsafe.Plugin] = []

    @host.function
    def tick() -> None:
        me[0].close()

    p = host.load(TICKER.encode(), policy=Policy(allow={"tick"}))
    me.append(p)
    p.invoke("many", 1)
    with pytest.raises(plugsafe.PluginClosedError):
        p.invoke("ok")
    assert_healthy(host)


def test_use_after_host_close() -> None:
    """Attack: use plugins after their host was closed."""
    host = plugsafe.Host()
    p = host.load(attacker(OK_FN).encode())
    host.close()
    with pytest.raises(plugsafe.PluginClosedError):
        p.invoke("ok")
    with pytest.raises(plugsafe.PluginClosedError):
        host.load(attacker("").encode())


LOGGER = attacker(
    """(func (export "say") (param $p i32) (param $n i32) (result i64)
         (call $log (i32.const 2) (local.get $p) (local.get $n))
         (call $ok (i32.const 0) (i32.const 0)))
       (func (export "spam") (param $p i32) (param $n i32) (result i64)
         (local $i i32)
         (loop $l (call $log (i32.const 4) (local.get $p) (local.get $n))
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))
         (call $ok (i32.const 0) (i32.const 0)))""",
    imports='(import "plugsafe" "log" (func $log (param i32 i32 i32)))',
)


def _records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == f"plugsafe.plugin.{name}"]


def test_log_spam_with_a_huge_message(
    host: plugsafe.Host, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: log an 8 MiB message to flood the host's logs and memory."""
    caplog.set_level(logging.DEBUG, logger="plugsafe")
    # Placing 8 MiB in a fresh instance (its memory grown and faulted in) is part of the call:
    # 0.29 s of CPU on the ctypes path here, and 1.7 s of wall time on a loaded machine, past
    # the default 1 s timeout (DeadlineExceeded, seen in a ctypes run). The attack is the
    # message's size in the logs, not time: a timeout far off.
    policy = Policy(allow={"log"}, log_message_size=100, timeout=30.0)
    p = host.load(LOGGER.encode(), policy=policy, name="big")
    p.call("say", b"A" * (8 * 2**20))
    (record,) = _records(caplog, "big")
    assert record.getMessage() == "A" * 100 + f"... [cut: {8 * 2**20} bytes in all]"
    assert_healthy(host, p)


def test_log_spam_with_control_characters(
    host: plugsafe.Host, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: forge log lines and terminal escapes (newline, CR, ESC, NEL, U+2028, NUL)."""
    caplog.set_level(logging.DEBUG, logger="plugsafe")
    p = host.load(LOGGER.encode(), policy=Policy(allow={"log"}), name="forger")
    evil = "ok\nERROR root: forged\r\x1b[2J\x00\u0085\u2028\\x41".encode() + b"\xff"
    p.call("say", evil)
    (record,) = _records(caplog, "forger")
    msg = record.getMessage()
    assert msg.isprintable()  # one line, nothing a terminal would act on
    assert msg == "ok\\nERROR root: forged\\r\\x1b[2J\\x00\\x85\\u2028\\\\x41\ufffd"
    assert_healthy(host, p)


def test_log_spam_with_a_million_messages(
    host: plugsafe.Host, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: log a million messages in one call."""
    caplog.set_level(logging.DEBUG, logger="plugsafe")
    p = host.load(
        LOGGER.encode(),
        policy=Policy(allow={"log"}, log_messages=5, max_host_calls=2000),
        name="spam",
    )
    with pytest.raises(plugsafe.HostCallLimitExceeded):
        p.call("spam", b"hi")
    records = _records(caplog, "spam")
    assert [r.getMessage() for r in records[:5]] == ["hi"] * 5
    assert "dropped 1995 log message(s)" in records[5].getMessage()
    assert len(records) == 6
    assert_healthy(host, p)


def test_one_plugin_shared_by_8_threads_with_failures_mixed_in(host: plugsafe.Host) -> None:
    """Attack: hammer one plugin from 8 threads, mixing traps, host errors, guest errors,
    fuel exhaustion and ABI errors with good calls; nobody may get another's answer or error."""

    class Tagged(Exception):
        pass

    @host.function
    def check(data: bytes) -> bytes:
        if data.startswith(b"raise"):
            raise Tagged(data.decode())
        return data[::-1]

    wat = attacker(
        """(func (export "work") (param $p i32) (param $n i32) (result i64)
             (call $check (local.get $p) (local.get $n)))
           (func (export "fail") (param $p i32) (param $n i32) (result i64)
             (call $err (local.get $p) (local.get $n)))
           (func (export "trap") (param i32 i32) (result i64) unreachable)
           (func (export "spin") (param i32 i32) (result i64) (loop $l (br $l)) unreachable)
           (func (export "lie") (param i32 i32) (result i64) (i64.const -1))""",
        imports='(import "plugsafe" "check" (func $check (param i32 i32) (result i64)))',
    )
    # A call's timeout covers its wait for the plugin: with eight threads taking turns on one
    # lock (which is not fair) on a loaded machine, a waiter was passed over for the whole
    # default second (DeadlineExceeded, "all of it spent waiting": 1 in 3 runs with two busy
    # processes beside the test). The attack is mixed failures, not time: a timeout far off.
    policy = Policy(allow={"check"}, fuel=200_000, timeout=30.0)
    p = host.load(wat.encode(), policy=policy, name="shared")

    def job(i: int) -> None:
        tag = f"{i}-{threading.get_ident()}"
        kind = i % 6
        if kind == 0:
            assert p.call("work", tag) == tag.encode()[::-1]
        elif kind == 1:
            with pytest.raises(plugsafe.HostFunctionError) as he:
                p.call("work", f"raise{tag}")
            assert str(he.value.__cause__) == f"raise{tag}"
        elif kind == 2:
            with pytest.raises(plugsafe.GuestError) as ge:
                p.call("fail", tag)
            assert ge.value.message == tag
        elif kind == 3:
            with pytest.raises(plugsafe.PluginTrap):
                p.call("trap", tag)
        elif kind == 4:
            with pytest.raises(plugsafe.FuelExhausted):
                p.call("spin", tag)
        else:
            with pytest.raises(plugsafe.AbiError):
                p.call("lie", tag)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(job, range(8 * 60)))
    assert_healthy(host, p)
