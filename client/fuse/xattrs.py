"""Extended attribute handlers.

pyfuse3 does the size negotiation (ERANGE) and the XATTR_CREATE/XATTR_REPLACE
checks (through ``getxattr``), so these only move names and values. A missing
attribute is ENODATA (``pyfuse3.ENOATTR``), as the brick reports it.

``security.capability`` is answered locally with ENODATA, as GlusterFS's FUSE
bridge does: the kernel asks for it before every write to a file (to drop file
capabilities), and a brick round trip per write would halve small-write rates.
Setting it is refused with EOPNOTSUPP so that the answer stays true.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

import pyfuse3

from pyglfs.client.fuse.base import BridgeBase
from pyglfs.client.fuse.errors import fuse_handler

_CAPABILITY = b"security.capability"


class XattrOps(BridgeBase):
    """getxattr, setxattr, listxattr, removexattr."""

    @fuse_handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name == _CAPABILITY:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return await self.layer.getxattr(self.inodes.gfid(inode), os.fsdecode(name))

    @fuse_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        self.check_writable()
        if name == _CAPABILITY:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        await self.layer.setxattr(self.inodes.gfid(inode), os.fsdecode(name), value)

    @fuse_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        names = await self.layer.listxattr(self.inodes.gfid(inode))
        return [os.fsencode(n) for n in names]

    @fuse_handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.check_writable()
        await self.layer.removexattr(self.inodes.gfid(inode), os.fsdecode(name))
