"""replicate's fan-out without a task per brick (``fanout(..., split=True)``): every
request leaves before any reply is awaited, and each brick's failure, a brick going
down, deadlines and cancellation behave as with a task per brick."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from pyglfs.client.replicate.fanout import fanout, splittable
from pyglfs.rpc.connection import RpcConnection
from pyglfs.rpc.testing import EchoService, open_memory_connection


class SpawnCounter(trio.abc.Instrument):
    """Counts tasks spawned by the current task (not the servers' handlers)."""

    def __init__(self) -> None:
        self.me = trio.lowlevel.current_task()
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        nursery = task.parent_nursery
        if nursery is not None and nursery.parent_task is self.me:
            self.spawned += 1


@asynccontextmanager
async def bricks(n: int = 2) -> AsyncIterator[tuple[list[EchoService], list[RpcConnection]]]:
    async with AsyncExitStack() as stack:
        svcs = [EchoService() for _ in range(n)]
        conns = [await stack.enter_async_context(open_memory_connection(s)) for s in svcs]
        yield svcs, conns


def calls(conns: list[RpcConnection], ops: list[tuple[str, dict[str, Any]]],
          timeout: float | None = None) -> Callable[[int], Awaitable[Any]]:
    return lambda i: conns[i].call(ops[i][0], ops[i][1], timeout=timeout)


def errno_of(r: Any) -> int | None:
    return r.errno if isinstance(r, OSError) else None


async def test_requests_all_leave_before_a_reply_is_awaited_and_no_task_is_spawned(
        autojump_clock: Any) -> None:
    async with bricks(3) as (_, conns):
        counter = SpawnCounter()
        trio.lowlevel.add_instrument(counter)
        try:
            start = trio.current_time()
            out = await fanout(4, [0, 1, 2], calls(conns, [
                ("sleep", {"t": 5, "n": 0}), ("sleep", {"t": 3, "n": 1}),
                ("sleep", {"t": 4, "n": 2})]), split=True)
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert out == [0, 1, 2, None]
        assert trio.current_time() - start == pytest.approx(5, abs=0.01)
        assert counter.spawned == 0
        assert all(c._pending == {} for c in conns)


async def test_each_bricks_error_is_its_outcome() -> None:
    async with bricks() as (_, conns):
        out = await fanout(2, [0, 1], calls(conns, [
            ("fail", {"errno": "EEXIST"}), ("echo", {"a": 1})]), split=True)
        assert errno_of(out[0]) == errno.EEXIST
        assert out[1] == {"a": 1}
        out = await fanout(2, [0, 1], calls(conns, [
            ("echo", {"b": 2}), ("no-such-op", {})]), split=True)
        assert out[0] == {"b": 2}
        assert errno_of(out[1]) == errno.ENOSYS


async def test_a_brick_down_before_the_call_is_enotconn_for_it_only() -> None:
    async with bricks() as (_, conns):
        await conns[0].aclose()
        out = await fanout(2, [0, 1], calls(conns, [("echo", {"x": 0}), ("echo", {"x": 1})]),
                           split=True)
        assert errno_of(out[0]) == errno.ENOTCONN
        assert out[1] == {"x": 1}


@pytest.mark.parametrize("dies", [0, 1])
async def test_a_brick_going_down_mid_call_is_enotconn_for_it_only(
        autojump_clock: Any, dies: int) -> None:
    async with bricks() as (svcs, conns):
        ops = [("sleep", {"t": 2, "n": 0}), ("sleep", {"t": 2, "n": 1})]
        ops[dies] = ("block", {})

        async def kill() -> None:
            await trio.sleep(1)
            svcs[dies].connections[0].close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill)
            out = await fanout(2, [0, 1], calls(conns, ops), split=True)
        assert errno_of(out[dies]) == errno.ENOTCONN
        assert out[1 - dies] == 1 - dies


async def test_a_deadline_is_etimedout_for_that_brick(autojump_clock: Any) -> None:
    async with bricks() as (_, conns):
        ops = [("block", {}), ("sleep", {"t": 1, "n": 1})]

        def call(i: int) -> Awaitable[Any]:
            return conns[i].call(*ops[i], timeout=3 if i == 0 else None)

        start = trio.current_time()
        out = await fanout(2, [0, 1], call, split=True)
        assert errno_of(out[0]) == errno.ETIMEDOUT
        assert out[1] == 1
        assert trio.current_time() - start == pytest.approx(3, abs=0.01)
        assert conns[0]._pending == {}


@pytest.mark.parametrize("blocked", [0, 1])
async def test_cancellation_gives_up_every_pending_reply_and_connections_stay_usable(
        autojump_clock: Any, blocked: int) -> None:
    async with bricks() as (_, conns):
        ops = [("sleep", {"t": 2, "n": 0}), ("sleep", {"t": 2, "n": 1})]
        ops[blocked] = ("block", {})
        with trio.move_on_after(5) as scope:
            await fanout(2, [0, 1], calls(conns, ops), split=True)
        assert scope.cancelled_caught
        assert all(c._pending == {} for c in conns)
        await trio.sleep(5)  # a late reply (the sleep's) is dropped
        out = await fanout(2, [0, 1], calls(conns, [("echo", {"y": 0}), ("echo", {"y": 1})]),
                           split=True)
        assert out == [{"y": 0}, {"y": 1}]


async def test_a_bug_in_one_call_propagates_and_abandons_the_others(
        autojump_clock: Any) -> None:
    async with bricks() as (_, conns):
        async def broken() -> None:
            await conns[1].call("null", {})
            raise RuntimeError("bug")

        def call(i: int) -> Awaitable[Any]:
            return conns[0].call("block", {}) if i == 0 else broken()

        with pytest.raises(RuntimeError, match="bug"):
            await fanout(2, [1, 0], call, split=True)
        assert all(c._pending == {} for c in conns)
        assert await conns[0].call("null", {}) == {}


async def test_calls_that_await_first_or_are_not_coroutines_still_run(
        autojump_clock: Any) -> None:
    async with bricks() as (_, conns):
        async def late(i: int) -> Any:
            await trio.sleep(1)
            return await conns[i].call("sleep", {"t": 2, "n": i})

        class Plain:
            def __await__(self) -> Any:
                return conns[1].call("echo", {"p": 1}).__await__()

        start = trio.current_time()
        out = await fanout(2, [0, 1], lambda i: late(i) if i == 0 else Plain(), split=True)
        assert out == [0, {"p": 1}]
        # The first call held the second's send back by its sleep, not by its reply.
        assert trio.current_time() - start == pytest.approx(3, abs=0.01)


async def test_a_call_that_fails_at_once_and_a_single_target() -> None:
    async def refused(i: int) -> Any:
        raise OSError(errno.EROFS, "no")

    async with bricks() as (_, conns):
        out = await fanout(3, [0, 2], lambda i: refused(i) if i == 2 else conns[0].call(
            "echo", {"z": 0}), split=True)
        assert out == [{"z": 0}, None, out[2]]
        assert errno_of(out[2]) == errno.EROFS
        assert await fanout(2, [1], lambda i: conns[i].call("null", {}), split=True) == [
            None, {}]


def test_only_protocol_clients_are_splittable() -> None:
    from pyglfs.client.layer import Layer
    from pyglfs.client.protocol import ProtocolClient

    pc = ProtocolClient("c0", host="127.0.0.2", port=1, volume="v", brick_path="/b",
                        client_id="t")
    assert splittable([pc, pc])
    assert not splittable([pc, Layer("other")])
