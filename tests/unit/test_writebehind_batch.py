"""Write-behind sends small queued writes in batches (``writev``): over a fake layer
for order and bounds, and over replicate with real in-process bricks for what
lands where, blame and heal index when a brick fails part-way through a batch."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from helpers.replica import index_dir, open_replica
from test_replicate_compound import count_requests
from test_writebehind import FakeFile, G

from pyglfs.client import writebatch
from pyglfs.client.layer import EntryReply, Layer
from pyglfs.client.replicate.changelog import decode
from pyglfs.client.writebatch import LINGER_WRITES
from pyglfs.client.writebehind import WriteBehind
from pyglfs.client.writequeue import BATCH_BYTES, BATCH_OPS
from pyglfs.rpc.brickops import ROOT_GFID, Iatt, afr_xattr

V = "rvol"
K4 = 4096


class BatchFake(FakeFile):
    """FakeFile that records the size of every batch it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[int, int]]] = []
        self.carried: list[dict[str, int]] = []

    async def writev(self, gfid: bytes, writes: list[tuple[int, bytes]],
                     xattrop: dict[str, bytes] | None = None,
                     attrs: dict[str, int] | None = None) -> Iatt:
        self.batches.append([(off, len(data)) for off, data in writes])
        if attrs is not None:
            self.carried.append(attrs)
        return await super().writev(gfid, writes, xattrop, attrs)


@pytest.fixture
async def wb() -> AsyncIterator[tuple[WriteBehind, BatchFake]]:
    fake = BatchFake()
    layer = WriteBehind("wb", fake, window=4 << 20, total=64 << 20)
    async with trio.open_nursery() as nursery:
        await nursery.start(layer.serve_writes)
        yield layer, fake
        nursery.cancel_scope.cancel()


async def test_writes_made_while_one_is_in_flight_go_as_one_batch(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await layer.write(G, 0, b"a" * K4)
        await trio.testing.wait_all_tasks_blocked()  # the first is at the gate
        for i in range(1, 11):
            await layer.write(G, 2 * i * K4, bytes([i]) * K4)
        fake.gate.set()
        await layer.fsync(G)
    assert fake.batches == [[(0, K4)], [(2 * i * K4, K4) for i in range(1, 11)]]
    for i in range(1, 11):
        assert fake.data[G][2 * i * K4:(2 * i + 1) * K4] == bytes([i]) * K4
    assert layer.inodes == {} and layer.nbytes == 0


async def _landed(fake: BatchFake, n: int) -> None:
    for _ in range(5000):
        if len(fake.applied) >= n:
            return
        await trio.sleep(0.001)
    raise AssertionError(f"{n} writes did not land")


async def test_few_writes_after_a_batch_linger_for_more(
        wb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    layer, fake = wb
    monkeypatch.setattr(writebatch, "LINGER", 30.0)
    with trio.fail_after(5):
        await layer.write(G, 0, b"a")
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1, 4):
            await layer.write(G, 10 * i, b"b")
        fake.gate.set()
        await _landed(fake, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert len(fake.applied) == 1  # the three wait for more
        for i in range(4, LINGER_WRITES + 1):
            await layer.write(G, 10 * i, b"c")
        await _landed(fake, LINGER_WRITES + 1)
        assert [len(b) for b in fake.batches] == [1, LINGER_WRITES]
        await layer.write(G, 1000, b"d")
        await layer.write(G, 1010, b"d")
        await layer.fsync(G)  # ends a linger at once
    assert [len(b) for b in fake.batches] == [1, LINGER_WRITES, 2]


async def test_a_lingering_sender_finds_its_writes_taken_by_the_other(
        wb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    layer, fake = wb
    monkeypatch.setattr(writebatch, "LINGER", 0.2)
    with trio.fail_after(5):
        await layer.write(G, 0, b"a")  # sender one, at the gate
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1, BATCH_OPS + 1):  # a full batch: sender two takes it
            await layer.write(G, 10 * i, b"b")
        await trio.testing.wait_all_tasks_blocked()
        for i in range(3):
            await layer.write(G, 10_000 + 10 * i, b"c")
        ino = layer.inodes[G]
        assert ino.senders == 2
        fake.gate.set()
        # Sender one lands first and lingers; sender two lands and takes the three.
        await _landed(fake, BATCH_OPS + 4)
        for _ in range(5000):
            if not ino.senders:
                break
            await trio.sleep(0.001)
        assert not ino.senders
    assert [len(b) for b in fake.batches] == [1, BATCH_OPS, 3]
    assert layer.inodes == {}


async def test_batches_are_bounded_in_writes_and_bytes(wb: Any) -> None:
    layer, fake = wb
    fake.gate.set()
    with trio.fail_after(5):
        for i in range(BATCH_OPS + 36):
            await layer.write(G, 2 * i * K4, b"x" * K4)
        await layer.fsync(G)
        assert sorted(len(b) for b in fake.batches) == [36, BATCH_OPS]
        fake.batches.clear()
        big = 64 << 10  # the biggest write that is batched
        for i in range(20):
            await layer.write(G, 2 * i * big, b"y" * big)
        await layer.fsync(G)
    sizes = [sum(n for _, n in b) for b in fake.batches]
    assert max(sizes) <= BATCH_BYTES and sum(sizes) == 20 * big and len(sizes) >= 2


async def test_writes_end_to_start_become_one(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await layer.write(G, 0, b"a" * K4)
        await trio.testing.wait_all_tasks_blocked()
        await layer.write(G, K4, b"b" * K4)
        await layer.write(G, 2 * K4, b"c" * 10)
        await layer.write(G, 3 * K4, b"d")  # a gap before it
        fake.gate.set()
        await layer.fsync(G)
    assert fake.batches[1] == [(K4, K4 + 10), (3 * K4, 1)]
    assert bytes(fake.data[G][:2 * K4 + 10]) == b"a" * K4 + b"b" * K4 + b"c" * 10


async def test_overlapping_writes_keep_their_order_in_and_across_batches(wb: Any) -> None:
    layer, fake = wb
    with trio.fail_after(5):
        await layer.write(G, 0, b"aaaa")
        await trio.testing.wait_all_tasks_blocked()
        await layer.write(G, 2, b"bb")      # overlaps the write in flight
        await layer.write(G, 1, b"c")       # overlaps both
        await layer.write(G, 100, b"z")     # disjoint
        await layer.write(G, 3, b"dd")      # overlaps "bb"
        fake.gate.set()
        await layer.fsync(G)
    assert [o for o, _ in fake.applied] == [0, 2, 1, 100, 3]
    assert bytes(fake.data[G][:5]) == b"acbdd"


async def test_a_small_write_waiting_on_a_big_one_holds_back_only_what_overlaps(
        wb: Any) -> None:
    layer, fake = wb
    big = 65 << 10  # sent alone, at once
    fake.delays = {0: 0.05}
    fake.gate.set()
    with trio.fail_after(5):
        await layer.write(G, 0, b"X" * big)
        await layer.write(G, 10, b"y")          # must wait for the big write
        await layer.write(G, 2 * big, b"z")     # need not
        await layer.fsync(G)
    assert [o for o, _ in fake.applied] == [2 * big, 0, 10]
    assert fake.data[G][10:11] == b"y"


async def test_a_failed_batch_is_reported_once_by_fsync(wb: Any) -> None:
    layer, fake = wb
    fake.fail = OSError(errno.ENOSPC, "full")
    with trio.fail_after(5):
        await layer.write(G, 0, b"a")
        await trio.testing.wait_all_tasks_blocked()
        await layer.write(G, 10, b"b")
        await layer.write(G, 20, b"c")
        fake.gate.set()
        with pytest.raises(OSError) as e:
            await layer.fsync(G)
        assert e.value.errno == errno.ENOSPC
        await layer.fsync(G)
    assert len(fake.batches) == 2 and layer.inodes == {}


async def test_the_window_bounds_batched_writes(wb: Any) -> None:
    layer, fake = wb
    layer.window = 16 * K4
    with trio.fail_after(5):
        for i in range(16):
            await layer.write(G, i * 2 * K4, b"w" * K4)
        assert layer.nbytes == 16 * K4
        done: list[bool] = []

        async def one_more() -> None:
            await layer.write(G, 100 * K4, b"v" * K4)
            done.append(True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_more)
            await trio.testing.wait_all_tasks_blocked()
            assert done == [] and layer.nbytes == 16 * K4
            fake.gate.set()
        await layer.fsync(G)
    assert done == [True] and layer.nbytes == 0


async def test_cancel_retires_unsent_writes_with_an_error() -> None:
    fake = BatchFake()
    layer = WriteBehind("wb", fake)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(layer.serve_writes)
            await layer.write(G, 0, b"a")
            await trio.testing.wait_all_tasks_blocked()
            await layer.write(G, 10, b"b")
            nursery.cancel_scope.cancel()
    ino = layer.inodes[G]
    assert ino.queued == [] and ino.unsent == [] and layer.nbytes == 0
    assert ino.error is not None and ino.error.errno == errno.EIO


# -- over replicate and real bricks -----------------------------------------------


class PartWrites(Layer):
    """Forwards to one protocol client; with ``cut`` set, a batch lands only its
    first ``cut`` writes, then fails with ENOSPC, as a brick's disk filling
    part-way through a compound would."""

    def __init__(self, child: Layer) -> None:
        super().__init__(child.name, [child])
        self.cut: int | None = None

    async def writev(self, gfid: bytes, writes: list[tuple[int, bytes]],
                     xattrop: dict[str, bytes] | None = None,
                     attrs: dict[str, int] | None = None) -> Iatt:
        if self.cut is None:
            return await self.child.writev(gfid, writes, xattrop, attrs)
        if self.cut:
            await self.child.writev(gfid, writes[:self.cut], xattrop)
        raise OSError(errno.ENOSPC, "no space left on device")


async def _queue_random(wb: WriteBehind, f: bytes, n: int) -> bytes:
    """``n`` 4 KiB writes at shuffled block offsets (some twice), queued at once;
    the file's expected content."""
    import random
    rnd = random.Random(7)
    blocks = 3 * n // 2
    expect = bytearray(blocks * K4)
    first = b"\x01" * K4
    await wb.write(f, 0, first)
    expect[:K4] = first
    for k in range(n - 1):
        b = rnd.randrange(blocks)
        data = bytes([k % 251 + 2]) * K4
        await wb.write(f, b * K4, data)
        expect[b * K4:(b + 1) * K4] = data
    end = max(i for i in range(len(expect)) if expect[i]) + 1
    return bytes(expect[:-(-end // K4) * K4])


async def test_a_batch_is_one_request_per_brick_and_lands_on_both(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        wb = WriteBehind("wb", rep)
        await env.nursery.start(wb.serve_writes)
        f = uuid.uuid4().bytes
        await wb.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
        seen = count_requests(env, rep)
        with trio.fail_after(10):
            expect = await _queue_random(wb, f, 40)
            await wb.fsync(f)
        for calls in seen:
            writes = [c for c in calls if "write" in c]
            # one request (writes end to start joined: fewer than 40 sub-ops)
            assert len(writes) == 1 and 20 < writes[0].count("write") <= 40, calls
        await wb.release(f)
        await wb.settle()
        for b in env.bricks:
            assert (b.root / "f").read_bytes() == expect
            assert index_dir(b.root) == set()
        assert await rep.read(f, 0, len(expect)) == expect


@asynccontextmanager
async def _cuttable_file(tmp_path: Path) -> AsyncIterator[tuple[Any, Any, WriteBehind,
                                                                 list[PartWrites], bytes]]:
    """A replica-2 write-behind over bricks whose writes can be cut short, and
    a file created through it: (env, replicate, write-behind, cutters, gfid)."""
    parts: list[PartWrites] = []

    def wrap(i: int, child: Layer) -> Layer:
        p = PartWrites(child)
        parts.append(p)
        return p

    async with open_replica(tmp_path, client=False) as env:
        rep = await env.new_client(wrap=wrap, post_op_delay=30.0)
        wb = WriteBehind("wb", rep)
        await env.nursery.start(wb.serve_writes)
        f = uuid.uuid4().bytes
        await wb.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
        yield env, rep, wb, parts, f


async def test_a_brick_failing_part_way_through_a_batch_is_blamed_and_indexed(
        tmp_path: Path) -> None:
    async with _cuttable_file(tmp_path) as (env, rep, wb, parts, f):
        parts[1].cut = 3
        with trio.fail_after(10):
            expect = await _queue_random(wb, f, 20)
            await wb.fsync(f)  # brick 0 has it all: no error for the application
            await wb.release(f)
            await wb.settle()
        b0, b1 = env.bricks[0].root, env.bricks[1].root
        assert (b0 / "f").read_bytes() == expect
        assert (b1 / "f").read_bytes() != expect
        assert decode(os.getxattr(b0 / "f", afr_xattr(V, 1)))[0] >= 1
        assert index_dir(b0) == {f}
        assert rep.needs_heal(f)
        assert await rep.read(f, 0, len(expect)) == expect


async def test_a_batch_failing_on_every_brick_is_reported_by_fsync(tmp_path: Path) -> None:
    async with _cuttable_file(tmp_path) as (env, rep, wb, parts, f):
        with trio.fail_after(10):
            await wb.write(f, 0, b"a" * K4)
            await wb.fsync(f)
            parts[0].cut = parts[1].cut = 1
            await _queue_random(wb, f, 10)
            with pytest.raises(OSError) as e:
                await wb.fsync(f)
            assert e.value.errno == errno.ENOSPC
            await wb.fsync(f)  # reported once
            await wb.release(f)
            await wb.settle()
        # The part that landed is on both bricks alike; nobody is blamed.
        b0, b1 = env.bricks[0].root, env.bricks[1].root
        assert (b0 / "f").read_bytes() == (b1 / "f").read_bytes()
        assert not rep.needs_heal(f)


# -- a new file's data and attributes in one request --------------------------------


class CreatingFake(BatchFake):
    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> EntryReply:
        self.data[gfid] = bytearray()
        return EntryReply(await self.stat(gfid), None)

    async def setattr(self, gfid: bytes, **kw: Any) -> Iatt:
        self.calls.append(("setattr", {k: v for k, v in kw.items() if v}))
        return await super().setattr(gfid, **kw)

    async def write(self, gfid: bytes, offset: int, data: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt:
        self.calls.append(("write", {"offset": offset}))
        return await super().write(gfid, offset, data, xattrop)


@pytest.fixture
async def cwb(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[WriteBehind, CreatingFake]]:
    monkeypatch.setattr(writebatch, "LINGER", 30.0)  # only what waits sends
    fake = CreatingFake()
    fake.calls = []
    fake.gate.set()
    layer = WriteBehind("wb", fake)
    async with trio.open_nursery() as nursery:
        await nursery.start(layer.serve_writes)
        yield layer, fake
        nursery.cancel_scope.cancel()


async def test_a_new_files_data_and_attributes_go_together_at_close(cwb: Any) -> None:
    layer, fake = cwb
    with trio.fail_after(5):
        await layer.create(ROOT_GFID, b"f", G, 0o644, 0, 0, os.O_WRONLY)
        await layer.write(G, 0, b"data")
        await trio.testing.wait_all_tasks_blocked()
        assert fake.batches == []  # a fresh file's first batch waits for its close
        await layer.setattr(G, uid=7, mtime_ns=5)  # queued (setattr-behind)
        await layer.setattr(G, mode=0o600)
        await layer.flush(G)
        await layer.release(G)
    assert fake.batches == [[(0, 4)]]
    assert fake.carried == [{"uid": 7, "mtime_ns": 5, "mode": 0o600}]
    assert fake.calls == [("write", {"offset": 0}),
                          ("setattr", {"uid": 7, "mtime_ns": 5, "mode": 0o600})]
    assert layer.inodes == {} and bytes(fake.data[G]) == b"data"


async def test_a_setattr_with_writes_after_it_goes_on_its_own(cwb: Any) -> None:
    layer, fake = cwb
    with trio.fail_after(5):
        await layer.create(ROOT_GFID, b"f", G, 0o644, 0, 0, os.O_WRONLY)
        await layer.write(G, 0, b"aaaa")
        await layer.setattr(G, mtime_ns=5)
        await layer.write(G, 2, b"bb")  # after the setattr: waits for it
        await layer.fsync(G)
    assert fake.carried == []
    assert fake.calls == [("write", {"offset": 0}), ("setattr", {"mtime_ns": 5}),
                          ("write", {"offset": 2})]
    assert bytes(fake.data[G]) == b"aabb"


async def test_a_created_file_is_one_request_per_brick_for_data_and_attributes(
        tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        wb = WriteBehind("wb", rep, flush_behind=True)
        await env.nursery.start(wb.serve_writes)
        seen = count_requests(env, rep)
        f = uuid.uuid4().bytes
        with trio.fail_after(10):
            await wb.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
            await wb.write(f, 0, b"z" * K4)
            await wb.setattr(f, mode=0o600, atime_ns=10**18, mtime_ns=2 * 10**18)
            await wb.flush(f)
            await wb.release(f)
            await wb.settle()
        for calls in seen:
            assert [c for c in calls if "write" in c or "setattr" in c] == [
                "compound:write+setattr"], calls
        for b in env.bricks:
            st = os.stat(b.root / "f")
            assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o600, 2 * 10**18)
            assert (b.root / "f").read_bytes() == b"z" * K4
            assert index_dir(b.root) == set()
            assert decode(os.getxattr(b.root / "f", "trusted.afr.dirty")) == (0, 0, 0)


async def test_new_files_stop_waiting_for_attributes_that_do_not_come(cwb: Any) -> None:
    layer, fake = cwb
    a, b, c = (bytes([i]) * 16 for i in (1, 2, 3))
    with trio.fail_after(5):
        await layer.create(ROOT_GFID, b"a", a, 0o644, 0, 0, os.O_WRONLY)
        await layer.write(a, 0, b"a")
        await layer.flush(a)  # no attributes came: the next new file does not wait
        await layer.release(a)
        await layer.create(ROOT_GFID, b"b", b, 0o644, 0, 0, os.O_WRONLY)
        await layer.write(b, 0, b"b")
        await trio.testing.wait_all_tasks_blocked()
        assert len(fake.batches) == 2  # sent at once
        await layer.setattr(b, mtime_ns=5)  # ...but attributes came after all
        await layer.flush(b)
        await layer.release(b)
        await layer.create(ROOT_GFID, b"c", c, 0o644, 0, 0, os.O_WRONLY)
        await layer.write(c, 0, b"c")
        await trio.testing.wait_all_tasks_blocked()
        assert len(fake.batches) == 2  # waits again
        await layer.setattr(c, mtime_ns=6)
        await layer.flush(c)
        await layer.release(c)
    assert fake.carried == [{"mtime_ns": 6}] and len(fake.batches) == 3
