"""Entry ops: names in directories (lookup, create, mkdir, mknod, symlink, link,
unlink, rmdir, rename, readlink).

Every op names its entry as (parent gfid, one checked name) and touches it with
``*at()`` calls relative to the parent's fd, never following a symlink. The
client chooses a new inode's gfid; the brick refuses one that already names
another inode here. A changelog ``xattrop`` goes to the parent directory before
the change (both parents for rename). Every change also answers the parent
directory's attributes after it (``postparent``; rename: ``postoldparent`` and
``postnewparent``), so a client's cache can answer the stat of the directory
that the kernel sends after each entry change without a request of its own.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import Any

from pyglfs.brickd import linux
from pyglfs.brickd.names import (
    NULL_GFID,
    check_gfid,
    check_owner,
    gfid_str,
    handle_rel,
    proc_path,
)
from pyglfs.brickd.resolve import DIR_OPEN, StoreCore, is_dir_handle, read_afr
from pyglfs.rpc.brickops import GFID_LEN, GFID_XATTR, ROOT_GFID

log = logging.getLogger(__name__)

_CREATE = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_MKNOD_TYPES = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK)
_RENAME_FLAGS = linux.RENAME_NOREPLACE | linux.RENAME_EXCHANGE


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_ino == b.st_ino and a.st_dev == b.st_dev


class EntryOps(StoreCore):
    async def lookup(self, pgfid: bytes, name: bytes) -> dict[str, Any]:
        """The inode ``name`` in ``pgfid``: iatt and its ``trusted.afr.*`` changelog."""
        pfd = self._parent(pgfid, name, errno.ENOENT)
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        gfid = self._entry_gfid(pfd, name)
        if gfid is None or len(gfid) != GFID_LEN:
            log.warning("lookup: %r in %s has no valid gfid", name, gfid_str(pgfid))
            raise OSError(errno.ENODATA, "entry has no gfid")
        is_dir = stat.S_ISDIR(st.st_mode)
        # The changelog from what the brick holds for that gfid when it holds this
        # very inode (a cached fd): no path walks through /proc.
        fd = (self.dirs if is_dir else self.files).get(gfid)
        if fd is not None and _same_inode(os.stat(fd), st):
            known = self._afr_known.get(gfid)
            xattrs = dict(known) if known is not None else read_afr(fd)
        else:
            xattrs = read_afr(proc_path(pfd, name))
        return {"iatt": self._iatt(gfid, st, is_dir), "xattrs": xattrs}

    async def lookup_gfid(self, gfid: bytes) -> dict[str, Any]:
        """Like lookup, by gfid (ESTALE if the brick has no such inode)."""
        st, is_dir = self._stat_gfid(gfid)
        return {"iatt": self._iatt(gfid, st, is_dir), "xattrs": read_afr(self._xattr_target(gfid))}

    def _check_new(self, gfid: bytes, uid: int, gid: int) -> None:
        """EINVAL for a gfid no new inode may have (null, the root's) or an owner
        out of range. A gfid that already names another inode is found when the
        new inode's handle is made (:meth:`_gfid_taken`), which saves a lookup
        of the handle on every create."""
        check_gfid(gfid)
        check_owner(uid, gid)

    def _gfid_taken(self, gfid: bytes, name: bytes) -> OSError:
        """The error for a new inode whose handle exists: its gfid names another
        inode. The new entry is undone; the other inode's handle is left alone."""
        log.warning("refusing gfid=%s for %r: it names another inode", gfid_str(gfid), name)
        return OSError(errno.EINVAL, f"gfid {gfid_str(gfid)} is in use")

    def _own(self, pfd: int, name: bytes, fd: int | None, uid: int, gid: int,
             mode: int | None) -> os.stat_result:
        """Give a new inode the client's owner and exactly its mode; return its attributes.

        Only what differs is changed; chown runs first because it clears set-id bits.
        """
        st = os.stat(fd) if fd is not None else os.stat(name, dir_fd=pfd, follow_symlinks=False)
        changed = False
        if st.st_uid != uid or st.st_gid != gid:
            if fd is not None:
                os.fchown(fd, uid, gid)
            else:
                os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
            changed = True
        if mode is not None and (stat.S_IMODE(st.st_mode) != mode or (changed and mode & 0o6000)):
            if fd is not None:
                os.fchmod(fd, mode)
            else:
                os.chmod(name, mode, dir_fd=pfd, follow_symlinks=False)
            changed = True
        if changed:
            st = os.stat(fd) if fd is not None else os.stat(name, dir_fd=pfd,
                                                            follow_symlinks=False)
        return st

    def _postparent(self, pgfid: bytes, pfd: int) -> list[Any]:
        """The wire iatt of an entry op's parent directory as it is now."""
        return self._iatt(pgfid, os.stat(pfd), True)

    def _undo_create(self, pfd: int, name: bytes, is_dir: bool = False) -> None:
        try:
            if is_dir:
                os.rmdir(name, dir_fd=pfd)
            else:
                os.unlink(name, dir_fd=pfd)
        except OSError as e:
            log.error("cannot remove half-created %r: %s", name, e.strerror)

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int | None = None,
                     xattrop: dict[str, bytes] | None = None,
                     conn_id: int = 0) -> dict[str, Any]:
        """Create a regular file (always exclusive) with the client's gfid.

        The create counts as an ``open`` by ``conn_id`` (the client's create hands
        back an open file), to be paired with a ``release``.
        """
        pfd = self._parent(pgfid, name)
        self._check_new(gfid, uid, gid)
        if xattrop:
            with self._entry_change([(pgfid, pfd)], xattrop):
                fd, st = self._create_file(pfd, name, gfid, mode, uid, gid)
        else:
            fd, st = self._create_file(pfd, name, gfid, mode, uid, gid)
        self._made(gfid)
        self.files.put(gfid, fd)
        self._count_open(gfid, conn_id)
        self._dir_changed(pgfid)
        return {"iatt": self._iatt(gfid, st, False),
                "postparent": self._iatt(pgfid, os.stat(pfd), True)}

    def _create_file(self, pfd: int, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int) -> tuple[int, os.stat_result]:
        """The new regular file's open fd and attributes, with its gfid, handle,
        owner and exact mode; on failure nothing of it is left."""
        fd = os.open(name, _CREATE, mode & 0o777, dir_fd=pfd)
        linked = False
        try:
            os.setxattr(fd, GFID_XATTR, gfid)
            try:
                self._link_handle(pfd, name, gfid)
            except FileExistsError:
                raise self._gfid_taken(gfid, name) from None
            linked = True
            st = os.stat(fd)
            if (st.st_uid != uid or st.st_gid != gid
                    or st.st_mode & 0o7777 != mode & 0o7777):
                st = self._own(pfd, name, fd, uid, gid, mode & 0o7777)
        except BaseException:
            os.close(fd)
            self._undo_create(pfd, name)
            if linked:
                self._unlink_handle(gfid)
            raise
        return fd, st

    async def mkdir(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                    gid: int, xattrop: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Create a directory with the client's gfid and its handle symlink."""
        pfd = self._parent(pgfid, name)
        self._check_new(gfid, uid, gid)
        with self._entry_change([(pgfid, pfd)], xattrop):
            os.mkdir(name, mode & 0o777, dir_fd=pfd)
            fd = -1
            linked = False
            try:
                fd = os.open(name, DIR_OPEN, dir_fd=pfd)
                os.setxattr(fd, GFID_XATTR, gfid)
                try:
                    self._symlink_dir_handle(gfid, pgfid, name)
                except FileExistsError:
                    raise self._gfid_taken(gfid, name) from None
                linked = True
                st = self._own(pfd, name, fd, uid, gid, mode & 0o7777)
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                self._undo_create(pfd, name, is_dir=True)
                if linked:
                    self._unlink_handle(gfid)
                raise
        self._made(gfid)
        self.dirs.put(gfid, fd)
        self._dir_changed(pgfid)
        return {"iatt": self._iatt(gfid, st, True), "postparent": self._postparent(pgfid, pfd)}

    def _finish_node(self, pgfid: bytes, pfd: int, name: bytes, gfid: bytes, uid: int,
                     gid: int, mode: int | None) -> dict[str, Any]:
        """Give a new non-regular inode (never opened) its gfid, handle and owner."""
        linked = False
        try:
            os.setxattr(proc_path(pfd, name), GFID_XATTR, gfid, follow_symlinks=False)
            try:
                self._link_handle(pfd, name, gfid)
            except FileExistsError:
                raise self._gfid_taken(gfid, name) from None
            linked = True
            st = self._own(pfd, name, None, uid, gid, mode)
        except BaseException:
            self._undo_create(pfd, name)
            if linked:
                self._unlink_handle(gfid)
            raise
        self._made(gfid)
        self._dir_changed(pgfid)
        return {"iatt": self._iatt(gfid, st, False), "postparent": self._postparent(pgfid, pfd)}

    async def mknod(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, rdev: int,
                    uid: int, gid: int, xattrop: dict[str, bytes] | None = None,
                    ) -> dict[str, Any]:
        """Create a fifo, socket, regular file or (as root) a device node."""
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in _MKNOD_TYPES:
            raise OSError(errno.EINVAL, "mknod: unsupported file type")
        if rdev >= 1 << 64:
            raise OSError(errno.EINVAL, "mknod: device number out of range")
        pfd = self._parent(pgfid, name)
        self._check_new(gfid, uid, gid)
        with self._entry_change([(pgfid, pfd)], xattrop):
            os.mknod(name, kind | (mode & 0o777), rdev, dir_fd=pfd)
            return self._finish_node(pgfid, pfd, name, gfid, uid, gid, mode & 0o7777)

    async def symlink(self, pgfid: bytes, name: bytes, gfid: bytes, target: bytes, uid: int,
                      gid: int, xattrop: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Create a symlink; its target is stored, never interpreted by the brick."""
        if b"\0" in target:
            raise OSError(errno.EINVAL, "symlink target contains NUL")
        pfd = self._parent(pgfid, name)
        self._check_new(gfid, uid, gid)
        with self._entry_change([(pgfid, pfd)], xattrop):
            os.symlink(target, name, dir_fd=pfd)
            return self._finish_node(pgfid, pfd, name, gfid, uid, gid, None)

    async def link(self, gfid: bytes, pgfid: bytes, name: bytes,
                   xattrop: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Add name ``name`` in ``pgfid`` for non-directory ``gfid`` (EPERM for dirs)."""
        pfd = self._parent(pgfid, name)
        if gfid == ROOT_GFID or self.dirs.get(gfid) is not None or is_dir_handle(
                self._hstat(gfid)):
            raise OSError(errno.EPERM, "cannot hard-link a directory")
        with self._entry_change([(pgfid, pfd)], xattrop):
            os.link(handle_rel(gfid), name, src_dir_fd=self.handles_fd, dst_dir_fd=pfd,
                    follow_symlinks=False)
        self._dir_changed(pgfid)
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        return {"iatt": self._iatt(gfid, st, False), "postparent": self._postparent(pgfid, pfd)}

    async def unlink(self, pgfid: bytes, name: bytes,
                     xattrop: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Remove a non-directory name; the inode's handle goes with its last name,
        or at its last release if it is open."""
        pfd = self._parent(pgfid, name)
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, "is a directory")
        gfid = self._entry_gfid(pfd, name)
        with self._entry_change([(pgfid, pfd)], xattrop):
            os.unlink(name, dir_fd=pfd)
        self._dir_changed(pgfid)
        if gfid is not None and len(gfid) == GFID_LEN:
            self._name_dropped(gfid, st.st_nlink)
        return {"postparent": self._postparent(pgfid, pfd)}

    async def rmdir(self, pgfid: bytes, name: bytes,
                    xattrop: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Remove an empty directory (ENOTEMPTY otherwise) and its handle."""
        pfd = self._parent(pgfid, name)
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        gfid = self._entry_gfid(pfd, name)
        with self._entry_change([(pgfid, pfd)], xattrop):
            os.rmdir(name, dir_fd=pfd)
        self._dir_changed(pgfid)
        if gfid is not None and len(gfid) == GFID_LEN:
            self._forget_dir(gfid)
        return {"postparent": self._postparent(pgfid, pfd)}

    async def rename(self, old_pgfid: bytes, old_name: bytes, new_pgfid: bytes,
                     new_name: bytes, flags: int | None = None,
                     xattrop: dict[str, bytes] | None = None) -> dict[str, Any]:
        """rename(2) with RENAME_NOREPLACE (1) or RENAME_EXCHANGE (2); returns the
        moved inode and both parents' attributes. Directory handles follow their directory; a replaced inode
        loses its handle with its last name, as with unlink."""
        flags = flags or 0
        if flags & ~_RENAME_FLAGS or flags == _RENAME_FLAGS:
            raise OSError(errno.EINVAL, "unsupported rename flags")
        opfd = self._parent(old_pgfid, old_name)
        npfd = self._parent(new_pgfid, new_name)
        src = os.stat(old_name, dir_fd=opfd, follow_symlinks=False)
        src_gfid = self._entry_gfid(opfd, old_name)
        try:
            dst: os.stat_result | None = os.stat(new_name, dir_fd=npfd, follow_symlinks=False)
        except FileNotFoundError:
            dst = None
        dst_gfid = self._entry_gfid(npfd, new_name) if dst is not None else None
        parents = [(old_pgfid, opfd)]
        if new_pgfid != old_pgfid:
            parents.append((new_pgfid, npfd))
        with self._entry_change(parents, xattrop):
            if flags:
                linux.renameat2(opfd, old_name, npfd, new_name, flags)
            else:
                os.rename(old_name, new_name, src_dir_fd=opfd, dst_dir_fd=npfd)
        self._dir_changed(old_pgfid)
        self._dir_changed(new_pgfid)
        same = dst is not None and _same_inode(dst, src)
        if not same and dst is not None and src_gfid is not None and dst_gfid == src_gfid:
            # Two inodes claiming one gfid (made behind the brick's back): leave the
            # handle alone rather than drop the survivor's.
            log.error("rename: %r and %r are different inodes with one gfid=%s",
                      old_name, new_name, gfid_str(src_gfid))
        elif not same:
            if src_gfid is not None and stat.S_ISDIR(src.st_mode):
                self._move_dir_handle(src_gfid, new_pgfid, new_name)
            if dst is not None and dst_gfid is not None and len(dst_gfid) == GFID_LEN:
                if flags & linux.RENAME_EXCHANGE:
                    if stat.S_ISDIR(dst.st_mode):
                        self._move_dir_handle(dst_gfid, old_pgfid, old_name)
                elif stat.S_ISDIR(dst.st_mode):
                    self._forget_dir(dst_gfid)
                else:
                    self._name_dropped(dst_gfid, dst.st_nlink)
        st = os.stat(new_name, dir_fd=npfd, follow_symlinks=False)
        post_old = self._postparent(old_pgfid, opfd)
        post_new = post_old if new_pgfid == old_pgfid else self._postparent(new_pgfid, npfd)
        return {"iatt": self._iatt(src_gfid or NULL_GFID, st, stat.S_ISDIR(st.st_mode)),
                "postoldparent": post_old, "postnewparent": post_new}

    async def readlink(self, gfid: bytes) -> dict[str, Any]:
        """The target of symlink ``gfid`` (EINVAL for anything else)."""
        st = self._hstat(gfid)
        if not stat.S_ISLNK(st.st_mode) or is_dir_handle(st):
            raise OSError(errno.EINVAL, "not a symbolic link")
        return {"target": os.readlink(handle_rel(gfid), dir_fd=self.handles_fd)}
