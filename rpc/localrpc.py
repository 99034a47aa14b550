"""RPC with a brick on this host over a Unix stream, the client side.

TCP loopback costs a sender about 15 us more per message than a Unix stream
here, and its receive path is heavier too; a mount creating small files sends
several messages per file. So when a brick's TCP welcome offers ``local_rpc``
(``brickd/localrpc.py``) and its socket is reachable, the client speaks the
very same protocol (hello, welcome, requests, pings, events) over the brick's
abstract Unix stream socket instead and closes the TCP connection.

Trust, both ways:

- the brick admits the Unix stream only with a token from the welcome of an
  authenticated TCP connection (sent as the stream's first 16 bytes, before
  the hello), and then judges the hello exactly as over TCP;
- the offer names the client's TCP address as the brick saw it: when that is
  not this connection's own address, something (a proxy, NAT) stands between
  the two and the client stays on TCP, so whatever that hop does still
  applies;
- the listener must run as the uid the brick announced, and that uid must be
  root or ours (SO_PEERCRED), so no other user's process that grabbed the
  name ever sees a hello with credentials.

Any failure on the way (no such socket: another host or network namespace; a
wrong peer; a refused hello) leaves the client on its TCP connection, with a
debug line. A reconnection starts again with TCP.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from pyglfs.rpc.connection import (
    DEFAULT_CONNECT_TIMEOUT,
    RpcConnection,
    connect_stream,
    open_tcp,
)
from pyglfs.rpc.errors import HandshakeRefused
from pyglfs.rpc.fdchannel import TOKEN_LEN, peer_uid

log = logging.getLogger(__name__)

OFFER_KEY = "local_rpc"
UNIX_PEER_PREFIX = "unix:@"


def address_text(addr: Any) -> str:
    """``host:port`` of a socket address as both ends write it (an IPv4-mapped
    IPv6 host is written as the IPv4 address)."""
    host = str(addr[0])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"{host}:{addr[1]}"


def usable_offer(welcome: dict[str, Any], own_address: Any) -> dict[str, Any] | None:
    """The welcome's local-RPC offer if it is well-formed, made to this very
    connection (``own_address``: the TCP socket's own name) and by a brick of a
    uid we trust; else None."""
    offer = welcome.get(OFFER_KEY)
    if (type(offer) is not dict or type(offer.get("socket")) is not str
            or type(offer.get("token")) is not bytes or len(offer["token"]) != TOKEN_LEN
            or type(offer.get("uid")) is not int or type(offer.get("peer")) is not str):
        return None
    peer = offer["peer"]
    if peer.startswith("::ffff:"):
        peer = address_text(peer.rsplit(":", 1))
    if peer != address_text(own_address):
        log.debug("local rpc not used: the brick sees %s, not us (%s)",
                  offer["peer"], address_text(own_address))
        return None
    if offer["uid"] not in (0, os.geteuid()):
        log.debug("local rpc not used: the brick runs as uid %d", offer["uid"])
        return None
    return offer


async def dial(offer: dict[str, Any]) -> trio.SocketStream:
    """A Unix stream to the offered socket, checked (peer uid) and carrying the
    token; OSError when it is not reachable or not the brick's."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect("\0" + offer["socket"])
        if peer_uid(sock) != offer["uid"]:
            raise OSError(errno.EACCES, "the socket's listener is not the brick's uid")
        # An empty send buffer takes 16 bytes whole.
        if await sock.send(offer["token"]) != TOKEN_LEN:
            raise OSError(errno.EIO, "the token did not go out whole")
        return trio.SocketStream(sock)
    except BaseException:
        sock.close()
        raise


def is_local(conn: RpcConnection | None) -> bool:
    """Whether ``conn`` runs over a brick's Unix stream."""
    return conn is not None and conn.peer.startswith(UNIX_PEER_PREFIX)


@asynccontextmanager
async def open_brick_connection(
    host: str, port: int, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, **kw: Any,
) -> AsyncIterator[RpcConnection]:
    """``open_rpc_connection`` (same arguments and errors) that moves to the
    brick's Unix stream when the welcome offers one (module docstring).

    The TCP connection stays open until the Unix one is welcomed, so the token
    it came with is still good when the brick checks it.
    """
    deadline = trio.current_time() + connect_timeout
    stream = await open_tcp(host, port, connect_timeout)
    try:
        own = stream.socket.getsockname()
    except OSError:
        own = ("", 0)
    async with connect_stream(
        stream, connect_timeout=max(0.0, deadline - trio.current_time()),
        peer=f"{host}:{port}", **kw,
    ) as tcp:
        offer = usable_offer(tcp.welcome, own)
        unix = None
        if offer is not None:
            try:
                with trio.fail_after(connect_timeout):
                    unix = await dial(offer)
            except (OSError, trio.TooSlowError) as exc:
                # ECONNREFUSED/ENOENT: the brick is on another host or netns.
                log.debug("local rpc to %s:%d not used: %r", host, port, exc)
        if unix is None or offer is None:
            yield tcp
            return
        welcomed = False
        try:
            async with connect_stream(
                unix, connect_timeout=connect_timeout,
                peer=UNIX_PEER_PREFIX + offer["socket"], **kw,
            ) as conn:
                welcomed = True
                await tcp.aclose()
                log.debug("%s:%d: using local rpc over @%s", host, port, offer["socket"])
                yield conn
        except (OSError, HandshakeRefused) as exc:
            if welcomed:
                raise
            log.debug("local rpc to %s:%d failed, staying on TCP: %r", host, port, exc)
        if not welcomed:
            yield tcp
