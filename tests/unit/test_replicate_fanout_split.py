"""fanout over protocol clients: every request goes out from the caller's task before
any reply is awaited, without a nursery, with the outcomes of the spawning path."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from pyglfs.client.protocol import ProtocolClient
from pyglfs.client.replicate import fanout as fanout_mod
from pyglfs.client.replicate.fanout import fanout
from pyglfs.rpc.connection import RpcConnection
from pyglfs.rpc.testing import EchoService, open_memory_connection


class _Rpc:
    """Stands in for ReconnectingClient: one memory connection, or down."""

    def __init__(self, conn: RpcConnection | None) -> None:
        self.conn = conn

    @property
    def connection(self) -> RpcConnection | None:
        return self.conn

    async def call(self, op: str, args: dict[str, Any], *, timeout: float | None = None) -> Any:
        if self.conn is None:
            raise OSError(errno.ENOTCONN, "down")
        return await self.conn.call(op, args, timeout=timeout)


@asynccontextmanager
async def _bricks(n: int) -> AsyncIterator[tuple[list[ProtocolClient], list[EchoService]]]:
    svcs = [EchoService() for _ in range(n)]
    async with AsyncExitStack() as stack:
        kids = []
        for i, svc in enumerate(svcs):
            conn = await stack.enter_async_context(open_memory_connection(svc))
            pc = ProtocolClient(f"b{i}", host="127.0.0.1", port=1, volume="vol0",
                                brick_path="/b", client_id="t")
            pc.rpc = _Rpc(conn)  # type: ignore[assignment]
            kids.append(pc)
        yield kids, svcs


@pytest.fixture
def no_nursery(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(*_: Any) -> None:
        raise AssertionError("fanout took the spawning path")

    monkeypatch.setattr(fanout_mod, "_one", refuse)


async def test_requests_run_at_once_without_a_nursery(autojump_clock: Any,
                                                      no_nursery: None) -> None:
    async with _bricks(3) as (kids, _):
        start = trio.current_time()
        out = await fanout(4, [0, 2, 1], lambda i: kids[i]._call("sleep", {"t": 5, "n": i}),
                           kids + [None])
        assert out == [0, 1, 2, None]
        assert trio.current_time() - start == pytest.approx(5, abs=0.01)


async def test_per_brick_errors_are_outcomes(no_nursery: None) -> None:
    async with _bricks(2) as (kids, _):
        out = await fanout(2, [0, 1], lambda i: kids[i]._call(
            "fail" if i else "echo", {"errno": "EEXIST"}), kids)
        assert out[0] == {"errno": "EEXIST"}
        assert isinstance(out[1], OSError) and out[1].errno == errno.EEXIST


async def test_brick_down_before_and_during_the_call(no_nursery: None) -> None:
    async with _bricks(3) as (kids, svcs):
        kids[0].rpc.conn = None  # type: ignore[attr-defined]

        async def one(i: int) -> Any:
            if i == 1:
                p = kids[1]._call("block", {})
                svcs[1].record = True
                return await p
            return await kids[i]._call("echo", {"i": i})

        async def close_soon() -> None:
            await trio.testing.wait_all_tasks_blocked()
            svcs[1].connections[0].close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_soon)
            out = await fanout(3, [0, 1, 2], one, kids)
        assert isinstance(out[0], OSError) and out[0].errno == errno.ENOTCONN
        assert isinstance(out[1], OSError) and out[1].errno == errno.ENOTCONN
        assert out[2] == {"i": 2}


async def test_cancelled_fanout_propagates_and_leaves_no_pending(autojump_clock: Any,
                                                                 no_nursery: None) -> None:
    async with _bricks(2) as (kids, _):
        with trio.move_on_after(1) as scope:
            await fanout(2, [0, 1], lambda i: kids[i]._call("block", {}), kids)
        assert scope.cancelled_caught
        for k in kids:
            assert k.rpc.conn._pending == {}  # type: ignore[attr-defined]
        assert await kids[0]._call("null", {}) == {}


async def test_a_call_of_two_requests_keeps_both_parallel(autojump_clock: Any,
                                                          no_nursery: None) -> None:
    async with _bricks(2) as (kids, svcs):
        async def two(i: int) -> Any:
            a = await kids[i]._call("sleep", {"t": 5, "n": i})
            return a, await kids[i]._call("sleep", {"t": 5, "n": 10 + i})

        start = trio.current_time()
        out = await fanout(2, [0, 1], two, kids)
        assert out == [(0, 10), (1, 11)]
        assert trio.current_time() - start == pytest.approx(10, abs=0.01)
        assert svcs[0].handled == ["sleep", "sleep"]


async def test_calls_without_a_request_and_a_bug_propagates(no_nursery: None) -> None:
    async with _bricks(2) as (kids, _):
        async def nothing(i: int) -> int:
            return i * 7

        assert await fanout(2, [0, 1], nothing, kids) == [0, 7]

        async def bug(i: int) -> Any:
            if i == 1:
                raise KeyError("bug")
            return await kids[i]._call("block", {})

        with pytest.raises(KeyError):
            await fanout(2, [0, 1], bug, kids)
        assert kids[0].rpc.conn._pending == {}  # type: ignore[attr-defined]


async def test_layers_without_split_phase_keep_the_spawning_path(autojump_clock: Any) -> None:
    class Plain:
        split_phase = False

    order: list[int] = []

    async def slow(i: int) -> int:
        await trio.sleep(5 - i)
        order.append(i)
        return i

    start = trio.current_time()
    assert await fanout(2, [0, 1], slow, [Plain(), Plain()]) == [0, 1]
    assert order == [1, 0]
    assert trio.current_time() - start == pytest.approx(5, abs=0.01)
