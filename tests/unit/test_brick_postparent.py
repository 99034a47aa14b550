"""Entry ops answer their parent directory's attributes after the change."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from pyglfs.brickd.store import BrickStore
from pyglfs.rpc.brickops import IATT_FIELDS, ROOT_GFID, Iatt

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")

F = {name: i for i, name in enumerate(IATT_FIELDS)}


def new_gfid() -> bytes:
    return uuid.uuid4().bytes


def same_as_disk(wire: list[Any], path: Path, gfid: bytes, root_dir: bool = False) -> None:
    """``wire`` is the directory at ``path`` as it is now (nlink without .pyglfs
    for the brick root)."""
    st = os.stat(path)
    ia = Iatt.from_wire(wire)
    assert ia.gfid == gfid and stat.S_ISDIR(ia.mode)
    assert ia.mtime_ns == st.st_mtime_ns and ia.ctime_ns == st.st_ctime_ns
    assert ia.nlink == st.st_nlink - (1 if root_dir else 0)


async def test_new_entries_answer_the_parent_after_the_change(store: BrickStore,
                                                              root: Path) -> None:
    d = new_gfid()
    r = await store.mkdir(pgfid=ROOT_GFID, name=b"d", gfid=d, mode=0o755, uid=0, gid=0)
    same_as_disk(r["postparent"], root, ROOT_GFID, root_dir=True)
    assert r["postparent"][F["nlink"]] == 3  # ".", "..", and d's ".."
    before = os.stat(root / "d")
    sub = await store.mkdir(pgfid=d, name=b"s", gfid=new_gfid(), mode=0o755, uid=0, gid=0)
    assert sub["postparent"][F["nlink"]] == before.st_nlink + 1
    same_as_disk(sub["postparent"], root / "d", d)

    f = new_gfid()
    r = await store.create(pgfid=d, name=b"f", gfid=f, mode=0o644, uid=0, gid=0)
    await store.release(gfid=f)
    same_as_disk(r["postparent"], root / "d", d)
    r = await store.mknod(pgfid=d, name=b"p", gfid=new_gfid(), mode=stat.S_IFIFO | 0o600,
                          rdev=0, uid=0, gid=0)
    same_as_disk(r["postparent"], root / "d", d)
    r = await store.symlink(pgfid=d, name=b"l", gfid=new_gfid(), target=b"f", uid=0, gid=0)
    same_as_disk(r["postparent"], root / "d", d)
    r = await store.link(gfid=f, pgfid=ROOT_GFID, name=b"f2")
    same_as_disk(r["postparent"], root, ROOT_GFID, root_dir=True)
    assert r["iatt"][F["nlink"]] == 2


async def test_removals_answer_the_parent(store: BrickStore, root: Path) -> None:
    d = new_gfid()
    await store.mkdir(pgfid=ROOT_GFID, name=b"d", gfid=d, mode=0o755, uid=0, gid=0)
    f = new_gfid()
    await store.create(pgfid=d, name=b"f", gfid=f, mode=0o644, uid=0, gid=0)
    await store.release(gfid=f)
    r = await store.unlink(pgfid=d, name=b"f")
    assert set(r) == {"postparent"}
    same_as_disk(r["postparent"], root / "d", d)
    r = await store.rmdir(pgfid=ROOT_GFID, name=b"d")
    same_as_disk(r["postparent"], root, ROOT_GFID, root_dir=True)
    assert r["postparent"][F["nlink"]] == 2


async def test_rename_answers_both_parents(store: BrickStore, root: Path) -> None:
    a, b = new_gfid(), new_gfid()
    for g, n in ((a, b"a"), (b, b"b")):
        await store.mkdir(pgfid=ROOT_GFID, name=n, gfid=g, mode=0o755, uid=0, gid=0)
    s = new_gfid()
    await store.mkdir(pgfid=a, name=b"s", gfid=s, mode=0o755, uid=0, gid=0)
    r = await store.rename(old_pgfid=a, old_name=b"s", new_pgfid=b, new_name=b"t")
    assert r["iatt"][F["gfid"]] == s
    same_as_disk(r["postoldparent"], root / "a", a)
    same_as_disk(r["postnewparent"], root / "b", b)
    assert r["postoldparent"][F["nlink"]] == 2 and r["postnewparent"][F["nlink"]] == 3
    r = await store.rename(old_pgfid=b, old_name=b"t", new_pgfid=b, new_name=b"u")
    assert r["postoldparent"] == r["postnewparent"]
    same_as_disk(r["postnewparent"], root / "b", b)
