"""The first exchange on every connection: hello, then welcome or refused.

No request is served before the server has judged the hello: version first, then the
service's ``authenticate``. A refusal carries a reason an operator can act on and is
followed by closing the connection, so whatever the client pipelined behind its hello
is never run.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

from pyglfs.rpc import messages
from pyglfs.rpc.brickops import PROTOCOL_VERSION
from pyglfs.rpc.errors import HandshakeRefused, ProtocolError
from pyglfs.rpc.framing import FrameReader, FrameWriter

log = logging.getLogger(__name__)

PEER_KEY = "_peer"


class Authenticator(Protocol):
    """``authenticate`` judges a hello. A service may also define
    ``welcome_extra(hello) -> dict``: fields added to an accepted client's
    welcome (a brick's local-read and local-RPC offers), asked only after
    ``authenticate`` accepted it. The hello they see carries, under
    ``PEER_KEY``, the transport's peer as the server saw it (``host:port``;
    whatever the client sent there is replaced)."""

    def authenticate(self, hello: dict[str, Any]) -> None: ...


async def client_handshake(
    reader: FrameReader,
    writer: FrameWriter,
    *,
    volume: str,
    client_id: str,
    role: str = "client",
    auth: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """Send the hello and wait for the answer.

    Returns the welcome and any messages that arrived right behind it. Raises
    HandshakeRefused with the server's reason, ProtocolError for a malformed answer,
    and trio.BrokenResourceError if the server closed without answering.
    """
    writer.put(messages.hello(volume=volume, client_id=client_id, role=role, auth=auth))
    await writer.flush()
    if writer.broken is not None:
        raise trio.BrokenResourceError("connection lost while sending the hello") from writer.broken
    msgs = await reader.receive()
    if not msgs:
        raise trio.BrokenResourceError("server closed the connection during the handshake")
    first = msgs[0]
    if type(first) is dict and "refused" in first:
        raise HandshakeRefused(str(first["refused"]))
    return messages.check_welcome(first), msgs[1:]


async def server_handshake(
    reader: FrameReader,
    writer: FrameWriter,
    service: Authenticator,
    *,
    server_name: str,
    peer: str,
) -> tuple[dict[str, Any], list[Any]] | None:
    """Judge the client's hello; on success send the welcome.

    Returns the checked hello and any messages that followed it, or None when the
    client was refused (the refusal has been sent; the caller closes) or left.
    Raises ProtocolError, after sending a refusal, if the first frame is not a hello.
    """
    msgs = await reader.receive()
    if not msgs:
        return None
    try:
        hello = messages.check_hello(msgs[0])
    except ProtocolError as exc:
        await _refuse(writer, peer, "?", str(exc))
        raise
    client_id = hello["client_id"]
    hello[PEER_KEY] = peer
    if hello["version"] != PROTOCOL_VERSION:
        await _refuse(
            writer, peer, client_id,
            f"protocol version {hello['version']} is not supported; "
            f"this server speaks version {PROTOCOL_VERSION}",
        )
        return None
    try:
        service.authenticate(hello)
    except HandshakeRefused as exc:
        await _refuse(writer, peer, client_id, exc.reason)
        return None
    except Exception:
        log.exception("authenticate failed for client %s from %s", client_id, peer)
        await _refuse(writer, peer, client_id, "internal error while checking credentials")
        return None
    welcome = messages.welcome(server_name, hello["volume"])
    extra = getattr(service, "welcome_extra", None)
    if extra is not None:
        try:
            welcome["welcome"].update(extra(hello))
        except Exception:
            log.exception("welcome_extra failed for client %s from %s", client_id, peer)
    writer.put(welcome)
    await writer.flush()
    return hello, msgs[1:]


async def _refuse(writer: FrameWriter, peer: str, client_id: str, reason: str) -> None:
    log.warning("refused client %s from %s: %s", client_id, peer, reason)
    writer.put(messages.refused(reason))
    await writer.flush()
