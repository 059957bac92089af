"""``Pooling``: opt in to wasmtime's pooling allocator for a Host's instances (issue 14)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _runtime as rt
from ._errors import PolicyError, fmt_bytes, int_text
from ._public import rehome
from ._units import GiB, KiB, parse_size
from ._wasi import restore_checked

if TYPE_CHECKING:
    from dataclasses import dataclass
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass

__all__ = ["Pooling"]

_PAGE = 64 * KiB


# What a size field accepts, said in every message about one.
_SIZE_WORDS = 'bytes as an int or a string with a unit such as "16MiB"'


def _count(name: str, value: object, lo: int, hi: int, size: bool = False) -> int:
    """``value`` as a plain int in ``lo..hi``, or a PolicyError saying what is accepted."""
    # bool is an int, but True slots is a bug; a subclass of int is read as the int it holds
    # (int.__index__), never through its own comparisons or __index__, which may say anything.
    if isinstance(value, int) and not isinstance(value, bool):
        value = int.__index__(value)
        if lo <= value <= hi:
            return value
    if size:
        expected = f"a size from {fmt_bytes(lo)} to {fmt_bytes(hi)} ({_SIZE_WORDS})"
    else:
        expected = f"an int from {lo} to {hi}"
    got = int_text(value) if type(value) is int else repr(value)
    raise PolicyError(f"{name} must be {expected}, got {got}", field=name)


@dataclass(frozen=True, init=False)
class Pooling:
    """Instances from pre-reserved slots: ``Host(pooling=Pooling(instances=..., ...))``.

    wasmtime's pooling allocator reserves every slot once, when the Host's engine is made, and
    reuses them: a new instance maps no memory and a closed one unmaps none (a fresh instance per
    call is cheaper). The limits are explicit because they are hard: a load, or a call that
    needs a new instance (``fresh_instance``, or the first call after a trap), that finds every
    slot taken raises :class:`~plugsafe.PoolExhausted` at once rather than waiting.

    Hosts made with equal ``Pooling`` share one pool (engines are process-wide): its
    ``instances`` count over all their plugins, metered (a ``fuel`` policy) or not, whatever
    each Host's ``max_stack``. Each plugin holds one instance while it is open (a
    ``PluginPool`` one per member); ``close()`` gives its slot back at once. Address space, not
    memory, is reserved per slot: wasmtime sizes a slot by its memory reservation (4 GiB on
    64-bit hosts) plus guard pages, so 1,000 instances reserve about 4 TiB of the 128 TiB a
    Linux process may address, once per engine the pool is used by (metered and unmetered
    plugins, and each ``max_stack``, have an engine of their own). A pool whose reservation
    this process cannot map (past that, or past ``ulimit -v``) is refused with
    :class:`~plugsafe.PolicyError` (``field="instances"``) when an engine needs it: by
    ``Host(...)``, or by the first metered load.

    Args:
        instances: instances alive at once, over every plugin of every Host sharing the pool.
        memory_size: bytes any one linear memory may grow to (a multiple of 64 KiB, at most
            4 GiB), as an int or a string with a unit, as in ``Policy`` (``"16MiB"``). A
            policy whose ``memory`` cap per memory is larger is refused at load: the
            pool's cap would cut growth short below the policy's.
        memories: linear memories per instance (modules defining more fail to load).
        tables: tables per instance (modules defining more fail to load).
        table_elements: elements any one table may hold.
        keep_resident: bytes at the start of each memory and each table that a freed slot
            keeps in RAM, zeroed with ``memset`` (as an int or a string with a unit; rounded
            up to whole host pages; 0 to keep none; at most ``memory_size``). The rest of a
            freed slot goes back to the kernel (``madvise``), and the next instance takes a
            page fault for each page of it it touches. The default, one wasm page (64 KiB),
            spares a small plugin those faults on every ``fresh_instance`` call. Either way a
            new instance sees only zeroes and its own data segments, never the previous
            instance's bytes. Costs up to ``instances * (memories + tables) * keep_resident``
            bytes of resident memory once every slot has been used.
    """

    instances: int
    memory_size: int
    memories: int = 1
    tables: int = 1
    table_elements: int = 100_000
    keep_resident: int = _PAGE

    def __init__(
        self,
        instances: int,
        memory_size: int | str,
        memories: int = 1,
        tables: int = 1,
        table_elements: int = 100_000,
        keep_resident: int | str = _PAGE,
    ) -> None:
        # Written out (not the dataclass's) only so that memory_size may be "16MiB", as
        # Policy(memory=...) takes sizes; read into bytes here, so the field is always an int.
        if isinstance(memory_size, str):
            memory_size = parse_size(memory_size, "memory_size", "memory_size")
        if isinstance(keep_resident, str):
            keep_resident = parse_size(keep_resident, "keep_resident", "keep_resident")
        for name, value in (
            ("instances", instances),
            ("memory_size", memory_size),
            ("memories", memories),
            ("tables", tables),
            ("table_elements", table_elements),
            ("keep_resident", keep_resident),
        ):
            object.__setattr__(self, name, value)
        self._check()

    def _check(self) -> None:
        # Each field stored back as the plain int it was read as (see _count).
        def keep(name: str, value: int) -> None:
            object.__setattr__(self, name, value)

        keep("instances", _count("instances", self.instances, 1, 1_000_000))
        size = _count("memory_size", self.memory_size, _PAGE, 4 * GiB, size=True)
        if size % _PAGE:
            raise PolicyError(
                f"memory_size must be a multiple of 64 KiB (a wasm page), got {size}",
                field="memory_size",
            )
        keep("memory_size", size)
        keep("memories", _count("memories", self.memories, 1, 100))
        keep("tables", _count("tables", self.tables, 1, 100))
        keep("table_elements", _count("table_elements", self.table_elements, 1, 10_000_000))
        resident = _count("keep_resident", self.keep_resident, 0, 4 * GiB, size=True)
        if resident > size:
            # A slot has no more than memory_size to keep: asking for more is a mistake in
            # the numbers (it was accepted silently), said here rather than clamped unseen.
            raise PolicyError(
                f"keep_resident ({fmt_bytes(resident)}) is over memory_size "
                f"({fmt_bytes(size)}): a slot can keep at most its memory_size resident",
                field="keep_resident",
            )
        keep("keep_resident", resident)

    def __setstate__(self, state: object) -> None:
        restore_checked(self, state, Pooling)  # validated as by the constructor (tidy9)

    def limits(self) -> rt.PoolLimits:
        """The same limits as the runtime takes them."""
        return rt.PoolLimits(
            self.instances,
            self.memory_size,
            self.memories,
            self.tables,
            self.table_elements,
            self.keep_resident,
        )

    def refuses(self, memory_per: int) -> str | None:
        """Why a plugin with ``memory_per`` bytes per memory cannot use this pool, or None."""
        if memory_per > self.memory_size:
            return (
                f"its policy lets each memory grow to {fmt_bytes(memory_per)}, over the "
                f"{fmt_bytes(self.memory_size)} of the Host's Pooling(memory_size=...) slots"
            )
        return None


# plugsafe imports this module when Pooling is first used (issue 14: cold start): it is
# plugsafe.Pooling however it is reached first.
rehome(Pooling)
