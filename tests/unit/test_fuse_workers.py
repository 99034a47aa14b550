"""The FUSE reader hand-off (client/fuse/workers.py) against a loop that reads
like pyfuse3's: one byte per request from a non-blocking pipe, so a read that
the hand-off lets happen on an empty fd fails the test (BlockingIOError)
instead of stalling the event loop."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections.abc import AsyncIterator, Iterator

import pyfuse3
import pytest
import trio

from pyglfs.client.fuse import workers
from pyglfs.client.fuse.errors import fuse_handler
from pyglfs.client.fuse.workers import FuseWorkers


class Session:
    """Workers named as pyfuse3 names them, running its loop over a pipe."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.workers = FuseWorkers(rfd)
        self.served: list[tuple[bytes, str]] = []
        self.gate = trio.Event()
        self.ended = 0

    @fuse_handler
    async def handle(self, data: bytes) -> None:
        if data == b"b":
            await self.gate.wait()
        elif data == b"e":
            raise OSError(errno.EIO, "failed")
        self.served.append((data, trio.lowlevel.current_task().name))

    async def loop(self) -> None:
        try:
            for _ in range(1000):
                if not await self.workers.wait_fuse_readable():
                    return
                data = os.read(self.rfd, 1)
                if not data:  # as an unmount makes the read fail
                    return
                try:
                    await self.handle(data)
                except pyfuse3.FUSEError:
                    self.served.append((data, "error"))
        finally:
            self.ended += 1

    def send(self, data: bytes) -> None:
        os.write(self.wfd, data)

    async def until(self, cond, what: str) -> None:  # type: ignore[no-untyped-def]
        with trio.fail_after(5):
            while not cond():
                await trio.sleep(0.001)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    fds = {rfd, wfd}
    yield rfd, wfd
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


@contextlib.asynccontextmanager
async def _bounded_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery that fails the test instead of waiting forever for its workers."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            yield nursery


async def _start(nursery: trio.Nursery, s: Session, n: int) -> None:
    s.workers.install()
    for i in range(n):
        nursery.start_soon(s.loop, name=f"pyfuse-{i + 2:02d}")
    await trio.testing.wait_all_tasks_blocked()


async def test_requests_answered_at_once_stay_with_one_reader(pipe):
    s = Session(*pipe)
    saved = pyfuse3._wait_fuse_readable
    async with _bounded_nursery() as nursery:
        await _start(nursery, s, 4)
        assert pyfuse3._wait_fuse_readable == s.workers.wait_fuse_readable
        for i in range(20):
            s.send(b"s")
            await s.until(lambda i=i: len(s.served) == i + 1, "request served")
        assert len({name for _, name in s.served}) == 1
        s.send(b"e")
        await s.until(lambda: s.served[-1] == (b"e", "error"), "error reply")
        s.workers.close()
        trio.lowlevel.notify_closing(s.rfd)
    assert s.ended == 4
    s.workers.uninstall()
    assert pyfuse3._wait_fuse_readable is saved


async def test_waiting_requests_are_read_in_bounded_bursts(pipe):
    s = Session(*pipe)
    seen: list[int] = []
    async with _bounded_nursery() as nursery:
        await _start(nursery, s, 2)
        s.send(b"s" * 30)
        for _ in range(10_000):  # this task runs only between the reader's bursts
            seen.append(len(s.served))
            if seen[-1] == 30:
                break
            await trio.lowlevel.checkpoint()
        assert seen[-1] == 30
        assert len({name for _, name in s.served}) == 1
        steps = sorted(set(seen))
        assert any(0 < n < 30 for n in steps)
        # a step of the reader serves at most BURST + 1; trio may run two of
        # them between two of ours (it varies the order within a batch)
        assert all(b - a <= 2 * (workers.BURST + 1) for a, b in itertools.pairwise(steps))
        nursery.cancel_scope.cancel()
    s.workers.uninstall()


async def test_a_waiting_handler_lets_another_worker_read(pipe):
    s = Session(*pipe)
    async with _bounded_nursery() as nursery:
        await _start(nursery, s, 3)
        first = s.workers.reader
        assert first is not None
        s.send(b"b")
        await trio.testing.wait_all_tasks_blocked()
        assert s.workers.reader not in (None, first)
        s.send(b"s")
        s.send(b"s")
        await s.until(lambda: len(s.served) == 2, "requests behind a waiting one")
        assert {name for _, name in s.served} == {s.workers.reader.name} != {first.name}
        s.gate.set()
        await s.until(lambda: len(s.served) == 3, "the waiting request")
        assert s.served[-1][0] == b"b"
        # the idle workers are reused last-in-first-out: the one that waited
        # parked last, so it is the next reader once the current one waits
        s.gate = trio.Event()
        s.send(b"b")
        await trio.testing.wait_all_tasks_blocked()
        s.send(b"s")
        await s.until(lambda: len(s.served) == 4, "request after the second wait")
        assert s.served[-1][1] == s.served[2][1]
        s.gate.set()
        await s.until(lambda: len(s.served) == 5, "second waiting request")
        os.close(s.wfd)  # unmount: the reader's read fails, its worker ends, all end
    assert s.ended == 3
    s.workers.uninstall()


async def test_workers_that_read_before_are_preferred_to_new_ones(pipe):
    """pyfuse3 keeps starting workers; each one that reads keeps a receive
    buffer, so the role goes to one that has read before when there is one."""
    s = Session(*pipe)
    async with _bounded_nursery() as nursery:
        await _start(nursery, s, 2)
        s.send(b"b")
        await trio.testing.wait_all_tasks_blocked()
        s.gate.set()
        await s.until(lambda: len(s.served) == 1, "first waiting request")
        used = s.served[0][1]
        for i in range(2):  # started later, as pyfuse3 does after reads
            nursery.start_soon(s.loop, name=f"pyfuse-{10 + i}")
        await trio.testing.wait_all_tasks_blocked()
        s.gate = trio.Event()
        s.send(b"b")
        await trio.testing.wait_all_tasks_blocked()
        s.send(b"s")
        await s.until(lambda: len(s.served) == 2, "request behind the second wait")
        assert s.served[1] == (b"s", used)
        s.gate.set()
        await s.until(lambda: len(s.served) == 3, "second waiting request")
        nursery.cancel_scope.cancel()
    s.workers.uninstall()


async def test_every_worker_busy_then_one_comes_back(pipe):
    s = Session(*pipe)
    async with _bounded_nursery() as nursery:
        await _start(nursery, s, 2)
        s.send(b"b")
        s.send(b"b")
        await trio.testing.wait_all_tasks_blocked()
        assert s.workers.reader is None
        s.send(b"s")
        await trio.testing.wait_all_tasks_blocked()
        assert s.served == []  # nobody reads while both wait
        s.gate.set()
        await s.until(lambda: len(s.served) == 3, "all served")
        nursery.cancel_scope.cancel()
    assert s.ended == 2
    s.workers.uninstall()


async def test_terminate_ends_idle_workers_and_the_reader(pipe):
    s = Session(*pipe)
    async with _bounded_nursery() as nursery:
        await _start(nursery, s, 5)
        s.send(b"b")
        await trio.testing.wait_all_tasks_blocked()
        s.workers.close()
        trio.lowlevel.notify_closing(s.rfd)
        await s.until(lambda: s.ended == 4, "idle workers and reader end")
        s.gate.set()
    assert s.ended == 5
    s.workers.uninstall()


async def test_handlers_pass_results_errors_and_cancellation():
    """fuse_handler drives the handler's coroutine itself: whatever step of it
    ends, with a value or an error, comes out as it would from an await."""
    @fuse_handler
    async def value() -> int:
        return 7

    @fuse_handler
    async def later() -> int:
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        return 8

    @fuse_handler
    async def fails(exc: BaseException, steps: int) -> None:
        for _ in range(steps):
            await trio.lowlevel.checkpoint()
        raise exc

    @fuse_handler
    async def forever() -> None:
        await trio.sleep_forever()

    @fuse_handler
    async def cleans_up(done: list[str]) -> None:
        try:
            await trio.sleep_forever()
        finally:
            done.append("finally")

    assert await value() == 7
    assert await later() == 8
    for steps in (0, 1, 2):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await fails(KeyError("bug"), steps)
        assert e.value.errno == errno.EIO
        with pytest.raises(pyfuse3.FUSEError) as e:
            await fails(OSError(errno.ENOSPC, "full"), steps)
        assert e.value.errno == errno.ENOSPC
        with pytest.raises(pyfuse3.FUSEError) as e:
            await fails(pyfuse3.FUSEError(errno.EXDEV), steps)
        assert e.value.errno == errno.EXDEV
    with trio.move_on_after(0.01) as scope:
        await forever()
    assert scope.cancelled_caught
    done: list[str] = []
    with trio.move_on_after(0.01):
        await cleans_up(done)
    assert done == ["finally"]
