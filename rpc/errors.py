"""Errors that cross the wire, and the one mapping of transport failures to errnos.

Operation errors travel as errno *names* (``"ENOENT"``), never numbers, so the two
ends need not share a platform's numbering. A failure of the transport itself (the
peer went away, the deadline passed) is mapped to an errno by ``transport_errno``
and nowhere else, so every layer above sees the same ENOTCONN / ETIMEDOUT.
"""

from __future__ import annotations

import errno
import os

import trio


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message.

    The connection it arrived on cannot be trusted any further and is closed.
    """


class FrameTooLarge(ProtocolError):
    """A frame announced a length above the receiver's maximum."""


class HandshakeRefused(ConnectionError):
    """The server refused the handshake; ``reason`` says why, for an operator.

    A ``Service.authenticate`` raises it to refuse a client; the client side raises
    it from ``connect_stream`` / ``open_rpc_connection`` with the server's reason.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"handshake refused: {self.reason}"


def errno_name(code: int) -> str:
    """The symbolic name of an errno (``errno.ENOENT`` -> ``"ENOENT"``); EIO if unknown."""
    return errno.errorcode.get(code, "EIO")


def _errno_from_name(name: object) -> int:
    if type(name) is not str or not name.startswith("E"):
        return errno.EIO
    code = getattr(errno, name, None)
    return code if type(code) is int else errno.EIO


def oserror_from_name(name: str, msg: str = "") -> OSError:
    """The ``OSError`` a reply's errno name stands for; an unknown name becomes EIO."""
    code = _errno_from_name(name)
    return OSError(code, msg or os.strerror(code))


def transport_errno(exc: BaseException) -> int:
    """The errno that a transport failure means to the layers above.

    A passed deadline is ETIMEDOUT; anything that means "the peer is not reachable
    right now" (connection lost, reset, refused, closed, bad frames, a refused
    handshake) is ENOTCONN.
    """
    if isinstance(exc, trio.TooSlowError):
        return errno.ETIMEDOUT
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return errno.ETIMEDOUT
    return errno.ENOTCONN


def transport_error(exc: BaseException, what: str = "") -> OSError:
    """An ``OSError`` carrying ``transport_errno(exc)``, for raising to a caller."""
    code = transport_errno(exc)
    detail = what or str(exc) or type(exc).__name__
    return OSError(code, f"{os.strerror(code)}: {detail}")
