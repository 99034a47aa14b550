"""Setattr-behind in performance/write-behind, over a fake layer that logs the calls
it gets in order and keeps one iatt per gfid.

Writes wait on a gate the test opens, so a test can see what is held back
behind a queued write.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from pyglfs.client.layer import DirEntry, EntryReply, Layer, Lookup
from pyglfs.client.setattrbehind import SETATTR_DELAY
from pyglfs.client.writebehind import WriteBehind
from pyglfs.rpc.brickops import Iatt

P = b"p" * 16
G = b"g" * 16
WRITE_MTIME = 777


class Recorder(Layer):
    """One iatt per gfid; ``calls`` lists (op, details) as they reach it."""

    def __init__(self) -> None:
        super().__init__("fake")
        self.iatts: dict[bytes, Iatt] = {}
        self.calls: list[tuple[str, Any]] = []
        self.gate = trio.Event()
        self.gate.set()
        self.fail_setattr: OSError | None = None
        self.writable_error: OSError | None = None
        self.leased: set[bytes] = set()

    @property
    def is_up(self) -> bool:
        return True

    def check_writable(self) -> None:
        if self.writable_error is not None:
            raise self.writable_error

    def lease_held(self, pgfid: bytes) -> bool:
        return pgfid in self.leased

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> EntryReply:
        self.calls.append(("create", name))
        self.iatts[gfid] = Iatt(gfid, 5, mode, 1, uid, gid, 0, 0, 0, 100, 100, 100)
        return EntryReply(self.iatts[gfid], None)

    async def open(self, gfid: bytes, flags: int) -> Iatt:
        self.calls.append(("open", flags))
        return self.iatts[gfid]

    async def write(self, gfid: bytes, offset: int, data: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt:
        await self.gate.wait()
        self.calls.append(("write", (offset, len(data))))
        i = self.iatts[gfid]
        size = max(i.size, offset + len(data))
        self.iatts[gfid] = i._replace(size=size, mtime_ns=WRITE_MTIME, ctime_ns=WRITE_MTIME)
        return self.iatts[gfid]

    async def setattr(self, gfid: bytes, **kw: Any) -> Iatt:
        change = {k: v for k, v in kw.items() if v not in (None, False)}
        self.calls.append(("setattr", change))
        await trio.lowlevel.checkpoint()
        if self.fail_setattr is not None:
            raise self.fail_setattr
        i = self.iatts[gfid]
        if "mode" in change:
            i = i._replace(mode=stat.S_IFMT(i.mode) | change["mode"])
        for k in ("uid", "gid", "size", "atime_ns", "mtime_ns"):
            if k in change:
                i = i._replace(**{k: change[k]})
        self.iatts[gfid] = i._replace(ctime_ns=i.ctime_ns + 1)
        return self.iatts[gfid]

    async def stat(self, gfid: bytes) -> Iatt:
        self.calls.append(("stat", None))
        return self.iatts[gfid]

    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        return Lookup(self.iatts[G], {})

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        return [DirEntry(b"f", 1, 8, self.iatts[G])], True

    async def flush(self, gfid: bytes) -> None:
        self.calls.append(("flush", None))

    async def fsync(self, gfid: bytes, datasync: bool = False) -> None:
        self.calls.append(("fsync", None))

    async def release(self, gfid: bytes) -> None:
        self.calls.append(("release", None))


async def _layer(nursery: trio.Nursery, **kw: Any) -> tuple[WriteBehind, Recorder]:
    fake = Recorder()
    layer = WriteBehind("wb", fake, **kw)
    await nursery.start(layer.serve_writes)
    return layer, fake


@pytest.fixture
async def wb() -> AsyncIterator[tuple[WriteBehind, Recorder]]:
    async with trio.open_nursery() as nursery:
        yield await _layer(nursery)
        nursery.cancel_scope.cancel()


async def _create(layer: WriteBehind, mode: int = 0o600) -> Iatt:
    r = await layer.create(P, b"a", G, stat.S_IFREG | mode, 0, 0)
    return r.iatt


def _setattrs(fake: Recorder) -> list[dict[str, Any]]:
    return [d for op, d in fake.calls if op == "setattr"]


async def test_tars_three_setattrs_become_one_after_the_write(
        wb: Any, autojump_clock: trio.testing.MockClock) -> None:
    layer, fake = wb
    t0 = trio.current_time()
    with trio.fail_after(5):
        await _create(layer)
        fake.gate = trio.Event()
        await layer.write(G, 0, b"x" * 4096)
        a = await layer.setattr(G, mtime_ns=5_000)
        assert (a.mtime_ns, a.size, a.mode) == (5_000, 4096, stat.S_IFREG | 0o600)
        b = await layer.setattr(G, uid=1000, gid=100)
        assert (b.uid, b.gid, b.mtime_ns) == (1000, 100, 5_000)
        c = await layer.setattr(G, mode=0o644)
        assert c.mode == stat.S_IFREG | 0o644
        assert (c.uid, c.gid, c.mtime_ns, c.size) == (1000, 100, 5_000, 4096)
        assert c.ctime_ns >= a.ctime_ns > 100
        assert _setattrs(fake) == []
        fake.gate.set()
        await layer.flush(G)
        assert fake.ops() == ["create", "write", "setattr", "flush"]
        assert _setattrs(fake) == [{"mode": 0o644, "uid": 1000, "gid": 100, "mtime_ns": 5_000}]
        await layer.release(G)
        assert fake.ops()[-1] == "release"
        final = fake.iatts[G]
        assert (final.mode, final.uid, final.gid, final.mtime_ns) == (
            stat.S_IFREG | 0o644, 1000, 100, 5_000)
        assert layer.inodes == {} and layer.opened == {}
    assert trio.current_time() - t0 < SETATTR_DELAY  # nothing waited for the delay


async def test_flush_behind_close_sends_setattr_and_release_goes_after_it() -> None:
    async with trio.open_nursery() as nursery:
        layer, fake = await _layer(nursery, flush_behind=True)
        fake.leased.add(P)
        with trio.fail_after(5):
            await _create(layer)
            fake.gate = trio.Event()
            await layer.write(G, 0, b"data")
            await layer.setattr(G, mtime_ns=9)
            await layer.setattr(G, mode=0o640)
            await layer.flush(G)  # returns with the write and setattr still queued
            assert fake.ops() == ["create"]
            await layer.release(G)  # release-behind: returns at once too
            await trio.testing.wait_all_tasks_blocked()
            assert "release" not in fake.ops()
            fake.gate.set()
            await layer.settle()
            assert fake.ops() == ["create", "write", "setattr", "flush", "release"]
            assert _setattrs(fake) == [{"mode": 0o640, "mtime_ns": 9}]
        nursery.cancel_scope.cancel()


async def test_a_new_files_close_outside_a_lease_waits_for_its_writes() -> None:
    """Another client has never seen a file created here, so its lookup finds
    what is on the bricks: without the directory's lease (whose recall would
    send the writes first) the close must not return before them."""
    async with trio.open_nursery() as nursery:
        layer, fake = await _layer(nursery, flush_behind=True)
        with trio.fail_after(5):
            await _create(layer)
            fake.gate = trio.Event()
            await layer.write(G, 0, b"data")
            closed = trio.Event()

            async def close() -> None:
                await layer.flush(G)
                closed.set()

            nursery.start_soon(close)
            await trio.testing.wait_all_tasks_blocked()
            assert not closed.is_set() and fake.ops() == ["create"]
            fake.gate.set()
            await closed.wait()
            assert fake.ops() == ["create", "write", "flush"]
            await layer.release(G)
            assert fake.ops()[-1] == "release"
        nursery.cancel_scope.cancel()


async def test_a_write_after_a_queued_utimens_goes_after_it(
        wb: Any, autojump_clock: trio.testing.MockClock) -> None:
    layer, fake = wb
    t0 = trio.current_time()
    with trio.fail_after(5):
        await _create(layer)
        await layer.setattr(G, mtime_ns=1234)
        r = await layer.write(G, 0, b"abc")
        assert r.mtime_ns == 1234 and r.size == 3 and r.mode == stat.S_IFREG | 0o600
        await layer.fsync(G)
        assert fake.ops() == ["create", "setattr", "write", "fsync"]
        # and a setattr made after that write is not merged into the earlier one
        fake.gate = trio.Event()
        await layer.write(G, 3, b"d")
        await layer.setattr(G, mtime_ns=42)
        fake.gate.set()
        await layer.flush(G)
        assert fake.ops()[4:] == ["write", "setattr", "flush"]
        assert _setattrs(fake) == [{"mtime_ns": 1234}, {"mtime_ns": 42}]
        assert fake.iatts[G].mtime_ns == 42
    assert trio.current_time() - t0 < SETATTR_DELAY


@pytest.mark.parametrize("change", [
    {"size": 0},
    {"atime_now": True, "mtime_now": True},
    {"mtime_ns": 5, "xattrop": {}},
    {"mode": 0o4755},
    {"mode": 0o2755},
])
async def test_what_cannot_be_deferred_goes_through_at_once(wb: Any,
                                                            change: dict[str, Any]) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await _create(layer)
        await layer.setattr(G, uid=7)  # queued
        await layer.setattr(G, **change)
        assert fake.ops() == ["create", "setattr", "setattr"]
        assert _setattrs(fake)[0] == {"uid": 7}


async def test_owner_of_a_setid_file_goes_through(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await _create(layer, mode=0o4755)
        r = await layer.setattr(G, uid=5, gid=5)
        assert fake.ops() == ["create", "setattr"]
        assert r == fake.iatts[G]


async def test_unknown_or_unwritable_inodes_go_through(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        fake.iatts[G] = Iatt(G, 5, stat.S_IFREG | 0o600, 1, 0, 0, 0, 0, 0, 1, 1, 1)
        await layer.setattr(G, mode=0o644)  # not open here
        assert fake.ops() == ["setattr"]
        await layer.open(G, 0)
        fake.writable_error = OSError(errno.EROFS, "no quorum")
        await layer.setattr(G, mode=0o640)
        assert fake.ops() == ["setattr", "open", "setattr"]
        fake.writable_error = None
        await layer.setattr(G, mode=0o600)
        assert fake.ops() == ["setattr", "open", "setattr"]
        await layer.release(G)
        assert fake.ops()[3:] == ["setattr", "release"]
        await layer.setattr(G, mode=0o644)  # closed again: through
        assert fake.ops()[5:] == ["setattr"]


async def test_without_serving_setattr_goes_through() -> None:
    fake = Recorder()
    layer = WriteBehind("wb", fake)
    with trio.fail_after(5):
        await _create(layer)
        await layer.setattr(G, mode=0o644)
        assert fake.ops() == ["create", "setattr"]


async def test_two_opens_keep_the_attributes_until_the_last_release(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await _create(layer)
        await layer.open(G, 0)
        await layer.release(G)
        await layer.setattr(G, mode=0o640)
        assert "setattr" not in fake.ops()
        await layer.release(G)
        assert fake.ops()[-2:] == ["setattr", "release"]
        assert layer.opened == {}


async def test_a_failed_queued_setattr_is_reported_by_the_next_flush(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await _create(layer)
        fake.fail_setattr = OSError(errno.EPERM, "refused")
        await layer.setattr(G, uid=3)
        with pytest.raises(OSError) as e:
            await layer.flush(G)
        assert e.value.errno == errno.EPERM
        await layer.flush(G)  # reported once
        await layer.release(G)


async def test_a_failed_queued_setattr_fails_the_next_write(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await _create(layer)
        fake.fail_setattr = OSError(errno.EIO, "disk")
        await layer.setattr(G, uid=3)
        await layer.settle()
        with pytest.raises(OSError) as e:
            await layer.write(G, 0, b"x")
        assert e.value.errno == errno.EIO
        await layer.release(G)


async def test_an_unreported_setattr_failure_is_logged_at_release(
        caplog: pytest.LogCaptureFixture) -> None:
    async with trio.open_nursery() as nursery:
        layer, fake = await _layer(nursery, flush_behind=True)
        fake.leased.add(P)
        with trio.fail_after(5):
            await _create(layer)
            fake.fail_setattr = OSError(errno.EIO, "disk")
            await layer.setattr(G, mode=0o640)
            await layer.flush(G)  # behind: nothing failed yet
            with caplog.at_level(logging.ERROR, logger="pyglfs.client.writebehind"):
                await layer.release(G)
                await layer.settle()
            assert fake.ops() == ["create", "setattr", "flush", "release"]
            assert any("never reported" in r.getMessage() for r in caplog.records)
            assert layer.inodes == {}
        nursery.cancel_scope.cancel()


async def test_settle_sends_queued_setattrs(
        wb: Any, autojump_clock: trio.testing.MockClock) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await _create(layer)
        await layer.setattr(G, mtime_ns=11)
        t0 = trio.current_time()
        await layer.settle()
        assert trio.current_time() - t0 < SETATTR_DELAY
        assert _setattrs(fake) == [{"mtime_ns": 11}]


async def test_a_queued_setattr_goes_out_by_itself_after_the_delay(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await _create(layer)
        await layer.setattr(G, gid=9)
        await trio.testing.wait_all_tasks_blocked()
        assert _setattrs(fake) == []
        for _ in range(500):
            if fake.iatts[G].gid == 9:
                break
            await trio.sleep(0.01)
        assert _setattrs(fake) == [{"gid": 9}]
        assert fake.iatts[G].gid == 9


async def test_lookups_and_stat_show_queued_attributes(
        wb: Any, autojump_clock: trio.testing.MockClock) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await _create(layer)
        fake.gate = trio.Event()
        await layer.write(G, 0, b"12345")
        await layer.setattr(G, mode=0o604, uid=12)
        r = await layer.lookup(P, b"a")
        assert (r.iatt.mode, r.iatt.uid, r.iatt.size) == (stat.S_IFREG | 0o604, 12, 5)
        entries, _ = await layer.readdir(P, 0, 10, plus=True)
        assert entries[0].iatt is not None and entries[0].iatt.uid == 12
        # the kernel's GETATTR before a chown: answered here, nothing sent yet
        s = await layer.stat(G)
        assert (s.mode, s.uid, s.size) == (stat.S_IFREG | 0o604, 12, 5)
        assert fake.ops() == ["create"]
        await layer.setattr(G, gid=34)
        fake.gate.set()
        await layer.flush(G)
        assert _setattrs(fake) == [{"mode": 0o604, "uid": 12, "gid": 34}]
        # nothing queued: stat asks below
        s = await layer.stat(G)
        assert fake.ops()[-1] == "stat"
        assert (s.mode, s.uid, s.gid, s.size) == (stat.S_IFREG | 0o604, 12, 34, 5)


async def test_stat_of_a_file_open_for_appending_asks_below(
        wb: Any, autojump_clock: trio.testing.MockClock) -> None:
    """An O_APPEND write's offset is the size stat gives: it must be the bricks'
    (another mount may have appended), queued setattr or not."""
    layer, fake = wb
    with trio.fail_after(5):
        await _create(layer)
        await layer.open(G, os.O_WRONLY | os.O_APPEND)
        await layer.setattr(G, mode=0o640)
        fake.iatts[G] = fake.iatts[G]._replace(size=99)  # appended elsewhere
        s = await layer.stat(G)
        assert fake.ops() == ["create", "open", "setattr", "stat"]
        assert (s.size, s.mode) == (99, stat.S_IFREG | 0o640)


async def test_a_setattr_cancelled_by_a_stopped_layer_is_an_eio(
        caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            layer, fake = await _layer(nursery)
            await _create(layer)
            with caplog.at_level(logging.ERROR, logger="pyglfs.client.writebehind"):
                await layer.setattr(G, mode=0o640)
                nursery.cancel_scope.cancel()
        assert _setattrs(fake) == []
        assert any("cancelled" in r.getMessage() for r in caplog.records)
        with pytest.raises(OSError) as e:
            await layer.flush(G)
        assert e.value.errno == errno.EIO


async def test_a_group_member_holding_writes_of_the_inode_makes_setattr_go_through() -> None:
    group: list[WriteBehind] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            old, old_fake = await _layer(nursery, group=group)
            new, new_fake = await _layer(nursery, group=group)
            await _create(old)
            await _create(new)
            old_fake.gate = trio.Event()
            await old.write(G, 0, b"queued in the old graph")
            async with trio.open_nursery() as inner:
                inner.start_soon(lambda: new.setattr(G, mode=0o640))
                await trio.testing.wait_all_tasks_blocked()
                assert _setattrs(new_fake) == []  # waits for the old graph's write
                old_fake.gate.set()
            assert _setattrs(new_fake) == [{"mode": 0o640}]
            nursery.cancel_scope.cancel()
