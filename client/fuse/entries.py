"""Entry handlers: names in directories (lookup, create-like ops, unlink, rename,
readdir) and ``forget``.

Each handler that hands the kernel an inode reference counts it through
``BridgeBase.entry``; ``forget`` gives references back. ``readdir`` is always
readdirplus (pyfuse3 asks for it): every entry carries its attributes and,
when ``readdir_reply`` accepts it, one reference.
"""

from __future__ import annotations

import errno
import logging
import stat
from collections.abc import Sequence

import pyfuse3
import trio

from pyglfs.client.fuse.base import BridgeBase, DirHandle
from pyglfs.client.fuse.errors import fuse_handler, log_unexpected
from pyglfs.client.fuse.inodes import new_gfid
from pyglfs.client.layer import DirEntry

log = logging.getLogger(__name__)

READDIR_PAGE = 256
# How long a fetched page may serve the kernel's follow-up requests: its
# attributes go into the kernel's cache as if fresh.
PAGE_TTL = 1.0

# next_id values of the two entries the bridge adds itself; brick cookies are
# shifted past them (see ``_to_next_id``).
_DOT_ID = 1
_DOTDOT_ID = 2
_COOKIE_SHIFT = 3
_MAX_OFF = (1 << 63) - 1


def _to_next_id(cookie: int) -> int:
    # A cookie within 3 of the top of off_t (odds 2**-61) would overflow; clamped,
    # a resumed listing may repeat those few entries instead.
    return min(cookie + _COOKIE_SHIFT, _MAX_OFF)


def _from_next_id(next_id: int) -> int:
    return next_id - _COOKIE_SHIFT


class EntryOps(BridgeBase):
    """lookup, forget, mkdir, mknod, symlink, link, unlink, rmdir, rename,
    readlink, opendir, readdir, releasedir, fsyncdir."""

    @fuse_handler
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.check_name(name)
        pgfid = self.inodes.gfid(parent_inode)
        try:
            found = await self.layer.lookup(pgfid, name)
        except OSError as e:
            if e.errno == errno.ENOENT and self.config.negative_timeout > 0:
                neg = pyfuse3.EntryAttributes()
                neg.st_ino = 0
                neg.entry_timeout = self.config.negative_timeout
                return neg
            raise
        return self.entry(found.iatt)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            for ino, nlookup in inode_list:
                self.inodes.forget(ino, nlookup)
        except Exception as exc:  # forget must never raise
            log_unexpected(exc, "forget")

    @fuse_handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.check_writable()
        self.check_name(name)
        pgfid = self.inodes.gfid(parent_inode)
        mode, uid, gid = await self.new_owner(parent_inode, pgfid, stat.S_IFDIR | mode, ctx)
        reply = await self.layer.mkdir(pgfid, name, new_gfid(), mode, uid, gid)
        return self.entry(reply.iatt)

    @fuse_handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.check_writable()
        self.check_name(name)
        pgfid = self.inodes.gfid(parent_inode)
        mode, uid, gid = await self.new_owner(parent_inode, pgfid, mode, ctx)
        reply = await self.layer.mknod(pgfid, name, new_gfid(), mode, rdev, uid, gid)
        return self.entry(reply.iatt)

    @fuse_handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.check_writable()
        self.check_name(name)
        pgfid = self.inodes.gfid(parent_inode)
        _, uid, gid = await self.new_owner(parent_inode, pgfid, stat.S_IFLNK | 0o777, ctx)
        reply = await self.layer.symlink(pgfid, name, new_gfid(), target, uid, gid)
        return self.entry(reply.iatt)

    @fuse_handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.check_writable()
        self.check_name(new_name)
        gfid = self.inodes.gfid(inode)
        pgfid = self.inodes.gfid(new_parent_inode)
        reply = await self.layer.link(gfid, pgfid, new_name)
        return self.entry(reply.iatt)

    @fuse_handler
    async def unlink(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> None:
        self.check_writable()
        self.check_name(name)
        await self.layer.unlink(self.inodes.gfid(parent_inode), name)

    @fuse_handler
    async def rmdir(self, parent_inode: int, name: bytes,
                    ctx: pyfuse3.RequestContext) -> None:
        self.check_writable()
        self.check_name(name)
        await self.layer.rmdir(self.inodes.gfid(parent_inode), name)

    @fuse_handler
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        self.check_writable()
        self.check_name(name_old)
        self.check_name(name_new)
        await self.layer.rename(self.inodes.gfid(parent_inode_old), name_old,
                                self.inodes.gfid(parent_inode_new), name_new, flags)

    @fuse_handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.layer.readlink(self.inodes.gfid(inode))

    # -- directories ----------------------------------------------------------
    @fuse_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        fh = self.next_fh()
        self.dirs[fh] = DirHandle(self.inodes.gfid(inode), inode)
        return fh

    @fuse_handler
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    @fuse_handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        dh = self._dir(fh)
        await self.layer.fsync(dh.gfid, datasync)

    def _dir(self, fh: int) -> DirHandle:
        try:
            return self.dirs[fh]
        except KeyError:
            raise OSError(errno.EBADF, "unknown directory handle") from None

    @fuse_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """List from ``start_id``: 0 is the start, 1 and 2 follow "." and "..",
        anything else is a brick cookie shifted by 3 (so it never collides).

        Entries the brick lists without attributes are looked up one by one.
        """
        dh = self._dir(fh)
        if start_id < _DOT_ID:
            if not pyfuse3.readdir_reply(token, b".", self._dot(dh.ino), _DOT_ID):
                return
        if start_id < _DOTDOT_ID:
            if not pyfuse3.readdir_reply(token, b"..", self._dot(dh.ino), _DOTDOT_ID):
                return
        cookie = 0 if start_id <= _DOTDOT_ID else _from_next_id(start_id)
        entries, index, eof = await self._page_from(dh, cookie)
        for _ in range(1 << 20):
            while index < len(entries):
                ent = entries[index]
                index += 1
                if ent.name == b"." or ent.name == b"..":
                    continue
                iatt = ent.iatt
                if iatt is None:
                    try:
                        iatt = (await self.layer.lookup(dh.gfid, ent.name)).iatt
                    except OSError as e:
                        if e.errno not in (errno.ENOENT, errno.ENODATA):
                            raise
                        if e.errno == errno.ENODATA:
                            log.warning("readdir: skipping %r in gfid=%s: it has no gfid",
                                        ent.name, dh.gfid.hex())
                        continue
                ino = self.inodes.ino(iatt.gfid)
                attrs = self.attrs(ino, iatt)
                if not pyfuse3.readdir_reply(token, ent.name, attrs,
                                             _to_next_id(ent.cookie)):
                    return
                self.inodes.add(ino, iatt.gfid)
            if eof or not entries:
                return
            entries, index, eof = await self._page_from(dh, entries[-1].cookie)

    async def _page_from(self, dh: DirHandle, cookie: int) -> tuple[list[DirEntry], int, bool]:
        """The brick's entries after ``cookie``: from the handle's cached page when
        it holds that position, else one new brick call (which becomes the cache)."""
        now = trio.current_time()
        pos = dh.positions.get(cookie) if cookie else None
        if (pos is not None and (pos < len(dh.page) or dh.page_eof)
                and now - dh.page_time <= PAGE_TTL):
            return dh.page, pos, dh.page_eof
        entries, eof = await self.layer.readdir(dh.gfid, cookie, READDIR_PAGE, plus=True)
        dh.page = entries
        dh.page_eof = eof
        dh.page_time = now
        dh.positions = {e.cookie: i + 1 for i, e in enumerate(entries)}
        return entries, 0, eof

    @staticmethod
    def _dot(ino: int) -> pyfuse3.EntryAttributes:
        # The kernel takes no reference for "." and "..": only d_ino and the type count.
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.st_mode = stat.S_IFDIR | 0o755
        return e
