"""Replicate's entry ops answer the parent's attributes from the brick that
serves stat of that directory (two real bricks in-process on loopback)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers.replica import open_replica, wait_for

from pyglfs.brickd.store import BrickStore
from pyglfs.rpc.brickops import ROOT_GFID, Iatt


def g() -> bytes:
    return uuid.uuid4().bytes


def same_dir(post: Iatt | None, stat: Iatt) -> None:
    # ino tells the bricks apart; ctime moves again with the delayed post-op.
    assert post is not None
    assert (post.gfid, post.ino, post.mtime_ns, post.nlink) == (
        stat.gfid, stat.ino, stat.mtime_ns, stat.nlink)


async def test_postparents_come_from_the_stat_brick(tmp_path: Path) -> None:
    async with open_replica(tmp_path) as env:
        rep = env.rep
        await rep.stat(ROOT_GFID)
        a, b = g(), g()
        r = await rep.mkdir(ROOT_GFID, b"a", a, 0o755, 0, 0)
        assert r.iatt.gfid == a
        same_dir(r.postparent, await rep.stat(ROOT_GFID))
        assert r.postparent is not None and r.postparent.nlink == 3
        await rep.mkdir(ROOT_GFID, b"b", b, 0o755, 0, 0)
        await rep.stat(a)
        await rep.stat(b)
        f = g()
        r = await rep.create(a, b"f", f, 0o644, 0, 0)
        await rep.release(f)
        same_dir(r.postparent, await rep.stat(a))
        r = await rep.link(f, b, b"f2")
        same_dir(r.postparent, await rep.stat(b))
        mv = await rep.rename(a, b"f", b, b"f3")
        assert mv.iatt.gfid == f
        same_dir(mv.postoldparent, await rep.stat(a))
        same_dir(mv.postnewparent, await rep.stat(b))
        same_dir(await rep.unlink(b, b"f2"), await rep.stat(b))
        same_dir(await rep.rmdir(ROOT_GFID, b"a"), await rep.stat(ROOT_GFID))
        await rep.settle()


async def test_unknown_parent_or_brick_down(tmp_path: Path) -> None:
    async with open_replica(tmp_path, quorum_type="none") as env:
        rep = env.rep
        d = g()
        # Never looked up by this client: which brick stat would read is not known.
        r = await rep.mkdir(ROOT_GFID, b"d", d, 0o755, 0, 0)
        assert r.postparent is None
        await rep.stat(d)
        info = rep.inodes.get(d)
        assert info is not None and info.read_child >= 0
        down = info.read_child
        await env.bricks[down].stop()
        await wait_for(lambda: not rep.children[down].is_up, 5, "stat brick down")
        r = await rep.mknod(d, b"n", g(), 0o100644, 0, 0, 0)
        st = await rep.stat(d)
        assert info.read_child == 1 - down
        same_dir(r.postparent, st)
        await rep.settle()


async def test_a_brick_without_postparent_answers_unknown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older brick's replies lack the parent's attributes: None, not an error."""
    for op in ("mkdir", "unlink", "rename"):
        real = getattr(BrickStore, op)

        async def old_reply(self: BrickStore, *args: Any, _real: Any = real,
                            **kw: Any) -> dict[str, Any]:
            r = await _real(self, *args, **kw)
            return {k: v for k, v in r.items() if not k.startswith("post")}

        monkeypatch.setattr(BrickStore, op, old_reply)
    async with open_replica(tmp_path) as env:
        rep = env.rep
        await rep.stat(ROOT_GFID)
        d = g()
        r = await rep.mkdir(ROOT_GFID, b"d", d, 0o755, 0, 0)
        assert r.iatt.gfid == d and r.postparent is None
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0)
        await rep.release(f)
        mv = await rep.rename(ROOT_GFID, b"f", d, b"f")
        assert mv.iatt.gfid == f and mv.postoldparent is None and mv.postnewparent is None
        assert await rep.unlink(d, b"f") is None
        await rep.settle()
