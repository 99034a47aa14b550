"""performance/write-behind over a fake layer that holds a file's bytes in memory.

The fake's writes wait on a gate the test opens, so each test can see what
runs before the bricks answer and what waits for them.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from pyglfs.client.layer import DirEntry, Layer, Lookup
from pyglfs.client.writebehind import WriteBehind
from pyglfs.rpc.brickops import Iatt

G = b"g" * 16


def _iatt(gfid: bytes, size: int) -> Iatt:
    return Iatt(gfid, 1, stat.S_IFREG | 0o644, 1, 0, 0, 0, size, 0, 0, 0, 0)


class FakeFile(Layer):
    """One file per gfid; ``gate`` holds writes back until set; ``fail`` makes them fail."""

    def __init__(self) -> None:
        super().__init__("fake")
        self.data: dict[bytes, bytearray] = {}
        self.gate = trio.Event()
        self.delays: dict[int, float] = {}
        self.fail: OSError | None = None
        self.applied: list[tuple[int, bytes]] = []
        self.writable_error: OSError | None = None
        self.flushed = 0

    @property
    def is_up(self) -> bool:
        return True

    def check_writable(self) -> None:
        if self.writable_error is not None:
            raise self.writable_error

    async def write(self, gfid: bytes, offset: int, data: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt:
        await self.gate.wait()
        await trio.sleep(self.delays.get(offset, 0.0))
        if self.fail is not None:
            raise self.fail
        buf = self.data.setdefault(gfid, bytearray())
        if len(buf) < offset + len(data):
            buf.extend(b"\0" * (offset + len(data) - len(buf)))
        buf[offset:offset + len(data)] = data
        self.applied.append((offset, data))
        return _iatt(gfid, len(buf))

    async def read(self, gfid: bytes, offset: int, size: int) -> bytes:
        return bytes(self.data.get(gfid, b"")[offset:offset + size])

    async def stat(self, gfid: bytes) -> Iatt:
        return _iatt(gfid, len(self.data.get(gfid, b"")))

    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        return Lookup(await self.stat(G), {})

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        return [DirEntry(b"f", 1, 8, await self.stat(G))], True

    async def setattr(self, gfid: bytes, **kw: Any) -> Iatt:
        size = kw.get("size")
        if size is not None:
            buf = self.data.setdefault(gfid, bytearray())
            del buf[size:]
        return await self.stat(gfid)

    async def flush(self, gfid: bytes) -> None:
        self.flushed += 1

    async def fsync(self, gfid: bytes, datasync: bool = False) -> None:
        pass

    async def release(self, gfid: bytes) -> None:
        pass


@pytest.fixture
async def wb() -> AsyncIterator[tuple[WriteBehind, FakeFile]]:
    fake = FakeFile()
    layer = WriteBehind("wb", fake, window=64 * 1024)
    async with trio.open_nursery() as nursery:
        await nursery.start(layer.serve_writes)
        yield layer, fake
        nursery.cancel_scope.cancel()


async def test_write_returns_before_the_bricks_and_flush_waits(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await layer.write(G, 0, b"hello")
        assert fake.applied == []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(layer.flush, G)
            await trio.testing.wait_all_tasks_blocked()
            assert fake.flushed == 0
            fake.gate.set()
        assert fake.flushed == 1
        assert fake.data[G] == b"hello"
        assert layer.inodes == {}


async def test_overlapping_writes_land_in_order(wb: Any) -> None:
    layer, fake = wb
    fake.delays = {0: 0.05}  # the first write is the slow one
    with trio.fail_after(5):
        await layer.write(G, 0, b"aaaa")
        await layer.write(G, 2, b"bb")
        await layer.write(G, 100, b"c")  # small: waits to share the next batch
        fake.gate.set()
        await layer.fsync(G)
    assert fake.data[G][:4] == b"aabb"
    assert [o for o, _ in fake.applied] == [0, 2, 100]


async def test_disjoint_big_writes_do_not_wait(wb: Any) -> None:
    layer, fake = wb
    big = 65 * 1024  # over BATCH_WRITE_MAX: each write is sent at once
    layer.window = layer.total = 4 * big
    fake.delays = {0: 0.05}
    with trio.fail_after(5):
        await layer.write(G, 0, b"a" * big)
        await layer.write(G, 2, b"b" * big)
        await layer.write(G, 10 * big, b"c" * big)  # disjoint: need not wait
        fake.gate.set()
        await layer.fsync(G)
    assert fake.data[G][:3] == b"aab"
    assert [o for o, _ in fake.applied] == [10 * big, 0, 2]


async def test_failed_write_is_reported_once_by_flush(wb: Any) -> None:
    layer, fake = wb
    fake.fail = OSError(errno.ENOSPC, "full")
    fake.gate.set()
    with trio.fail_after(5):
        await layer.write(G, 0, b"x")
        with pytest.raises(OSError) as e:
            await layer.flush(G)
        assert e.value.errno == errno.ENOSPC
        await layer.flush(G)  # reported once
        assert fake.flushed == 1


async def test_failed_write_is_reported_by_the_next_write(wb: Any) -> None:
    layer, fake = wb
    fake.fail = OSError(errno.EIO, "bad disk")
    fake.gate.set()
    with trio.fail_after(5):
        await layer.write(G, 0, b"x")
        await layer.settle()
        with pytest.raises(OSError) as e:
            await layer.write(G, 1, b"y")
        assert e.value.errno == errno.EIO


async def test_reads_and_stat_see_queued_writes(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await layer.write(G, 0, b"abcdef")
        async with trio.open_nursery() as nursery:
            got: list[Any] = []

            async def read() -> None:
                got.append(await layer.read(G, 2, 2))
                got.append((await layer.stat(G)).size)
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            fake.gate.set()
        assert got == [b"cd", 6]


async def test_lookup_and_readdirplus_sizes_cover_queued_writes(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await layer.write(G, 4096, b"z" * 10)
        assert (await layer.lookup(b"p" * 16, b"f")).iatt.size == 4106
        entries, _ = await layer.readdir(b"p" * 16, 0, 10, plus=True)
        assert entries[0].iatt is not None and entries[0].iatt.size == 4106
        fake.gate.set()
        await layer.settle()
        assert (await layer.lookup(b"p" * 16, b"f")).iatt.size == 4106


async def test_truncate_after_queued_writes(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await layer.write(G, 0, b"0123456789")
        fake.gate.set()
        await layer.setattr(G, size=3)
        assert fake.data[G] == b"012"


async def test_window_bounds_queued_bytes(wb: Any) -> None:
    layer, fake = wb
    block = b"w" * (48 * 1024)
    with trio.fail_after(5):
        await layer.write(G, 0, block)  # always admitted
        async with trio.open_nursery() as nursery:
            done: list[int] = []

            async def second() -> None:
                await layer.write(G, len(block), block)
                done.append(1)
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            assert done == [] and layer.nbytes == len(block)
            fake.gate.set()
        await layer.settle()
    assert fake.data[G] == block * 2


async def test_unwritable_below_fails_at_once(wb: Any) -> None:
    layer, fake = wb
    fake.writable_error = OSError(errno.EROFS, "no quorum")
    with pytest.raises(OSError) as e:
        await layer.write(G, 0, b"x")
    assert e.value.errno == errno.EROFS
    assert layer.inodes == {}


async def test_without_serve_writes_are_synchronous() -> None:
    fake = FakeFile()
    fake.gate.set()
    layer = WriteBehind("wb", fake)
    iatt = await layer.write(G, 0, b"abc")
    assert iatt.size == 3 and fake.data[G] == b"abc"


async def test_write_past_the_largest_offset_is_einval(wb: Any) -> None:
    layer, _ = wb
    with pytest.raises(OSError) as e:
        await layer.write(G, (1 << 63) - 2, b"xyz")
    assert e.value.errno == errno.EINVAL


def test_mount_options_for_the_write_path() -> None:
    from pyglfs.client.options import MountOptionError, parse_mount_options

    o = parse_mount_options("")
    assert o.write_behind and not o.kernel_writeback_cache
    o = parse_mount_options("kernel-writeback-cache=yes,write-behind=off")
    assert o.kernel_writeback_cache and not o.write_behind
    with pytest.raises(MountOptionError, match="kernel-writeback-cache"):
        parse_mount_options("kernel-writeback-cache=maybe")


async def test_release_drops_an_unreported_error(wb: Any) -> None:
    layer, fake = wb
    fake.fail = OSError(errno.EIO, "bad disk")
    fake.gate.set()
    with trio.fail_after(5):
        await layer.write(G, 0, b"x")
        await layer.release(G)
    assert layer.inodes == {}


async def test_served_as_a_graph_layer() -> None:
    """``serve`` runs the child and the queue, as a volfile graph would."""
    fake = FakeFile()
    layer = WriteBehind("wb", fake)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(layer.serve)
            await layer.write(G, 0, b"graph")
            assert fake.applied == []
            fake.gate.set()
            await layer.flush(G)
            assert fake.data[G] == b"graph"
            nursery.cancel_scope.cancel()
