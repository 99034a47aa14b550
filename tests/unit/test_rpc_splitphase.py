"""Split-phase calls (``start_call`` then ``result``): several requests in flight from
one task, with the outcomes, deadlines and cancellation of a plain ``call``."""

from __future__ import annotations

import errno
from typing import Any

import pytest
import trio
import trio.testing

from pyglfs.rpc.connection import PendingReply
from pyglfs.rpc.testing import EchoService, open_memory_connection


async def _errno_of(pending: PendingReply) -> int | None:
    try:
        await pending.result()
    except OSError as e:
        return e.errno
    return None


async def test_requests_are_sent_before_any_reply_is_awaited(autojump_clock: Any) -> None:
    svc = EchoService()
    async with open_memory_connection(svc) as conn:
        start = trio.current_time()
        a = await conn.start_call("sleep", {"t": 5, "n": 1})
        b = await conn.start_call("sleep", {"t": 5, "n": 2})
        c = await conn.start_call("echo", {"x": b"\x00"})
        assert await a.result() == 1
        assert await b.result() == 2
        assert await c.result() == {"x": b"\x00"}
        # Both sleeps ran at once on the server: the requests left before result().
        assert trio.current_time() - start == pytest.approx(5, abs=0.01)
        assert conn._pending == {}


async def test_errors_come_from_result_like_call() -> None:
    async with open_memory_connection(EchoService()) as conn:
        p = await conn.start_call("fail", {"errno": "EEXIST"})
        assert await _errno_of(p) == errno.EEXIST
        p = await conn.start_call("no-such-op", {})
        assert await _errno_of(p) == errno.ENOSYS
        assert conn._pending == {}


async def test_deadline_gives_etimedout_and_drops_the_entry(autojump_clock: Any) -> None:
    async with open_memory_connection(EchoService()) as conn:
        start = trio.current_time()
        p = await conn.start_call("block", {}, timeout=3)
        assert await _errno_of(p) == errno.ETIMEDOUT
        assert trio.current_time() - start == pytest.approx(3, abs=0.01)
        assert conn._pending == {}


async def test_deadline_counts_from_the_send_not_from_result(autojump_clock: Any) -> None:
    async with open_memory_connection(EchoService()) as conn:
        p = await conn.start_call("block", {}, timeout=3)
        await trio.sleep(10)
        start = trio.current_time()
        assert await _errno_of(p) == errno.ETIMEDOUT
        assert trio.current_time() == start


async def test_cancelled_waiter_propagates_and_leaves_no_entry(autojump_clock: Any) -> None:
    async with open_memory_connection(EchoService()) as conn:
        p = await conn.start_call("block", {})
        with trio.move_on_after(1) as scope:
            await p.result()
        assert scope.cancelled_caught
        assert conn._pending == {}
        assert await conn.call("null", {}) == {}


async def test_abandon_drops_the_entry_and_a_late_reply_is_ignored(autojump_clock: Any) -> None:
    async with open_memory_connection(EchoService()) as conn:
        p = await conn.start_call("sleep", {"t": 2, "n": 7})
        p.abandon()
        assert conn._pending == {}
        await trio.sleep(5)
        assert await conn.call("echo", {"a": 1}) == {"a": 1}


async def test_reply_already_in_does_not_wait() -> None:
    async with open_memory_connection(EchoService()) as conn:
        p = await conn.start_call("echo", {"v": 3})
        await conn.call("null", {})
        assert await p.result() == {"v": 3}


async def test_connection_lost_mid_call_is_enotconn() -> None:
    svc = EchoService()
    async with open_memory_connection(svc) as conn:
        p = await conn.start_call("block", {})
        await trio.testing.wait_all_tasks_blocked()
        svc.connections[0].close()
        assert await _errno_of(p) == errno.ENOTCONN
        await conn.wait_closed()
        later = await conn.start_call("null", {})
        assert await _errno_of(later) == errno.ENOTCONN


async def test_failed_handle_raises_its_error() -> None:
    p = PendingReply.failed(OSError(errno.ENOTCONN, "down"))
    assert await _errno_of(p) == errno.ENOTCONN
    p.abandon()
