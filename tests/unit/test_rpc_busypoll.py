"""A lone call busy-polls its socket for the reply (rpc/busypoll.py).

The peer here is a plain blocking server in a worker thread, so it answers while
the trio thread polls, as a server in another process would. The tests check that
replies, events and failures that arrive during a poll are handled exactly as the
reader task would handle them, that polling backs off when it does not pay, and
that a caller whose replies always come by polling still yields and can be
cancelled.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio

from pyglfs.rpc.busypoll import MAX_SKIP, BusyPoll, nothing_else_runnable
from pyglfs.rpc.connection import RpcConnection, open_rpc_connection
from pyglfs.rpc.framing import encode_frame

HOST = "127.0.0.1"
BUDGET = 0.05  # generous: a loaded test machine must still answer within it

Reply = Callable[[dict[str, Any]], list[Any]]


def _read_frame(sock: socket.socket, buf: bytearray) -> Any:
    while True:
        if len(buf) >= 4:
            (size,) = struct.unpack_from(">I", buf)
            if len(buf) >= 4 + size:
                msg = msgpack.unpackb(bytes(buf[4 : 4 + size]))
                del buf[: 4 + size]
                return msg
        data = sock.recv(65536)
        if not data:
            return None
        buf += data


def _serve_blocking(listener: socket.socket, reply: Reply) -> int:
    """Answer one client: welcome, then ``reply(request)`` frames (raw bytes are
    sent as they are) for each request. Returns how many requests it saw."""
    conn, _ = listener.accept()
    listener.close()
    seen = 0
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        hello = _read_frame(conn, buf)
        assert hello is not None and "hello" in hello
        conn.sendall(encode_frame({"welcome": {"version": 1, "server": "t", "volume": "v"}}))
        while (msg := _read_frame(conn, buf)) is not None:
            if "ping" in msg:
                conn.sendall(encode_frame({"pong": msg["ping"]}))
                continue
            seen += 1
            out = [m if isinstance(m, bytes) else encode_frame(m) for m in reply(msg)]
            if not out:
                return seen
            conn.sendall(b"".join(out))
    return seen


def _ok(msg: dict[str, Any]) -> list[Any]:
    return [{"id": msg["id"], "ok": msg["args"]}]


@asynccontextmanager
async def threaded_peer(
    reply: Reply = _ok, budget: float = BUDGET, **kwargs: Any
) -> AsyncIterator[RpcConnection]:
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: trio.to_thread.run_sync(_serve_blocking, listener, reply))
        async with open_rpc_connection(HOST, port, volume="v", client_id="c",
                                       busy_poll=budget, **kwargs) as conn:
            yield conn


async def test_lone_call_gets_its_reply_by_polling() -> None:
    async with threaded_peer() as conn:
        for i in range(20):
            assert await conn.call("echo", {"i": i}) == {"i": i}
        # The reader task may take the first replies while it starts up.
        assert conn.busy_poll.hits >= 15


async def test_no_polling_with_a_zero_budget() -> None:
    async with threaded_peer(budget=0.0) as conn:
        for i in range(5):
            assert await conn.call("echo", {"i": i}) == {"i": i}
        assert conn.busy_poll.polls == 0


async def test_no_polling_while_other_tasks_are_runnable() -> None:
    async with threaded_peer() as conn:
        await conn.call("echo", {})
        before = conn.busy_poll.polls
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(trio.lowlevel.checkpoint)
            assert not nothing_else_runnable()
            assert await conn.call("echo", {"x": 1}) == {"x": 1}
        assert conn.busy_poll.polls == before


async def test_event_and_other_frames_during_a_poll_are_delivered() -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    def reply(msg: dict[str, Any]) -> list[Any]:
        return [{"event": "inval", "args": {"n": msg["id"]}}, {"pong": 7},
                {"id": msg["id"], "ok": 1}]

    async with threaded_peer(reply, on_event=lambda n, a: events.append((n, a))) as conn:
        await conn.call("null", {})
        hits = conn.busy_poll.hits
        assert await conn.call("null", {}) == 1
        assert conn.busy_poll.hits == hits + 1
    assert events[-1] == ("inval", {"n": 2})


async def test_bad_frame_during_a_poll_closes_the_connection() -> None:
    def reply(msg: dict[str, Any]) -> list[Any]:
        return [encode_frame({"id": msg["id"], "ok": 1})] if msg["id"] == 1 else [b"\0\0\0\1\xc1"]

    async with threaded_peer(reply) as conn:
        assert await conn.call("null", {}) == 1
        with pytest.raises(OSError) as info:
            await conn.call("null", {})
        assert info.value.errno == errno.ENOTCONN
        assert "bad frame" in (conn.close_reason or "")


async def test_peer_closing_during_a_poll_fails_the_call_with_enotconn() -> None:
    def reply(msg: dict[str, Any]) -> list[Any]:
        return [{"id": msg["id"], "ok": 1}] if msg["id"] == 1 else []

    async with threaded_peer(reply) as conn:
        assert await conn.call("null", {}) == 1
        with trio.fail_after(10):
            with pytest.raises(OSError) as info:
                await conn.call("null", {})
        assert info.value.errno == errno.ENOTCONN


async def test_a_caller_served_by_polls_still_yields_and_can_be_cancelled() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.001)
            ticks += 1

    async with threaded_peer() as conn:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            calls = 0
            with trio.move_on_after(0.3) as scope:
                with trio.fail_after(10):
                    while True:
                        await conn.call("null", {})
                        calls += 1
            nursery.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert calls > 20 and ticks > 5


async def test_backoff_after_fruitless_polls_and_reset_after_a_hit() -> None:
    poll = BusyPoll(0.001)
    assert poll.should_poll()
    poll.record(False)
    assert [poll.should_poll() for _ in range(3)] == [False, False, True]
    poll.record(False)
    assert [poll.should_poll() for _ in range(5)] == [False] * 4 + [True]
    for _ in range(20):
        poll.record(False)
    assert sum(poll.should_poll() for _ in range(MAX_SKIP + 1)) == 1
    poll.record(True)
    assert poll.should_poll() and poll.should_poll()


def test_outside_trio_nothing_is_polled() -> None:
    assert not nothing_else_runnable()
    assert not BusyPoll().should_poll()
