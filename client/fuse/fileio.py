"""File I/O handlers: open, create, read, write, flush, fsync, release.

Every open(2) gets its own handle number and keeps its own flags, so two opens
of one file with different access modes, O_APPEND or O_DIRECT do not mix. The
brick addresses data by gfid, so a handle is client-side state only; ``open``
still asks the brick, which checks the inode and the flags.
"""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

from pyglfs.client.fuse.base import BridgeBase, FileHandle
from pyglfs.client.fuse.errors import fuse_handler
from pyglfs.client.fuse.inodes import new_gfid

# The brick only checks these; creation and truncation are done as their own ops.
_OPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY
# Opens whose writes must reach the bricks before write(2) returns: O_APPEND
# too, as its offset is the end of file the bricks know (other mounts append).
_WRITE_THROUGH = os.O_DIRECT | os.O_SYNC | os.O_DSYNC | os.O_APPEND


class FileOps(BridgeBase):
    """open, create, read, write, flush, fsync, release."""

    def _file(self, fh: int) -> FileHandle:
        try:
            return self.files[fh]
        except KeyError:
            raise OSError(errno.EBADF, "unknown file handle") from None

    def _file_info(self, gfid: bytes, ino: int, flags: int) -> pyfuse3.FileInfo:
        if self.config.writeback_cache:
            # The kernel appends through its own i_size and writes back pages at
            # their offsets (over any open of the file), reading partial pages
            # first: offsets are never ours to move.
            flags &= ~os.O_APPEND
        fh = self.next_fh()
        self.files[fh] = FileHandle(gfid, ino, flags)
        fi = pyfuse3.FileInfo(fh=fh)
        # O_DIRECT: bypass the page cache for this open only.
        fi.direct_io = bool(flags & os.O_DIRECT)
        return fi

    @fuse_handler
    async def open(self, inode: int, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        writes = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writes:
            self.check_writable()
        gfid = self.inodes.gfid(inode)
        await self.layer.open(gfid, flags & ~_OPEN_STRIP)
        if flags & os.O_TRUNC:
            await self.layer.setattr(gfid, size=0)
        return self._file_info(gfid, inode, flags)

    @fuse_handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self.check_writable()
        self.check_name(name)
        pgfid = self.inodes.gfid(parent_inode)
        mode, uid, gid = await self.new_owner(parent_inode, pgfid, stat.S_IFREG | mode, ctx)
        try:
            iatt = (await self.layer.create(pgfid, name, new_gfid(), mode, uid, gid,
                                            flags & ~(os.O_TRUNC | os.O_NOCTTY))).iatt
        except OSError as e:
            if e.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            # Another client made the name since the kernel's lookup missed it:
            # without O_EXCL this is a plain open of what is there now.
            iatt = (await self.layer.lookup(pgfid, name)).iatt
            if stat.S_ISDIR(iatt.mode):
                raise OSError(errno.EISDIR, "is a directory") from None
            await self.layer.open(iatt.gfid, flags & ~_OPEN_STRIP)
            if flags & os.O_TRUNC:
                iatt = await self.layer.setattr(iatt.gfid, size=0)
        attrs = self.entry(iatt)
        return self._file_info(iatt.gfid, attrs.st_ino, flags), attrs

    @fuse_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.layer.read(self._file(fh).gfid, off, size)

    @fuse_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._file(fh)
        if self.config.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        if h.flags & os.O_APPEND:
            # The kernel's idea of the end of file may be stale when another
            # mount appended; the brick's is not.
            off = (await self.layer.stat(h.gfid)).size
        if h.flags & _WRITE_THROUGH:
            # An (empty) xattrop makes write-behind send the write now.
            await self.layer.write(h.gfid, off, buf, {})
        else:
            await self.layer.write(h.gfid, off, buf)
        return len(buf)

    @fuse_handler
    async def flush(self, fh: int) -> None:
        await self.layer.flush(self._file(fh).gfid)

    @fuse_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.layer.fsync(self._file(fh).gfid, datasync)

    @fuse_handler
    async def release(self, fh: int) -> None:
        h = self.files.pop(fh, None)
        if h is not None:
            await self.layer.release(h.gfid)
