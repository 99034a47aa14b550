"""Fetching a volume's client volfile from pyglfsd (``getspec``), as a mount does.

The servers are tried in order (the mount source's host, then the
``backup-volfile-servers``). A server that cannot be reached (no daemon,
connect timeout, handshake refused, connection lost) sends us to the next one.
A server that answers with a refusal (no such volume, volume not started)
ends the search, as glusterfs does: every node of a pool holds the same volume
definitions, so asking another node would only repeat the answer. A volfile
that does not parse counts as that server's failure.

The connection uses hello role ``client``, for which pyglfsd serves ``getspec``
and nothing else (mgmt/OPS.md).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from dataclasses import dataclass

from pyglfs.rpc.connection import open_rpc_connection
from pyglfs.rpc.errors import HandshakeRefused
from pyglfs.volfiles.model import Graph, VolfileError
from pyglfs.volfiles.parser import parse

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
CALL_TIMEOUT = 10.0
# Errnos of a reply that mean "this server could not answer", not a refusal.
_UNREACHABLE = frozenset({errno.ENOTCONN, errno.ETIMEDOUT, errno.ECONNREFUSED,
                          errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH})


@dataclass(frozen=True)
class FetchedVolfile:
    """A volfile as one server gave it: the text, its graph and who answered."""

    volume: str
    text: str
    graph: Graph
    server: tuple[str, int]


class VolfetchError(Exception):
    """No server gave the volfile. ``attempts`` lists (server, reason) in the order
    tried; ``errno`` is the refusal's errno when a server refused, else ENOTCONN."""

    def __init__(self, volume: str, attempts: list[tuple[tuple[str, int], str]],
                 code: int) -> None:
        self.volume = volume
        self.attempts = attempts
        self.errno = code
        tried = "; ".join(f"{server_name(s)}: {why}" for s, why in attempts)
        super().__init__(f"cannot fetch the volfile of volume {volume} ({tried})")


class _Refused(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def _reason(exc: BaseException) -> str:
    """The most specific cause of a connection failure (``Connection refused``),
    found down the exception's cause chain; else the exception's own message."""
    e: BaseException | None = exc
    for _ in range(8):
        if e is None:
            break
        if isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[-1]
            continue
        if isinstance(e, socket.gaierror):
            return f"cannot resolve the name: {e.strerror}"
        if isinstance(e, OSError) and e.errno not in (None, errno.ENOTCONN):
            return os.strerror(e.errno)
        e = e.__cause__ or e.__context__
    return str(getattr(exc, "strerror", None) or exc)


def server_name(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _getspec(server: tuple[str, int], volume: str, client_id: str,
                   connect_timeout: float, call_timeout: float) -> FetchedVolfile:
    host, port = server
    async with open_rpc_connection(host, port, volume=volume, client_id=client_id,
                                   role="client", connect_timeout=connect_timeout,
                                   call_timeout=call_timeout,
                                   ping_timeout=call_timeout) as conn:
        try:
            reply = await conn.call("getspec", {"volume": volume}, timeout=call_timeout)
        except OSError as exc:
            if exc.errno in _UNREACHABLE:
                raise
            raise _Refused(exc.errno or errno.EIO, str(exc.strerror or exc)) from None
    text = reply.get("volfile") if isinstance(reply, dict) else None
    if not isinstance(text, str):
        raise VolfileError(f"getspec reply has no volfile text: {reply!r:.200}")
    graph = parse(text, source=f"getspec {volume} from {server_name(server)}")
    return FetchedVolfile(volume, text, graph, server)


async def fetch_volfile(servers: list[tuple[str, int]], volume: str, *,
                        connect_timeout: float = CONNECT_TIMEOUT,
                        call_timeout: float = CALL_TIMEOUT,
                        client_id: str | None = None) -> FetchedVolfile:
    """The client volfile of ``volume`` from the first of ``servers`` that gives it.

    Each server gets at most ``connect_timeout`` to connect and handshake and
    ``call_timeout`` to answer. Raises ``VolfetchError`` naming every server
    tried and why it failed.
    """
    if not servers:
        raise ValueError("no volfile server given")
    client_id = client_id or f"mount:{os.uname().nodename}:{os.getpid()}"
    attempts: list[tuple[tuple[str, int], str]] = []
    for server in servers:
        try:
            fetched = await _getspec(server, volume, client_id, connect_timeout, call_timeout)
        except _Refused as exc:
            attempts.append((server, str(exc)))
            raise VolfetchError(volume, attempts, exc.code) from None
        except HandshakeRefused as exc:
            why = f"refused the connection: {exc.reason}"
        except OSError as exc:
            why = _reason(exc)
        except VolfileError as exc:
            why = f"invalid volfile: {exc}"
        else:
            if attempts:
                log.info("volfile of %s from %s (after %s)", volume, server_name(server),
                         ", ".join(server_name(s) for s, _ in attempts))
            return fetched
        log.info("volfile server %s: %s", server_name(server), why)
        attempts.append((server, why))
    raise VolfetchError(volume, attempts, errno.ENOTCONN)
