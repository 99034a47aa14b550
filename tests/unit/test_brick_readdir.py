"""readdir(plus) of the brick store: stable cookies under concurrent change."""

from __future__ import annotations

import errno
import os
import random
import stat
from pathlib import Path

import pytest
from test_brick_store import F, expect, mkdir, mkfile, new_gfid

from pyglfs.brickd import readdir as readdir_mod
from pyglfs.brickd.store import BrickStore
from pyglfs.rpc.brickops import ROOT_GFID

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")


async def list_all(s: BrickStore, gfid: bytes, count: int, plus: bool = False,
                   ) -> list[list[object]]:
    out: list[list[object]] = []
    cookie = 0
    for _ in range(100_000):
        page = await s.readdir(gfid=gfid, cookie=cookie, count=count, plus=plus)
        out.extend(page["entries"])
        if page["eof"]:
            return out
        assert page["entries"], "a page before eof must make progress"
        cookie = page["entries"][-1][1]
    raise AssertionError("listing did not end")


async def test_entries_types_and_plus(store: BrickStore, root: Path) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    f = await mkfile(store, ROOT_GFID, b"f", b"abc")
    link = new_gfid()
    await store.symlink(pgfid=ROOT_GFID, name=b"l", gfid=link, target=b"f", uid=0, gid=0)
    fifo = new_gfid()
    await store.mknod(pgfid=ROOT_GFID, name=b"p", gfid=fifo, mode=stat.S_IFIFO | 0o600,
                      rdev=0, uid=0, gid=0)
    (root / "nogfid").write_bytes(b"")  # made behind the brick's back
    entries = await list_all(store, ROOT_GFID, 100)
    byname = {e[0]: e for e in entries}
    assert set(byname) == {b"d", b"f", b"l", b"p", b"nogfid"}
    assert [byname[n][2] for n in (b"d", b"f", b"l", b"p")] == [4, 8, 10, 1]
    assert all(e[3] is None for e in entries)
    cookies = [e[1] for e in entries]
    assert cookies == sorted(cookies) and len(set(cookies)) == len(cookies)
    assert all(0 < c < 1 << 63 for c in cookies)
    plus = {e[0]: e for e in await list_all(store, ROOT_GFID, 2, plus=True)}
    assert plus[b"f"][3] == (await store.stat(gfid=f))["iatt"]
    assert plus[b"d"][3][F["gfid"]] == d and plus[b"l"][3][F["gfid"]] == link
    assert plus[b"p"][3][F["gfid"]] == fifo and plus[b"nogfid"][3] is None
    assert [plus[n][1] for n in sorted(plus)] == [byname[n][1] for n in sorted(byname)]


async def test_empty_directory_and_errors(store: BrickStore) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    assert await store.readdir(gfid=d, cookie=0, count=10) == {"entries": [], "eof": True}
    assert await store.readdir(gfid=d, cookie=12345, count=10) == {"entries": [], "eof": True}
    f = await mkfile(store, ROOT_GFID, b"f")
    await expect(errno.ENOTDIR, store.readdir(gfid=f, cookie=0, count=10))
    await expect(errno.EINVAL, store.readdir(gfid=d, cookie=0, count=0))
    await expect(errno.ESTALE, store.readdir(gfid=new_gfid(), cookie=0, count=10))


async def test_root_listing_hides_internal_dir(store: BrickStore, root: Path) -> None:
    assert (root / ".pyglfs").is_dir()
    assert await store.readdir(gfid=ROOT_GFID, cookie=0, count=10, plus=True) == {
        "entries": [], "eof": True}


async def test_fresh_listing_sees_new_entries_at_once(store: BrickStore) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    for i in range(5):
        await mkfile(store, d, b"f%d" % i)
        names = {e[0] for e in (await store.readdir(gfid=d, cookie=0, count=100))["entries"]}
        assert names == {b"f%d" % j for j in range(i + 1)}
    await store.unlink(pgfid=d, name=b"f0")
    names = {e[0] for e in (await store.readdir(gfid=d, cookie=0, count=100))["entries"]}
    assert b"f0" not in names and len(names) == 4


async def test_plus_skips_entries_that_vanished(store: BrickStore) -> None:
    store.listing_ttl = 60.0
    d = await mkdir(store, ROOT_GFID, b"d")
    for i in range(20):
        await mkfile(store, d, b"f%02d" % i)
    first = await store.readdir(gfid=d, cookie=0, count=3, plus=True)
    rest_names = [e[0] for e in await list_all(store, d, 100)]
    cookie = first["entries"][-1][1]
    later = [n for n in rest_names if n not in {e[0] for e in first["entries"]}]
    for name in later[:10]:
        await store.unlink(pgfid=d, name=name)
    page = await store.readdir(gfid=d, cookie=cookie, count=5, plus=True)
    got = [e[0] for e in page["entries"]]
    assert len(got) == 5 and not set(got) & set(later[:10])
    assert all(e[3] is not None for e in page["entries"])


async def test_pages_never_split_names_sharing_a_cookie(store: BrickStore,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readdir_mod, "name_cookie", lambda name: 1 + len(name) % 3)
    d = await mkdir(store, ROOT_GFID, b"d")
    names = {b"x" * n for n in range(1, 31)}
    for n in names:
        await mkfile(store, d, n)
    page = await store.readdir(gfid=d, cookie=0, count=1)
    assert len(page["entries"]) == 10 and len({e[1] for e in page["entries"]}) == 1
    got = [e[0] for e in await list_all(store, d, 4)]
    assert sorted(got) == sorted(names)


@pytest.mark.parametrize("total, ttl", [(10_000, 1.0), (1_000, 0.0)])
async def test_listing_under_churn_returns_each_stable_name_once(
        store: BrickStore, root: Path, total: int, ttl: float) -> None:
    """Entries present during the whole listing appear exactly once, whatever other
    clients create and delete between pages; nothing appears twice."""
    store.listing_ttl = ttl
    rng = random.Random(7)
    d = await mkdir(store, ROOT_GFID, b"big")
    seed = await mkfile(store, d, b"seed")
    stable = [b"stable-%05d" % i for i in range(total)]
    doomed = [b"doomed-%05d" % i for i in range(total // 10)]
    # many names, made fast: hard links to one inode (creates are slow on some disks)
    dfd = os.open(root / "big", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in stable + doomed:
            os.link(b"seed", name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)
    ever = {b"seed", *stable, *doomed}
    churn: list[bytes] = []
    seen: list[bytes] = []
    cookie = 0
    pages = 0
    for _ in range(10 * total):
        page = await store.readdir(gfid=d, cookie=cookie, count=37, plus=pages % 2 == 1)
        pages += 1
        seen.extend(e[0] for e in page["entries"])
        if page["eof"]:
            break
        cookie = page["entries"][-1][1]
        # other clients: new names, removal of a new one and of a doomed one
        for k in range(2):
            name = b"churn-%08d" % rng.randrange(10**8)
            if name in ever:
                continue
            if k == 0 and pages % 16 == 0:
                await mkfile(store, d, name)
            else:
                await store.link(gfid=seed, pgfid=d, name=name)
            churn.append(name)
            ever.add(name)
        if churn:
            await store.unlink(pgfid=d, name=churn.pop(rng.randrange(len(churn))))
        if doomed:
            await store.unlink(pgfid=d, name=doomed.pop())
    else:
        raise AssertionError("listing did not end")
    assert len(seen) == len(set(seen)), "an entry was returned twice"
    assert set(stable) | {b"seed"} <= set(seen)
    assert set(seen) <= ever
    assert pages >= total // 37
