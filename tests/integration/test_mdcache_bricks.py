"""Two clients with md-cache over real bricks: the bricks' invalidation events
keep a long-lived cache coherent (brickd/upcall.py -> client/mdcache.py)."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import trio
from helpers.replica import open_replica, wait_for

from pyglfs.client.fuse.inodes import new_gfid
from pyglfs.client.mdcache import MdCache
from pyglfs.rpc.brickops import ROOT_GFID


async def _exists(mdc: MdCache, name: bytes) -> bool:
    try:
        await mdc.lookup(ROOT_GFID, name)
        return True
    except OSError as e:
        assert e.errno == errno.ENOENT
        return False


async def test_changes_through_one_client_reach_the_others_cache(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=0.0) as env:
        a = MdCache("a", env.rep, timeout=600, invalidation=True)
        b = MdCache("b", await env.new_client(post_op_delay=0.0), timeout=600,
                    invalidation=True)
        gfid = new_gfid()
        await a.create(ROOT_GFID, b"f", gfid, stat.S_IFREG | 0o644, 0, 0)
        assert (await b.lookup(ROOT_GFID, b"f")).iatt.mode & 0o777 == 0o644
        hits = b.hits
        assert (await b.lookup(ROOT_GFID, b"f")).iatt.gfid == gfid
        assert b.hits == hits + 1  # served from b's cache

        await a.setattr(gfid, mode=0o600)
        await wait_for(lambda: gfid not in b._inodes, 5, "chmod invalidated in b")
        assert (await b.lookup(ROOT_GFID, b"f")).iatt.mode & 0o777 == 0o600

        await a.write(gfid, 0, b"x" * 100)
        await wait_for(lambda: gfid not in b._inodes or b._inodes[gfid].iatt is None, 5,
                       "write invalidated in b")
        assert (await b.lookup(ROOT_GFID, b"f")).iatt.size == 100

        await a.setxattr(gfid, "user.k", b"v1")
        await wait_for(lambda: gfid not in b._inodes, 5, "setxattr invalidated in b")
        assert await b.getxattr(gfid, "user.k") == b"v1"
        await a.setxattr(gfid, "user.k", b"v2")
        await wait_for(lambda: gfid not in b._inodes, 5, "second setxattr invalidated in b")
        assert await b.getxattr(gfid, "user.k") == b"v2"

        await a.rename(ROOT_GFID, b"f", ROOT_GFID, b"g")
        await wait_for(lambda: (ROOT_GFID, b"f") not in b._names, 5, "rename invalidated in b")
        assert not await _exists(b, b"f")
        assert (await b.lookup(ROOT_GFID, b"g")).iatt.gfid == gfid

        await a.unlink(ROOT_GFID, b"g")
        await wait_for(lambda: (ROOT_GFID, b"g") not in b._names, 5, "unlink invalidated in b")
        assert not await _exists(b, b"g")


async def test_changes_by_a_client_without_cache_invalidate(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=0.0) as env:
        a = MdCache("a", env.rep, timeout=600, invalidation=True)
        other = await env.new_client(post_op_delay=0.0)
        gfid = new_gfid()
        await a.create(ROOT_GFID, b"f", gfid, stat.S_IFREG | 0o644, 0, 0)
        assert (await a.stat(gfid)).size == 0
        await other.write(gfid, 0, b"z" * 10)
        await wait_for(lambda: gfid not in a._inodes, 5, "a's cache invalidated")
        assert (await a.lookup(ROOT_GFID, b"f")).iatt.size == 10
        # Cached again once the writer's post-op (one more event) is through.
        for _ in range(500):
            hits = a.hits
            assert (await a.lookup(ROOT_GFID, b"f")).iatt.size == 10
            if a.hits > hits:
                break
            await trio.sleep(0.01)
        else:
            raise AssertionError("stat never served from the cache again")


async def test_a_brick_coming_back_empties_the_cache(tmp_path: Path) -> None:
    """What a brick pushed while its connection was down is lost: start afresh."""
    async with open_replica(tmp_path, post_op_delay=0.0) as env:
        a = MdCache("a", env.rep, timeout=600, invalidation=True)
        await a.create(ROOT_GFID, b"f", new_gfid(), stat.S_IFREG | 0o644, 0, 0)
        assert a.stats()["names"] == 1
        await env.bricks[1].stop()
        await wait_for(lambda: not env.rep.children[1].is_up, 10, "brick 1 seen down")
        assert a.stats()["names"] == 1  # replicate is still up: the cache stays
        await env.bricks[1].start()
        await wait_for(lambda: a.stats()["names"] == 0, 30, "cache emptied on reconnect")
        assert (await a.lookup(ROOT_GFID, b"f")).iatt.mode & 0o777 == 0o644
