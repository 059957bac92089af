"""``RunResult``: what ``Plugin.run`` returns (issue 14: cold start).

Only a WASI command's run needs this class: ``plugsafe/__init__.py`` and ``_plugin`` import this
module on first use, so a cold start does not make the dataclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._public import rehome

if TYPE_CHECKING:
    from dataclasses import dataclass
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass

__all__ = ["RunResult"]


@dataclass(frozen=True)
class RunResult:
    """What :meth:`Plugin.run` returns: the exit code and the captured output.

    ``stdout_truncated``/``stderr_truncated`` say the stream went past the policy's
    ``max_output`` and the rest was dropped.
    """

    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False


# Imported when RunResult is first used: it is plugsafe.RunResult however it is reached first.
rehome(RunResult)
