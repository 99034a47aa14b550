"""Client and server connection over trio memory streams: calls, errors, events,
deadlines, concurrency, and liveness (ping timeout) under the autojump clock."""

from __future__ import annotations

import errno
import math
from typing import Any

import pytest
import trio
import trio.testing

from pyglfs.rpc import messages
from pyglfs.rpc.connection import connect_stream
from pyglfs.rpc.errors import HandshakeRefused
from pyglfs.rpc.framing import FrameReader, FrameWriter
from pyglfs.rpc.testing import TEST_AUTH, EchoService, open_memory_connection


async def test_call_returns_ok_value_and_bin_stays_bytes() -> None:
    svc = EchoService()
    async with open_memory_connection(svc) as conn:
        args = {"name": b"\x00\xffraw", "n": 7, "nested": {"l": [1, "s", None, True]}}
        assert await conn.call("echo", args) == args
        assert await conn.call("null", {}) == {}
    assert svc.handled == ["echo", "null"]


async def test_server_errno_is_raised_as_oserror_with_that_errno() -> None:
    async with open_memory_connection(EchoService()) as conn:
        for name in ("ENOENT", "EEXIST", "EACCES", "ENOTEMPTY", "EROFS"):
            with pytest.raises(OSError) as info:
                await conn.call("fail", {"errno": name})
            assert info.value.errno == getattr(errno, name)


async def test_unknown_op_is_enosys_and_connection_stays_up() -> None:
    async with open_memory_connection(EchoService()) as conn:
        with pytest.raises(OSError) as info:
            await conn.call("no-such-op", {})
        assert info.value.errno == errno.ENOSYS
        assert await conn.call("echo", {"still": "up"}) == {"still": "up"}


async def test_handler_bug_becomes_eio_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async with open_memory_connection(EchoService()) as conn:
        with pytest.raises(OSError) as info:
            await conn.call("crash", {})
        assert info.value.errno == errno.EIO
        assert await conn.call("null", {}) == {}
    assert any("a bug in the handler" in (r.exc_text or "") for r in caplog.records)


async def test_thousand_concurrent_calls_get_their_own_replies() -> None:
    svc = EchoService()
    svc.record = False
    results: dict[int, Any] = {}
    async with open_memory_connection(svc) as conn:

        async def one(i: int) -> None:
            op = "echo" if i % 2 else "sleep"
            args = {"i": i} if i % 2 else {"t": (i % 7) / 1000, "n": i}
            results[i] = await conn.call(op, args)

        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(one, i)
    assert results == {i: ({"i": i} if i % 2 else i) for i in range(1000)}


async def test_replies_out_of_order_match_their_requests(autojump_clock: Any) -> None:
    order: list[int] = []
    async with open_memory_connection(EchoService()) as conn:

        async def one(i: int) -> None:
            assert await conn.call("sleep", {"t": 10 - i, "n": i}) == i
            order.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i)
    assert order == list(reversed(range(10)))


async def test_events_reach_on_event() -> None:
    got: list[tuple[str, dict[str, Any]]] = []
    async with open_memory_connection(
        EchoService(), on_event=lambda name, args: got.append((name, args))
    ) as conn:
        await conn.call("event", {"name": "lock-contention", "args": {"gfid": b"g" * 16}})
        assert got == [("lock-contention", {"gfid": b"g" * 16})]


async def test_call_deadline_gives_etimedout_and_late_work_is_ignored(
    autojump_clock: Any,
) -> None:
    async with open_memory_connection(EchoService()) as conn:
        start = trio.current_time()
        with pytest.raises(OSError) as info:
            await conn.call("sleep", {"t": 100, "n": 1}, timeout=5)
        assert info.value.errno == errno.ETIMEDOUT
        assert trio.current_time() - start == pytest.approx(5, abs=0.01)
        # The late reply (at t=100) must not disturb later calls.
        await trio.sleep(200)
        assert await conn.call("echo", {"a": 1}) == {"a": 1}


async def test_default_deadline_applies(autojump_clock: Any) -> None:
    async with open_memory_connection(EchoService(), call_timeout=3.0) as conn:
        start = trio.current_time()
        with pytest.raises(OSError) as info:
            await conn.call("block", {})
        assert info.value.errno == errno.ETIMEDOUT
        assert trio.current_time() - start == pytest.approx(3, abs=0.01)


async def test_shorter_deadline_after_longer_one_is_enforced_on_time(
    autojump_clock: Any,
) -> None:
    async with open_memory_connection(EchoService()) as conn:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _expect_errno(conn.call("block", {}, timeout=50),
                                                     errno.ETIMEDOUT))
            await trio.sleep(1)
            start = trio.current_time()
            await _expect_errno(conn.call("block", {}, timeout=2), errno.ETIMEDOUT)
            assert trio.current_time() - start == pytest.approx(2, abs=0.01)


async def _expect_errno(coro: Any, code: int) -> None:
    with pytest.raises(OSError) as info:
        await coro
    assert info.value.errno == code


async def test_cancellation_propagates_and_connection_stays_usable(autojump_clock: Any) -> None:
    async with open_memory_connection(EchoService()) as conn:
        with trio.move_on_after(1) as scope:
            await conn.call("block", {})
        assert scope.cancelled_caught
        assert await conn.call("null", {}) == {}
        assert conn._pending == {}


async def test_calls_in_flight_fail_enotconn_when_server_side_closes() -> None:
    svc = EchoService()
    async with open_memory_connection(svc) as conn:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_expect_errno, conn.call("block", {}), errno.ENOTCONN)
            await trio.testing.wait_all_tasks_blocked()
            assert len(svc.connections) == 1
            svc.connections[0].close()
        reason = await conn.wait_closed()
        assert "closed by server" in reason
        await _expect_errno(conn.call("null", {}), errno.ENOTCONN)
    assert svc.disconnects == svc.connections


async def test_disconnected_is_called_when_client_leaves() -> None:
    svc = EchoService()
    async with open_memory_connection(svc) as conn:
        await conn.call("echo", {})
        server_conn = svc.connections[0]
        assert (server_conn.client_id, server_conn.volume, server_conn.role) == (
            "test-client", "vol0", "client")
        await conn.aclose()
        with trio.fail_after(5):
            while not svc.disconnects:
                await trio.sleep(0.01)
    assert svc.disconnects == [server_conn]


async def test_wrong_credentials_refused_and_nothing_runs() -> None:
    svc = EchoService(auth=TEST_AUTH)
    with pytest.raises(HandshakeRefused) as info:
        async with open_memory_connection(svc, auth={"username": "test", "password": "nope"}):
            pytest.fail("connected with wrong credentials")
    assert "wrong credentials" in info.value.reason
    assert svc.handled == [] and svc.disconnects == []


async def test_right_credentials_accepted() -> None:
    svc = EchoService(auth=TEST_AUTH)
    async with open_memory_connection(svc, auth=TEST_AUTH) as conn:
        assert await conn.call("null", {}) == {}
        assert conn.welcome["volume"] == "vol0"


async def _fake_server_after_handshake(stream: trio.abc.Stream, *, answer_pings: bool) -> None:
    """Completes the handshake, then reads everything and answers nothing (a host
    that vanished without a reset), or answers only pings."""
    reader = FrameReader(stream)
    writer = FrameWriter(stream)
    await reader.receive()
    await writer.send(messages.welcome("fake", "vol0"))
    while True:
        msgs = await reader.receive()
        if msgs is None:
            return
        for m in msgs:
            if answer_pings and "ping" in m:
                await writer.send({"pong": m["ping"]})


async def _with_fake_server(answer_pings: bool, body: Any, **kwargs: Any) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: _fake_server_after_handshake(server_stream, answer_pings=answer_pings))
        async with connect_stream(client_stream, volume="vol0", client_id="c", **kwargs) as conn:
            await body(conn)
        nursery.cancel_scope.cancel()


async def test_silent_peer_declared_down_after_ping_timeout(autojump_clock: Any) -> None:
    async def body(conn: Any) -> None:
        start = trio.current_time()
        await _expect_errno(conn.call("null", {}), errno.ENOTCONN)
        waited = trio.current_time() - start
        assert 7 <= waited <= 7.06, waited  # + the reader's grace
        assert "ping timeout" in (await conn.wait_closed())
        await _expect_errno(conn.call("null", {}), errno.ENOTCONN)

    await _with_fake_server(False, body, ping_timeout=7)


async def test_silent_peer_detected_when_the_call_starts_on_an_idle_connection(
    autojump_clock: Any,
) -> None:
    # The watchdog is asleep until its next ping when the call starts: the call's
    # far deadline must not push that wake-up back.
    async def body(conn: Any) -> None:
        await trio.sleep(0.5)
        start = trio.current_time()
        await _expect_errno(conn.call("null", {}), errno.ENOTCONN)
        assert trio.current_time() - start <= 8

    await _with_fake_server(False, body, ping_timeout=8)


async def test_idle_silent_peer_is_detected_by_ping(autojump_clock: Any) -> None:
    async def body(conn: Any) -> None:
        start = trio.current_time()
        reason = await conn.wait_closed()
        assert "ping timeout" in reason
        # Idle: a ping goes out after the ping interval (timeout/2); the peer is down
        # once nothing has been heard for the whole timeout.
        assert trio.current_time() - start == pytest.approx(4.05, abs=0.01)  # + the reader's grace

    await _with_fake_server(False, body, ping_timeout=4)


async def test_peer_answering_pings_stays_up_while_calls_wait(autojump_clock: Any) -> None:
    async def body(conn: Any) -> None:
        with trio.move_on_after(60):
            await conn.call("null", {}, timeout=math.inf)
        assert not conn.closed

    await _with_fake_server(True, body, ping_timeout=5)


async def test_slow_handler_does_not_trip_ping_timeout(autojump_clock: Any) -> None:
    async with open_memory_connection(EchoService(), ping_timeout=2) as conn:
        assert await conn.call("sleep", {"t": 30, "n": 5}) == 5
        assert not conn.closed


async def test_malformed_reply_closes_the_connection_not_the_owner() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def bad_server() -> None:
        reader = FrameReader(server_stream)
        writer = FrameWriter(server_stream)
        await reader.receive()
        await writer.send(messages.welcome("bad", "vol0"))
        await reader.receive()
        await writer.send({"id": [1], "ok": 1})
        await reader.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bad_server)
        async with connect_stream(client_stream, volume="vol0", client_id="c") as conn:
            await _expect_errno(conn.call("null", {}), errno.ENOTCONN)
            assert "bad frame" in (await conn.wait_closed())
        nursery.cancel_scope.cancel()


async def test_an_idle_connection_pings_every_interval(autojump_clock: Any) -> None:
    """Not once per ping timeout: after a pong the next ping is an interval away,
    so a peer that vanished is declared down within interval + timeout."""
    async with open_memory_connection(EchoService(), ping_interval=1, ping_timeout=10) as conn:
        await trio.sleep(5.5)
        assert conn._ping_seq == 5
