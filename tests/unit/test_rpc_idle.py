"""A server's idle limit (``serve_rpc(idle_timeout=...)``) over real TCP: a
client that sends nothing, not even a ping, for the limit is dropped; one that
pings, or whose request is still being handled, is kept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial

import trio

from pyglfs.rpc.connection import RpcConnection, open_rpc_connection
from pyglfs.rpc.server import serve_rpc
from pyglfs.rpc.testing import EchoService

LIMIT = 1.0
SILENT = 100.0  # a client ping timeout: no ping comes during a test
# A client pings when it heard nothing for its ping interval and no ping is
# outstanding; after a pong its watchdog next looks at the ping timeout, so an
# idle client pings about once per ping timeout.
PINGING = LIMIT / 2.5


@asynccontextmanager
async def serving(svc: EchoService, idle_timeout: float | None) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_rpc, idle_timeout=idle_timeout), svc,
                                   "127.0.0.1", 0)
        yield port
        nursery.cancel_scope.cancel()


def connect(port: int, ping_timeout: float) -> AbstractAsyncContextManager[RpcConnection]:
    return open_rpc_connection("127.0.0.1", port, volume="v", client_id="idle-test",
                               role="mgmt", ping_timeout=ping_timeout,
                               ping_interval=ping_timeout / 4)


async def kept_for(conn: RpcConnection, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        await conn.wait_closed()
    return not conn.closed


async def test_a_silent_client_is_dropped_within_the_limit() -> None:
    svc = EchoService()
    async with serving(svc, LIMIT) as port, connect(port, SILENT) as conn:
        assert await conn.call("null", {}) == {}
        start = trio.current_time()
        with trio.fail_after(LIMIT * 5):
            reason = await conn.wait_closed()
        took = trio.current_time() - start
        assert reason == "closed by server"
        assert LIMIT * 0.9 <= took <= LIMIT * 1.25 + 0.5, took
        with trio.fail_after(2):
            while not svc.disconnects:
                await trio.sleep(0.01)


async def test_a_pinging_client_and_a_long_request_are_kept() -> None:
    svc = EchoService()

    async def pinging(port: int) -> None:
        async with connect(port, PINGING) as conn:
            assert await kept_for(conn, LIMIT * 2.5)
            assert await conn.call("null", {}) == {}

    async with serving(svc, LIMIT) as port:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pinging, port)
            async with connect(port, SILENT) as busy:
                # the client waits on the server: not silent, whatever its pings
                assert await busy.call("sleep", {"t": LIMIT * 2, "n": 7}) == 7
                with trio.fail_after(LIMIT * 5):
                    await busy.wait_closed()


async def test_without_a_limit_a_silent_client_stays() -> None:
    async with serving(EchoService(), None) as port, connect(port, SILENT) as conn:
        assert await kept_for(conn, LIMIT * 1.5)
        assert await conn.call("null", {}) == {}
