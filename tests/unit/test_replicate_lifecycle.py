"""The life of a small file through replicate: create, write, flush, release.

What each step sends to the bricks is the cost of a small file, so these tests
count the calls that reach the bricks, not only the end state.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.replica import ReplicaEnv, index_dir, open_replica, wait_for

from pyglfs.client.layer import Layer
from pyglfs.client.replicate import Replicate
from pyglfs.client.replicate.changelog import ZERO
from pyglfs.client.replicate.eagerlock import ACQUIRING
from pyglfs.rpc.brickops import AFR_DIRTY, ROOT_GFID


def g() -> bytes:
    return uuid.uuid4().bytes


class Counting(Layer):
    """Forwards to a protocol client and records each op (inodelk with its type).

    While ``gate`` is set, an inodelk that takes a lock waits for it first.
    """

    def __init__(self, child: Layer) -> None:
        super().__init__(child.name, [child])
        self.calls: list[str] = []
        self.gate: trio.Event | None = None

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name in ("lookup", "create", "write", "flush", "release", "xattrop", "stat",
                    "unlink", "rename", "open", "compound"):
            object.__getattribute__(self, "calls").append(name)
        return attr

    async def inodelk(self, gfid: bytes, domain: str, type: str, start: int, len: int,
                      owner: bytes, block: bool = False) -> None:
        self.calls.append(f"inodelk-{type}")
        if self.gate is not None and type != "un":
            await self.gate.wait()
        await self.child.inodelk(gfid, domain, type, start, len, owner, block)


def dirty(path: Path) -> bytes:
    try:
        return os.getxattr(path, AFR_DIRTY)
    except OSError as e:
        assert e.errno == errno.ENODATA
        return ZERO


async def settles_clean(rep: Replicate, env: ReplicaEnv) -> None:
    """Once settled, no brick holds a dirty mark on the root or an index entry."""
    await rep.settle()
    for b in env.bricks:
        assert dirty(b.root) == ZERO
        assert index_dir(b.root) == set()


async def counted(env: ReplicaEnv) -> tuple[Replicate, list[Counting]]:
    """A client whose calls to each brick are counted (post-op delay 30 s)."""
    wrapped: list[Counting] = []

    def wrap(i: int, child: Layer) -> Layer:
        wrapped.append(Counting(child))
        return wrapped[-1]

    return await env.new_client(wrap=wrap, post_op_delay=30.0), wrapped


async def test_small_file_costs_one_call_per_step(tmp_path: Path) -> None:
    async with open_replica(tmp_path, client=False) as env:
        rep, wrapped = await counted(env)
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
        await rep.write(f, 0, b"a" * 4096)
        await rep.write(f, 4096, b"b" * 10)
        await rep.flush(f)
        # The flush sends nothing; after the release the lock goes back soon,
        # not after the post-op delay, its post-op and unlock with the release.
        assert "flush" not in wrapped[0].calls and f in rep.locks.inode
        await rep.release(f)
        await wait_for(lambda: f not in rep.locks.inode, 5, "lock given back after release")
        for w in wrapped:
            assert "flush" not in w.calls
            assert w.calls[-4:] == ["compound", "xattrop", "inodelk-un", "release"], w.calls
            assert w.calls.count("inodelk-wr") == 1, w.calls
            assert w.calls.count("inodelk-un") == 1, w.calls
            assert w.calls.count("write") == 2
            assert w.calls.count("xattrop") == 1, w.calls  # the post-op
        for b in env.bricks:
            assert (b.root / "f").read_bytes() == b"a" * 4096 + b"b" * 10
            assert dirty(b.root / "f") == ZERO
        await settles_clean(rep, env)


async def test_create_does_not_wait_for_the_new_files_lock(tmp_path: Path) -> None:
    async with open_replica(tmp_path, client=False) as env:
        rep, wrapped = await counted(env)
        gate = trio.Event()
        wrapped[1].gate = gate
        f = g()
        with trio.fail_after(5):
            await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_RDWR)
        assert not gate.is_set()

        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def write() -> None:
                await rep.write(f, 0, b"after the lock")
                done.set()

            nursery.start_soon(write)
            await wait_for(lambda: wrapped[1].calls.count("inodelk-wr") == 1, 5, "lock asked")
            # The write waits for the lock the create asked for: nothing written yet.
            assert rep.locks.inode[f].state == ACQUIRING
            assert not done.is_set()
            assert [(b.root / "f").read_bytes() for b in env.bricks] == [b"", b""]
            gate.set()
            with trio.fail_after(5):
                await done.wait()
        wrapped[1].gate = None
        for w in wrapped:
            assert w.calls.count("inodelk-wr") == 1, w.calls
        await rep.flush(f)
        await rep.release(f)
        await rep.settle()
        for b in env.bricks:
            assert (b.root / "f").read_bytes() == b"after the lock"
            assert dirty(b.root / "f") == ZERO


async def test_failed_create_gives_its_lock_back(tmp_path: Path) -> None:
    async with open_replica(tmp_path) as env:
        rep = env.rep
        first = g()
        await rep.create(ROOT_GFID, b"f", first, 0o644, 0, 0, os.O_WRONLY)
        f = g()
        with pytest.raises(OSError) as ei:
            await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
        assert ei.value.errno == errno.EEXIST
        await wait_for(lambda: f not in rep.locks.inode, 5, "lock of the failed create gone")
        other = await env.new_client(post_op_delay=0.0)
        for i in range(2):
            with trio.fail_after(5):
                pc = env.brick_client(other, i)
                await pc.inodelk(f, rep.name, "wr", 0, 0, b"other", False)
                await pc.inodelk(f, rep.name, "un", 0, 0, b"other", False)
        await rep.flush(first)
        await rep.release(first)
        await settles_clean(rep, env)


async def test_flush_without_bricks_is_enotconn(tmp_path: Path) -> None:
    async with open_replica(tmp_path, client=False) as env:
        rep = await env.new_client(post_op_delay=30.0)
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
        await rep.write(f, 0, b"x")
        for b in env.bricks:
            await b.stop()
        await wait_for(lambda: not rep.is_up, 10, "both bricks down")
        with pytest.raises(OSError) as ei:
            await rep.flush(f)
        assert ei.value.errno == errno.ENOTCONN
