"""The brick's RPC over a Unix stream, for clients on this host.

The client side and the reasons are in ``rpc/localrpc.py``. Here: the brick
also listens on an abstract Unix stream socket (per network namespace, named
after the volume and the brick path) and serves the very same RPC protocol
and service on it as on TCP. Its TCP welcome offers the socket
(``local_rpc: {socket, token, uid, peer}``), through ``TcpFront``, the brick
service as the TCP listener serves it.

Who may connect: a client sends, before its hello, the token of the welcome
of a TCP connection that is still open (authenticated by the volume's
credentials like every TCP client); a token is good for one Unix connection.
The hello that follows is then judged as over TCP (version, volume,
credentials), so this path is never weaker than TCP. A connection whose first
16 bytes are not a live token, or that sends them not within
``handshake_timeout``, is closed with a warning. At most ``max_conns`` Unix
connections are served at once.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from pyglfs.brickd.unixserver import UnixChannelServer, socket_name
from pyglfs.rpc.fdchannel import TOKEN_LEN
from pyglfs.rpc.handshake import PEER_KEY
from pyglfs.rpc.localrpc import OFFER_KEY
from pyglfs.rpc.server import DEFAULT_HANDSHAKE_TIMEOUT, Service, serve_rpc_stream

log = logging.getLogger(__name__)

MAX_CONNS = 1024
# Where a TCP connection's hello keeps the token its welcome offered.
_TOKEN_KEY = "_local_rpc_token"


class LocalRpcServer(UnixChannelServer):
    """Serves ``service`` on the brick's Unix stream socket (set ``service``
    before ``serve``); ``front`` is what its TCP listener serves."""

    what = "local rpc"

    def __init__(self, volume: str, brick: str, *, max_conns: int = MAX_CONNS,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 name: str | None = None) -> None:
        super().__init__(name if name is not None else socket_name("rpc", volume, brick),
                         max_conns=max_conns)
        self.handshake_timeout = handshake_timeout
        self.service: Service | None = None
        self.served = 0

    def front(self, service: Service) -> TcpFront:
        self.service = service
        return TcpFront(service, self)

    def offer(self, hello: dict[str, Any]) -> dict[str, Any] | None:
        """The welcome's offer for this TCP hello (a new token), or None while
        not listening."""
        peer = hello.get(PEER_KEY)
        if not self.listening or self.service is None or type(peer) is not str:
            return None
        token = self.grant(str(hello.get("client_id")))
        return {"socket": self.name, "token": token, "uid": self.uid, "peer": peer}

    async def _serve_conn(self, conn: trio.socket.SocketType) -> None:
        token = b""
        with trio.move_on_after(self.handshake_timeout):
            while len(token) < TOKEN_LEN:
                got = await conn.recv(TOKEN_LEN - len(token))
                if not got:
                    break
                token += got
        if len(token) < TOKEN_LEN or not self.has_token(token):
            log.warning("local rpc: a connection without a valid token; closing")
            return
        self.revoke(token)
        self.served += 1
        assert self.service is not None
        await serve_rpc_stream(self.service, trio.SocketStream(conn),
                               handshake_timeout=self.handshake_timeout)


class TcpFront:
    """A brick service as its TCP listener serves it: the same handlers, and a
    welcome that also offers the local RPC socket. The offer's token is
    revoked when the TCP connection ends."""

    def __init__(self, inner: Service, local: LocalRpcServer) -> None:
        self._inner = inner
        self._local = local
        # Looked up once per connection by the rpc server: no extra frame per request.
        self.handle = inner.handle
        self.inline_ops: frozenset[str] = getattr(inner, "inline_ops", frozenset())
        self.inline_when = getattr(inner, "inline_when", None)
        self.server_name = getattr(inner, "server_name", None)

    def authenticate(self, hello: dict[str, Any]) -> None:
        self._inner.authenticate(hello)

    def welcome_extra(self, hello: dict[str, Any]) -> dict[str, Any]:
        inner_extra = getattr(self._inner, "welcome_extra", None)
        extra: dict[str, Any] = dict(inner_extra(hello)) if inner_extra is not None else {}
        offer = self._local.offer(hello)
        if offer is not None:
            hello[_TOKEN_KEY] = offer["token"]
            extra[OFFER_KEY] = offer
        return extra

    def disconnected(self, conn: Any) -> None:
        self._local.revoke(conn.hello.get(_TOKEN_KEY))
        self._inner.disconnected(conn)

