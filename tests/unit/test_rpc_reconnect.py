"""ReconnectingClient against a fake network of memory connections, on the autojump
clock: backoff timing, up/down notifications, calls while down, set_address."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from pyglfs.rpc.connection import RpcConnection
from pyglfs.rpc.errors import HandshakeRefused
from pyglfs.rpc.reconnect import ReconnectingClient
from pyglfs.rpc.testing import EchoService, open_memory_connection


class FakeNetwork:
    """Stands in for open_rpc_connection: refuses while ``reachable`` is False."""

    def __init__(self) -> None:
        self.svc = EchoService()
        self.reachable = False
        self.refuse: str | None = None
        self.attempts: list[tuple[float, str, int]] = []

    @asynccontextmanager
    async def open(self, host: str, port: int, **kwargs: Any) -> AsyncIterator[RpcConnection]:
        self.attempts.append((trio.current_time(), host, port))
        if not self.reachable:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected: refused")
        if self.refuse:
            raise HandshakeRefused(self.refuse)
        async with open_memory_connection(
            self.svc, volume=kwargs["volume"], client_id=kwargs["client_id"],
            ping_timeout=kwargs["ping_timeout"],
        ) as conn:
            await conn.call("null", {})  # makes the service see this connection
            yield conn

    def drop_connection(self) -> None:
        self.svc.connections[-1].close()


@asynccontextmanager
async def running(net: FakeNetwork, **kwargs: Any) -> AsyncIterator[
        tuple[ReconnectingClient, list[str]]]:
    events: list[str] = []
    client = ReconnectingClient(
        "127.0.0.2", 49750, volume="vol0", client_id="c1", opener=net.open,
        on_up=lambda: events.append("up"), on_down=lambda why: events.append(f"down: {why}"),
        **kwargs,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(client.serve)
        yield client, events
        nursery.cancel_scope.cancel()


async def wait_for(cond: Any, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


async def test_backoff_doubles_to_cap_with_jitter(autojump_clock: Any) -> None:
    net = FakeNetwork()
    async with running(net):
        await wait_for(lambda: len(net.attempts) >= 9)
    times = [t for t, _, _ in net.attempts]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    expected = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    for gap, want in zip(gaps, expected, strict=False):
        assert want * 0.75 - 1e-6 <= gap <= want * 1.25 + 1e-6, (gaps, expected)
    assert len(set(round(g / w, 6) for g, w in zip(gaps, expected, strict=False))) > 1, \
        "no jitter"


async def test_first_failure_reports_down_once_then_up(autojump_clock: Any) -> None:
    net = FakeNetwork()
    async with running(net) as (client, events):
        await wait_for(lambda: len(net.attempts) >= 4)
        assert events == ["down: Transport endpoint is not connected: refused"]
        assert not client.is_up
        assert not await client.wait_up(0.5)
        net.reachable = True
        assert await client.wait_up(10)
        assert events[1:] == ["up"]
        assert await client.call("echo", {"x": 1}) == {"x": 1}


async def test_call_while_down_fails_at_once(autojump_clock: Any) -> None:
    net = FakeNetwork()
    async with running(net) as (client, _):
        start = trio.current_time()
        with pytest.raises(OSError) as info:
            await client.call("null", {})
        assert info.value.errno == errno.ENOTCONN
        assert trio.current_time() == start


async def test_server_drop_reports_down_then_reconnects(autojump_clock: Any) -> None:
    net = FakeNetwork()
    net.reachable = True
    async with running(net) as (client, events):
        assert await client.wait_up(5)
        await trio.sleep(10)  # a connection that lived a while reconnects at once
        net.drop_connection()
        await wait_for(lambda: len(events) >= 2)
        assert events[0] == "up" and events[1].startswith("down: ") and "closed" in events[1]
        await wait_for(lambda: len(events) >= 3)
        assert events[2] == "up"
        assert await client.call("null", {}) == {}


async def test_drop_while_unreachable_backs_off_and_reports_up_on_return(
    autojump_clock: Any,
) -> None:
    net = FakeNetwork()
    net.reachable = True
    async with running(net) as (client, events):
        assert await client.wait_up(5)
        net.reachable = False
        net.drop_connection()
        await wait_for(lambda: len(net.attempts) >= 5)
        assert events == ["up", events[1]] and events[1].startswith("down")
        with pytest.raises(OSError) as info:
            await client.call("null", {})
        assert info.value.errno == errno.ENOTCONN
        net.reachable = True
        assert await client.wait_up(5)
        assert events[2:] == ["up"]


async def test_connection_that_drops_at_once_does_not_spin(autojump_clock: Any) -> None:
    net = FakeNetwork()
    net.reachable = True
    async with running(net) as (client, events):
        for _ in range(5):
            assert await client.wait_up(10)
            net.drop_connection()
            await wait_for(lambda: not client.is_up)
        times = [t for t, _, _ in net.attempts]
    assert times[-1] - times[0] >= 0.75 * (0.1 + 0.2 + 0.4 + 0.8), times


async def test_set_address_redirects_and_cuts_backoff_short(autojump_clock: Any) -> None:
    net = FakeNetwork()
    async with running(net) as (client, _):
        await wait_for(lambda: len(net.attempts) >= 7)  # backoff now near its cap
        await trio.sleep(0.1)
        net.reachable = True
        moved_at = trio.current_time()
        client.set_address("127.0.0.3", 49800)
        assert await client.wait_up(5)
        when, host, port = net.attempts[-1]
        assert (host, port) == ("127.0.0.3", 49800)
        assert when - moved_at < 0.01


async def test_handshake_refusal_is_a_down_reason(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    net = FakeNetwork()
    net.reachable = True
    net.refuse = "wrong credentials for volume 'vol0'"
    async with running(net) as (client, events):
        await wait_for(lambda: len(net.attempts) >= 3)
        assert not client.is_up
        assert events == ["down: handshake refused: wrong credentials for volume 'vol0'"]
    assert any("wrong credentials" in r.getMessage() and r.levelname == "ERROR"
               for r in caplog.records)


async def test_callback_failure_is_logged_not_fatal(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    net = FakeNetwork()
    net.reachable = True

    def bad_up() -> None:
        raise RuntimeError("owner bug")

    client = ReconnectingClient("h", 1, volume="vol0", client_id="c", opener=net.open,
                                on_up=bad_up)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.serve)
        assert await client.wait_up(5)
        assert await client.call("null", {}) == {}
        nursery.cancel_scope.cancel()
    assert any("on_up callback failed" in r.getMessage() for r in caplog.records)
