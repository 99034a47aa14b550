"""take_in_all: what is already in the sockets is delivered without the reader tasks.

The echo server runs in a process of its own, so it answers while this test's
trio loop does not run: a reply or event then sits in the socket, untaken.
"""

from __future__ import annotations

import select
from typing import Any

import pytest

from pyglfs.rpc import connection
from pyglfs.rpc.connection import (
    RpcConnection,
    finish_split,
    open_rpc_connection,
    start_split,
    take_in_all,
)
from tests.unit.test_fanout_split import HOST
from tests.unit.test_fanout_split import echo_port as echo_port  # the fixture


def _wait_readable(conn: RpcConnection) -> None:
    sock = conn._stream.socket  # type: ignore[attr-defined]
    assert select.select([sock], [], [], 5)[0], "no reply within 5 s"


async def _event_waits_in(conn: RpcConnection, name: str) -> Any:
    """Have the server push event ``name`` on ``conn``, then answer; returns the
    paused call once both are in the socket, untaken (trio has not run since)."""
    coro = conn.call("event", {"name": name, "args": {"n": 1}})
    sent, _ = await start_split(coro)
    assert sent
    _wait_readable(conn)
    return coro


async def test_events_and_replies_in_the_sockets_are_delivered_at_once(
        echo_port: int) -> None:
    seen: list[tuple[str, str]] = []
    async with open_rpc_connection(HOST, echo_port, volume="v", client_id="c1",
                                   busy_poll=0,
                                   on_event=lambda n, a: seen.append(("c1", n))) as c1, \
            open_rpc_connection(HOST, echo_port, volume="v", client_id="c2", busy_poll=0,
                                on_event=lambda n, a: seen.append(("c2", n))) as c2:
        idle = c2.call("block", {})
        assert (await start_split(idle))[0]
        coro = await _event_waits_in(c1, "inval")
        assert seen == []
        take_in_all()
        assert seen == [("c1", "inval")]
        for _ in range(100):  # the reply follows the event, maybe a moment later
            if not c1._pending:
                break
            _wait_readable(c1)
            take_in_all()
        assert c1._pending == {}
        assert len(c2._pending) == 1  # nothing there: untouched
        assert await finish_split(coro) == {}
        idle.close()
        take_in_all()  # nothing new anywhere
        assert seen == [("c1", "inval")]


async def test_a_new_connection_on_a_closed_ones_fd_is_the_one_taken_in(
        echo_port: int) -> None:
    """The poll set follows connections opening and closing: a socket fd number
    freed by a closed connection and reused by a new one belongs to the new one."""
    seen: list[str] = []
    async with open_rpc_connection(HOST, echo_port, volume="v", client_id="a",
                                   busy_poll=0, on_event=lambda n, a: seen.append("a")):
        async with open_rpc_connection(HOST, echo_port, volume="v", client_id="b",
                                       busy_poll=0,
                                       on_event=lambda n, a: seen.append("b")) as b:
            take_in_all()
            old_fd = b._fd
        assert b not in connection._open
        async with open_rpc_connection(HOST, echo_port, volume="v", client_id="c",
                                       busy_poll=0,
                                       on_event=lambda n, a: seen.append("c")) as c:
            if c._fd != old_fd:
                pytest.skip("the kernel gave the new socket another fd number")
            coro = await _event_waits_in(c, "inval")
            take_in_all()
            assert seen == ["c"]
            assert await finish_split(coro) == {}


async def test_a_closed_connection_is_not_taken_in(echo_port: int) -> None:
    async with open_rpc_connection(HOST, echo_port, volume="v", client_id="a",
                                   busy_poll=0) as a:
        coro = await _event_waits_in(a, "inval")
        await a.aclose()
        take_in_all()  # its socket is closed: no error, nothing delivered
        with pytest.raises(OSError):
            await finish_split(coro)
