"""A brick's listener on an abstract Unix socket for clients on this host.

Both of the brick's same-host channels (the local-read fd channel,
``brickd/localfds.py``, and the RPC stream, ``brickd/localrpc.py``) work the
same way: the socket lives in the abstract namespace, which is per network
namespace (a client in another one is another host and simply finds no such
name), and a client proves who it is with a token the brick gave it in the
welcome of an authenticated TCP connection. This base class owns what they
share: the token table, the bound accept loop and its error handling.

Bounded: at most ``max_conns`` connections are served at once (more are closed
at once, with a warning) and at most ``MAX_TOKENS`` tokens are outstanding (the
oldest are forgotten). An accept that fails (out of fds, a peer gone before
the accept) is logged and retried shortly: it never ends the listener.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
from collections import OrderedDict
from typing import Any

import trio

from pyglfs.rpc.fdchannel import TOKEN_LEN

log = logging.getLogger(__name__)

MAX_TOKENS = 4096


def socket_name(kind: str, volume: str, brick: str) -> str:
    """The abstract socket name (without its leading NUL) of a brick's ``kind`` channel."""
    digest = hashlib.sha256(f"{volume}\0{os.path.realpath(brick)}".encode()).hexdigest()
    return f"pyglfs-{kind}-{volume[:40]}-{digest[:24]}"


class UnixChannelServer:
    """One abstract-socket listener of a brick; subclasses serve a connection
    in ``_serve_conn`` (the base counts it and closes it afterwards)."""

    sock_type = socket.SOCK_STREAM
    what = "unix channel"

    def __init__(self, name: str, *, max_conns: int) -> None:
        self.name = name
        self.uid = os.geteuid()
        self.max_conns = max_conns
        self.listening = False
        self._tokens: OrderedDict[bytes, str] = OrderedDict()
        self._conns = 0

    def grant(self, who: str) -> bytes:
        """A new token for ``who`` (kept until revoked or crowded out)."""
        token = secrets.token_bytes(TOKEN_LEN)
        self._tokens[token] = who
        while len(self._tokens) > MAX_TOKENS:
            self._tokens.popitem(last=False)
        return token

    def revoke(self, token: Any) -> None:
        if type(token) is bytes:
            self._tokens.pop(token, None)

    def has_token(self, token: bytes) -> bool:
        return token in self._tokens

    async def serve(self, *, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Listen until cancelled; reports whether the channel is offered (a name
        already taken in this network namespace leaves it off, with a warning)."""
        sock = trio.socket.socket(socket.AF_UNIX, self.sock_type)
        try:
            try:
                await sock.bind("\0" + self.name)
                sock.listen(128)
            except OSError as e:
                log.warning("%s off: cannot listen on @%s: %s", self.what, self.name, e)
                task_status.started(False)
                return
            self.listening = True
            task_status.started(True)
            log.info("%s offered on @%s", self.what, self.name)
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        conn, _ = await sock.accept()
                    except OSError as e:
                        log.warning("%s: accept failed: %s", self.what, e)
                        await trio.sleep(0.1)
                        continue
                    if self._conns >= self.max_conns:
                        log.warning("%s: %d connections already, refusing one",
                                    self.what, self._conns)
                        conn.close()
                        continue
                    self._conns += 1
                    nursery.start_soon(self._run_conn, conn)
        finally:
            self.listening = False
            sock.close()

    async def _run_conn(self, conn: trio.socket.SocketType) -> None:
        try:
            await self._serve_conn(conn)
        except OSError as e:
            log.debug("%s: connection ended: %s", self.what, e)
        except Exception:
            log.exception("%s: connection failed", self.what)
        finally:
            self._conns -= 1
            conn.close()

    async def _serve_conn(self, conn: trio.socket.SocketType) -> None:
        raise NotImplementedError
