"""New files closed with flush-behind: their writes reach each brick together, one
``compound`` for a batch of files (``writev_many``), over real brick processes;
blame when a brick dies or fails one file's write; waiters send the batch."""

from __future__ import annotations

import errno
import math
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.replica import ReplicaEnv, index_dir, leased, open_replica, wait_for
from test_replicate_compound import given_back
from test_writebehind_release import record

from pyglfs.client import writebatch
from pyglfs.client.layer import CompoundReply, Layer
from pyglfs.client.replicate.changelog import decode
from pyglfs.client.writebehind import WriteBehind
from pyglfs.rpc.brickops import ROOT_GFID, afr_xattr

V = "rvol"
K4 = 4096
async def start_wb(env: ReplicaEnv) -> WriteBehind:
    """Write-behind over the replicate, holding the root's lease (flush-behind
    closes a new file only under its directory's lease)."""
    wb = WriteBehind("wb", env.rep, flush_behind=True)
    await env.nursery.start(wb.serve_writes)
    await leased(wb, ROOT_GFID)
    return wb


async def new_file(wb: WriteBehind, name: bytes, data: bytes,
                   pgfid: bytes = ROOT_GFID) -> bytes:
    """Create, write and close (flush, release) as an application's loop does
    (which keeps the directory's lease in use, as create-behind's creates do)."""
    gfid = uuid.uuid4().bytes
    wb.want_lease(pgfid)
    await wb.create(pgfid, name, gfid, 0o644, 0, 0, os.O_WRONLY)
    await wb.write(gfid, 0, data)
    await wb.flush(gfid)
    await wb.release(gfid)
    return gfid


async def joined(wb: WriteBehind, files: list[bytes]) -> None:
    """Wait until ``files`` (closed: their senders take their writes soon) are
    the pending batch."""
    def full() -> bool:
        return wb._join is not None and wb._join.gfids == set(files)

    await wait_for(full, 5, "the files in the pending batch")


def content(k: int) -> bytes:
    return bytes([65 + k]) * K4


async def test_closed_new_files_reach_each_brick_in_one_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writebatch, "JOIN_STREAM", math.inf)  # no batch goes at once
    monkeypatch.setattr(writebatch, "JOIN_DELAY", 30.0)
    monkeypatch.setattr(writebatch, "JOIN_FILES", 6)  # the batch goes when it holds 6
    async with open_replica(tmp_path, processes=True) as env:
        wb = await start_wb(env)
        seen = record(env)
        with trio.fail_after(20):
            files = [await new_file(wb, b"f%d" % k, content(k)) for k in range(6)]
            await wait_for(lambda: not wb.inodes, 10, "the batch landed")
            await wb.settle()
            await given_back(env.rep, *files)
        for calls in seen:
            writes = [c for c in calls if any(sub == "write" for sub, _, _ in c[1])]
            assert len(writes) == 1, calls
            op, subs = writes[0]
            # one write per file, each carrying its own file's dirty mark
            assert op == "compound" and sorted(subs) == sorted(("write", f, True) for f in files)
            released = [g for op, subs in calls for sub, g, _ in subs if sub == "release"]
            assert sorted(released) == sorted(files)
        for b in env.bricks:
            for k in range(6):
                p = b.root / f"f{k}"
                assert p.read_bytes() == content(k)
                assert decode(os.getxattr(p, "trusted.afr.dirty")) == (0, 0, 0)
            assert index_dir(b.root) == set()


async def test_a_brick_killed_before_the_batch_is_blamed_for_exactly_its_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writebatch, "JOIN_STREAM", math.inf)  # no batch goes at once
    monkeypatch.setattr(writebatch, "JOIN_DELAY", 30.0)
    async with open_replica(tmp_path, processes=True) as env:
        wb = await start_wb(env)
        with trio.fail_after(30):
            before = await new_file(wb, b"before", content(9))
            await wb.settle()  # which gives the lease back too
            await leased(wb, ROOT_GFID)
            files = [await new_file(wb, b"f%d" % k, content(k)) for k in range(4)]
            await joined(wb, files)
            await env.bricks[1].kill()
            await wb.settle()  # sends the batch: brick 1 fails or is known down
            await env.rep.settle()
        assert wb.inodes == {}  # nothing failed for the application
        b0 = env.bricks[0].root
        assert index_dir(b0) == set(files)
        for k in range(4):
            assert (b0 / f"f{k}").read_bytes() == content(k)
            assert decode(os.getxattr(b0 / f"f{k}", afr_xattr(V, 1)))[0] >= 1
            assert decode(os.getxattr(b0 / f"f{k}", "trusted.afr.dirty")) == (0, 0, 0)
        assert before not in index_dir(b0)


class FailWrites(Layer):
    """Brick 1 as if the writes of ``bad`` gfids failed there (EIO): a compound
    runs up to such a write and stops at it, as a brick's does."""

    def __init__(self, name: str, child: Layer) -> None:
        super().__init__(name, [child])
        self.bad: set[bytes] = set()
        self.compounds: list[list[bytes]] = []

    async def compound(self, ops: list[tuple[str, dict[str, Any]]]) -> CompoundReply:
        self.compounds.append([a["gfid"] for op, a in ops if op == "write"])
        for k, (op, a) in enumerate(ops):
            if op == "write" and a["gfid"] in self.bad:
                results, failed = await self.child.compound(ops[:k]) if k else ([], None)
                return results, failed or (k, OSError(errno.EIO, "injected"))
        return await self.child.compound(ops)


async def test_one_files_failed_write_leaves_the_others_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Brick 1 fails f1's write: its compound stops there; f2 is sent again."""
    monkeypatch.setattr(writebatch, "JOIN_STREAM", math.inf)  # no batch goes at once
    monkeypatch.setattr(writebatch, "JOIN_DELAY", 30.0)
    fail: list[FailWrites] = []

    def wrap(i: int, pc: Layer) -> Layer:
        if i == 0:
            return pc
        fail.append(FailWrites(pc.name, pc))
        return fail[0]

    async with open_replica(tmp_path, processes=True, wrap=wrap) as env:
        wb = await start_wb(env)
        b0, b1 = (b.root for b in env.bricks)
        with trio.fail_after(30):
            files = [await new_file(wb, b"f%d" % k, content(k)) for k in range(3)]
            fail[0].bad.add(files[1])
            await joined(wb, files)
            await wb.settle()
            await env.rep.settle()
        assert wb.inodes == {}  # brick 0 has every file: nothing failed for the application
        sent = [c for c in fail[0].compounds if c]
        rest = sent[0][sent[0].index(files[1]) + 1:]
        assert sorted(sent[0]) == sorted(files) and sent[1:] == ([rest] if rest else [])
        for k in (0, 2):
            for root in (b0, b1):
                assert (root / f"f{k}").read_bytes() == content(k)
                assert decode(os.getxattr(root / f"f{k}", "trusted.afr.dirty")) == (0, 0, 0)
        assert (b0 / "f1").read_bytes() == content(1)
        assert (b1 / "f1").read_bytes() == b""
        assert decode(os.getxattr(b0 / "f1", afr_xattr(V, 1)))[0] >= 1
        assert index_dir(b0) == {files[1]}


@pytest.mark.parametrize("waiter", ["read", "stat", "fsync"])
async def test_a_waiter_sends_the_pending_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, waiter: str) -> None:
    monkeypatch.setattr(writebatch, "JOIN_STREAM", math.inf)  # no batch goes at once
    monkeypatch.setattr(writebatch, "JOIN_DELAY", 60.0)
    async with open_replica(tmp_path, processes=True) as env:
        wb = await start_wb(env)
        with trio.fail_after(20):
            a, b = [await new_file(wb, b"f%d" % k, content(k)) for k in range(2)]
            await joined(wb, [a, b])
            if waiter == "read":
                assert await wb.read(a, 0, K4) == content(0)
            elif waiter == "stat":
                assert (await wb.stat(b)).size == K4
            else:
                await wb.fsync(a)
                assert a not in wb.inodes
            assert not wb._join or wb._join.gfids.isdisjoint({a, b})
            await wb.settle()
        for root in (env.bricks[0].root, env.bricks[1].root):
            assert (root / "f1").read_bytes() == content(1)


async def test_a_lone_close_sends_at_once(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """No batch on its way: the closed file's writes go without waiting for others."""
    monkeypatch.setattr(writebatch, "JOIN_DELAY", 60.0)
    async with open_replica(tmp_path, processes=True) as env:
        wb = await start_wb(env)
        with trio.fail_after(20):
            await new_file(wb, b"f0", content(0))
            await wait_for(lambda: not wb.inodes, 10, "the write landed, unhurried")
        for b in env.bricks:
            assert (b.root / "f0").read_bytes() == content(0)


async def test_a_file_with_a_big_write_does_not_join(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a new file whose whole content waited for its close joins: one that
    already sent a big write closes as before (its small tail goes alone)."""
    monkeypatch.setattr(writebatch, "JOIN_STREAM", math.inf)
    monkeypatch.setattr(writebatch, "JOIN_DELAY", 60.0)
    async with open_replica(tmp_path, processes=True) as env:
        wb = await start_wb(env)
        big = b"b" * (128 << 10)
        with trio.fail_after(20):
            gfid = uuid.uuid4().bytes
            await wb.create(ROOT_GFID, b"f", gfid, 0o644, 0, 0, os.O_WRONLY)
            await wb.write(gfid, 0, big)
            await wb.write(gfid, len(big), content(1))
            await wb.flush(gfid)
            await wb.release(gfid)
            await wait_for(lambda: not wb.inodes, 10, "the writes landed, unhurried")
            assert wb._join is None
        for b in env.bricks:
            assert (b.root / "f").read_bytes() == big + content(1)


async def test_over_a_layer_that_does_not_batch_closed_files_go_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without replicate below (a single brick's protocol client), a batch would
    only delay the data, and no lock would order it against another mount's
    change: closed files' writes go at once."""
    monkeypatch.setattr(writebatch, "JOIN_STREAM", math.inf)
    monkeypatch.setattr(writebatch, "JOIN_DELAY", 60.0)
    async with open_replica(tmp_path, n=1, processes=True) as env:
        brick = env.rep.children[0]
        assert env.rep.batches_writes and not brick.batches_writes
        wb = WriteBehind("wb", brick, flush_behind=True)
        await env.nursery.start(wb.serve_writes)
        with trio.fail_after(20):
            for k in range(3):
                await new_file(wb, b"f%d" % k, content(k))
            assert wb._join is None
            await wait_for(lambda: not wb.inodes, 10, "the writes landed without a batch")
        for k in range(3):
            assert (env.bricks[0].root / f"f{k}").read_bytes() == content(k)


async def test_a_lease_recall_sends_first_the_held_writes_of_files_made_in_that_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writebatch, "JOIN_STREAM", math.inf)  # no batch goes at once
    monkeypatch.setattr(writebatch, "JOIN_DELAY", 30.0)
    async with open_replica(tmp_path, processes=True) as env:
        wb = await start_wb(env)
        with trio.fail_after(20):
            dgfid = uuid.uuid4().bytes
            await wb.mkdir(ROOT_GFID, b"d", dgfid, 0o755, 0, 0)
            files = [await new_file(wb, b"f%d" % k, content(k)) for k in range(3)]
            await joined(wb, files)
            # another client waits to look into the root: its new files' data goes first
            await wb.lease_recalled(ROOT_GFID)
            for b in env.bricks:
                for k in range(3):
                    assert (b.root / f"f{k}").read_bytes() == content(k)
            assert not wb.inodes
            # a recall of another directory sends nothing of the files made elsewhere
            await leased(wb, dgfid)
            elsewhere = await new_file(wb, b"g", content(7), dgfid)
            await joined(wb, [elsewhere])
            await wb.lease_recalled(ROOT_GFID)
            assert wb._join is not None and elsewhere in wb._join.gfids
            await wb.lease_recalled(dgfid)
            assert not wb.inodes
            for b in env.bricks:
                assert (b.root / "d" / "g").read_bytes() == content(7)
