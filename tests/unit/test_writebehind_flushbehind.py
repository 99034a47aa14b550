"""performance/write-behind with flush-behind: close returns before queued writes
land, and the layer below still sees write, then flush, then release."""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from test_writebehind import FakeFile, G
from test_writebehind_graph import volfile, write_behinds

from pyglfs.client.graph import build_graph
from pyglfs.client.writebehind import WriteBehind


class Recorder(FakeFile):
    """FakeFile that logs the order in which write, flush and release reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.flush_error: OSError | None = None

    async def write(self, gfid: bytes, offset: int, data: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Any:
        try:
            return await super().write(gfid, offset, data, xattrop)
        finally:
            self.calls.append(f"write@{offset}")

    async def flush(self, gfid: bytes) -> None:
        await super().flush(gfid)
        self.calls.append("flush")
        if self.flush_error is not None:
            raise self.flush_error

    async def release(self, gfid: bytes) -> None:
        self.calls.append("release")


@pytest.fixture
async def fb() -> AsyncIterator[tuple[WriteBehind, Recorder]]:
    fake = Recorder()
    layer = WriteBehind("wb", fake, window=64 * 1024, flush_behind=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(layer.serve_writes)
        yield layer, fake
        nursery.cancel_scope.cancel()


async def test_close_and_release_return_before_the_bricks(fb: Any) -> None:
    """Release-behind: the layer below gets the release after the writes and
    the flush, from the task of the last write."""
    layer, fake = fb
    with trio.fail_after(5):
        await layer.write(G, 0, b"hello")
        await layer.write(G, 4096, b"world")
        await layer.flush(G)  # returns although the bricks hold both writes back
        await layer.release(G)  # and so does release
        await trio.testing.wait_all_tasks_blocked()
        assert fake.calls == [] and fake.flushed == 0 and layer.opened == {}
        fake.gate.set()
        await layer.settle()
    assert sorted(fake.calls[:2]) == ["write@0", "write@4096"]
    assert fake.calls[2:] == ["flush", "release"]
    assert bytes(fake.data[G][:5]) == b"hello" and layer.inodes == {}


async def test_a_failure_already_seen_is_reported_by_close(fb: Any) -> None:
    layer, fake = fb
    fake.fail = OSError(errno.ENOSPC, "full")
    fake.gate.set()
    with trio.fail_after(5):
        await layer.write(G, 0, b"x")
        await layer.settle()
        with pytest.raises(OSError) as e:
            await layer.flush(G)
        assert e.value.errno == errno.ENOSPC
        await layer.flush(G)  # reported once; nothing queued: flushed at once
        assert fake.flushed == 1


async def test_a_failure_after_close_is_logged_as_an_error(
        fb: Any, caplog: pytest.LogCaptureFixture) -> None:
    layer, fake = fb
    fake.fail = OSError(errno.EIO, "bad disk")
    with trio.fail_after(5):
        await layer.write(G, 0, b"x")
        await layer.flush(G)
        fake.gate.set()
        with caplog.at_level(logging.ERROR, logger="pyglfs.client.writebehind"):
            await layer.release(G)
            await layer.settle()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("never reported" in r.getMessage() and "bad disk" in r.getMessage()
               for r in errors)
    assert fake.calls == ["write@0", "flush", "release"] and layer.inodes == {}


async def test_a_failed_flush_after_close_is_logged(
        fb: Any, caplog: pytest.LogCaptureFixture) -> None:
    layer, fake = fb
    fake.flush_error = OSError(errno.ENOTCONN, "gone")
    with trio.fail_after(5):
        await layer.write(G, 0, b"x")
        await layer.flush(G)
        fake.gate.set()
        with caplog.at_level(logging.ERROR, logger="pyglfs.client.writebehind"):
            await layer.settle()
    assert any("after close failed" in r.getMessage() for r in caplog.records
               if r.levelno == logging.ERROR)


async def test_fsync_still_waits(fb: Any) -> None:
    layer, fake = fb
    with trio.fail_after(5):
        await layer.write(G, 0, b"abc")
        done: list[bool] = []

        async def fsync() -> None:
            await layer.fsync(G)
            done.append(True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fsync)
            await trio.testing.wait_all_tasks_blocked()
            assert done == []
            fake.gate.set()
    assert fake.data[G] == b"abc"


async def test_closes_while_writes_keep_coming_flush_once_after_the_last(fb: Any) -> None:
    layer, fake = fb
    big = 65 * 1024  # over BATCH_WRITE_MAX: sent at once, so the second lands first
    layer.window = layer.total = 4 * big
    fake.delays = {0: 0.02}
    with trio.fail_after(5):
        await layer.write(G, 0, b"a" * big)
        await layer.flush(G)
        await layer.write(G, 2 * big, b"b" * big)
        await layer.flush(G)
        fake.gate.set()
        await layer.release(G)
        await layer.settle()
    assert fake.calls == [f"write@{2 * big}", "write@0", "flush", "release"]


async def test_small_writes_and_closes_flush_once_after_the_last_batch(fb: Any) -> None:
    layer, fake = fb
    fake.delays = {0: 0.02}
    with trio.fail_after(5):
        await layer.write(G, 0, b"a")
        await layer.flush(G)
        await layer.write(G, 10, b"b")
        await layer.write(G, 20, b"c")
        await layer.flush(G)
        fake.gate.set()
        await layer.release(G)
        await layer.settle()
    assert fake.calls == ["write@0", "write@10", "write@20", "flush", "release"]


def test_the_volfile_default_is_flush_behind() -> None:
    (on,) = write_behinds(build_graph(volfile(""), client_id="c", volume="v"))
    (off,) = write_behinds(build_graph(volfile(" option flush-behind off\n"),
                                       client_id="c", volume="v"))
    assert on.flush_behind and not off.flush_behind


async def test_without_flush_behind_release_waits_for_the_writes() -> None:
    fake = Recorder()
    layer = WriteBehind("wb", fake, window=64 * 1024)
    async with trio.open_nursery() as nursery:
        await nursery.start(layer.serve_writes)
        with trio.fail_after(5):
            await layer.write(G, 0, b"x")
            released: list[bool] = []

            async def release() -> None:
                await layer.release(G)
                released.append(True)

            async with trio.open_nursery() as inner:
                inner.start_soon(release)
                await trio.testing.wait_all_tasks_blocked()
                assert released == [] and fake.calls == []
                fake.gate.set()
            assert released == [True] and fake.calls == ["write@0", "release"]
        nursery.cancel_scope.cancel()


async def test_release_behind_counts_every_close(fb: Any) -> None:
    """Two opens closed while a write is queued: two releases, after the write."""
    layer, fake = fb
    with trio.fail_after(5):
        await layer.write(G, 0, b"x")
        await layer.release(G)
        await layer.release(G)
        await trio.testing.wait_all_tasks_blocked()
        assert fake.calls == []
        fake.gate.set()
        await layer.settle()
    assert fake.calls == ["write@0", "release", "release"] and layer.inodes == {}
