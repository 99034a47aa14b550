"""BrickStore file I/O, attributes, xattrs, changelog and open-file lifetime."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import xxhash
from test_brick_store import (
    VOL,
    F,
    expect,
    handle,
    mkdir,
    mkfile,
    new_gfid,
)

from pyglfs.brickd.store import BrickStore, open_store
from pyglfs.rpc.brickops import ROOT_GFID

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")


DIRTY = "trusted.afr.dirty"
BLAME = "trusted.afr.vol-client-1"


def counters(data: int, meta: int, entry: int) -> bytes:
    return b"".join(v.to_bytes(4, "big", signed=True) for v in (data, meta, entry))


# -- read / write -----------------------------------------------------------------


async def test_small_and_big_writes(store: BrickStore, root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"f")
    r = await store.write(gfid=g, offset=0, data=b"hello")
    assert r["iatt"][F["size"]] == 5
    big = os.urandom(3 * 1024 * 1024 + 17)
    r = await store.write(gfid=g, offset=10, data=big)
    assert r["iatt"][F["size"]] == 10 + len(big)
    data = (root / "f").read_bytes()
    assert data[:5] == b"hello" and data[5:10] == b"\0" * 5 and data[10:] == big
    assert (await store.read(gfid=g, offset=10, size=len(big)))["data"] == big
    assert (await store.read(gfid=g, offset=0, size=7))["data"] == b"hello\0\0"
    # short at end of file, empty past it
    assert len((await store.read(gfid=g, offset=len(data) - 3, size=100))["data"]) == 3
    assert (await store.read(gfid=g, offset=len(data) + 100, size=100))["data"] == b""
    await expect(errno.EINVAL, store.read(gfid=g, offset=0, size=64 * 1024 * 1024))


async def test_writes_at_absurd_offsets_fail_cleanly(store: BrickStore) -> None:
    g = await mkfile(store, ROOT_GFID, b"f")
    with pytest.raises(OSError) as e:
        await store.write(gfid=g, offset=(1 << 63) - 2, data=b"abc")
    assert e.value.errno in (errno.EFBIG, errno.EINVAL)
    await expect(errno.EINVAL, store.write(gfid=g, offset=1 << 64, data=b"abc"))
    await expect(errno.EINVAL, store.read(gfid=g, offset=1 << 64, size=1))
    assert (await store.stat(gfid=g))["iatt"][F["size"]] == 0


async def test_io_on_directories_and_symlinks(store: BrickStore) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    link = new_gfid()
    await store.symlink(pgfid=ROOT_GFID, name=b"l", gfid=link, target=b"d", uid=0, gid=0)
    for g in (d, ROOT_GFID):
        await expect(errno.EISDIR, store.open(gfid=g, flags=0))
        await expect(errno.EISDIR, store.read(gfid=g, offset=0, size=1))
        await expect(errno.EISDIR, store.write(gfid=g, offset=0, data=b"x"))
    await expect(errno.ELOOP, store.open(gfid=link, flags=0))
    await expect(errno.ELOOP, store.write(gfid=link, offset=0, data=b"x"))


async def test_open_truncates_on_o_trunc(store: BrickStore) -> None:
    g = await mkfile(store, ROOT_GFID, b"f", b"content")
    r = await store.open(gfid=g, flags=os.O_RDWR, conn_id=1)
    assert r["iatt"][F["size"]] == 7
    r = await store.open(gfid=g, flags=os.O_WRONLY | os.O_TRUNC, conn_id=1)
    assert r["iatt"][F["size"]] == 0
    await store.release(gfid=g, conn_id=1)
    await store.release(gfid=g, conn_id=1)


async def test_fsync_flush_fallocate_statfs(store: BrickStore, root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"f", b"x" * 100)
    d = await mkdir(store, ROOT_GFID, b"d")
    assert await store.fsync(gfid=g) == {}
    assert await store.fsync(gfid=g, datasync=True) == {}
    assert await store.fsync(gfid=d) == {}
    assert await store.flush(gfid=g) == {}
    await expect(errno.ESTALE, store.flush(gfid=new_gfid()))
    r = await store.fallocate(gfid=g, mode=0, offset=0, length=1 << 20)
    assert r["iatt"][F["size"]] == 1 << 20
    r = await store.fallocate(gfid=g, mode=1, offset=1 << 20, length=1 << 20)  # KEEP_SIZE
    assert r["iatt"][F["size"]] == 1 << 20
    r = await store.fallocate(gfid=g, mode=3, offset=0, length=50)  # PUNCH_HOLE|KEEP_SIZE
    assert (root / "f").read_bytes()[:100] == b"\0" * 50 + b"x" * 50
    await expect(errno.EOPNOTSUPP, store.fallocate(gfid=g, mode=2, offset=0, length=5))
    fs = await store.statfs()
    v = os.statvfs(root)
    assert fs["bsize"] == v.f_bsize and fs["blocks"] == v.f_blocks and fs["namemax"] == 255
    assert set(fs) == {"bsize", "frsize", "blocks", "bfree", "bavail", "files", "ffree",
                       "namemax"}


async def test_checksum_matches_xxh3(store: BrickStore) -> None:
    data = os.urandom(10_000)
    g = await mkfile(store, ROOT_GFID, b"f", data)
    r = await store.checksum(gfid=g, offset=0, size=20_000, block=4096)
    assert r == {"sums": [xxhash.xxh3_64_intdigest(data[i:i + 4096])
                          for i in range(0, len(data), 4096)]}


# -- setattr ----------------------------------------------------------------------


async def test_setattr_file(store: BrickStore, root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"f", b"0123456789")
    r = await store.setattr(gfid=g, mode=0o6711, uid=100, gid=200)
    st = os.lstat(root / "f")
    assert stat.S_IMODE(st.st_mode) == 0o6711 and (st.st_uid, st.st_gid) == (100, 200)
    assert r["iatt"][F["mode"]] == st.st_mode
    r = await store.setattr(gfid=g, size=4)
    assert r["iatt"][F["size"]] == 4 and (root / "f").read_bytes() == b"0123"
    r = await store.setattr(gfid=g, atime_ns=1_000_000_000_123, mtime_ns=2_000_000_000_456)
    assert (r["iatt"][F["atime_ns"]], r["iatt"][F["mtime_ns"]]) == (
        1_000_000_000_123, 2_000_000_000_456)
    r = await store.setattr(gfid=g, mtime_ns=-5_000_000_000)
    assert r["iatt"][F["atime_ns"]] == 1_000_000_000_123
    assert r["iatt"][F["mtime_ns"]] == -5_000_000_000
    r = await store.setattr(gfid=g, mtime_now=True)
    assert r["iatt"][F["mtime_ns"]] > 1_600_000_000 * 10**9
    assert r["iatt"][F["atime_ns"]] == 1_000_000_000_123
    r = await store.setattr(gfid=g, uid=5)
    assert (r["iatt"][F["uid"]], r["iatt"][F["gid"]]) == (5, 200)


async def test_setattr_directory_and_errors(store: BrickStore, root: Path) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    r = await store.setattr(gfid=d, mode=0o1777, uid=3, gid=4, atime_now=True,
                            mtime_ns=10**18)
    st = os.lstat(root / "d")
    assert stat.S_IMODE(st.st_mode) == 0o1777 and (st.st_uid, st.st_gid) == (3, 4)
    assert r["iatt"][F["mtime_ns"]] == 10**18
    await expect(errno.EISDIR, store.setattr(gfid=d, size=0))
    p = new_gfid()
    await store.mknod(pgfid=ROOT_GFID, name=b"p", gfid=p, mode=stat.S_IFIFO | 0o600, rdev=0,
                      uid=0, gid=0)
    await expect(errno.EINVAL, store.setattr(gfid=p, size=0))
    await store.setattr(gfid=ROOT_GFID, mode=0o755)


# -- xattrs -----------------------------------------------------------------------


async def test_user_xattrs(store: BrickStore, root: Path) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    g = await mkfile(store, d, b"f")
    for target, path in ((g, root / "d" / "f"), (d, root / "d"), (ROOT_GFID, root)):
        assert await store.setxattr(gfid=target, name="user.k", value=b"v1") == {}
        assert os.getxattr(path, "user.k") == b"v1"
        assert (await store.getxattr(gfid=target, name="user.k"))["value"] == b"v1"
        assert "user.k" in (await store.listxattr(gfid=target))["names"]
        await expect(errno.EEXIST, store.setxattr(gfid=target, name="user.k", value=b"x",
                                                  flags=os.XATTR_CREATE))
        await expect(errno.ENODATA, store.setxattr(gfid=target, name="user.new", value=b"x",
                                                   flags=os.XATTR_REPLACE))
        await store.removexattr(gfid=target, name="user.k")
        await expect(errno.ENODATA, store.getxattr(gfid=target, name="user.k"))
        await expect(errno.ENODATA, store.removexattr(gfid=target, name="user.k"))
    await expect(errno.EINVAL, store.setxattr(gfid=g, name="user.k", value=b"x", flags=4))
    await expect(errno.EINVAL, store.getxattr(gfid=g, name="user.\0"))
    big = os.urandom(2000)
    await store.setxattr(gfid=g, name="user.big", value=big)
    assert (await store.getxattr(gfid=g, name="user.big"))["value"] == big


async def test_internal_xattrs_hidden_and_protected(store: BrickStore, root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"f")
    await store.xattrop(gfid=g, xattrop={BLAME: counters(1, 0, 0)})
    for name in ("trusted.gfid", BLAME, DIRTY, "trusted.pyglfs.volume-id"):
        for target in (g, ROOT_GFID):
            await expect(errno.ENODATA, store.getxattr(gfid=target, name=name))
            await expect(errno.EPERM, store.setxattr(gfid=target, name=name, value=b"\0" * 16))
            await expect(errno.EPERM, store.removexattr(gfid=target, name=name))
    for target in (g, ROOT_GFID):
        names = (await store.listxattr(gfid=target))["names"]
        assert not [n for n in names if n.startswith(("trusted.gfid", "trusted.afr.",
                                                      "trusted.pyglfs."))]
    assert os.getxattr(root / "f", "trusted.gfid") == g
    assert os.getxattr(root, "trusted.pyglfs.volume-id") == uuid.UUID(VOL).bytes


# -- changelog --------------------------------------------------------------------


async def test_xattrop_op_and_heal_index(store: BrickStore, root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"f")
    r = await store.xattrop(gfid=g, xattrop={DIRTY: counters(1, 0, 0)})
    assert r == {"xattrs": {DIRTY: counters(1, 0, 0)}}
    assert g in store.heal_index
    r = await store.xattrop(gfid=g, xattrop={DIRTY: counters(-1, 0, 0),
                                             BLAME: counters(0, 2, 0)})
    assert r["xattrs"] == {DIRTY: counters(0, 0, 0), BLAME: counters(0, 2, 0)}
    assert g in store.heal_index
    r = await store.xattrop(gfid=g, xattrop={BLAME: counters(0, -2, 0)})
    assert g not in store.heal_index
    lk = await store.lookup(pgfid=ROOT_GFID, name=b"f")
    assert lk["xattrs"] == {DIRTY: counters(0, 0, 0), BLAME: counters(0, 0, 0)}
    assert (await store.lookup_gfid(gfid=g))["xattrs"] == lk["xattrs"]
    await expect(errno.EPERM, store.xattrop(gfid=g, xattrop={"user.x": counters(1, 0, 0)}))
    # an inode that is gone leaves the index with its last name
    await store.xattrop(gfid=g, xattrop={BLAME: counters(1, 0, 0)})
    d = await mkdir(store, ROOT_GFID, b"d")
    await store.xattrop(gfid=d, xattrop={BLAME: counters(0, 0, 1)})
    assert g in store.heal_index and d in store.heal_index
    await store.unlink(pgfid=ROOT_GFID, name=b"f")
    await store.rmdir(pgfid=ROOT_GFID, name=b"d")
    assert g not in store.heal_index and d not in store.heal_index


async def test_xattrop_argument_goes_to_the_right_inode(store: BrickStore,
                                                        root: Path) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    one = {DIRTY: counters(0, 0, 1)}
    g = new_gfid()
    await store.create(pgfid=d, name=b"f", gfid=g, mode=0o644, uid=0, gid=0, xattrop=one)
    assert os.getxattr(root / "d", DIRTY) == counters(0, 0, 1)
    await store.write(gfid=g, offset=0, data=b"x", xattrop={DIRTY: counters(1, 0, 0)})
    await store.setattr(gfid=g, mode=0o600, xattrop={DIRTY: counters(0, 1, 0)})
    await store.setxattr(gfid=g, name="user.a", value=b"1", xattrop={DIRTY: counters(0, 1, 0)})
    await store.fallocate(gfid=g, mode=0, offset=0, length=10,
                          xattrop={DIRTY: counters(1, 0, 0)})
    assert os.getxattr(root / "d" / "f", DIRTY) == counters(2, 2, 0)
    e = await mkdir(store, ROOT_GFID, b"e")
    await store.rename(old_pgfid=d, old_name=b"f", new_pgfid=e, new_name=b"f", xattrop=one)
    assert os.getxattr(root / "d", DIRTY) == counters(0, 0, 2)
    assert os.getxattr(root / "e", DIRTY) == counters(0, 0, 1)
    await store.rename(old_pgfid=e, old_name=b"f", new_pgfid=e, new_name=b"g", xattrop=one)
    assert os.getxattr(root / "e", DIRTY) == counters(0, 0, 2)
    await store.unlink(pgfid=e, name=b"g", xattrop=one)
    assert os.getxattr(root / "e", DIRTY) == counters(0, 0, 3)
    # a symlink's own changelog: never followed to its target
    link = new_gfid()
    await store.symlink(pgfid=ROOT_GFID, name=b"l", gfid=link, target=b"d", uid=0, gid=0)
    await store.setattr(gfid=link, uid=1, xattrop={DIRTY: counters(0, 1, 0)})
    assert os.getxattr(root / "l", DIRTY, follow_symlinks=False) == counters(0, 1, 0)
    assert os.getxattr(root / "d", DIRTY) == counters(0, 0, 2)
    assert link in store.heal_index
    await store.xattrop(gfid=link, xattrop={DIRTY: counters(0, -1, 0)})
    assert link not in store.heal_index


# -- open files -------------------------------------------------------------------


async def test_unlinked_while_open_stays_readable_until_release(store: BrickStore,
                                                                root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"f", b"still here")
    await store.open(gfid=g, flags=os.O_RDONLY, conn_id=1)
    await store.open(gfid=g, flags=os.O_RDONLY, conn_id=2)
    await store.unlink(pgfid=ROOT_GFID, name=b"f")
    store.files.clear()
    assert (await store.read(gfid=g, offset=0, size=100))["data"] == b"still here"
    await store.write(gfid=g, offset=0, data=b"STILL")
    assert (await store.stat(gfid=g))["iatt"][F["nlink"]] == 0
    await store.release(gfid=g, conn_id=1)
    await store.release(gfid=g, conn_id=1)  # unmatched: ignored
    assert (await store.read(gfid=g, offset=0, size=5))["data"] == b"STILL"
    store.release_all(2)
    assert not os.path.lexists(handle(root, g))
    await expect(errno.ESTALE, store.read(gfid=g, offset=0, size=5))


async def test_open_file_relinked_keeps_its_handle(store: BrickStore, root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"f", b"x")
    await store.open(gfid=g, flags=0, conn_id=9)
    await store.unlink(pgfid=ROOT_GFID, name=b"f")
    await store.link(gfid=g, pgfid=ROOT_GFID, name=b"back")
    await store.release(gfid=g, conn_id=9)
    assert os.path.exists(handle(root, g))
    assert (await store.lookup(pgfid=ROOT_GFID, name=b"back"))["iatt"][F["gfid"]] == g


async def test_rename_over_open_file_keeps_it_until_release(store: BrickStore,
                                                            root: Path) -> None:
    victim = await mkfile(store, ROOT_GFID, b"victim", b"old")
    await mkfile(store, ROOT_GFID, b"new", b"new")
    await store.open(gfid=victim, flags=0, conn_id=3)
    await store.rename(old_pgfid=ROOT_GFID, old_name=b"new", new_pgfid=ROOT_GFID,
                       new_name=b"victim")
    assert (await store.read(gfid=victim, offset=0, size=3))["data"] == b"old"
    store.release_all(3)
    await expect(errno.ESTALE, store.read(gfid=victim, offset=0, size=3))


def test_orphans_removed_at_start(root: Path) -> None:
    async def crash_with_open_unlinked_file() -> tuple[bytes, bytes, bytes]:
        s = open_store(root, VOL)
        try:
            g = await mkfile(s, ROOT_GFID, b"f", b"x")
            keep = await mkfile(s, ROOT_GFID, b"keep", b"y")
            link = new_gfid()
            await s.symlink(pgfid=ROOT_GFID, name=b"l", gfid=link, target=b"t", uid=0, gid=0)
            d = await mkdir(s, ROOT_GFID, b"d")
            await s.open(gfid=g, flags=0, conn_id=1)
            await s.unlink(pgfid=ROOT_GFID, name=b"f")
            assert os.path.exists(handle(root, g))
            return g, keep, d
        finally:
            s.close()  # no release: as if the brick died

    g, keep, d = trio.run(crash_with_open_unlinked_file)
    # a symlink orphaned by a crash between its unlink and its handle's removal
    lost = new_gfid()
    os.symlink("t", root / "lost")
    os.setxattr(root / "lost", "trusted.gfid", lost, follow_symlinks=False)
    os.makedirs(handle(root, lost).parent, exist_ok=True)
    os.link(root / "lost", handle(root, lost), follow_symlinks=False)
    os.unlink(root / "lost")
    s = open_store(root, VOL)
    try:
        assert not os.path.lexists(handle(root, g))
        assert not os.path.lexists(handle(root, lost))
        assert os.path.exists(handle(root, keep))
        assert os.path.islink(handle(root, d))
        assert os.path.lexists(handle(root, ROOT_GFID))
    finally:
        s.close()


# -- errors from the local filesystem -----------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with 64 inodes, unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64", "tmpfs",
                       str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


async def test_enospc_on_a_full_filesystem(small_fs: Path) -> None:
    s = open_store(small_fs, VOL)
    try:
        g = await mkfile(s, ROOT_GFID, b"f")
        with pytest.raises(OSError) as e:
            for i in range(8):
                await s.write(gfid=g, offset=i * 256 * 1024, data=b"z" * 256 * 1024)
        assert e.value.errno == errno.ENOSPC
        made = 0
        with pytest.raises(OSError) as e:
            for i in range(100):
                await mkdir(s, ROOT_GFID, b"d%d" % i)
                made += 1
        assert e.value.errno == errno.ENOSPC
        await expect(errno.ENOSPC, mkfile(s, ROOT_GFID, b"more"))
        names = {e[0] for e in (await s.readdir(gfid=ROOT_GFID, cookie=0,
                                                count=1000))["entries"]}
        assert names == {b"f"} | {b"d%d" % i for i in range(made)}
    finally:
        s.close()


@pytest.fixture
def chattr(root: Path) -> Iterator[list[Path]]:
    """Paths given the immutable flag by a test; the flag is cleared afterwards."""
    if not os.path.exists("/usr/bin/chattr"):
        pytest.skip("chattr not installed")
    flagged: list[Path] = []
    try:
        yield flagged
    finally:
        for p in flagged:
            subprocess.run(["chattr", "-i", str(p)], check=False)


async def test_local_fs_errors_pass_through(store: BrickStore, root: Path,
                                            chattr: list[Path]) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    g = await mkfile(store, d, b"f", b"x")
    await mkfile(store, d, b"other")
    store.files.clear()
    chattr.append(root / "d" / "f")
    flag = await trio.run_process(["chattr", "+i", str(chattr[0])], check=False,
                                  capture_stderr=True)
    if flag.returncode:
        pytest.skip("filesystem without the immutable flag")
    await expect(errno.EPERM, store.write(gfid=g, offset=0, data=b"y"))
    await expect(errno.EPERM, store.unlink(pgfid=d, name=b"f"))
    await expect(errno.EPERM, store.setxattr(gfid=g, name="user.a", value=b"1"))
    await expect(errno.EPERM, store.rename(old_pgfid=d, old_name=b"other", new_pgfid=d,
                                           new_name=b"f"))
    assert (root / "d" / "f").read_bytes() == b"x"
    assert (await store.lookup(pgfid=d, name=b"f"))["iatt"][F["gfid"]] == g


async def test_setattr_both_times_at_and_past_the_plain_range(store: BrickStore,
                                                               root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"t", b"")
    d = await mkdir(store, ROOT_GFID, b"td")
    for gfid, path in ((g, root / "t"), (d, root / "td")):
        # (times ext4 can store: 1901 to 2446)
        for a, m in ((-7_000_000_001, 3_000_000_000_999), ((1 << 62) - 1, 5),
                     (1 << 62, 5), (5, (1 << 62) + 7)):
            r = await store.setattr(gfid=gfid, atime_ns=a, mtime_ns=m)
            st = os.lstat(path)
            assert (r["iatt"][F["atime_ns"]], r["iatt"][F["mtime_ns"]]) == (a, m)
            assert (st.st_atime_ns, st.st_mtime_ns) == (a, m)
        before = os.lstat(path)
        for a, m in ((1 << 100, 5), (5, -(1 << 100)), (1 << 100, 1 << 100)):
            await expect(errno.EINVAL, store.setattr(gfid=gfid, atime_ns=a, mtime_ns=m))
        after = os.lstat(path)
        assert (after.st_atime_ns, after.st_mtime_ns) == (before.st_atime_ns,
                                                          before.st_mtime_ns)
