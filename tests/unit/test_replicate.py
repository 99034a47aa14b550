"""Replicate over two real bricks served in-process on 127.0.0.2 / 127.0.0.3."""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path

import pytest
import trio
from helpers.replica import gfid_of, index_dir, open_replica, tree, wait_for

from pyglfs.client.replicate.changelog import ZERO, decode
from pyglfs.rpc.brickops import AFR_DIRTY, ROOT_GFID, afr_xattr

V = "rvol"


def g() -> bytes:
    return uuid.uuid4().bytes


def assert_clean(root: Path) -> None:
    for path, info in tree(root).items():
        for name, value in info[6]:
            if name.startswith("trusted.afr."):
                assert value == ZERO, (root, path, name, value)
    assert index_dir(root) == set(), root


async def test_every_change_lands_on_both_bricks(tmp_path: Path) -> None:
    async with open_replica(tmp_path) as env:
        rep = env.rep
        d = g()
        await rep.mkdir(ROOT_GFID, b"dir", d, 0o750, 1000, 1000)
        f = g()
        await rep.create(d, b"file", f, 0o640, 1000, 1001)
        data = os.urandom(300_000)
        await rep.write(f, 0, data)
        await rep.write(f, 100, b"x" * 10)
        await rep.setattr(f, mode=0o600, uid=1234, gid=4321)
        await rep.setxattr(f, "user.color", b"blue")
        await rep.setxattr(f, "user.gone", b"1")
        await rep.removexattr(f, "user.gone")
        await rep.fallocate(f, 0, 400_000, 4096)
        await rep.flush(f)
        await rep.release(f)
        s = g()
        await rep.symlink(d, b"link", s, b"file", 0, 0)
        await rep.link(f, ROOT_GFID, b"hard")
        t = g()
        await rep.create(ROOT_GFID, b"tmp", t, 0o644, 0, 0)
        await rep.write(t, 0, b"hello")
        await rep.setattr(t, size=2)
        await rep.rename(ROOT_GFID, b"tmp", d, b"renamed")
        u = g()
        await rep.create(d, b"unlinked", u, 0o644, 0, 0)
        await rep.unlink(d, b"unlinked")
        e = g()
        await rep.mkdir(d, b"empty", e, 0o755, 0, 0)
        await rep.rmdir(d, b"empty")
        fifo = g()
        await rep.mknod(d, b"fifo", fifo, stat.S_IFIFO | 0o644, 0, 0, 0)
        await rep.settle()

        t0, t1 = tree(env.bricks[0].root), tree(env.bricks[1].root)
        assert t0 == t1
        assert {"dir", "dir/file", "dir/link", "hard", "dir/renamed", "dir/fifo"} <= set(t0)
        assert "dir/unlinked" not in t0 and "dir/empty" not in t0
        mode_uid = t0["dir/file"][1:4]
        assert mode_uid == (0o600, 1234, 4321)
        assert t0["dir/renamed"][4] == 2
        for b in env.bricks:
            assert gfid_of(b.root / "dir" / "file") == f
            assert gfid_of(b.root / "dir") == d
            assert os.getxattr(b.root / "dir" / "file", "user.color") == b"blue"
            assert_clean(b.root)
        assert await rep.read(f, 100, 10) == b"x" * 10
        assert await rep.read(t, 0, 10) == b"he"


async def test_steady_state_round_trips(tmp_path: Path) -> None:
    """Eager locks: the second write costs one request per brick, creates in one
    directory one request each after the first."""
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        calls: list[tuple[int, str]] = []
        for i in range(2):
            pc = env.brick_client(rep, i)
            orig = pc.rpc.call

            async def counted(op: str, args: dict, *, timeout: float | None = None,
                              _i: int = i, _orig=orig) -> object:
                if op == "compound":
                    op += ":" + "+".join(sub for sub, _ in args["ops"])
                calls.append((_i, op))
                return await _orig(op.partition(":")[0], args, timeout=timeout)

            pc.rpc.call = counted  # type: ignore[method-assign]
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0)
        await rep.write(f, 0, b"a" * 4096)
        calls.clear()
        await rep.write(f, 4096, b"b" * 4096)
        assert sorted(calls) == [(0, "write"), (1, "write")]
        calls.clear()
        for k in range(5):
            await rep.create(ROOT_GFID, b"n%d" % k, g(), 0o644, 0, 0)
        assert sorted(calls) == sorted([(0, "create"), (1, "create")] * 5)
        # A file created for writing gets its lock in the create's round trip.
        calls.clear()
        h = g()
        await rep.create(ROOT_GFID, b"w", h, 0o644, 0, 0, os.O_WRONLY)
        assert sorted(calls) == [(0, "create"), (1, "create")]
        for i in range(2):  # ... held on both bricks for this client's owner
            with pytest.raises(OSError) as e:
                await env.brick_client(rep, i).rpc.call("inodelk", {
                    "gfid": h, "domain": rep.name, "type": "wr", "start": 0, "len": 0,
                    "owner": b"someone else"})
            assert e.value.errno == errno.EAGAIN
        calls.clear()
        await rep.write(h, 0, b"small")
        assert sorted(calls) == [(0, "write"), (1, "write")]
        calls.clear()
        await rep.settle()
        # Every lock's post-op and unlock go to each brick in one request.
        for i in range(2):
            mine = [op for b, op in calls if b == i]
            assert len(mine) == 1 and mine[0].startswith("compound:"), mine
            subs = sorted(mine[0].partition(":")[2].split("+"))
            assert subs == ["entrylk"] + ["inodelk"] * 2 + ["xattrop"] * 3, subs
        for b in env.bricks:
            assert_clean(b.root)


async def test_post_op_after_idle_delay(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=0.2) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0)
        await rep.write(f, 0, b"data")
        p = env.bricks[0].root / "f"
        assert decode(os.getxattr(p, AFR_DIRTY))[0] == 1
        await wait_for(lambda: not rep.locks.busy(), 5, "idle release")
        for b in env.bricks:
            assert os.getxattr(b.root / "f", AFR_DIRTY) == ZERO
            assert_clean(b.root)


async def test_second_brick_down_blames_it(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        before = g()
        await rep.create(ROOT_GFID, b"before", before, 0o644, 0, 0)
        await rep.write(before, 0, b"old")
        await rep.settle()
        await env.bricks[1].stop()
        await wait_for(lambda: not rep.children[1].is_up, 5, "brick 1 down")
        await rep.write(before, 0, b"new")
        created = []
        for k in range(20):
            x = g()
            await rep.create(ROOT_GFID, b"c%d" % k, x, 0o644, 0, 0)
            await rep.write(x, 0, b"%d" % k)
            await rep.release(x)
            created.append(x)
        await rep.settle()
        b0 = env.bricks[0].root
        expected = {before, ROOT_GFID, *created}
        assert index_dir(b0) == expected
        assert await env.index(rep, 0) == expected
        blame = afr_xattr(V, 1)
        assert decode(os.getxattr(b0 / "before", blame))[0] > 0
        assert decode(os.getxattr(b0, blame))[2] > 0
        assert decode(os.getxattr(b0 / "c3", blame))[:2] != (0, 0)
        assert os.getxattr(b0 / "before", AFR_DIRTY) == ZERO

        await env.bricks[1].start()
        await wait_for(lambda: rep.children[1].is_up, 10, "brick 1 back")
        assert (env.bricks[1].root / "before").read_bytes() == b"old"
        # Reads of what brick 1 missed never come from it, even from a new mount.
        for client in (rep, await env.new_client()):
            assert await client.read(before, 0, 10) == b"new"
            for k, x in enumerate(created):
                await client.lookup(ROOT_GFID, b"c%d" % k)
                assert await client.read(x, 0, 10) == b"%d" % k
        # The brick is used again for changes.
        y = g()
        await rep.create(ROOT_GFID, b"after", y, 0o644, 0, 0)
        await rep.write(y, 0, b"both")
        await rep.settle()
        assert (env.bricks[1].root / "after").read_bytes() == b"both"


async def test_first_brick_down_quorum_auto(tmp_path: Path) -> None:
    async with open_replica(tmp_path, ping_timeout=5.0) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0)
        await rep.write(f, 0, b"kept")
        await rep.settle()
        await env.bricks[0].stop()
        await wait_for(lambda: not rep.children[0].is_up, 5, "brick 0 down")
        with pytest.raises(OSError) as ei:
            await rep.write(f, 0, b"nope")
        assert ei.value.errno == errno.EROFS
        with pytest.raises(OSError) as ei:
            await rep.create(ROOT_GFID, b"g", g(), 0o644, 0, 0)
        assert ei.value.errno == errno.EROFS
        assert await rep.read(f, 0, 10) == b"kept"
        assert (await rep.lookup(ROOT_GFID, b"f")).iatt.gfid == f
        await env.bricks[1].stop()
        await wait_for(lambda: not rep.is_up, 5, "all down")
        with trio.fail_after(1):
            for op in (rep.read(f, 0, 1), rep.write(f, 0, b"x"), rep.lookup(ROOT_GFID, b"f"),
                       rep.stat(f)):
                with pytest.raises(OSError) as ei:
                    await op
                assert ei.value.errno == errno.ENOTCONN
        await env.bricks[0].start()
        await env.bricks[1].start()
        await wait_for(lambda: all(c.is_up for c in rep.children), 10, "bricks back")
        await rep.write(f, 0, b"back")
        await rep.settle()
        for b in env.bricks:
            assert (b.root / "f").read_bytes() == b"back"


async def test_quorum_none_writes_to_second_brick(tmp_path: Path) -> None:
    async with open_replica(tmp_path, quorum_type="none") as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0)
        await rep.settle()
        await env.bricks[0].stop()
        await wait_for(lambda: not rep.children[0].is_up, 5, "brick 0 down")
        await rep.write(f, 0, b"only one")
        await rep.settle()
        b1 = env.bricks[1].root
        assert decode(os.getxattr(b1 / "f", afr_xattr(V, 0)))[0] > 0
        assert f in index_dir(b1)


async def test_fsync_clears_dirty_and_keeps_the_lock(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_RDWR)
        await rep.write(f, 0, b"one")
        for b in env.bricks:
            assert decode(os.getxattr(b.root / "f", AFR_DIRTY))[0] == 1
        await rep.fsync(f)
        for b in env.bricks:
            assert os.getxattr(b.root / "f", AFR_DIRTY) == ZERO
        assert f in rep.locks.inode
        await rep.write(f, 3, b"two")
        for b in env.bricks:
            assert decode(os.getxattr(b.root / "f", AFR_DIRTY))[0] == 1
        await rep.flush(f)
        await rep.release(f)
        await wait_for(lambda: f not in rep.locks.inode, 5, "lock given back at close")
        await rep.settle()
        for b in env.bricks:
            assert (b.root / "f").read_bytes() == b"onetwo"
            assert_clean(b.root)


async def test_without_eager_locking_every_change_unlocks(tmp_path: Path) -> None:
    async with open_replica(tmp_path, eager_lock=False) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
        for k in range(5):
            await rep.write(f, k, b"%d" % k)
        await wait_for(lambda: not rep.locks.busy(), 5, "locks given back")
        for b in env.bricks:
            assert (b.root / "f").read_bytes() == b"01234"
            assert_clean(b.root)


async def test_replica_three_keeps_writing_with_one_brick_down(tmp_path: Path) -> None:
    async with open_replica(tmp_path, n=3) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0)
        await env.bricks[0].stop()
        await wait_for(lambda: not rep.children[0].is_up, 5, "brick 0 down")
        await rep.write(f, 0, b"two of three")
        await rep.settle()
        for b in env.bricks[1:]:
            assert (b.root / "f").read_bytes() == b"two of three"
            assert decode(os.getxattr(b.root / "f", afr_xattr(V, 0)))[0] > 0
            assert afr_xattr(V, 2) not in os.listxattr(b.root / "f")
        await env.bricks[1].stop()
        await wait_for(lambda: not rep.children[1].is_up, 5, "brick 1 down")
        with pytest.raises(OSError) as ei:
            await rep.write(f, 0, b"one of three")
        assert ei.value.errno == errno.EROFS
        assert await rep.read(f, 0, 100) == b"two of three"
