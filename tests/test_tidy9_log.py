"""tidy9: a plugin's logger per distinct plugin name, without growing for ever.

``_log.logger_for`` kept every stand-in it made, and its first use called
``logging.getLogger("plugsafe.plugin.<name>")``, which logging keeps for the life of the
process: a host that names a plugin per tenant or per upload grew both by one entry per name.
Now the stand-ins are bounded, and a plugin's logger the app has not made itself is made outside
logging's registry, with the same name, the same handlers (through ``plugsafe.plugin``) and the
app's configuration of the real one honoured whenever it exists.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest

import plugsafe
from plugsafe import _log

from wat import abi_module

_NAMES = 3000


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[_Records]:
    handler = _Records()
    base = logging.getLogger("plugsafe.plugin")
    base.addHandler(handler)
    level = base.level
    base.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        base.removeHandler(handler)
        base.setLevel(level)


def test_many_plugin_names_grow_neither_the_stand_ins_nor_loggings_registry(
    records: _Records,
) -> None:
    registry = logging.root.manager.loggerDict
    before = len(registry)
    for i in range(_NAMES):
        _log.logger_for(f"tidy9-tenant-{i}").info("hello %d", i)
    assert len(records.records) == _NAMES
    assert records.records[-1].name == f"plugsafe.plugin.tidy9-tenant-{_NAMES - 1}"
    assert records.records[-1].getMessage() == f"hello {_NAMES - 1}"
    assert len(_log._LOGGERS) <= _log._LOGGERS_KEPT
    assert len(registry) - before <= 1  # plugsafe.plugin itself, if no one had made it
    assert not any(name.startswith("plugsafe.plugin.tidy9-tenant") for name in registry)


def test_a_logger_the_app_configured_is_the_one_used(records: _Records) -> None:
    # Made by the app before the plugin's first record: it is logging's own logger.
    quiet = logging.getLogger("plugsafe.plugin.tidy9-quiet")
    quiet.setLevel(logging.ERROR)
    _log.logger_for("tidy9-quiet").info("dropped")
    _log.logger_for("tidy9-quiet").error("kept")
    # Made by the app after: honoured from then on, level and handlers.
    late = _log.logger_for("tidy9-late")
    late.info("before")
    own = _Records()
    real = logging.getLogger("plugsafe.plugin.tidy9-late")
    real.addHandler(own)
    real.setLevel(logging.WARNING)
    try:
        late.info("filtered")
        late.warning("after")
    finally:
        real.removeHandler(own)
    assert [r.getMessage() for r in records.records] == ["kept", "before", "after"]
    assert [r.getMessage() for r in own.records] == ["after"]


def test_a_level_set_on_an_ancestor_after_first_use_applies_at_once(records: _Records) -> None:
    logger = _log.logger_for("tidy9-levels")
    logger.debug("one")
    base = logging.getLogger("plugsafe.plugin")
    base.setLevel(logging.WARNING)  # logging clears only registered loggers' level caches
    logger.info("two")
    logger.warning("three")
    base.setLevel(logging.DEBUG)
    logger.debug("four")
    assert [r.getMessage() for r in records.records] == ["one", "three", "four"]


def test_a_plugin_named_per_tenant_logs_under_its_name_and_leaks_no_logger(
    records: _Records,
) -> None:
    wat = abi_module(
        """
      (data (i32.const 16) "hi from the plugin")
      (func (export "speak") (param i32 i32) (result i64)
        (call $log (i32.const 2) (i32.const 16) (i32.const 18))
        (call $ok (i32.const 0) (i32.const 0)))""",
        imports='(import "plugsafe" "log" (func $log (param i32 i32 i32)))',
    )
    registry = logging.root.manager.loggerDict
    before = len(registry)
    with plugsafe.Host() as host:
        for i in range(50):
            plugin = host.load(
                wat.encode(), name=f"tidy9-upload-{i}", policy=plugsafe.Policy(allow={"log"})
            )
            plugin.call("speak", b"")
            plugin.close()
    gc.collect()
    assert [r.name for r in records.records] == [
        f"plugsafe.plugin.tidy9-upload-{i}" for i in range(50)
    ]
    assert {r.getMessage() for r in records.records} == {"hi from the plugin"}
    assert len(registry) - before <= 1
