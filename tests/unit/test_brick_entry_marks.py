"""The changelog mark an entry op carries lands only when the change does.

Replicate counts a dirty mark only on bricks where the change succeeded and
takes back exactly those in the post-op, so a mark a failed change left on its
parent would stay (and keep the directory in the heal index) for ever.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import pytest

from pyglfs.brickd.store import BrickStore
from pyglfs.rpc.brickops import AFR_DIRTY, ROOT_GFID, afr_xattr

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")

DIRTY_ENTRY = {AFR_DIRTY: (0).to_bytes(8, "big") + (1).to_bytes(4, "big")}
BLAME = afr_xattr("v", 1)


def g() -> bytes:
    return uuid.uuid4().bytes


def counters(path: Path, name: str = AFR_DIRTY) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError as e:
        assert e.errno == errno.ENODATA
        return None


def clean(value: bytes | None) -> bool:
    return value is None or value == bytes(12)


async def test_failed_entry_ops_leave_no_mark(store: BrickStore, root: Path) -> None:
    d = g()
    await store.mkdir(pgfid=ROOT_GFID, name=b"d", gfid=d, mode=0o755, uid=0, gid=0)
    f = g()
    await store.create(pgfid=d, name=b"f", gfid=f, mode=0o644, uid=0, gid=0)
    await store.release(gfid=f)
    sub = g()
    await store.mkdir(pgfid=d, name=b"sub", gfid=sub, mode=0o755, uid=0, gid=0)
    await store.mkdir(pgfid=sub, name=b"x", gfid=g(), mode=0o755, uid=0, gid=0)
    marks = dict(DIRTY_ENTRY)
    marks[BLAME] = (0).to_bytes(8, "big") + (1).to_bytes(4, "big")

    failing = [
        (errno.EEXIST, store.create(pgfid=d, name=b"f", gfid=g(), mode=0o644, uid=0, gid=0,
                                    xattrop=marks)),
        (errno.EEXIST, store.mkdir(pgfid=d, name=b"f", gfid=g(), mode=0o755, uid=0, gid=0,
                                   xattrop=marks)),
        (errno.EEXIST, store.symlink(pgfid=d, name=b"sub", gfid=g(), target=b"t", uid=0,
                                     gid=0, xattrop=marks)),
        (errno.EEXIST, store.link(gfid=f, pgfid=d, name=b"sub", xattrop=marks)),
        (errno.ENOTEMPTY, store.rmdir(pgfid=d, name=b"sub", xattrop=marks)),
        (errno.EISDIR, store.rename(old_pgfid=d, old_name=b"f", new_pgfid=sub,
                                    new_name=b"x", xattrop=marks)),
    ]
    for code, coro in failing:
        with pytest.raises(OSError) as e:
            await coro
        assert e.value.errno == code
        for path in (root / "d", root / "d" / "sub"):
            assert clean(counters(path)), (code, path)
            assert clean(counters(path, BLAME)), (code, path)
    assert store.heal_index.list(0, 100)[0] == []

    # The same marks on a change that succeeds stay, and index the parent.
    await store.unlink(pgfid=d, name=b"f", xattrop=marks)
    assert counters(root / "d") == DIRTY_ENTRY[AFR_DIRTY]
    assert d in store.heal_index


async def test_a_mark_the_second_parent_refuses_is_taken_back_from_the_first(
        store: BrickStore, root: Path) -> None:
    a, b = g(), g()
    await store.mkdir(pgfid=ROOT_GFID, name=b"a", gfid=a, mode=0o755, uid=0, gid=0)
    await store.mkdir(pgfid=ROOT_GFID, name=b"b", gfid=b, mode=0o755, uid=0, gid=0)
    f = g()
    await store.create(pgfid=a, name=b"f", gfid=f, mode=0o644, uid=0, gid=0)
    await store.release(gfid=f)
    # b's entry counter at the int32 maximum: one more does not fit.
    top = (0).to_bytes(8, "big") + (2**31 - 1).to_bytes(4, "big")
    await store.xattrop(gfid=b, xattrop={AFR_DIRTY: top})
    with pytest.raises(OSError) as e:
        await store.rename(old_pgfid=a, old_name=b"f", new_pgfid=b, new_name=b"f",
                           xattrop=DIRTY_ENTRY)
    assert e.value.errno == errno.EINVAL
    assert clean(counters(root / "a"))
    assert a not in store.heal_index
    assert counters(root / "b") == top
    assert (root / "a" / "f").exists() and not (root / "b" / "f").exists()
    # Marks on both parents of a rename that succeeds stay on both.
    await store.xattrop(gfid=b, xattrop={AFR_DIRTY: bytes(8) + (-(2**31 - 1)).to_bytes(
        4, "big", signed=True)})
    assert b not in store.heal_index
    await store.rename(old_pgfid=a, old_name=b"f", new_pgfid=b, new_name=b"f",
                       xattrop=DIRTY_ENTRY)
    for gfid, name in ((a, "a"), (b, "b")):
        assert counters(root / name) == DIRTY_ENTRY[AFR_DIRTY]
        assert gfid in store.heal_index
    assert store.heal_index.list(0, 100)[0] == sorted([a, b])
