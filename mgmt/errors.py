"""The management daemon's one error type for operator-facing failures.

``MgmtError`` is an ``OSError`` so the rpc server sends it as an errno reply whose
``msg`` is the operator's message unchanged; the CLI prints that message after the
command's prefix (``peer probe: ...``), the way ``gluster`` does.
"""

from __future__ import annotations

import errno


class MgmtError(OSError):
    """An operation was refused or failed; ``message`` reads like gluster's output."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)

    @property
    def message(self) -> str:
        return str(self.strerror)


def bad_args(what: str) -> MgmtError:
    return MgmtError(errno.EINVAL, f"invalid arguments: {what}")
