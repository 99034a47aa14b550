"""A create's reply is a fresh stat of the new file and of its parent, whatever
of owner and mode the brick had to fix after the open (the fast path skips
those fixes and the second stat when there is nothing to fix)."""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from pyglfs.brickd.store import BrickStore
from pyglfs.rpc.brickops import GFID_XATTR, ROOT_GFID, Iatt

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")

def fresh(wire: list[Any], path: Path, gfid: bytes, nlink_hidden: int) -> None:
    st = os.stat(path, follow_symlinks=False)
    assert Iatt.from_wire(wire) == Iatt(
        gfid, st.st_ino, st.st_mode, st.st_nlink - nlink_hidden, st.st_uid, st.st_gid,
        st.st_rdev, st.st_size, st.st_blocks, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)


@pytest.mark.parametrize(("mode", "uid", "gid", "umask"), [
    (0o644, 0, 0, 0o022),         # nothing to fix
    (0o666, 0, 0, 0o022),         # bits the brick's umask strips
    (0o2755, 0, 0, 0o022),        # setgid: chmod after open
    (0o640, 1234, 5678, 0o022),   # another owner: chown, then the mode again
    (0o644, 0, 5678, 0o022),      # another group only
    (0o644, 1234, 0, 0o022),      # another user only
])
async def test_create_answers_a_fresh_stat(store: BrickStore, root: Path, mode: int, uid: int,
                                           gid: int, umask: int) -> None:
    d = uuid.uuid4().bytes
    await store.mkdir(pgfid=ROOT_GFID, name=b"d", gfid=d, mode=0o755, uid=0, gid=0)
    g = uuid.uuid4().bytes
    old = os.umask(umask)
    try:
        r = await store.create(pgfid=d, name=b"f", gfid=g, mode=stat.S_IFREG | mode, uid=uid,
                               gid=gid, conn_id=1)
    finally:
        os.umask(old)
    path = root / "d" / "f"
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == mode and (st.st_uid, st.st_gid) == (uid, gid)
    fresh(r["iatt"], path, g, nlink_hidden=1)  # the handle link is not shown
    fresh(r["postparent"], root / "d", d, nlink_hidden=0)
    assert os.getxattr(path, GFID_XATTR) == g
    await store.release(gfid=g, conn_id=1)


async def test_a_refused_create_leaves_nothing(store: BrickStore, root: Path) -> None:
    g = uuid.uuid4().bytes
    await store.create(pgfid=ROOT_GFID, name=b"a", gfid=g, mode=0o644, uid=0, gid=0)
    with pytest.raises(OSError) as ei:
        await store.create(pgfid=ROOT_GFID, name=b"b", gfid=g, mode=0o644, uid=0, gid=0)
    assert ei.value.errno == errno.EINVAL
    assert not (root / "b").exists()
    assert os.stat(root / "a").st_nlink == 2
