"""The server side of a connection: handshake, then requests dispatched to a Service.

A server never crashes on input. Whatever one connection sends (garbage, oversized
frames, messages of the wrong shape) ends at most that connection, with a logged
reason; every other connection keeps being served.

Requests run concurrently, each in its own task, and their replies go out in the
order they finish. A service may name in ``inline_ops`` the operations whose handler
never waits on anything but brief local work (null, stat, ...): those run directly
in the connection's reader task, which saves a task per request, and their replies
are sent together once the whole received batch is handled. Ops that are brief only
for some arguments (a small read, yes; a big one that goes to a worker thread, no)
are chosen per request by the service's ``inline_when(op, args)``, which sees the
arguments before they are validated and must not raise.

After answering, a connection with nothing else to do in its process polls for the
next request for a short while (``busy_poll``, see busypoll.py) instead of
sleeping: a client with one request at a time sends it within tens of
microseconds, sooner than an idle CPU of a VM wakes up. This poll is not fitted
to the client's learnt pauses as a call's poll is: tried, that raised both
bricks' CPU per file of a create loop by about a third, with no gain in random
reads that stood out of the noise. The polling goes through
the event loop (a checkpoint between two non-blocking receives), so every other
connection and task is served as usual meanwhile.

A server may drop connections whose peer went silent (``idle_timeout``; the
management daemon does, bricks do not): a live client pings whenever it heard
nothing for its ping interval, so a connection that sent nothing for the limit,
with none of its requests being handled, belongs to a host that vanished or a
process that stopped, which TCP alone notices only when a send to it fails.
How long the peer has been silent comes from the kernel (``TCP_INFO``), so the
read path does no bookkeeping for it. One caveat: a client that keeps hearing
from the server (a stream of events) need not ping; keep the limit for
servers whose pushes are rare.
"""

from __future__ import annotations

import itertools
import logging
import select
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

import trio

from pyglfs.rpc import messages
from pyglfs.rpc.busypoll import DEFAULT_BUDGET, BusyPoll, perf_counter
from pyglfs.rpc.errors import FrameTooLarge, ProtocolError
from pyglfs.rpc.framing import DEFAULT_MAX_FRAME, FrameReader, FrameWriter
from pyglfs.rpc.handshake import server_handshake
from pyglfs.rpc.transport import ByteStream, SocketTransport, aclose_forcefully, fast_transport

log = logging.getLogger(__name__)

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_IN_FLIGHT = 1024
_MAX_HELLO = 64 * 1024
# struct tcp_info (linux/tcp.h): tcpi_last_data_recv, in ms, after 8 bytes and 11 u32s.
_TCPI_LAST_DATA_RECV = 52
_TCP_INFO_LEN = 104


class Service(Protocol):
    """What a server (brick, management daemon) offers to its connections.

    Optional attributes a service may define: ``inline_ops`` (a set of op names) and
    ``inline_when`` (a predicate on op and raw args), see the module docstring, and
    ``server_name`` (sent in the welcome).
    """

    def authenticate(self, hello: dict[str, Any]) -> None:
        """Raise HandshakeRefused(reason) to refuse this client."""

    async def handle(self, op: str, args: dict[str, Any], conn: ServerConnection) -> Any:
        """Return the reply's ``ok`` value; an OSError becomes an errno reply.

        Any other exception is logged with its traceback and becomes EIO; the
        connection stays up.
        """

    def disconnected(self, conn: ServerConnection) -> None:
        """The connection is gone: drop this client's locks and open files."""


_conn_ids = itertools.count(1)


def peer_name(stream: ByteStream) -> str:
    """host:port of a socket stream's peer, else the stream's type (for log lines)."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            if sock.family == socket.AF_UNIX:
                pid = struct.unpack("3i", sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
                return f"unix:pid={pid}"
            addr = sock.getpeername()
            return f"{addr[0]}:{addr[1]}"
        except (OSError, IndexError, TypeError, struct.error):
            pass
    return type(stream).__name__


class ServerConnection:
    """One handshaken client connection, as the service sees it.

    ``hello`` is the client's whole checked hello (``auth`` included); ``sock``
    the socket under a SocketTransport (for ``can_send_now``), else None.
    """

    def __init__(
        self, service: Service, reader: FrameReader, writer: FrameWriter, hello: dict[str, Any],
        peer: str, max_in_flight: int, busy_poll: float = 0.0,
        sock: socket.socket | None = None, idle_timeout: float | None = None,
    ) -> None:
        self.conn_id = next(_conn_ids)
        self.client_id: str = hello["client_id"]
        self.role: str = hello["role"]
        self.volume: str = hello["volume"]
        self.peer = peer
        self.hello = hello
        self._service = service
        self._handle = service.handle
        self._inline: frozenset[str] = frozenset(getattr(service, "inline_ops", ()))
        self._inline_when: Callable[[str, dict[str, Any]], bool] | None = getattr(
            service, "inline_when", None)
        self._reader = reader
        self._writer = writer
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._slot_free: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self.closed = False
        self.busy_poll = BusyPoll(busy_poll if reader.can_poll else 0.0)
        self._out_poll: select.poll | None = None
        self._sock = sock
        self._idle_timeout = idle_timeout if sock is not None else None

    def __repr__(self) -> str:
        return f"<ServerConnection {self.conn_id} client={self.client_id} peer={self.peer}>"

    async def send_event(self, name: str, args: dict[str, Any]) -> None:
        """Push an event to this client; a no-op once the connection is gone."""
        if self.closed:
            return
        self._writer.put(messages.event(name, args))
        await self._writer.flush()

    def can_send_now(self) -> bool:
        """Whether a small event sent now leaves at once, without waiting on the
        peer: the connection is a socket whose send buffer has room (POLLOUT:
        TCP then takes a small message whole). False for other transports and
        for a peer that stopped reading, whose events a task should send."""
        if self.closed:
            return False
        out = self._out_poll
        if out is None:
            sock = self._sock
            if sock is None:
                return False
            out = self._out_poll = select.poll()
            out.register(sock, select.POLLOUT)
        try:
            ready = out.poll(0)
        except (OSError, ValueError):
            return False
        return bool(ready) and ready[0][1] == select.POLLOUT

    def close(self) -> None:
        """End this connection (its in-flight handlers are cancelled)."""
        self.closed = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _serve(self, pending: list[Any]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._idle_timeout:
                nursery.start_soon(self._close_when_silent, self._idle_timeout)
            try:
                await self._read_loop(pending)
            except FrameTooLarge as exc:
                log.error("%r: %s; closing the connection", self, exc)
            except ProtocolError as exc:
                log.warning("%r sent bad input: %s; closing the connection", self, exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.debug("%r: transport ended: %r", self, exc)
            finally:
                self.close()

    async def _close_when_silent(self, limit: float) -> None:
        """Close the connection once the peer sent nothing for ``limit`` seconds
        with none of its requests in flight (checked every ``limit / 4``)."""
        assert self._sock is not None
        sock = self._sock
        while not self.closed:
            await trio.sleep(limit / 4)
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
                (silent_ms,) = struct.unpack_from("I", info, _TCPI_LAST_DATA_RECV)
            except (OSError, struct.error):
                return
            if silent_ms >= limit * 1000 and self._in_flight == 0:
                log.warning("%r sent nothing for %.1fs; closing the connection", self,
                            silent_ms / 1000)
                self.close()
                return

    async def _read_loop(self, pending: list[Any]) -> None:
        reader = self._reader
        flush = self._writer.flush
        if pending:
            await self._dispatch(pending)
            await flush()
        poll = self.busy_poll
        while not self.closed:
            msgs = await self._poll_request() if poll.should_poll() else None
            if not msgs:
                msgs = await reader.receive()
            if msgs is None:
                log.debug("%r: closed by peer", self)
                return
            await self._dispatch(msgs)
            await flush()

    async def _poll_request(self) -> list[Any] | None:
        """The next request if it comes within the busy-poll budget, else None."""
        poll = self.busy_poll
        deadline = poll.deadline()
        reader = self._reader
        msgs = reader.poll(0.0)
        if msgs:
            if poll.must_yield():
                await trio.lowlevel.checkpoint()
        else:
            while msgs == [] and perf_counter() < deadline:
                await trio.lowlevel.checkpoint()
                msgs = reader.poll(0.0)
        poll.record(bool(msgs))
        return msgs

    async def _dispatch(self, msgs: list[Any]) -> None:
        writer = self._writer
        inline = self._inline
        when = self._inline_when
        for m in msgs:
            if type(m) is dict and len(m) == 3:
                rid = m.get("id")
                op = m.get("op")
                args = m.get("args")
                if type(rid) is int and type(op) is str and type(args) is dict:
                    if op in inline or (when is not None and when(op, args)):
                        self._put_reply(await self._run(rid, op, args), op)
                        continue
                    if self._in_flight >= self._max_in_flight:
                        await self._wait_for_slot()
                    self._in_flight += 1
                    assert self._nursery is not None
                    self._nursery.start_soon(self._run_task, rid, op, args)
                    continue
            elif type(m) is dict and len(m) == 1 and "ping" in m:
                writer.put({"pong": m["ping"]})
                continue
            raise ProtocolError(f"expected a request, got {messages.describe(m)}")

    async def _wait_for_slot(self) -> None:
        while self._in_flight >= self._max_in_flight:
            self._slot_free = trio.Event()
            await self._slot_free.wait()

    async def _run(self, rid: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return messages.reply_ok(rid, await self._handle(op, args, self))
        except OSError as exc:
            return messages.reply_error(rid, exc)
        except Exception:
            log.exception("%r: op %s req=%d failed", self, op, rid)
            return messages.reply_errno(rid, "EIO", "internal error")

    async def _run_task(self, rid: int, op: str, args: dict[str, Any]) -> None:
        try:
            self._put_reply(await self._run(rid, op, args), op)
            await self._writer.flush()
        finally:
            self._in_flight -= 1
            if self._slot_free is not None:
                self._slot_free.set()
                self._slot_free = None

    def _put_reply(self, reply: dict[str, Any], op: str) -> None:
        try:
            self._writer.put(reply)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("%r: reply to %s req=%d cannot be packed: %s", self, op, reply["id"], exc)
            self._writer.put(messages.reply_errno(reply["id"], "EIO", "reply cannot be encoded"))

    def _on_broken(self, exc: BaseException) -> None:
        log.debug("%r: send failed: %r", self, exc)
        self.close()


async def serve_rpc_stream(
    service: Service,
    stream: trio.abc.Stream,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    busy_poll: float = DEFAULT_BUDGET,
    idle_timeout: float | None = None,
) -> None:
    """Serve one accepted stream until the client leaves or misbehaves; closes it.

    Returns normally whatever the client sent; only cancellation propagates.
    ``busy_poll`` is how long, in seconds, an idle connection polls for the next
    request before it sleeps (0: never; only over TCP). ``idle_timeout``: drop a
    TCP peer silent that long (see the module doc; None or 0: never).
    """
    transport = fast_transport(stream)
    peer = peer_name(transport)
    conn: ServerConnection | None = None
    holder: list[ServerConnection] = []

    def on_broken(exc: BaseException) -> None:
        if holder:
            holder[0]._on_broken(exc)

    reader = FrameReader(transport, max_frame, first_frame_max=min(max_frame, _MAX_HELLO))
    writer = FrameWriter(transport, on_broken=on_broken)
    try:
        with trio.move_on_after(handshake_timeout) as scope:
            done = await server_handshake(
                reader, writer, service,
                server_name=getattr(service, "server_name", None) or socket.gethostname(),
                peer=peer,
            )
        if scope.cancelled_caught:
            log.warning("client %s sent no hello within %.0fs; closing", peer, handshake_timeout)
            return
        if done is None or writer.broken is not None:
            return
        hello, pending = done
        sock = transport.socket if isinstance(transport, SocketTransport) else None
        conn = ServerConnection(service, reader, writer, hello, peer, max_in_flight, busy_poll,
                                sock, idle_timeout)
        holder.append(conn)
        log.debug("%r: connected (role=%s volume=%s)", conn, conn.role, conn.volume)
        await conn._serve(pending)
    except FrameTooLarge as exc:
        log.error("client %s: %s; closing the connection", peer, exc)
    except ProtocolError as exc:
        log.warning("client %s sent bad input: %s; closing the connection", peer, exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("client %s: transport ended: %r", peer, exc)
    except Exception:
        log.exception("client %s: connection failed", _who(conn, peer))
    finally:
        if conn is not None:
            try:
                service.disconnected(conn)
            except Exception:
                log.exception("%r: service.disconnected failed", conn)
        await aclose_forcefully(transport)


def _who(conn: ServerConnection | None, peer: str) -> str:
    return repr(conn) if conn is not None else peer


async def serve_rpc(
    service: Service,
    host: str,
    port: int,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    busy_poll: float = DEFAULT_BUDGET,
    idle_timeout: float | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port and serve every connection until cancelled.

    Reports the bound port through ``task_status`` (bind port 0 in tests).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        await serve_rpc_stream(
            service, stream, max_frame=max_frame, handshake_timeout=handshake_timeout,
            busy_poll=busy_poll, idle_timeout=idle_timeout,
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        log.info("serving rpc on %s:%d", host, bound)
        task_status.started(bound)
