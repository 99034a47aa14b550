"""Short-circuit local reads: hand a client on this host a read-only fd of a file.

A mount whose chosen read brick runs on the same host (hyperconverged nodes:
pods and bricks together) would otherwise pay a loopback round trip to this
process for every read. As HDFS's DataNode does, the brick instead hands the
client an open descriptor of the file once, over a Unix socket (SCM_RIGHTS),
and the client preads it itself.

Who may ask: the socket lives in the abstract namespace (per network
namespace: another netns is another host), named after the volume and the
brick path. A request carries a token that this brick gave the client in the
welcome of its TCP connection, so the volume's authentication (credentials,
address rules) still decides who reads; the token dies with that connection.
The peer must also run with the brick's uid (SO_PEERCRED).

What it hands out: ``O_RDONLY|O_CLOEXEC`` of a regular file reached through
the gfid's handle under ``.pyglfs/handles`` (never a path of the user tree,
never following a symlink, never opening a fifo or a device); a gfid the
brick does not hold is ENOENT.

Wire (rpc/fdchannel.py): ``token (16) + gfid (16)``; reply ``errno`` as a
4-byte big-endian int (0: the fd rides along). A message of another size, or an unknown token, gets an error reply and the connection
is closed. Bounded: ``max_conns`` connections, one request at a time per
connection, a connection that has sent no good request for ``idle_unauth``
seconds is closed, and a reply the peer does not take within ``send_timeout``
closes it too.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import stat
from typing import Any

import trio

from pyglfs.brickd.names import handle_rel
from pyglfs.brickd.unixserver import UnixChannelServer
from pyglfs.brickd.unixserver import socket_name as unix_socket_name
from pyglfs.rpc.fdchannel import REPLY, REQUEST_LEN, TOKEN_LEN, fd_rights, peer_uid

log = logging.getLogger(__name__)

MAX_CONNS = 128
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def socket_name(volume: str, brick: str) -> str:
    """The abstract socket name (without its leading NUL) of a brick's fd channel."""
    return unix_socket_name("localread", volume, brick)


def open_readonly(handles_fd: int, gfid: bytes) -> int:
    """A read-only fd of regular file ``gfid`` through its handle; OSError otherwise.

    The handle is checked before opening (a fifo would block the open, a
    device could act on it) and the opened fd again (the name may have been
    replaced between the two).
    """
    rel = handle_rel(gfid)
    try:
        st = os.stat(rel, dir_fd=handles_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise OSError(errno.ENOENT, "no such gfid on this brick") from None
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    fd = os.open(rel, _OPEN_FLAGS, dir_fd=handles_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class LocalFdServer(UnixChannelServer):
    """The fd channel of one brick. ``offer``/``revoke`` tokens from the RPC
    service (one per TCP connection); ``serve`` runs the socket."""

    sock_type = socket.SOCK_SEQPACKET
    what = "local reads"

    def __init__(self, handles_fd: int, volume: str, brick: str, *,
                 max_conns: int = MAX_CONNS, idle_unauth: float = 10.0,
                 send_timeout: float = 5.0, name: str | None = None) -> None:
        super().__init__(name if name is not None else socket_name(volume, brick),
                         max_conns=max_conns)
        self.handles_fd = handles_fd
        self.idle_unauth = idle_unauth
        self.send_timeout = send_timeout
        self.served = 0

    def offer(self, who: str) -> dict[str, Any] | None:
        """What a client's welcome carries (a new token), or None while not listening."""
        if not self.listening:
            return None
        return {"socket": self.name, "token": self.grant(who), "uid": self.uid}

    async def _serve_conn(self, conn: trio.socket.SocketType) -> None:
        # Judged once its first request is read: a connection closed with
        # a request still queued would reset the peer before it saw why.
        same_uid = peer_uid(conn) == self.uid
        authed = False
        while True:
            with trio.move_on_after(math.inf if authed else self.idle_unauth) as scope:
                msg, _anc, flags, _ = await conn.recvmsg(REQUEST_LEN + 1)
            if scope.cancelled_caught:
                log.debug("local reads: no good request within %ss; closing",
                          self.idle_unauth)
                return
            if not msg:
                return
            if not same_uid:
                log.warning("local reads: refused a peer of another uid")
                await self._reply(conn, errno.EACCES)
                return
            code = self._check(msg, flags)
            if code:
                await self._reply(conn, code)
                return
            authed = True
            await self._answer(conn, msg[TOKEN_LEN:])

    def _check(self, msg: bytes, flags: int) -> int:
        if len(msg) != REQUEST_LEN or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            log.warning("local reads: malformed request (%d bytes); closing", len(msg))
            return errno.EINVAL
        if not self.has_token(msg[:TOKEN_LEN]):
            log.warning("local reads: unknown token; closing")
            return errno.EACCES
        return 0

    async def _answer(self, conn: trio.socket.SocketType, gfid: bytes) -> None:
        try:
            fd = open_readonly(self.handles_fd, gfid)
        except OSError as e:
            await self._reply(conn, e.errno if type(e.errno) is int else errno.EIO)
            return
        try:
            with trio.move_on_after(self.send_timeout) as scope:
                await conn.sendmsg([REPLY.pack(0)], fd_rights(fd))
        finally:
            os.close(fd)
        if scope.cancelled_caught:
            raise OSError(errno.ETIMEDOUT, "the peer does not take its replies")
        self.served += 1

    async def _reply(self, conn: trio.socket.SocketType, code: int) -> None:
        with trio.move_on_after(self.send_timeout):
            await conn.send(REPLY.pack(code))
