"""Attribute handlers: getattr, setattr, statfs."""

from __future__ import annotations

import errno
from typing import Any

import pyfuse3

from pyglfs.client.fuse.base import BridgeBase
from pyglfs.client.fuse.errors import fuse_handler
from pyglfs.rpc.brickops import NAME_MAX


class MetadataOps(BridgeBase):
    """getattr, setattr, statfs."""

    @fuse_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs(inode, await self.layer.stat(self.inodes.gfid(inode)))

    @fuse_handler
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Apply what ``fields`` names. UTIME_NOW arrives as pyfuse3's reading of
        the clock, so every replica gets the same time."""
        gfid = self.inodes.gfid(inode)
        change: dict[str, Any] = {}
        if fields.update_mode:
            change["mode"] = attr.st_mode & 0o7777
        if fields.update_uid:
            change["uid"] = attr.st_uid
        if fields.update_gid:
            change["gid"] = attr.st_gid
        if fields.update_size:
            change["size"] = attr.st_size
        if fields.update_atime:
            change["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            change["mtime_ns"] = attr.st_mtime_ns
        if not change:
            return self.attrs(inode, await self.layer.stat(gfid))
        self.check_writable()
        return self.attrs(inode, await self.layer.setattr(gfid, **change))

    @fuse_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = await self.layer.statfs()
        out = pyfuse3.StatvfsData()
        try:
            out.f_bsize = s["bsize"]
            out.f_frsize = s["frsize"]
            out.f_blocks = s["blocks"]
            out.f_bfree = s["bfree"]
            out.f_bavail = s["bavail"]
            out.f_files = s["files"]
            out.f_ffree = s["ffree"]
            out.f_favail = s["ffree"]
        except KeyError as e:
            raise OSError(errno.EIO, f"statfs reply without {e}") from None
        out.f_namemax = min(s.get("namemax", NAME_MAX), NAME_MAX)
        return out
