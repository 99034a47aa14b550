"""A leaner byte transport for TCP sockets than trio.SocketStream.

trio's SocketStream spends a scheduler pass on every send and every receive, even
when the kernel could complete the call at once. On loopback that overhead is most
of a round trip: measured here, a ping-pong between two trio processes ran at about
9,000 round trips/s through SocketStream and 14,000-25,000/s with plain non-blocking
calls that only wait (``wait_readable`` / ``wait_writable``) when the kernel says
EAGAIN. This module provides the latter behind the same ``receive_some`` /
``send_all`` / ``aclose`` methods, plus ``receive_into`` for big frames.

Callers must supply their own checkpoints when data keeps arriving without waits
(see ``SocketTransport.receive_some``). Any other stream (memory streams, TLS) is
used as it is.
"""

from __future__ import annotations

import errno
import socket
from time import perf_counter
from typing import Any, Protocol

import trio
from trio.lowlevel import notify_closing, wait_readable, wait_writable


class ByteStream(Protocol):
    """What the framing layer needs of a transport (a trio Stream fits)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def aclose(self) -> None: ...


_IOV_MAX = 512
UNIX_SNDBUF = 2 << 20
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


def _broken(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("socket was closed")
    return trio.BrokenResourceError(f"socket error: {exc}")


class SocketTransport:
    """Owns one connected, non-blocking stdlib socket.

    ``receive_some`` returns without a checkpoint when data is already there, so a
    read loop over it must checkpoint on its own (``blocked`` tells whether the last
    receive had to wait).
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        # SO_RCVLOWAT does not delay a Unix socket's readiness: nothing to save.
        self._tcp = sock.family != socket.AF_UNIX
        self.blocked = True
        # The last receive got less than it asked for, so the kernel had nothing
        # more: wait for readability before trying again instead of paying for a
        # receive that would only say EAGAIN.
        self._drained = False
        self._closed = False
        self._lowat = 1
        self._error: OSError | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = 65536
        sock = self.socket
        self.blocked = self._drained
        if self._drained:
            await wait_readable(sock)
        while True:
            if self._error is not None:
                raise _broken(self._error)
            try:
                data = sock.recv(max_bytes)
                self._drained = len(data) < max_bytes
                return data
            except BlockingIOError:
                pass
            except OSError as exc:
                raise _broken(exc) from exc
            self.blocked = True
            await wait_readable(sock)

    async def receive_into(self, buf: memoryview) -> int:
        sock = self.socket
        self.blocked = self._drained
        if self._drained:
            await wait_readable(sock)
        while True:
            if self._error is not None:
                raise _broken(self._error)
            try:
                n = sock.recv_into(buf)
                self._drained = n < len(buf)
                return n
            except BlockingIOError:
                pass
            except OSError as exc:
                raise _broken(exc) from exc
            self.blocked = True
            await wait_readable(sock)

    def poll_into(self, buf: memoryview, deadline: float) -> int:
        """Receive into ``buf`` without waiting in the event loop: retry a
        non-blocking receive until data comes or ``perf_counter()`` passes
        ``deadline`` (a busy poll; see busypoll.py). Returns the byte count, 0 if
        nothing came, -1 at end of stream or on an error, which are left for the
        next ``receive_*`` to report."""
        if self._closed:
            return -1
        recv_into = self.socket.recv_into
        clock = perf_counter
        while True:
            try:
                n = recv_into(buf)
            except BlockingIOError:
                if clock() >= deadline:
                    return 0
                continue
            except OSError as exc:
                self._error = exc
                return -1
            if not n:
                return -1
            self._drained = n < len(buf)
            return n

    def set_receive_lowat(self, n: int) -> None:
        """Readable only once ``n`` bytes are in (SO_RCVLOWAT; a closed or reset
        connection is still reported at once).

        While the rest of a big frame arrives, this turns a wake-up per TCP
        burst into one for the whole frame. Errors are ignored: it only saves
        wake-ups.
        """
        if n == self._lowat or self._closed or not self._tcp:
            return
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except OSError:
            return
        self._lowat = n

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.socket
        try:
            n = sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            raise _broken(exc) from exc
        if n == len(data):
            return
        with memoryview(data) as view:
            rest = view[n:]
            while rest:
                await wait_writable(sock)
                try:
                    n = sock.send(rest)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise _broken(exc) from exc
                rest = rest[n:]

    def try_send_buffers(self, bufs: list[bytes | memoryview]) -> int:
        """Send what the kernel takes now from ``bufs`` (one sendmsg); never waits."""
        try:
            return self.socket.sendmsg(bufs[:_IOV_MAX] if len(bufs) > _IOV_MAX else bufs)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _broken(exc) from exc

    async def wait_writable(self) -> None:
        await wait_writable(self.socket)

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close now; tasks waiting on the socket get ClosedResourceError."""
        if not self._closed:
            self._closed = True
            notify_closing(self.socket)
            self.socket.close()

    def getpeername(self) -> Any:
        return self.socket.getpeername()


async def aclose_forcefully(stream: ByteStream) -> None:
    """Close ``stream`` at once, without waiting on the peer (trio's helper, typed for
    any ByteStream)."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.aclose()


def fast_transport(stream: trio.abc.Stream) -> ByteStream:
    """The transport to use for ``stream``: a SocketTransport taking over the socket
    of a trio.SocketStream (TCP or a Unix stream), else ``stream`` itself."""
    if type(stream) is not trio.SocketStream:
        return stream
    tsock = stream.socket
    family, type_, proto = tsock.family, tsock.type, tsock.proto
    fd = tsock.detach()
    sock = socket.socket(family, type_, proto, fileno=fd)
    if family == socket.AF_UNIX:
        # A Unix stream's sender may queue only its send buffer (default 208 KiB)
        # until the reader takes it: room for a whole 1 MiB write saves wake-ups.
        # The kernel caps it at net.core.wmem_max; a refusal only costs speed.
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SNDBUF)
        except OSError:
            pass
    else:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return SocketTransport(sock)
