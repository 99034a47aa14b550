"""replicate's fan-out without a task per brick: every request leaves before any
reply is awaited, and each brick's failure, a brick going down, deadlines and
cancellation behave as with a task per brick.

Over TCP a request leaves without a checkpoint; over memory streams every send
waits first (in a shielded cancel scope, which ``start_split`` must leave to the
call alone), so both run here.
"""

from __future__ import annotations

import errno
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from helpers.procs import stop_pids

from pyglfs.client.replicate.fanout import fanout, splittable
from pyglfs.rpc.connection import (
    LOOK_AFTER,
    RpcConnection,
    finish_split,
    open_rpc_connection,
    start_split,
)
from pyglfs.rpc.server import serve_rpc
from pyglfs.rpc.testing import EchoService, open_memory_connection

HOST = "127.0.0.1"


def fan(n: int, targets: list[int], call: Callable[[int], Awaitable[Any]]) -> Any:
    return fanout(n, targets, call, split=True)


class SpawnCounter(trio.abc.Instrument):
    """Counts tasks spawned by the current task (not the servers' handlers)."""

    def __init__(self) -> None:
        self.me = trio.lowlevel.current_task()
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        nursery = task.parent_nursery
        if nursery is not None and nursery.parent_task is self.me:
            self.spawned += 1


class Bricks:
    def __init__(self, svcs: list[EchoService], conns: list[RpcConnection], tcp: bool) -> None:
        self.svcs = svcs
        self.conns = conns
        self.tcp = tcp

    def calls(self, *ops: tuple[str, dict[str, Any]],
              timeout: float | None = None) -> Callable[[int], Awaitable[Any]]:
        return lambda i: self.conns[i].call(ops[i][0], ops[i][1], timeout=timeout)

    def idle(self) -> bool:
        return all(c._pending == {} for c in self.conns)


@asynccontextmanager
async def open_bricks(tcp: bool, n: int = 2) -> AsyncIterator[Bricks]:
    svcs = [EchoService() for _ in range(n)]
    async with AsyncExitStack() as stack:
        conns = []
        if tcp:
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            for s in svcs:
                port = await nursery.start(serve_rpc, s, HOST, 0)
                conns.append(await stack.enter_async_context(open_rpc_connection(
                    HOST, port, volume="v", client_id="c", busy_poll=0)))
        else:
            for s in svcs:
                conns.append(await stack.enter_async_context(open_memory_connection(s)))
        yield Bricks(svcs, conns, tcp)


@pytest.fixture(params=["tcp", "memory"])
async def bricks(request: Any) -> AsyncIterator[Bricks]:
    async with open_bricks(request.param == "tcp") as b:
        yield b


def errno_of(r: Any) -> int | None:
    return r.errno if isinstance(r, OSError) else None


async def test_outcomes_of_every_brick_and_no_task_over_tcp(bricks: Bricks) -> None:
    async with open_bricks(bricks.tcp, 3) as b:
        counter = SpawnCounter()
        trio.lowlevel.add_instrument(counter)
        try:
            out = await fan(4, [0, 1, 3], lambda i: b.conns[min(i, 2)].call(
                "echo", {"i": i}))
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert out == [{"i": 0}, {"i": 1}, None, {"i": 3}]
        if b.tcp:
            assert counter.spawned == 0
        assert b.idle()


async def test_every_request_leaves_before_a_reply_is_awaited(bricks: Bricks) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fan, 2, [0, 1], bricks.calls(("block", {}), ("echo", {})))
        with trio.fail_after(5):
            while bricks.svcs[1].handled != ["echo"]:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert bricks.idle()


async def test_each_bricks_error_is_its_outcome(bricks: Bricks) -> None:
    out = await fan(2, [0, 1], bricks.calls(("fail", {"errno": "EEXIST"}),
                                               ("echo", {"a": 1})))
    assert errno_of(out[0]) == errno.EEXIST
    assert out[1] == {"a": 1}
    out = await fan(2, [0, 1], bricks.calls(("echo", {"b": 2}), ("no-such-op", {})))
    assert out[0] == {"b": 2}
    assert errno_of(out[1]) == errno.ENOSYS


@pytest.mark.parametrize("down", [0, 1])
async def test_a_brick_down_before_the_call_is_enotconn_for_it_only(
        bricks: Bricks, down: int) -> None:
    await bricks.conns[down].aclose()
    out = await fan(2, [0, 1], bricks.calls(("echo", {"x": 0}), ("echo", {"x": 1})))
    assert errno_of(out[down]) == errno.ENOTCONN
    assert out[1 - down] == {"x": 1 - down}


@pytest.mark.parametrize("dies", [0, 1])
async def test_a_brick_going_down_mid_call_is_enotconn_for_it_only(
        bricks: Bricks, dies: int) -> None:
    ops = [("sleep", {"t": 0.3, "n": 0}), ("sleep", {"t": 0.3, "n": 1})]
    ops[dies] = ("block", {})

    async def kill() -> None:
        with trio.fail_after(5):
            while not bricks.svcs[dies].connections:
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        bricks.svcs[dies].connections[0].close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill)
        with trio.fail_after(10):
            out = await fan(2, [0, 1], bricks.calls(*ops))
    assert errno_of(out[dies]) == errno.ENOTCONN
    assert out[1 - dies] == 1 - dies


async def test_a_deadline_is_etimedout_for_that_brick(bricks: Bricks) -> None:
    def call(i: int) -> Awaitable[Any]:
        if i == 0:
            return bricks.conns[0].call("block", {}, timeout=0.3)
        return bricks.conns[1].call("sleep", {"t": 0.1, "n": 1})

    start = trio.current_time()
    with trio.fail_after(10):
        out = await fan(2, [0, 1], call)
    assert errno_of(out[0]) == errno.ETIMEDOUT
    assert out[1] == 1
    assert trio.current_time() - start >= 0.3
    assert bricks.idle()


@pytest.mark.parametrize("blocked", [0, 1])
async def test_cancellation_gives_up_every_pending_reply_and_connections_stay_usable(
        bricks: Bricks, blocked: int) -> None:
    ops = [("sleep", {"t": 0.15, "n": 0}), ("sleep", {"t": 0.15, "n": 1})]
    ops[blocked] = ("block", {})
    with trio.move_on_after(0.05) as scope:
        await fan(2, [0, 1], bricks.calls(*ops))
    assert scope.cancelled_caught
    assert bricks.idle()
    await trio.sleep(0.2)  # the sleep's late reply comes and is dropped
    out = await fan(2, [0, 1], bricks.calls(("echo", {"y": 0}), ("echo", {"y": 1})))
    assert out == [{"y": 0}, {"y": 1}]


async def test_a_bug_in_one_call_propagates_and_abandons_the_others(bricks: Bricks) -> None:
    async def broken() -> None:
        await bricks.conns[1].call("null", {})
        raise RuntimeError("bug")

    def call(i: int) -> Awaitable[Any]:
        return bricks.conns[0].call("block", {}) if i == 0 else broken()

    with trio.fail_after(10), pytest.raises(RuntimeError, match="bug"):
        await fan(2, [1, 0], call)
    assert bricks.idle()
    assert await bricks.conns[0].call("null", {}) == {}


async def test_a_call_that_awaits_first_still_runs(bricks: Bricks) -> None:
    """It holds the other calls' sends back until its own request is out."""
    async def late() -> Any:
        await trio.sleep(0.3)
        return await bricks.conns[0].call("null", {})

    class Plain:
        def __await__(self) -> Any:
            return bricks.conns[1].call("echo", {"e": 1}).__await__()

    start = trio.current_time()
    with trio.fail_after(10):
        out = await fan(2, [0, 1], lambda i: late() if i == 0 else Plain())
    assert out == [{}, {"e": 1}]
    assert trio.current_time() - start >= 0.3
    assert bricks.idle()


async def test_calls_that_fail_at_once_and_a_single_target(bricks: Bricks) -> None:
    async def refused() -> Any:
        raise OSError(errno.EROFS, "no")

    out = await fan(3, [0, 2], lambda i: refused() if i == 2 else bricks.conns[0].call(
        "echo", {"z": 0}))
    assert out[:2] == [{"z": 0}, None]
    assert errno_of(out[2]) == errno.EROFS
    assert await fan(2, [1], lambda i: bricks.conns[i].call("null", {})) == [None, {}]
    assert await fan(2, [], lambda i: bricks.conns[i].call("null", {})) == [None, None]


def test_only_protocol_clients_are_splittable() -> None:
    from pyglfs.client.layer import Layer
    from pyglfs.client.protocol import ProtocolClient

    pc = ProtocolClient("c0", host="127.0.0.2", port=1, volume="v", brick_path="/b",
                        client_id="t")
    assert splittable([pc, pc])
    assert not splittable([pc, Layer("other")])


class StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1


@pytest.fixture
def echo_port(tmp_path: Path) -> Iterator[int]:
    """An echo server in a process of its own: it answers while this test's trio
    loop does not run."""
    with open(tmp_path / "echo.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pyglfs.rpc.testing", HOST, "0"],
                                stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 20)[0], "echo server did not start"
        yield int(proc.stdout.readline().split()[-1])
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        stop_pids([proc.pid])


async def test_a_reply_already_in_the_socket_is_taken_without_the_reader(
        echo_port: int) -> None:
    """The second reply of a fan-out usually came while the first was handled: the
    caller takes it from the socket, with no step of the reader task or its own."""
    async with open_rpc_connection(HOST, echo_port, volume="v", client_id="c",
                                   busy_poll=0) as conn:
        coro = conn.call("echo", {"q": 1})
        sent, _ = await start_split(coro)
        assert sent
        # The reply lands in the socket while trio does not run (bounded wait).
        sock = conn._stream.socket  # type: ignore[attr-defined]
        assert select.select([sock], [], [], 5)[0]
        while time.perf_counter() - conn._pending[1].sent <= LOOK_AFTER:
            pass
        counter = StepCounter()
        trio.lowlevel.add_instrument(counter)
        try:
            assert await finish_split(coro) == {"q": 1}
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert counter.steps == {}
        assert conn._pending == {}
        assert await conn.call("echo", {"q": 2}) == {"q": 2}
