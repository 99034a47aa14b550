"""The brick's cheaper create path keeps every guarantee of the slower one.

- A gfid already in use is found when the new inode's handle is made: the new
  entry is undone, the other inode and its handle are untouched, the parent's
  changelog mark is taken back.
- Handle fan-out directories known to exist are not made again, and ones
  removed behind the brick's back are made again.
- A new inode's changelog is kept in memory through its first write cycle: the
  counters, the replies and the heal index are exactly those of reading the
  disk, without reading it.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from pyglfs.brickd.store import BrickStore
from pyglfs.rpc.brickops import ROOT_GFID

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")

DIRTY = "trusted.afr.dirty"
PEER = "trusted.afr.v-client-1"


def delta(data: int = 0, meta: int = 0, entry: int = 0) -> bytes:
    return b"".join(v.to_bytes(4, "big", signed=True) for v in (data, meta, entry))


def new_gfid(first: bytes = b"") -> bytes:
    return first + uuid.uuid4().bytes[len(first):]


async def expect(code: int, aw: Any) -> None:
    with pytest.raises(OSError) as e:
        await aw
    assert e.value.errno == code


async def mkfile(store: BrickStore, pgfid: bytes, name: bytes, gfid: bytes | None = None,
                 data: bytes = b"") -> bytes:
    g = gfid or new_gfid()
    await store.create(pgfid=pgfid, name=name, gfid=g, mode=0o644, uid=0, gid=0, conn_id=1)
    if data:
        await store.write(gfid=g, offset=0, data=data)
    await store.release(gfid=g, conn_id=1)
    return g


async def test_a_gfid_in_use_is_refused_and_the_other_inode_kept(
        store: BrickStore, root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"a", data=b"mine")
    d = new_gfid()
    await store.mkdir(pgfid=ROOT_GFID, name=b"d", gfid=d, mode=0o755, uid=0, gid=0)
    mark = {DIRTY: delta(entry=1)}
    for taken in (g, d):
        attempts = [
            store.create(pgfid=d, name=b"b", gfid=taken, mode=0o644, uid=0, gid=0,
                         xattrop=mark, conn_id=1),
            store.mkdir(pgfid=d, name=b"b", gfid=taken, mode=0o755, uid=0, gid=0,
                        xattrop=mark),
            store.symlink(pgfid=d, name=b"b", gfid=taken, target=b"t", uid=0, gid=0,
                          xattrop=mark),
            store.mknod(pgfid=d, name=b"b", gfid=taken, mode=stat.S_IFIFO | 0o644, rdev=0,
                        uid=0, gid=0, xattrop=mark),
        ]
        for attempt in attempts:
            await expect(errno.EINVAL, attempt)
            assert not os.path.lexists(root / "d" / "b")
            assert os.getxattr(root / "d", DIRTY) == delta()
    assert d not in store.heal_index
    # both inodes still answer by gfid, with their data and names
    assert (await store.read(gfid=g, offset=0, size=10))["data"] == b"mine"
    assert (await store.lookup_gfid(gfid=g))["iatt"][0] == g
    assert (await store.lookup(pgfid=ROOT_GFID, name=b"d"))["iatt"][0] == d
    await mkfile(store, d, b"c")
    assert os.listdir(root / "d") == ["c"]
    # an existing name is still EEXIST, whatever the gfid
    await expect(errno.EEXIST, store.create(pgfid=ROOT_GFID, name=b"a", gfid=g, mode=0o644,
                                            uid=0, gid=0))
    await expect(errno.EEXIST, store.mkdir(pgfid=ROOT_GFID, name=b"d", gfid=new_gfid(),
                                           mode=0o755, uid=0, gid=0))


async def test_fanout_directories_removed_behind_the_brick_are_made_again(
        store: BrickStore, root: Path) -> None:
    handles = root / ".pyglfs" / "handles"
    g1 = new_gfid(b"\xab\xcd")
    await mkfile(store, ROOT_GFID, b"f1", g1)
    assert (handles / "ab" / "cd").is_dir()
    await store.unlink(pgfid=ROOT_GFID, name=b"f1")
    os.rmdir(handles / "ab" / "cd")
    os.rmdir(handles / "ab")
    # the brick believes ab/ and ab/cd/ exist
    g2 = new_gfid(b"\xab\xcd")
    await mkfile(store, ROOT_GFID, b"f2", g2, data=b"2")
    assert (await store.read(gfid=g2, offset=0, size=1))["data"] == b"2"
    g3 = new_gfid(b"\xab\xee")
    await store.unlink(pgfid=ROOT_GFID, name=b"f2")
    os.rmdir(handles / "ab" / "cd")
    os.rmdir(handles / "ab")
    await mkfile(store, ROOT_GFID, b"f3", g3, data=b"3")  # only ab/ was known
    d = new_gfid(b"\xab\xcd")
    await store.mkdir(pgfid=ROOT_GFID, name=b"dir", gfid=d, mode=0o755, uid=0, gid=0)
    assert (await store.read(gfid=g3, offset=0, size=1))["data"] == b"3"
    assert (await store.lookup_gfid(gfid=d))["iatt"][0] == d
    assert sorted(os.listdir(handles / "ab")) == ["cd", "ee"]


async def _cycle(store: BrickStore, g: bytes) -> list[Any]:
    """A new file's life as replicate drives it, with a peer brick blamed and healed."""
    out: list[Any] = []
    w = await store.write(gfid=g, offset=0, data=b"x", xattrop={DIRTY: delta(data=1)})
    out.append(("write", w["iatt"][7], g in store.heal_index))
    for deltas in ({DIRTY: delta(data=-1), PEER: delta(data=1)},
                   {DIRTY: delta(meta=1)},
                   {DIRTY: delta(meta=-1)},
                   {PEER: delta(data=-1)},
                   {DIRTY: delta()}):
        r = await store.xattrop(gfid=g, xattrop=deltas)
        out.append((r["xattrs"], g in store.heal_index))
    return out


async def test_a_new_files_changelog_from_memory_matches_the_disk(
        store: BrickStore, root: Path) -> None:
    fast = await mkfile(store, ROOT_GFID, b"fast")
    slow = await mkfile(store, ROOT_GFID, b"slow")
    store._afr_known.pop(slow)  # as after a restart: read from the disk
    got_fast = await _cycle(store, fast)
    got_slow = await _cycle(store, slow)
    assert got_fast == got_slow
    assert [seen[-1] for seen in got_fast] == [True, True, True, True, False, False]
    for name in (b"fast", b"slow"):
        p = root / name.decode()
        assert os.getxattr(p, DIRTY) == delta() and os.getxattr(p, PEER) == delta()
    assert fast not in store._afr_known and not store._afr_known
    # a directory made here: entry marks on it as a parent
    d = new_gfid()
    await store.mkdir(pgfid=ROOT_GFID, name=b"d", gfid=d, mode=0o755, uid=0, gid=0)
    await mkfile(store, d, b"in", data=b"")
    await store.xattrop(gfid=d, xattrop={PEER: delta(entry=1)})
    assert d in store.heal_index
    await store.xattrop(gfid=d, xattrop={PEER: delta(entry=-1)})
    assert d not in store.heal_index and d not in store._afr_known


async def test_a_failed_xattrop_forgets_what_it_knew(store: BrickStore) -> None:
    g = await mkfile(store, ROOT_GFID, b"f")
    await expect(errno.EPERM, store.xattrop(gfid=g, xattrop={"trusted.gfid": delta()}))
    assert g not in store._afr_known
    r = await store.xattrop(gfid=g, xattrop={DIRTY: delta(data=2)})
    assert r["xattrs"] == {DIRTY: delta(data=2)} and g in store.heal_index


async def test_a_new_files_write_cycle_reads_no_changelog(
        store: BrickStore, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real_get, real_list = os.getxattr, os.listxattr

    def getxattr(path: Any, attr: str, *a: Any, **k: Any) -> bytes:
        reads.append(attr)
        return real_get(path, attr, *a, **k)

    def listxattr(*a: Any, **k: Any) -> list[str]:
        reads.append("list")
        return real_list(*a, **k)

    new = await mkfile(store, ROOT_GFID, b"new")
    old = await mkfile(store, ROOT_GFID, b"old")
    store._afr_known.pop(old)
    monkeypatch.setattr(os, "getxattr", getxattr)
    monkeypatch.setattr(os, "listxattr", listxattr)
    for g in (new, old):
        await store.write(gfid=g, offset=0, data=b"x", xattrop={DIRTY: delta(data=1)})
        await store.xattrop(gfid=g, xattrop={DIRTY: delta(data=-1)})
        if g == new:
            assert reads == []
    assert reads  # the same cycle on a file the brick did not just make reads


def _disk_afr(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False) if n.startswith("trusted.afr.")}


async def test_lookup_answers_the_changelog_on_disk_by_every_path(
        store: BrickStore, root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"f")
    d = new_gfid()
    await store.mkdir(pgfid=ROOT_GFID, name=b"d", gfid=d, mode=0o755, uid=0, gid=0)
    await store.write(gfid=g, offset=0, data=b"x", xattrop={DIRTY: delta(data=1)})
    await store.xattrop(gfid=d, xattrop={PEER: delta(entry=2)})

    async def check(name: bytes, gfid: bytes) -> None:
        got = await store.lookup(pgfid=ROOT_GFID, name=name)
        assert got["iatt"][0] == gfid
        assert got["xattrs"] == _disk_afr(root / name.decode())

    for name, gfid in ((b"f", g), (b"d", d)):
        assert gfid in store._afr_known  # from memory
        await check(name, gfid)
        store._afr_known.pop(gfid)  # from the cached fd
        await check(name, gfid)
        (store.files if name == b"f" else store.dirs).drop(gfid)  # through /proc
        await check(name, gfid)
    assert _disk_afr(root / "f") == {DIRTY: delta(data=1)}
    assert _disk_afr(root / "d") == {PEER: delta(entry=2)}


async def test_lookup_of_another_inode_claiming_a_cached_gfid_reads_its_own_changelog(
        store: BrickStore, root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"f")
    await store.open(gfid=g, flags=os.O_RDWR, conn_id=1)  # g's fd cached, changelog known
    assert store.files.get(g) is not None and g in store._afr_known
    impostor = root / "impostor"
    impostor.write_bytes(b"")
    os.setxattr(impostor, "trusted.gfid", g)
    os.setxattr(impostor, PEER, delta(data=5))
    got = await store.lookup(pgfid=ROOT_GFID, name=b"impostor")
    assert got["iatt"][0] == g and got["iatt"][1] == impostor.stat().st_ino
    assert got["xattrs"] == {PEER: delta(data=5)}
    mine = await store.lookup(pgfid=ROOT_GFID, name=b"f")
    assert mine["xattrs"] == {}
