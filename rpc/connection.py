"""The client side of one connection: many calls in flight, replies matched by id.

An ``RpcConnection`` lives inside ``open_rpc_connection`` / ``connect_stream``,
whose nursery runs its reader and its watchdog. The connection ends when the server
closes it, a frame is bad, a send fails, the watchdog gives up on a silent peer, or
the owner leaves the context. Every call still waiting then fails with ENOTCONN and
later calls fail the same way at once; the owner learns of it from ``wait_closed``.

A call that is the only one in flight, in a process with nothing else to run, on a
machine with a CPU to spare, polls its socket for the reply for a short while
(``busy_poll``, see busypoll.py) before it sleeps: on a machine whose idle CPUs are
slow to wake, that is most of a loopback round trip. How long it polls fits the op:
each polled call's round trip is learnt per op, and an op whose replies take longer
than the poll bound (an fsync) sleeps at once. Only a call that is the only one in
flight in the whole process (a read) polls longer than the base budget: the calls
of a fan-out (one op to several bricks at once) would spin on a CPU that the
servers working for them need. A call yields to the event loop once before it
polls, so the calls of a fan-out are all sent first.

Split calls: a task that sends one request to several connections (replicate's
fan-out to its bricks) need not spawn a task per connection. It runs each call's
coroutine with ``start_split`` until the request is out (the call then pauses,
yielding ``SENT`` to it, not to trio), then finishes them in turn with
``finish_split``: the requests all leave before any reply is awaited.

Liveness: when nothing has been received for ``ping_interval`` seconds the watchdog
sends a ping, which the server's rpc layer answers even while handlers are busy.
If calls or a ping are outstanding and nothing at all has been received for
``ping_timeout`` seconds, the peer is declared down. This catches a host that
vanished without a reset, which TCP alone would notice only after many minutes.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
from outcome import Value
from trio.lowlevel import Abort, RaiseCancelT, Task, current_task, reschedule, wait_task_rescheduled

from pyglfs.rpc import messages
from pyglfs.rpc.busypoll import DEFAULT_BUDGET, BusyPoll, nothing_else_runnable, perf_counter
from pyglfs.rpc.errors import ProtocolError, oserror_from_name, transport_error
from pyglfs.rpc.framing import DEFAULT_MAX_FRAME, FrameReader, FrameWriter
from pyglfs.rpc.handshake import client_handshake
from pyglfs.rpc.server import peer_name
from pyglfs.rpc.transport import ByteStream, aclose_forcefully, fast_transport

log = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT = 60.0
DEFAULT_PING_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 10.0

EventCallback = Callable[[str, dict[str, Any]], None]

_LOST: dict[str, Any] = {}
_open: set[RpcConnection] = set()
# take_in_all's poll set: the socket fds of the open connections that can look,
# rebuilt after a connection opens or closes (a closed connection's fd number
# may be reused).
_watch: tuple[Callable[[int], list[tuple[int, int]]], dict[int, RpcConnection]] | None = None
_TIMED_OUT: dict[str, Any] = {}
# A split call awaited this long after its send first looks for its reply in the socket.
LOOK_AFTER = 50e-6
T = TypeVar("T")

SENT = object()
"""What a split call yields to ``start_split`` once its request is out."""
_split = False


@types.coroutine
def _yield_sent() -> Generator[Any, Any, None]:
    yield SENT


@types.coroutine
def start_split(coro: Coroutine[Any, Any, T]) -> Generator[Any, Any, tuple[bool, T | None]]:
    """Run the coroutine ``coro`` (not started yet) in this task until the first
    ``RpcConnection.call`` it makes has sent its request.

    Returns (True, None) with ``coro`` paused right after that send: finish it
    with ``await finish_split(coro)``, or ``coro.close()`` to abandon the call
    (its reply is then dropped). Returns (False, value) when ``coro`` ended
    first (a call that failed at once: a connection down), and raises what it
    raised. Whatever ``coro`` awaits before its request is out (a send held
    back by a full socket) is awaited here, in order.
    """
    global _split
    value: Any = None
    exc: BaseException | None = None
    while True:
        _split = True
        try:
            y = coro.send(value) if exc is None else coro.throw(exc)
        except StopIteration as stop:
            return False, stop.value
        finally:
            _split = False
        if y is SENT:
            return True, None
        try:
            value = yield y
            exc = None
        except BaseException as e:  # trio delivers Cancelled this way; coro decides
            value = None
            exc = e


@types.coroutine
def finish_split(coro: Coroutine[Any, Any, T]) -> Generator[Any, Any, T]:
    """Await the rest of a coroutine that ``start_split`` left paused."""
    return (yield from coro)


class _Call:
    __slots__ = ("task", "reply", "deadline", "op", "sent")

    def __init__(self, deadline: float, op: str) -> None:
        self.task: Task | None = None
        self.reply: dict[str, Any] | None = None
        self.deadline = deadline
        self.op = op
        self.sent = perf_counter()


class RpcConnection:
    """One established, handshaken connection. Create it with ``open_rpc_connection``."""

    def __init__(
        self,
        stream: ByteStream,
        reader: FrameReader,
        writer: FrameWriter,
        welcome: dict[str, Any],
        *,
        peer: str,
        on_event: EventCallback | None,
        ping_timeout: float,
        ping_interval: float | None,
        call_timeout: float,
        busy_poll: float = DEFAULT_BUDGET,
    ) -> None:
        self.peer = peer
        self.server_name: str = str(welcome.get("server", ""))
        self.welcome = welcome
        self.ping_timeout = ping_timeout
        self.ping_interval = ping_interval if ping_interval is not None else ping_timeout / 2
        self.call_timeout = call_timeout
        self._stream = stream
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._pending: dict[int, _Call] = {}
        self._next_id = 1
        self._last_rx = trio.current_time()
        self._ping_sent: float | None = None
        self._ping_seq = 0
        self._closed_event = trio.Event()
        self.close_reason: str | None = None
        self._bg_scope = trio.CancelScope()
        self._watch_scope = trio.CancelScope()
        self._next_deadline = math.inf
        self._bg_nursery: trio.Nursery | None = None
        self.busy_poll = BusyPoll(busy_poll if reader.can_poll else 0.0)
        self._can_look = reader.can_poll
        # ``_look``: poll(2) the socket before receiving from it, since a receive
        # that finds nothing costs an exception (~2.4 us, a poll ~0.5 us).
        self._fd = _socket_fd(stream) if self._can_look else -1
        self._readable: Callable[[int], list[tuple[int, int]]] | None = None
        if self._fd >= 0:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            self._readable = poller.poll
        _opened(self)

    def __repr__(self) -> str:
        return f"<RpcConnection {self.peer}>"

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    async def call(self, op: str, args: dict[str, Any], *, timeout: float | None = None) -> Any:
        """Send one request and return its reply's ``ok`` value.

        Raises OSError with the server's errno, ETIMEDOUT when ``timeout`` (default
        ``call_timeout``) passes first, ENOTCONN when the connection is or goes down.
        """
        global _split
        split = _split
        _split = False
        if self.close_reason is not None:
            raise self._lost_error()
        rid, c = self._send(op, args, timeout)
        try:
            if not self._writer.send_now():
                await self._writer.flush()
            if split:
                await _yield_sent()
            reply = await self._wait(rid, c, split)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return self._outcome(reply, op, timeout)

    def _send(self, op: str, args: dict[str, Any], timeout: float | None) -> tuple[int, _Call]:
        """Queue the request and register its pending entry (the caller flushes)."""
        rid = self._next_id
        self._next_id = rid + 1
        # Deadlines are enforced by the watchdog, which saves a cancel scope per call.
        deadline = trio.current_time() + (self.call_timeout if timeout is None else timeout)
        c = _Call(deadline, op)
        self._writer.put(messages.request(rid, op, args))
        self._pending[rid] = c
        if deadline < self._next_deadline:
            self._next_deadline = deadline
            if deadline < self._watch_scope.deadline:
                self._watch_scope.deadline = deadline
        return rid, c

    async def _wait(self, rid: int, c: _Call, look: bool = False) -> dict[str, Any]:
        """The reply of ``c`` once it has come; the caller drops the entry on error.

        ``look``: a split call, awaited after other work (see ``_look``).
        """
        reply = c.reply
        if look and reply is None and self._readable is not None and \
                perf_counter() - c.sent > LOOK_AFTER:
            reply = self._look(c)
        pending = self._pending
        poll = self.busy_poll
        polled = reply is None and len(pending) == 1 and poll.may_poll(c.op)
        if polled:
            # Yield first: tasks started together with this one (a fan-out's) run
            # in the same batch of the scheduler, unseen in its run queue, and
            # must send their calls before the poll holds the loop; tasks woken
            # just now (pyfuse3's next reader taking its lock) go back to sleep.
            await trio.lowlevel.checkpoint()
            reply = c.reply
            polled = reply is None and nothing_else_runnable()
            if polled:
                budget = poll.budget_for(c.op) if calls_in_flight() == 1 else poll.budget
                reply = self._poll_reply(c, budget)
        if reply is None:
            c.task = current_task()

            def abort(_: RaiseCancelT) -> Abort:
                pending.pop(rid, None)
                c.task = None
                return Abort.SUCCEEDED

            reply = await wait_task_rescheduled(abort)
        if polled:
            poll.learn(c.op, perf_counter() - c.sent)
        return reply

    def _outcome(self, reply: dict[str, Any], op: str, timeout: float | None) -> Any:
        try:
            return reply["ok"]
        except KeyError:
            pass
        if reply is _LOST:
            raise self._lost_error()
        if reply is _TIMED_OUT:
            raise OSError(
                errno.ETIMEDOUT,
                f"{os.strerror(errno.ETIMEDOUT)}: no reply to {op} from {self.peer} within "
                f"{self.call_timeout if timeout is None else timeout:g}s",
            )
        msg = reply.get("msg")
        raise oserror_from_name(reply["errno"], msg if type(msg) is str else "")

    def _look(self, c: _Call) -> dict[str, Any] | None:
        """One non-blocking receive, for a reply that may be in already: the
        second reply a fan-out awaits usually came while it handled the first,
        and taking it here saves the reader task's step and this task's."""
        assert self._readable is not None
        if self._readable(0):
            self._take_in()
        return c.reply

    def _take_in(self) -> None:
        """Deliver what is in the socket now, without waiting (see ``take_in_all``)."""
        try:
            msgs = self._reader.poll(0.0)
            if msgs:
                self._last_rx = trio.current_time()
                self._deliver(msgs)
        except ProtocolError as exc:
            self._close(self._bad_frame(exc))

    def _poll_reply(self, c: _Call, budget: float) -> dict[str, Any] | None:
        """Busy-poll the socket for ``c``'s reply for at most ``budget`` seconds
        (see busypoll.py); delivers whatever else comes meanwhile."""
        poll = self.busy_poll
        deadline = perf_counter() + budget
        try:
            while c.reply is None:
                msgs = self._reader.poll(deadline)
                if not msgs:
                    break
                self._last_rx = trio.current_time()
                self._deliver(msgs)
        except ProtocolError as exc:
            self._close(self._bad_frame(exc))
        poll.record(c.reply is not None)
        return c.reply

    def _lost_error(self) -> OSError:
        return OSError(
            errno.ENOTCONN, f"{os.strerror(errno.ENOTCONN)}: {self.peer}: {self.close_reason}"
        )

    async def wait_closed(self) -> str:
        """Wait until the connection has ended; returns why."""
        await self._closed_event.wait()
        assert self.close_reason is not None
        return self.close_reason

    async def aclose(self) -> None:
        """End the connection; calls still waiting fail with ENOTCONN."""
        self._close("closed by owner")
        await aclose_forcefully(self._stream)

    def _close(self, reason: str) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        _closed(self)
        pending = self._pending
        self._pending = {}
        for c in pending.values():
            c.reply = _LOST
            if c.task is not None:
                reschedule(c.task, Value(_LOST))
                c.task = None
        self._closed_event.set()
        self._bg_scope.cancel()

    def _on_send_failed(self, exc: BaseException) -> None:
        if self.close_reason is None:
            log.warning("%r: send failed: %s", self, exc or type(exc).__name__)
            self._close(f"send failed: {transport_error(exc)}")

    async def _run(self, early: list[Any]) -> None:
        with self._bg_scope:
            async with trio.open_nursery() as nursery:
                self._bg_nursery = nursery
                nursery.start_soon(self._read_loop, early)
                nursery.start_soon(self._watchdog)
        # Closing the stream aborts a send some caller may be stuck in, shielded.
        await aclose_forcefully(self._stream)

    async def _read_loop(self, early: list[Any]) -> None:
        reason = "closed by server"
        try:
            if early:
                self._deliver(early)
            receive = self._reader.receive
            while self.close_reason is None:
                msgs = await receive()
                if msgs is None:
                    break
                self._last_rx = trio.current_time()
                self._deliver(msgs)
        except ProtocolError as exc:
            reason = self._bad_frame(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"connection lost: {exc or type(exc).__name__}"
        self._close(reason)

    def _bad_frame(self, exc: ProtocolError) -> str:
        log.warning("%r: bad frame from server: %s", self, exc)
        return f"bad frame from server: {exc}"

    def _deliver(self, msgs: list[Any]) -> None:
        pending = self._pending
        for m in msgs:
            if type(m) is not dict:
                raise ProtocolError(f"expected a reply or event, got {messages.describe(m)}")
            rid = m.get("id")
            if rid is not None:
                if type(rid) is not int:
                    raise ProtocolError(f"reply id {rid!r} is not an integer")
                c = pending.pop(rid, None)
                if c is None:
                    log.debug("%r: reply to unknown or timed-out req=%r", self, rid)
                    continue
                if "ok" not in m and type(m.get("errno")) is not str:
                    raise ProtocolError(f"reply req={rid!r} has neither 'ok' nor 'errno'")
                c.reply = m
                if c.task is not None:
                    reschedule(c.task, Value(m))
                    c.task = None
            elif "event" in m:
                self._event(m)
            elif "pong" in m:
                self._ping_sent = None
                # The watchdog sleeps until the ping's timeout: wake it when the
                # next ping is due, an interval after this pong.
                due = self._last_rx + self.ping_interval
                if due < self._watch_scope.deadline:
                    self._watch_scope.deadline = due
            else:
                raise ProtocolError(f"expected a reply or event, got {messages.describe(m)}")

    def _event(self, m: dict[str, Any]) -> None:
        name = m.get("event")
        args = m.get("args")
        if type(name) is not str or type(args) is not dict:
            raise ProtocolError("event without a name and an args map")
        if self._on_event is None:
            log.debug("%r: event %s dropped (no handler)", self, name)
            return
        try:
            self._on_event(name, args)
        except Exception:
            log.exception("%r: event handler failed on %s", self, name)

    async def _watchdog(self) -> None:
        """Times out calls, pings an idle peer, and declares a silent peer down."""
        interval = self.ping_interval
        timeout = self.ping_timeout
        writer = self._writer
        judged_once = False
        while self.close_reason is None:
            now = trio.current_time()
            if now >= self._next_deadline:
                self._expire_calls(now)
            if self._ping_sent is None and now - self._last_rx >= interval:
                self._ping_seq += 1
                self._ping_sent = now
                writer.put({"ping": self._ping_seq})
                # Sent from another task: a peer that stopped reading must not stall
                # the one task that can declare it down.
                assert self._bg_nursery is not None
                self._bg_nursery.start_soon(writer.flush)
            if self._pending or self._ping_sent is not None:
                if now - self._last_rx >= timeout and not judged_once:
                    # After a stall of this process, replies may wait in the socket
                    # while the reader has not run yet: give it a moment first.
                    judged_once = True
                    await trio.sleep(min(0.05, timeout / 20))
                    continue
                judged_once = False
                if now - self._last_rx >= timeout:
                    log.warning(
                        "%r: no answer for %.1fs with calls or a ping outstanding; peer is down",
                        self, now - self._last_rx,
                    )
                    self._close(f"no answer for {timeout:g}s (ping timeout)")
                    return
                wake = self._last_rx + timeout
            else:
                wake = math.inf
            if self._ping_sent is None:
                wake = min(wake, self._last_rx + interval)
            with trio.CancelScope(deadline=min(wake, self._next_deadline)) as self._watch_scope:
                await trio.sleep_forever()

    def _expire_calls(self, now: float) -> None:
        pending = self._pending
        earliest = math.inf
        for rid, c in list(pending.items()):
            if c.deadline <= now:
                del pending[rid]
                c.reply = _TIMED_OUT
                if c.task is not None:
                    reschedule(c.task, Value(_TIMED_OUT))
                    c.task = None
            elif c.deadline < earliest:
                earliest = c.deadline
        self._next_deadline = earliest


def _socket_fd(stream: ByteStream) -> int:
    sock = getattr(stream, "socket", None)
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (OSError, ValueError):
        return -1


def _opened(conn: RpcConnection) -> None:
    global _watch
    _open.add(conn)
    _watch = None


def _closed(conn: RpcConnection) -> None:
    global _watch
    _open.discard(conn)
    _watch = None


def take_in_all() -> None:
    """Deliver the replies and events already in the sockets of every open
    connection of this process, without waiting: one poll(2) over all their
    sockets, then one receive from each socket that has data.

    For a cache about to answer from what it knows: a server pushes an
    invalidation before it answers the change that caused it, so once the
    changer heard "done", the event is in this process's socket even if the
    reader task has not taken it yet. Calling this first makes the event's
    handlers run before the answer. A connection that is not a socket, or is
    in the middle of a big frame, is left to its reader.
    """
    global _watch
    if _watch is None:
        poller = select.poll()
        conns: dict[int, RpcConnection] = {}
        for c in _open:
            if c._fd >= 0:
                poller.register(c._fd, select.POLLIN)
                conns[c._fd] = c
        _watch = (poller.poll, conns)
    ready, conns = _watch
    if not conns:
        return
    for fd, _ in ready(0):
        conn = conns.get(fd)
        if conn is not None and conn.close_reason is None:
            conn._take_in()


def calls_in_flight() -> int:
    """Calls awaiting a reply on all open connections of this process."""
    return sum(len(conn._pending) for conn in _open)


@asynccontextmanager
async def connect_stream(
    stream: trio.abc.Stream,
    *,
    volume: str,
    client_id: str,
    role: str = "client",
    auth: dict[str, Any] | None = None,
    on_event: EventCallback | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    ping_timeout: float = DEFAULT_PING_TIMEOUT,
    ping_interval: float | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    call_timeout: float = DEFAULT_CALL_TIMEOUT,
    peer: str | None = None,
    busy_poll: float = DEFAULT_BUDGET,
) -> AsyncIterator[RpcConnection]:
    """Handshake over an existing stream and yield the connection; closes the stream
    on exit (also when the handshake fails).

    Raises HandshakeRefused with the server's reason, or OSError (ENOTCONN,
    ETIMEDOUT) when the server cannot be reached or does not answer the hello
    within ``connect_timeout``. ``busy_poll`` is how long a lone call of an op not
    seen yet polls for its reply before it sleeps, in seconds (0: never; only over
    a socket, TCP or Unix); later calls fit it to the op's recent round trips, up to
    ``busypoll.MAX_BUDGET``.
    """
    transport = fast_transport(stream)
    peer = peer or peer_name(transport)
    reader = FrameReader(transport, max_frame)
    conn: RpcConnection | None = None

    def on_broken(exc: BaseException) -> None:
        if conn is not None:
            conn._on_send_failed(exc)

    writer = FrameWriter(transport, shield=True, on_broken=on_broken)
    try:
        try:
            with trio.fail_after(connect_timeout):
                welcome, early = await client_handshake(
                    reader, writer, volume=volume, client_id=client_id, role=role, auth=auth,
                )
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                ProtocolError) as exc:
            raise transport_error(exc, f"handshake with {peer}: {exc}") from exc
        conn = RpcConnection(
            transport, reader, writer, welcome, peer=peer, on_event=on_event,
            ping_timeout=ping_timeout, ping_interval=ping_interval, call_timeout=call_timeout,
            busy_poll=busy_poll,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn._run, early)
                try:
                    yield conn
                finally:
                    conn._close("closed by owner")
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    finally:
        await aclose_forcefully(transport)


async def open_tcp(host: str, port: int, timeout: float) -> trio.SocketStream:
    """A TCP connection to host:port within ``timeout`` seconds; failing is the
    transport's OSError (ENOTCONN or ETIMEDOUT)."""
    try:
        with trio.fail_after(timeout):
            return await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise transport_error(exc, f"connect to {host}:{port}: {exc}") from exc


@asynccontextmanager
async def open_rpc_connection(
    host: str,
    port: int,
    *,
    volume: str,
    client_id: str,
    role: str = "client",
    auth: dict[str, Any] | None = None,
    on_event: EventCallback | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    ping_timeout: float = DEFAULT_PING_TIMEOUT,
    ping_interval: float | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    call_timeout: float = DEFAULT_CALL_TIMEOUT,
    busy_poll: float = DEFAULT_BUDGET,
) -> AsyncIterator[RpcConnection]:
    """Connect to host:port over TCP, handshake, and yield the connection.

    ``connect_timeout`` bounds the TCP connect and the handshake together. Failing
    to connect raises OSError (ENOTCONN or ETIMEDOUT); a refusal raises
    HandshakeRefused.
    """
    deadline = trio.current_time() + connect_timeout
    stream = await open_tcp(host, port, connect_timeout)
    async with connect_stream(
        stream, volume=volume, client_id=client_id, role=role, auth=auth, on_event=on_event,
        max_frame=max_frame, ping_timeout=ping_timeout, ping_interval=ping_interval,
        connect_timeout=max(0.0, deadline - trio.current_time()), call_timeout=call_timeout,
        peer=f"{host}:{port}", busy_poll=busy_poll,
    ) as conn:
        yield conn
