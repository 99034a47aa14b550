"""Confinement: nothing a client sends reaches outside the brick root or into .pyglfs."""

from __future__ import annotations

import errno
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from test_brick_store import (
    F,
    expect,
    mkdir,
    mkfile,
    new_gfid,
)

from pyglfs.brickd.names import handle_rel
from pyglfs.brickd.store import BrickStore
from pyglfs.rpc.brickops import ROOT_GFID

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")


BAD_NAMES = [(b".", errno.EINVAL), (b"..", errno.EINVAL), (b"a/b", errno.EINVAL),
             (b"../../etc", errno.EINVAL), (b"a\0b", errno.EINVAL),
             (b"n" * 256, errno.ENAMETOOLONG)]


def entry_ops(s: BrickStore, pgfid: bytes, name: bytes, file_gfid: bytes) -> list[Any]:
    """One call of every op that takes (parent, name), all aimed at ``name``."""
    g = new_gfid()
    return [
        s.lookup(pgfid=pgfid, name=name),
        s.create(pgfid=pgfid, name=name, gfid=g, mode=0o644, uid=0, gid=0),
        s.mkdir(pgfid=pgfid, name=name, gfid=g, mode=0o755, uid=0, gid=0),
        s.mknod(pgfid=pgfid, name=name, gfid=g, mode=stat.S_IFIFO | 0o644, rdev=0, uid=0,
                gid=0),
        s.symlink(pgfid=pgfid, name=name, gfid=g, target=b"x", uid=0, gid=0),
        s.link(gfid=file_gfid, pgfid=pgfid, name=name),
        s.unlink(pgfid=pgfid, name=name),
        s.rmdir(pgfid=pgfid, name=name),
        s.rename(old_pgfid=ROOT_GFID, old_name=b"victim", new_pgfid=pgfid, new_name=name),
        s.rename(old_pgfid=pgfid, old_name=name, new_pgfid=ROOT_GFID, new_name=b"stolen"),
    ]


def snapshot(path: Path) -> dict[str, Any]:
    """Everything about a directory tree that an escaped write could change."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
            st = os.lstat(n)
            out[n] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                      st.st_nlink, sorted(os.listxattr(n, follow_symlinks=False)),
                      Path(n).read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return out


async def test_bad_names_refused_by_every_entry_op(store: BrickStore, root: Path) -> None:
    d = await mkdir(store, ROOT_GFID, b"d")
    f = await mkfile(store, ROOT_GFID, b"victim", b"v")
    before = snapshot(root)
    for pgfid in (ROOT_GFID, d):
        for name, code in BAD_NAMES:
            for coro in entry_ops(store, pgfid, name, f):
                await expect(code, coro)
    assert snapshot(root) == before


async def test_internal_dir_is_invisible_and_untouchable(store: BrickStore,
                                                         root: Path) -> None:
    f = await mkfile(store, ROOT_GFID, b"victim", b"v")
    before = snapshot(root)
    ops = entry_ops(store, ROOT_GFID, b".pyglfs", f)
    await expect(errno.ENOENT, ops[0])
    for coro in ops[1:]:
        await expect(errno.EPERM, coro)
    assert snapshot(root) == before
    names = [e[0] for e in (await store.readdir(gfid=ROOT_GFID, cookie=0, count=100))["entries"]]
    assert names == [b"victim"]
    # elsewhere the name is an ordinary one
    d = await mkdir(store, ROOT_GFID, b"d")
    await mkdir(store, d, b".pyglfs")
    assert (await store.lookup(pgfid=d, name=b".pyglfs"))["iatt"][F["nlink"]] == 2


async def test_symlink_to_outside_is_never_followed(store: BrickStore, root: Path,
                                                    tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    os.setxattr(outside, "user.mark", b"1")
    etc_mtime = os.stat("/etc").st_mtime_ns
    before = snapshot(outside)

    evil = new_gfid()
    await store.symlink(pgfid=ROOT_GFID, name=b"evil", gfid=evil, target=str(outside).encode(),
                        uid=0, gid=0)
    etc = new_gfid()
    await store.symlink(pgfid=ROOT_GFID, name=b"etc", gfid=etc, target=b"/etc", uid=0, gid=0)
    f = await mkfile(store, ROOT_GFID, b"victim", b"v")
    lk = await store.lookup(pgfid=ROOT_GFID, name=b"evil")
    assert stat.S_ISLNK(lk["iatt"][F["mode"]])

    for link in (evil, etc):
        # the symlink is never a directory: no entry op goes through it
        for name in (b"secret", b"new", b"x"):
            for coro in entry_ops(store, link, name, f):
                await expect(errno.ENOTDIR, coro)
        await expect(errno.ENOTDIR, store.readdir(gfid=link, cookie=0, count=10))
        await expect(errno.ENOTDIR, store.readdir(gfid=link, cookie=0, count=10, plus=True))
        # nor a file
        await expect(errno.ELOOP, store.open(gfid=link, flags=os.O_RDWR | os.O_TRUNC))
        await expect(errno.ELOOP, store.read(gfid=link, offset=0, size=10))
        await expect(errno.ELOOP, store.write(gfid=link, offset=0, data=b"pwned"))
        await expect(errno.ELOOP, store.fallocate(gfid=link, mode=0, offset=0, length=10))
        await expect(errno.ELOOP, store.checksum(gfid=link, offset=0, size=10, block=4))
        await expect(errno.EINVAL, store.setattr(gfid=link, size=0))
        await expect(errno.EOPNOTSUPP, store.setattr(gfid=link, mode=0o777))
        # owner, times and xattrs change on the link itself
        r = await store.setattr(gfid=link, uid=4242, gid=4343, mtime_ns=123_000_000_000)
        assert (r["iatt"][F["uid"]], r["iatt"][F["mtime_ns"]]) == (4242, 123_000_000_000)
        await store.setxattr(gfid=link, name="trusted.mine", value=b"x")
        assert "trusted.mine" in (await store.listxattr(gfid=link))["names"]
        await expect(errno.EPERM, store.setxattr(gfid=link, name="user.mark", value=b"2"))
        await expect(errno.EPERM, store.removexattr(gfid=link, name="user.mark"))
        await store.removexattr(gfid=link, name="trusted.mine")
        await expect(errno.ENODATA, store.getxattr(gfid=link, name="user.mark"))
        await expect(errno.EINVAL, store.readlink(gfid=f))
    st = os.lstat(root / "evil")
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (4242, 4343, 123_000_000_000)

    # renaming the link moves the link; unlinking it removes the link
    await store.rename(old_pgfid=ROOT_GFID, old_name=b"evil", new_pgfid=ROOT_GFID,
                       new_name=b"evil2")
    await store.link(gfid=evil, pgfid=ROOT_GFID, name=b"evil3")
    assert os.path.islink(root / "evil3")
    await store.unlink(pgfid=ROOT_GFID, name=b"evil2")
    await store.unlink(pgfid=ROOT_GFID, name=b"evil3")
    assert snapshot(outside) == before
    assert os.stat("/etc").st_mtime_ns == etc_mtime
    assert os.getxattr(outside, "user.mark") == b"1"


async def test_symlink_disguised_as_directory_handle(store: BrickStore, root: Path) -> None:
    """A user's symlink whose target mimics a directory handle is still a symlink."""
    d = await mkdir(store, ROOT_GFID, b"d")
    await mkfile(store, d, b"inside", b"x")
    fake = new_gfid()
    target = b"../../00/00/00000000-0000-0000-0000-000000000001/d"
    await store.symlink(pgfid=ROOT_GFID, name=b"fake", gfid=fake, target=target, uid=0, gid=0)
    store.dirs.clear()
    await expect(errno.ENOTDIR, store.lookup(pgfid=fake, name=b"inside"))
    await expect(errno.ENOTDIR, store.readdir(gfid=fake, cookie=0, count=10))
    assert stat.S_ISLNK((await store.stat(gfid=fake))["iatt"][F["mode"]])
    assert (await store.readlink(gfid=fake))["target"] == target


async def test_symlinked_parent_planted_on_disk_is_refused(store: BrickStore, root: Path,
                                                           tmp_path: Path) -> None:
    """A directory swapped for a symlink behind the brick's back is not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    d = await mkdir(store, ROOT_GFID, b"d")
    store.dirs.clear()
    os.rename(root / "d", root / "d-real")
    os.symlink(outside, root / "d")
    before = snapshot(outside)
    await expect(errno.ESTALE, store.create(pgfid=d, name=b"x", gfid=new_gfid(), mode=0o644,
                                            uid=0, gid=0))
    await expect(errno.ESTALE, store.readdir(gfid=d, cookie=0, count=10))
    assert snapshot(outside) == before


async def test_entry_symlink_in_path_of_name_ops(store: BrickStore, root: Path,
                                                 tmp_path: Path) -> None:
    """Name ops on a symlink act on the symlink, whatever it points to."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_bytes(b"keep")
    before = snapshot(outside)
    g = new_gfid()
    await store.symlink(pgfid=ROOT_GFID, name=b"out", gfid=g,
                        target=str(outside / "file").encode(), uid=0, gid=0)
    await expect(errno.EEXIST, store.create(pgfid=ROOT_GFID, name=b"out", gfid=new_gfid(),
                                            mode=0o644, uid=0, gid=0))
    await expect(errno.ENOTDIR, store.rmdir(pgfid=ROOT_GFID, name=b"out"))
    await store.mkdir(pgfid=ROOT_GFID, name=b"dir", gfid=new_gfid(), mode=0o755, uid=0, gid=0)
    await expect(errno.ENOTDIR, store.rename(old_pgfid=ROOT_GFID, old_name=b"dir",
                                             new_pgfid=ROOT_GFID, new_name=b"out"))
    await store.rename(old_pgfid=ROOT_GFID, old_name=b"out", new_pgfid=ROOT_GFID,
                       new_name=b"out2")
    await store.unlink(pgfid=ROOT_GFID, name=b"out2")
    assert not os.path.lexists(root / ".pyglfs" / "handles" / handle_rel(g).decode())
    assert snapshot(outside) == before


async def test_random_names_either_work_or_fail_with_oserror(store: BrickStore, root: Path,
                                                             tmp_path: Path) -> None:
    rng = random.Random(1)
    alphabet = b"./\0a\xff -.."
    created = 0
    for _ in range(400):
        name = bytes(rng.choice(alphabet) for _ in range(rng.choice((1, 2, 3, 5, 256))))
        try:
            await store.mkdir(pgfid=ROOT_GFID, name=name, gfid=new_gfid(), mode=0o755, uid=0,
                              gid=0)
            created += 1
        except OSError as e:
            assert e.errno in (errno.EINVAL, errno.ENAMETOOLONG, errno.EEXIST, errno.EPERM)
            continue
        assert b"/" not in name and b"\0" not in name and name not in (b".", b"..")
        assert (root / os.fsdecode(name)).is_dir()
    assert created > 10
    assert sorted(os.listdir(tmp_path)) == ["brick"]
