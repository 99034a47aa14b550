"""Replicate over two real pyglfs-brickd processes on 127.0.0.2 and 127.0.0.3,
with bricks killed (kill -9, by PID) while the client works."""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.replica import gfid_of, open_replica, tree, wait_for

from pyglfs.client.layer import Layer
from pyglfs.client.replicate.changelog import decode
from pyglfs.rpc.brickops import ROOT_GFID, afr_xattr

V = "rvol"
CHUNK = 128 * 1024


def g() -> bytes:
    return uuid.uuid4().bytes


class ReadCounter(Layer):
    """Counts the reads that reach one brick."""

    def __init__(self, child: Layer) -> None:
        super().__init__(child.name, [child])
        self.reads = 0

    async def read(self, gfid: bytes, offset: int, size: int) -> bytes:
        self.reads += 1
        return await self.child.read(gfid, offset, size)


def counting() -> tuple[list[ReadCounter], Any]:
    made: list[ReadCounter] = []

    def wrap(i: int, child: Layer) -> Layer:
        made.append(ReadCounter(child))
        return made[-1]

    return made, wrap


async def test_kill_second_brick_during_writes(tmp_path: Path) -> None:
    counters, wrap = counting()
    async with open_replica(tmp_path, processes=True, client=False) as env:
        rep = await env.new_client(wrap=wrap)
        f = g()
        await rep.create(ROOT_GFID, b"big", f, 0o644, 0, 0, os.O_WRONLY)
        size = 20 * 1024 * 1024
        payload = os.urandom(size)
        done = 0
        killed = trio.Event()

        async def killer() -> None:
            await wait_for(lambda: done >= size // CHUNK // 3, 30, "a third written")
            await env.bricks[1].kill()
            killed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            for off in range(0, size, CHUNK):
                await rep.write(f, off, payload[off:off + CHUNK])
                done += 1
        assert killed.is_set()
        await rep.flush(f)
        await rep.release(f)
        await rep.settle()

        got = bytearray()
        for off in range(0, size, 1024 * 1024):
            got += await rep.read(f, off, 1024 * 1024)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()

        b0 = env.bricks[0].root
        assert await env.index(rep, 0) == {f}
        assert decode(os.getxattr(b0 / "big", afr_xattr(V, 1)))[0] > 0
        stale = (env.bricks[1].root / "big").stat().st_size
        assert stale < size

        await env.bricks[1].start()
        await wait_for(lambda: rep.children[1].is_up, 15, "brick 1 back")
        counters[1].reads = 0
        fresh = await env.new_client(wrap=wrap)
        await fresh.lookup(ROOT_GFID, b"big")
        for client in (rep, fresh):
            for off in range(0, size, 4 * 1024 * 1024):
                assert await client.read(f, off, 4096) == payload[off:off + 4096]
        assert counters[1].reads == 0 and counters[3].reads == 0
        assert counters[0].reads > 0 and counters[2].reads > 0


async def test_kill_second_brick_during_small_file_creation(tmp_path: Path) -> None:
    counters, wrap = counting()
    async with open_replica(tmp_path, processes=True, client=False) as env:
        rep = await env.new_client(wrap=wrap)
        d = g()
        await rep.mkdir(ROOT_GFID, b"many", d, 0o755, 0, 0)
        n = 2000
        files: dict[bytes, bytes] = {}
        killed_at: list[int] = []

        async def killer() -> None:
            await wait_for(lambda: len(files) >= n // 3, 60, "a third created")
            killed_at.append(len(files))
            await env.bricks[1].kill()
            killed_at.append(len(files))

        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            for k in range(n):
                name = b"f%05d" % k
                x = g()
                await rep.create(d, name, x, 0o644, 0, 0, os.O_WRONLY)
                await rep.write(x, 0, name * 20)
                await rep.flush(x)
                await rep.release(x)
                files[x] = name
        elapsed = trio.current_time() - t0
        await rep.settle()
        print(f"created {n} files in {elapsed:.2f}s with a brick killed after {killed_at}")

        b0, b1 = env.bricks[0].root, env.bricks[1].root
        missed = set()
        for x, name in files.items():
            p1 = b1 / "many" / name.decode()
            if not p1.exists() or p1.read_bytes() != name * 20:
                missed.add(x)
        index = await env.index(rep, 0)
        assert d in index
        assert missed <= index
        # Only what was in flight when the brick died may be blamed without being
        # visibly missing; nothing created well before the kill is.
        extra = index - missed - {d}
        assert len(extra) <= 3, extra
        assert n - len(missed) >= killed_at[0] - 3
        assert decode(os.getxattr(b0 / "many", afr_xattr(V, 1)))[2] > 0
        for x in list(missed)[:50]:
            name = files[x].decode()
            assert decode(os.getxattr(b0 / "many" / name, afr_xattr(V, 1)))[:2] != (0, 0)
            assert gfid_of(b0 / "many" / name) == x

        await env.bricks[1].start()
        await wait_for(lambda: rep.children[1].is_up, 15, "brick 1 back")
        fresh = await env.new_client(wrap=wrap)
        counters[1].reads = counters[3].reads = 0
        for client in (rep, fresh):
            for x in missed:
                await client.lookup(d, files[x])
                assert await client.read(x, 0, 200) == files[x] * 20
        assert counters[1].reads == 0 and counters[3].reads == 0


async def test_kill_first_brick_then_both(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0)
        await rep.write(f, 0, b"v1")
        await rep.settle()
        await env.bricks[0].kill()
        await wait_for(lambda: not rep.children[0].is_up, 5, "brick 0 down")
        with pytest.raises(OSError) as ei:
            await rep.write(f, 0, b"v2")
        assert ei.value.errno == errno.EROFS
        with pytest.raises(OSError) as ei:
            await rep.mkdir(ROOT_GFID, b"d", g(), 0o755, 0, 0)
        assert ei.value.errno == errno.EROFS
        assert await rep.read(f, 0, 10) == b"v1"
        assert (await rep.stat(f)).size == 2
        await env.bricks[1].kill()
        await wait_for(lambda: not rep.is_up, 5, "both down")
        t0 = trio.current_time()
        for call in (lambda: rep.read(f, 0, 1), lambda: rep.write(f, 0, b"x"),
                     lambda: rep.lookup(ROOT_GFID, b"f")):
            with pytest.raises(OSError) as ei:
                await call()
            assert ei.value.errno == errno.ENOTCONN
        assert trio.current_time() - t0 < 0.5
        await env.bricks[0].start()
        await env.bricks[1].start()
        await wait_for(lambda: all(c.is_up for c in rep.children), 15, "both back")
        await rep.write(f, 0, b"v3")
        await rep.settle()
        assert tree(env.bricks[0].root) == tree(env.bricks[1].root)
        assert (env.bricks[1].root / "f").read_bytes() == b"v3"
