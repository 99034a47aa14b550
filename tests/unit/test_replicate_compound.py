"""Replicate gives locks back in one request per brick (``compound``), over real bricks."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.replica import ReplicaEnv, index_dir, open_replica, wait_for

from pyglfs.brickd.server import BrickService
from pyglfs.brickd.store import BrickStore
from pyglfs.client.replicate import Replicate
from pyglfs.client.replicate.changelog import ZERO, decode
from pyglfs.client.replicate.eagerlock import CLOSE_BATCH_MAX
from pyglfs.rpc.brickops import AFR_DIRTY, ROOT_GFID, afr_xattr

V = "rvol"


def g() -> bytes:
    return uuid.uuid4().bytes


def xattr(path: Path, name: str) -> bytes:
    try:
        return os.getxattr(path, name)
    except OSError as e:
        assert e.errno == errno.ENODATA
        return ZERO


def count_requests(env: ReplicaEnv, rep: Replicate) -> list[list[str]]:
    """Per brick, every request this client sends (a compound as ``compound:a+b``)."""
    seen: list[list[str]] = [[] for _ in env.bricks]
    for i in range(len(env.bricks)):
        pc = env.brick_client(rep, i)
        orig = pc.rpc.call

        async def call(op: str, args: dict[str, Any], *, timeout: float | None = None,
                       _i: int = i, _orig: Callable[..., Any] = orig) -> Any:
            name = op
            if op == "compound":
                name += ":" + "+".join(sub for sub, _ in args["ops"])
            seen[_i].append(name)
            return await _orig(op, args, timeout=timeout)

        pc.rpc.call = call  # type: ignore[method-assign]
    return seen


async def small_file(rep: Replicate, name: bytes, data: bytes = b"x" * 4096) -> bytes:
    f = g()
    await rep.create(ROOT_GFID, name, f, 0o644, 0, 0, os.O_WRONLY)
    await rep.write(f, 0, data)
    await rep.flush(f)
    await rep.release(f)
    return f


async def given_back(rep: Replicate, *gfids: bytes) -> None:
    await wait_for(lambda: not any(f in rep.locks.inode for f in gfids), 5, "locks given back")


def compounds(calls: list[str]) -> list[str]:
    """The sub-ops of every compound in ``calls``, in order."""
    return [sub for c in calls if c.startswith("compound:")
            for sub in c.partition(":")[2].split("+")]


async def test_a_created_file_costs_two_requests_per_brick_and_a_share(
        tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        await small_file(rep, b"first")  # takes the directory's entry lock
        await given_back(rep, *rep.locks.inode)
        seen = count_requests(env, rep)
        files = [await small_file(rep, b"f%d" % k) for k in range(5)]
        await given_back(rep, *files)
        for calls in seen:
            assert [c for c in calls if not c.startswith("compound")] == [
                "create", "write"] * 5, calls
            assert compounds(calls) == ["xattrop", "inodelk", "release"] * 5, calls
            assert len(calls) <= 15
        for b in env.bricks:
            assert (b.root / "f4").read_bytes() == b"x" * 4096
            assert xattr(b.root / "f4", AFR_DIRTY) == ZERO
        # The directory's lock: post-op and unlock in one request per brick.
        for calls in seen:
            calls.clear()
        await rep.settle()
        assert seen == [["compound:xattrop+entrylk"]] * 2
        for b in env.bricks:
            assert xattr(b.root, AFR_DIRTY) == ZERO
            assert index_dir(b.root) == set()


async def test_closed_files_locks_go_back_together(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        rep.locks.close_delay = 30.0  # only a full batch goes now
        await small_file(rep, b"first")
        seen = count_requests(env, rep)
        files = [await small_file(rep, b"f%d" % k) for k in range(CLOSE_BATCH_MAX - 1)]
        assert all(f in rep.locks.inode for f in files)
        assert not any(c.startswith("compound") for c in seen[0] + seen[1])
        await given_back(rep, *files)
        for calls in seen:
            assert [c for c in calls if c.startswith("compound")] == [
                "compound:" + "+".join(["xattrop", "inodelk", "release"] * CLOSE_BATCH_MAX)]
        for b in env.bricks:
            for k in range(CLOSE_BATCH_MAX - 1):
                assert xattr(b.root / f"f{k}", AFR_DIRTY) == ZERO
        # Another client's wish for a lock sends it back at once, its release along.
        f = await small_file(rep, b"wanted")
        assert f in rep.locks.inode
        other = await env.new_client(post_op_delay=0.0)
        with trio.fail_after(10):
            await other.setattr(f, mode=0o600)
        await given_back(rep, f)
        assert seen[0][-1] == "compound:xattrop+inodelk+release"


async def test_a_change_after_close_uses_the_lock_still_held(tmp_path: Path) -> None:
    """As tar does: write, close, then set the file's times and mode."""
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        rep.locks.close_delay = 30.0
        await small_file(rep, b"first")
        seen = count_requests(env, rep)
        f = await small_file(rep, b"f")
        await rep.setattr(f, mode=0o600, mtime_ns=10**18)
        assert f in rep.locks._closing  # back in the queue once unused
        await rep.settle()
        for calls in seen:
            assert calls[:3] == ["create", "write", "setattr"], calls
            assert "compound:xattrop+inodelk+release" in calls[3:] or any(
                c.startswith("compound:xattrop+inodelk+release+") for c in calls[3:]), calls
        for b in env.bricks:
            assert xattr(b.root / "f", AFR_DIRTY) == ZERO
            assert (b.root / "f").stat().st_mode & 0o777 == 0o600


async def test_a_closed_files_lock_in_use_when_its_batch_goes_follows_soon(
        tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        f = await small_file(rep, b"f")
        st = await rep.locks.acquire(f, entry=False)
        await wait_for(lambda: f not in rep.locks._closing, 5, "batch gone without it")
        assert f in rep.locks.inode
        rep.locks.done(st)
        await given_back(rep, f)  # not after the 30 s post-op delay
        for b in env.bricks:
            assert xattr(b.root / "f", AFR_DIRTY) == ZERO


async def test_a_file_still_open_keeps_its_lock_until_the_last_release(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_RDWR)
        await rep.open(f, os.O_RDONLY)
        await rep.write(f, 0, b"data")
        seen = count_requests(env, rep)
        await rep.flush(f)
        await rep.release(f)
        assert f in rep.locks.inode
        assert seen == [["release"]] * 2
        await rep.flush(f)
        await rep.release(f)
        await given_back(rep, f)
        assert seen == [["release", "compound:xattrop+inodelk+release"]] * 2


async def test_a_flush_without_release_gives_the_lock_back_after_the_delay(
        tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=0.2) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
        await rep.write(f, 0, b"data")
        seen = count_requests(env, rep)
        await rep.flush(f)
        await wait_for(lambda: f not in rep.locks.inode, 5, "idle lock given back")
        assert all("inodelk" in compounds(calls) for calls in seen), seen
        for b in env.bricks:
            assert xattr(b.root / "f", AFR_DIRTY) == ZERO
        await rep.release(f)
        assert seen[0][-1] == "release"


async def test_a_brick_down_at_close_is_blamed_as_before(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
        await rep.write(f, 0, b"a" * 100)
        await env.bricks[1].stop()
        await wait_for(lambda: not rep.children[1].is_up, 10, "brick 1 down")
        await rep.write(f, 100, b"b" * 100)
        seen = count_requests(env, rep)
        await rep.flush(f)
        await rep.release(f)
        await given_back(rep, f)
        assert seen == [["compound:xattrop+inodelk+release"], []]
        good = env.bricks[0].root / "f"
        assert good.read_bytes() == b"a" * 100 + b"b" * 100
        assert xattr(good, AFR_DIRTY) == ZERO
        assert decode(xattr(good, afr_xattr(V, 1)))[0] > 0
        assert f in index_dir(env.bricks[0].root)
        # Brick 1 missed the post-op of the first write: its mark stays for heal.
        assert decode(xattr(env.bricks[1].root / "f", AFR_DIRTY))[0] > 0


async def test_a_failed_post_op_still_unlocks_and_releases(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing: set[bytes] = set()
    orig = BrickStore.xattrop

    async def xattrop(self: BrickStore, gfid: bytes, xattrop: dict[str, bytes]) -> Any:
        if gfid in failing and self.root.endswith("brick1"):
            raise OSError(errno.EIO, "injected")
        return await orig(self, gfid, xattrop)

    monkeypatch.setattr(BrickStore, "xattrop", xattrop)
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
        await rep.write(f, 0, b"data")
        failing.add(f)
        seen = count_requests(env, rep)
        await rep.release(f)
        await given_back(rep, f)
        assert seen[0] == ["compound:xattrop+inodelk+release"]
        assert seen[1] == ["compound:xattrop+inodelk+release", "compound:inodelk+release"]
        assert xattr(env.bricks[0].root / "f", AFR_DIRTY) == ZERO
        assert decode(xattr(env.bricks[1].root / "f", AFR_DIRTY))[0] > 0  # heal will look
        other = await env.new_client(post_op_delay=0.0)
        for i in range(2):  # unlocked on both bricks
            with trio.fail_after(5):
                pc = env.brick_client(other, i)
                await pc.inodelk(f, rep.name, "wr", 0, 0, b"other", False)
                await pc.inodelk(f, rep.name, "un", 0, 0, b"other", False)


async def test_bricks_without_compound_get_separate_requests(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_compound(self: BrickService, args: dict[str, Any], conn: Any) -> Any:
        raise OSError(errno.ENOSYS, "unknown operation 'compound'")

    monkeypatch.setattr(BrickService, "_compound", no_compound)
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        await given_back(rep, await small_file(rep, b"first"))  # learns: no compound
        seen = count_requests(env, rep)
        await given_back(rep, await small_file(rep, b"second"))
        for calls in seen:
            assert calls == ["create", "write", "xattrop", "inodelk", "release"], calls
        await rep.settle()
        for b in env.bricks:
            assert xattr(b.root / "second", AFR_DIRTY) == ZERO
            assert index_dir(b.root) == set()


async def test_a_lost_answer_sends_the_unlock_again_not_the_post_op(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
        await rep.write(f, 0, b"data")
        seen = count_requests(env, rep)
        pc = env.brick_client(rep, 1)
        counted = pc.rpc.call

        async def timed_out(op: str, args: dict[str, Any], *,
                            timeout: float | None = None) -> Any:
            if op == "compound":  # never reaches the brick, as if its answer were lost
                seen[1].append("compound:" + "+".join(o for o, _ in args["ops"]))
                raise OSError(errno.ETIMEDOUT, "injected")
            return await counted(op, args, timeout=timeout)

        pc.rpc.call = timed_out  # type: ignore[method-assign]
        await rep.release(f)
        await given_back(rep, f)
        assert seen[0] == ["compound:xattrop+inodelk+release"]
        assert seen[1] == ["compound:xattrop+inodelk+release", "inodelk"]
        assert xattr(env.bricks[0].root / "f", AFR_DIRTY) == ZERO
        assert decode(xattr(env.bricks[1].root / "f", AFR_DIRTY))[0] > 0  # heal will look
        other = await env.new_client(post_op_delay=0.0)
        with trio.fail_after(5):
            pc1 = env.brick_client(other, 1)
            await pc1.inodelk(f, rep.name, "wr", 0, 0, b"other", False)
            await pc1.inodelk(f, rep.name, "un", 0, 0, b"other", False)
