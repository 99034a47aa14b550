"""BrickStore on a temporary directory: start-up checks, entry ops and their errors."""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers.brickstore import VOL

from pyglfs.brickd.layout import BrickRefused
from pyglfs.brickd.names import handle_rel
from pyglfs.brickd.store import BrickStore, open_store
from pyglfs.rpc.brickops import GFID_XATTR, IATT_FIELDS, ROOT_GFID, VOLUME_ID_XATTR

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")

F = {name: i for i, name in enumerate(IATT_FIELDS)}


def new_gfid() -> bytes:
    return uuid.uuid4().bytes


def handle(root: Path, gfid: bytes) -> Path:
    return root / ".pyglfs" / "handles" / handle_rel(gfid).decode()


def err(e: pytest.ExceptionInfo[OSError]) -> int:
    assert e.value.errno is not None
    return e.value.errno


async def mkfile(s: BrickStore, pgfid: bytes, name: bytes, data: bytes = b"",
                 mode: int = 0o644) -> bytes:
    g = new_gfid()
    await s.create(pgfid=pgfid, name=name, gfid=g, mode=mode, uid=0, gid=0)
    if data:
        await s.write(gfid=g, offset=0, data=data)
    await s.release(gfid=g)  # create counts as an open
    return g


async def mkdir(s: BrickStore, pgfid: bytes, name: bytes, mode: int = 0o755) -> bytes:
    g = new_gfid()
    await s.mkdir(pgfid=pgfid, name=name, gfid=g, mode=mode, uid=0, gid=0)
    return g


async def expect(code: int, coro: Any) -> None:
    with pytest.raises(OSError) as e:
        await coro
    assert e.value.errno == code, e.value


# -- start-up --------------------------------------------------------------------


def test_missing_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(BrickRefused, match="does not exist"):
        open_store(tmp_path / "absent", VOL)
    assert not (tmp_path / "absent").exists()


def test_file_as_root_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(BrickRefused, match="not a directory"):
        open_store(tmp_path / "f", VOL)


def test_volume_id_bound_and_checked(root: Path) -> None:
    open_store(root, VOL).close()
    assert os.getxattr(root, VOLUME_ID_XATTR) == uuid.UUID(VOL).bytes
    assert os.getxattr(root, GFID_XATTR) == ROOT_GFID
    open_store(root, VOL, create=False).close()
    other = str(uuid.uuid4())
    with pytest.raises(BrickRefused) as e:
        open_store(root, other)
    msg = str(e.value)
    assert str(root) in msg and VOL in msg and other in msg


def test_uninitialised_brick_refused_without_create(root: Path) -> None:
    with pytest.raises(BrickRefused, match="not an initialised brick"):
        open_store(root, VOL, create=False)
    assert not (root / ".pyglfs").exists()


def test_invalid_volume_id_refused(root: Path) -> None:
    with pytest.raises(BrickRefused, match="invalid volume id"):
        open_store(root, "not-a-uuid")


def test_broken_xattrs_refused(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_xattrs(*args: Any, **kw: Any) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_xattrs)
    with pytest.raises(BrickRefused, match="extended attributes"):
        open_store(root, VOL)


def test_layout_created(store: BrickStore, root: Path) -> None:
    for sub in ("handles", "indices", "unlink"):
        assert (root / ".pyglfs" / sub).is_dir()
    assert os.readlink(handle(root, ROOT_GFID)) == "../../../.."
    assert handle(root, ROOT_GFID).resolve() == root.resolve()


async def test_root_stat_hides_internal_dir(store: BrickStore, root: Path) -> None:
    iatt = (await store.stat(gfid=ROOT_GFID))["iatt"]
    assert iatt[F["gfid"]] == ROOT_GFID
    assert iatt[F["nlink"]] == os.stat(root).st_nlink - 1 == 2
    assert len(iatt) == len(IATT_FIELDS)


# -- create, mkdir, mknod, symlink -------------------------------------------------


async def test_create_sets_gfid_owner_mode_and_handle(store: BrickStore, root: Path) -> None:
    g = new_gfid()
    old = os.umask(0o077)
    try:
        r = await store.create(pgfid=ROOT_GFID, name=b"f", gfid=g, mode=0o4775, uid=1234,
                               gid=567)
    finally:
        os.umask(old)
    iatt = r["iatt"]
    st = os.lstat(root / "f")
    assert iatt[F["gfid"]] == g and iatt[F["ino"]] == st.st_ino
    assert stat.S_IMODE(st.st_mode) == 0o4775 and stat.S_ISREG(st.st_mode)
    assert (st.st_uid, st.st_gid) == (1234, 567)
    assert iatt[F["nlink"]] == 1 and st.st_nlink == 2
    assert os.getxattr(root / "f", GFID_XATTR) == g
    assert os.lstat(handle(root, g)).st_ino == st.st_ino
    lk = await store.lookup(pgfid=ROOT_GFID, name=b"f")
    assert lk == {"iatt": (await store.stat(gfid=g))["iatt"], "xattrs": {}}


async def test_create_existing_name_and_gfid_reuse(store: BrickStore) -> None:
    g = await mkfile(store, ROOT_GFID, b"a")
    await expect(errno.EEXIST, store.create(pgfid=ROOT_GFID, name=b"a", gfid=new_gfid(),
                                            mode=0o644, uid=0, gid=0))
    await expect(errno.EEXIST, store.create(pgfid=ROOT_GFID, name=b"a", gfid=g,
                                            mode=0o644, uid=0, gid=0))
    # the gfid already names another inode: refused whatever the op
    await expect(errno.EINVAL, store.create(pgfid=ROOT_GFID, name=b"b", gfid=g,
                                            mode=0o644, uid=0, gid=0))
    await expect(errno.EINVAL, store.mkdir(pgfid=ROOT_GFID, name=b"b", gfid=g,
                                           mode=0o755, uid=0, gid=0))
    await expect(errno.EINVAL, store.symlink(pgfid=ROOT_GFID, name=b"b", gfid=g,
                                             target=b"x", uid=0, gid=0))
    await expect(errno.EINVAL, store.mknod(pgfid=ROOT_GFID, name=b"b", gfid=g,
                                           mode=stat.S_IFIFO | 0o644, rdev=0, uid=0, gid=0))
    for bad in (ROOT_GFID, b"\0" * 16):
        await expect(errno.EINVAL, store.create(pgfid=ROOT_GFID, name=b"c", gfid=bad,
                                                mode=0o644, uid=0, gid=0))
    await expect(errno.ENOENT, store.lookup(pgfid=ROOT_GFID, name=b"b"))
    await expect(errno.ENOENT, store.lookup(pgfid=ROOT_GFID, name=b"c"))


async def test_unknown_gfid_is_estale(store: BrickStore) -> None:
    g = new_gfid()
    for coro in (store.stat(gfid=g), store.lookup_gfid(gfid=g), store.open(gfid=g, flags=0),
                 store.read(gfid=g, offset=0, size=1), store.readdir(gfid=g, cookie=0, count=1),
                 store.getxattr(gfid=g, name="user.a"), store.setattr(gfid=g, mode=0o600),
                 store.lookup(pgfid=g, name=b"x"), store.readlink(gfid=g),
                 store.create(pgfid=g, name=b"x", gfid=new_gfid(), mode=0o644, uid=0, gid=0),
                 store.link(gfid=g, pgfid=ROOT_GFID, name=b"x")):
        await expect(errno.ESTALE, coro)


async def test_mkdir_handle_and_rmdir(store: BrickStore, root: Path) -> None:
    d = await mkdir(store, ROOT_GFID, b"d", 0o3770)
    assert stat.S_IMODE(os.lstat(root / "d").st_mode) == 0o3770
    target = os.readlink(handle(root, d)).encode()
    assert target == b"../../00/00/00000000-0000-0000-0000-000000000001/d"
    assert handle(root, d).resolve() == (root / "d").resolve()
    sub = await mkdir(store, d, b"sub")
    assert handle(root, sub).resolve() == (root / "d" / "sub").resolve()
    f = await mkfile(store, d, b"f")
    await expect(errno.ENOTEMPTY, store.rmdir(pgfid=ROOT_GFID, name=b"d"))
    await expect(errno.ENOTDIR, store.rmdir(pgfid=d, name=b"f"))
    await expect(errno.EISDIR, store.unlink(pgfid=d, name=b"sub"))
    await expect(errno.ENOTDIR, store.lookup(pgfid=f, name=b"x"))
    await expect(errno.ENOENT, store.rmdir(pgfid=d, name=b"nope"))
    await store.unlink(pgfid=d, name=b"f")
    await store.rmdir(pgfid=d, name=b"sub")
    await store.rmdir(pgfid=ROOT_GFID, name=b"d")
    assert not os.path.lexists(handle(root, d))
    assert not os.path.lexists(handle(root, f))
    await expect(errno.ESTALE, store.stat(gfid=d))
    await mkdir(store, ROOT_GFID, b"twice")
    await expect(errno.EEXIST, mkdir(store, ROOT_GFID, b"twice"))


async def test_mknod_fifo_and_device(store: BrickStore, root: Path) -> None:
    g = new_gfid()
    r = await store.mknod(pgfid=ROOT_GFID, name=b"p", gfid=g, mode=stat.S_IFIFO | 0o640,
                          rdev=0, uid=7, gid=8)
    st = os.lstat(root / "p")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (7, 8) and r["iatt"][F["gfid"]] == g
    assert os.getxattr(root / "p", GFID_XATTR) == g
    await expect(errno.EINVAL, store.open(gfid=g, flags=os.O_RDONLY))
    await expect(errno.EINVAL, store.read(gfid=g, offset=0, size=1))
    await store.setattr(gfid=g, mode=0o600, uid=9)
    st = os.lstat(root / "p")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 9
    dev = new_gfid()
    r = await store.mknod(pgfid=ROOT_GFID, name=b"null", gfid=dev,
                          mode=stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3), uid=0, gid=0)
    assert r["iatt"][F["rdev"]] == os.makedev(1, 3)
    assert stat.S_ISCHR(os.lstat(root / "null").st_mode)
    # a device node is never opened by the brick
    await expect(errno.EINVAL, store.write(gfid=dev, offset=0, data=b"x"))
    await expect(errno.EINVAL, store.mknod(pgfid=ROOT_GFID, name=b"d", gfid=new_gfid(),
                                           mode=stat.S_IFDIR | 0o755, rdev=0, uid=0, gid=0))


async def test_symlink_and_readlink(store: BrickStore, root: Path) -> None:
    g = new_gfid()
    r = await store.symlink(pgfid=ROOT_GFID, name=b"l", gfid=g, target=b"../some/where",
                            uid=11, gid=12)
    assert stat.S_ISLNK(r["iatt"][F["mode"]]) and r["iatt"][F["nlink"]] == 1
    st = os.lstat(root / "l")
    assert (st.st_uid, st.st_gid) == (11, 12)
    assert os.getxattr(root / "l", GFID_XATTR, follow_symlinks=False) == g
    assert os.lstat(handle(root, g)).st_ino == st.st_ino
    assert await store.readlink(gfid=g) == {"target": b"../some/where"}
    now = (await store.stat(gfid=g))["iatt"]
    assert now[:F["atime_ns"]] == r["iatt"][:F["atime_ns"]]
    f = await mkfile(store, ROOT_GFID, b"f")
    await expect(errno.EINVAL, store.readlink(gfid=f))
    await expect(errno.EINVAL, store.readlink(gfid=ROOT_GFID))
    await expect(errno.EINVAL, store.symlink(pgfid=ROOT_GFID, name=b"m", gfid=new_gfid(),
                                             target=b"a\0b", uid=0, gid=0))
    await store.unlink(pgfid=ROOT_GFID, name=b"l")
    assert not os.path.lexists(handle(root, g))


async def test_link_and_unlink_keep_handle_until_last_name(store: BrickStore,
                                                           root: Path) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    g = await mkfile(store, ROOT_GFID, b"a", b"data")
    r = await store.link(gfid=g, pgfid=d, name=b"b")
    assert r["iatt"][F["nlink"]] == 2 and r["iatt"][F["gfid"]] == g
    await expect(errno.EEXIST, store.link(gfid=g, pgfid=d, name=b"b"))
    await expect(errno.EPERM, store.link(gfid=d, pgfid=ROOT_GFID, name=b"dl"))
    await expect(errno.EPERM, store.link(gfid=ROOT_GFID, pgfid=d, name=b"rl"))
    await store.unlink(pgfid=ROOT_GFID, name=b"a")
    assert os.path.exists(handle(root, g))
    assert (await store.stat(gfid=g))["iatt"][F["nlink"]] == 1
    assert (await store.read(gfid=g, offset=0, size=10))["data"] == b"data"
    await store.unlink(pgfid=d, name=b"b")
    assert not os.path.lexists(handle(root, g))
    await expect(errno.ESTALE, store.stat(gfid=g))
    await expect(errno.ESTALE, store.read(gfid=g, offset=0, size=10))
    await expect(errno.ENOENT, store.unlink(pgfid=d, name=b"b"))


# -- rename ------------------------------------------------------------------------------


async def test_rename_file_across_dirs_and_over_file(store: BrickStore, root: Path) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    a = await mkfile(store, ROOT_GFID, b"a", b"A")
    b = await mkfile(store, d, b"b", b"B")
    r = await store.rename(old_pgfid=ROOT_GFID, old_name=b"a", new_pgfid=d, new_name=b"b")
    assert r["iatt"][F["gfid"]] == a
    assert (root / "d" / "b").read_bytes() == b"A" and not (root / "a").exists()
    assert not os.path.lexists(handle(root, b))
    await expect(errno.ESTALE, store.stat(gfid=b))
    assert (await store.lookup(pgfid=d, name=b"b"))["iatt"][F["gfid"]] == a
    await expect(errno.ENOENT, store.rename(old_pgfid=ROOT_GFID, old_name=b"a",
                                            new_pgfid=d, new_name=b"c"))


async def test_rename_directory_moves_its_handle(store: BrickStore, root: Path) -> None:
    a = await mkdir(store, ROOT_GFID, b"a")
    b = await mkdir(store, ROOT_GFID, b"b")
    inner = await mkdir(store, a, b"inner")
    f = await mkfile(store, inner, b"f", b"x")
    await store.rename(old_pgfid=ROOT_GFID, old_name=b"a", new_pgfid=b, new_name=b"moved")
    assert handle(root, a).resolve() == (root / "b" / "moved").resolve()
    store.dirs.clear()
    store.files.clear()
    assert (await store.lookup(pgfid=inner, name=b"f"))["iatt"][F["gfid"]] == f
    assert (await store.stat(gfid=a))["iatt"][F["gfid"]] == a
    # a directory cannot move into itself
    await expect(errno.EINVAL, store.rename(old_pgfid=b, old_name=b"moved", new_pgfid=inner,
                                            new_name=b"loop"))


async def test_rename_over_directories(store: BrickStore, root: Path) -> None:
    a = await mkdir(store, ROOT_GFID, b"a")
    empty = await mkdir(store, ROOT_GFID, b"empty")
    full = await mkdir(store, ROOT_GFID, b"full")
    await mkfile(store, full, b"x")
    await expect(errno.ENOTEMPTY, store.rename(old_pgfid=ROOT_GFID, old_name=b"a",
                                               new_pgfid=ROOT_GFID, new_name=b"full"))
    await store.rename(old_pgfid=ROOT_GFID, old_name=b"a", new_pgfid=ROOT_GFID,
                       new_name=b"empty")
    assert not os.path.lexists(handle(root, empty))
    await expect(errno.ESTALE, store.stat(gfid=empty))
    store.dirs.clear()
    assert (await store.stat(gfid=a))["iatt"][F["ino"]] == os.lstat(root / "empty").st_ino
    f = await mkfile(store, ROOT_GFID, b"file")
    await expect(errno.EISDIR, store.rename(old_pgfid=ROOT_GFID, old_name=b"file",
                                            new_pgfid=ROOT_GFID, new_name=b"full"))
    await expect(errno.ENOTDIR, store.rename(old_pgfid=ROOT_GFID, old_name=b"full",
                                             new_pgfid=ROOT_GFID, new_name=b"file"))
    assert (await store.stat(gfid=f))["iatt"][F["gfid"]] == f


async def test_rename_flags(store: BrickStore, root: Path) -> None:
    x = await mkdir(store, ROOT_GFID, b"x")
    y = await mkdir(store, ROOT_GFID, b"y")
    f = await mkfile(store, ROOT_GFID, b"f")
    await expect(errno.EEXIST, store.rename(old_pgfid=ROOT_GFID, old_name=b"x",
                                            new_pgfid=ROOT_GFID, new_name=b"y", flags=1))
    await store.rename(old_pgfid=ROOT_GFID, old_name=b"x", new_pgfid=ROOT_GFID,
                       new_name=b"z", flags=1)
    await mkdir(store, y, b"deep")
    await store.rename(old_pgfid=ROOT_GFID, old_name=b"z", new_pgfid=y, new_name=b"deep",
                       flags=2)
    assert handle(root, x).resolve() == (root / "y" / "deep").resolve()
    store.dirs.clear()
    assert (await store.lookup(pgfid=ROOT_GFID, name=b"z"))["iatt"][F["gfid"]] != x
    assert (await store.lookup(pgfid=y, name=b"deep"))["iatt"][F["gfid"]] == x
    await store.rename(old_pgfid=ROOT_GFID, old_name=b"f", new_pgfid=y, new_name=b"deep",
                       flags=2)
    assert (await store.lookup(pgfid=ROOT_GFID, name=b"f"))["iatt"][F["gfid"]] == x
    assert (await store.stat(gfid=f))["iatt"][F["ino"]] == os.lstat(root / "y" / "deep").st_ino
    assert handle(root, x).resolve() == (root / "f").resolve()
    for bad in (3, 4, 8):
        await expect(errno.EINVAL, store.rename(old_pgfid=ROOT_GFID, old_name=b"f",
                                                new_pgfid=ROOT_GFID, new_name=b"g",
                                                flags=bad))


async def test_rename_between_hard_links_changes_nothing(store: BrickStore,
                                                         root: Path) -> None:
    g = await mkfile(store, ROOT_GFID, b"a", b"keep")
    await store.link(gfid=g, pgfid=ROOT_GFID, name=b"b")
    await store.rename(old_pgfid=ROOT_GFID, old_name=b"a", new_pgfid=ROOT_GFID, new_name=b"b")
    assert os.path.exists(handle(root, g))
    assert (await store.read(gfid=g, offset=0, size=4))["data"] == b"keep"


# -- deep trees -----------------------------------------------------------------------


async def test_tree_deeper_than_path_max(root: Path) -> None:
    s = open_store(root, VOL, dir_cache=16)
    try:
        parent = ROOT_GFID
        chain = []
        for i in range(400):
            parent = await mkdir(s, parent, b"level-%014d" % i)
            chain.append(parent)
        deepest = parent
        assert 400 * 21 > os.pathconf("/", "PC_PATH_MAX")
        s.dirs.clear()
        iatt = (await s.stat(gfid=deepest))["iatt"]
        assert iatt[F["gfid"]] == deepest
        f = await mkfile(s, deepest, b"file", b"bottom")
        s.files.clear()
        s.dirs.clear()
        assert (await s.read(gfid=f, offset=0, size=10))["data"] == b"bottom"
        assert (await s.lookup(pgfid=deepest, name=b"file"))["iatt"][F["gfid"]] == f
        page = await s.readdir(gfid=deepest, cookie=0, count=10, plus=True)
        assert [e[0] for e in page["entries"]] == [b"file"]
        # rename a directory half-way up; everything below resolves afresh
        await s.rename(old_pgfid=chain[198], old_name=b"level-%014d" % 199,
                       new_pgfid=chain[198], new_name=b"renamed")
        s.dirs.clear()
        assert (await s.stat(gfid=deepest))["iatt"][F["gfid"]] == deepest
        await s.unlink(pgfid=deepest, name=b"file")
        await s.rmdir(pgfid=chain[-2], name=b"level-%014d" % 399)
        await expect(errno.ESTALE, s.stat(gfid=deepest))
    finally:
        s.close()


async def test_directory_resolution_checks_gfid(store: BrickStore, root: Path) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    store.dirs.clear()
    # someone swapped the directory behind the brick's back: the handle now leads to
    # an inode without (or with another) gfid, which must not be served as d
    os.rename(root / "d", root / "d-away")
    os.mkdir(root / "d")
    await expect(errno.ESTALE, store.stat(gfid=d))
    os.setxattr(root / "d", GFID_XATTR, new_gfid())
    await expect(errno.ESTALE, store.readdir(gfid=d, cookie=0, count=5))
    os.rmdir(root / "d")
    await expect(errno.ESTALE, store.stat(gfid=d))


async def test_out_of_range_arguments_are_einval(store: BrickStore) -> None:
    g = await mkfile(store, ROOT_GFID, b"f", b"x")
    for uid, gid in ((1 << 32, 0), (0, 1 << 40), ((1 << 32) - 1, 0)):
        await expect(errno.EINVAL, store.create(pgfid=ROOT_GFID, name=b"n", gfid=new_gfid(),
                                                mode=0o644, uid=uid, gid=gid))
        await expect(errno.EINVAL, store.setattr(gfid=g, uid=uid, gid=gid))
    await expect(errno.EINVAL, store.mknod(pgfid=ROOT_GFID, name=b"n", gfid=new_gfid(),
                                           mode=stat.S_IFCHR | 0o600, rdev=1 << 64, uid=0,
                                           gid=0))
    await expect(errno.EFBIG, store.setattr(gfid=g, size=1 << 64))
    await expect(errno.EINVAL, store.setattr(gfid=g, mtime_ns=1 << 100))
    await expect(errno.EINVAL, store.checksum(gfid=g, offset=1 << 64, size=1, block=1))
    await expect(errno.ENOENT, store.lookup(pgfid=ROOT_GFID, name=b"n"))
    assert (await store.read(gfid=g, offset=0, size=1))["data"] == b"x"
