"""Extended attribute handlers.

pyfuse3 does the size negotiation (ERANGE) and the XATTR_CREATE/XATTR_REPLACE
checks (through ``getxattr``), so these only move names and values. A missing
attribute is ENODATA (``pyfuse3.ENOATTR``), as the brick reports it.

Names cross the wire as UTF-8 text. A name that is not UTF-8 cannot exist on a
brick: getting or removing it is ENODATA, setting it EINVAL.

``security.capability`` and ``security.selinux`` are answered locally with
ENODATA, as GlusterFS's FUSE bridge does (the latter unless mounted with its
``selinux`` option, which we do not have): the kernel asks for the first before
every write to a file (to drop file capabilities), and ``ls -l`` asks for the
second on every entry; a brick round trip each would halve small-write rates and
make listings several times slower. Setting them is refused with EOPNOTSUPP so
that the answer stays true.

POSIX ACLs (``system.posix_acl_access``/``_default``) are refused the same way,
as GlusterFS does without its ``acl`` mount option: with ``default_permissions``
the kernel checks mode bits only, so a stored ACL would look set yet grant and
deny nothing. ``ls -l`` also asks for the access ACL of every entry.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pyfuse3

from pyglfs.client.fuse.base import BridgeBase
from pyglfs.client.fuse.errors import fuse_handler

_LOCAL_ONLY = frozenset((b"security.capability", b"security.selinux",
                         b"system.posix_acl_access", b"system.posix_acl_default"))


def _name(name: bytes, missing: int) -> str:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(missing) from None


class XattrOps(BridgeBase):
    """getxattr, setxattr, listxattr, removexattr."""

    @fuse_handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name in _LOCAL_ONLY:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return await self.layer.getxattr(self.inodes.gfid(inode),
                                         _name(name, pyfuse3.ENOATTR))

    @fuse_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        self.check_writable()
        if name in _LOCAL_ONLY:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        await self.layer.setxattr(self.inodes.gfid(inode), _name(name, errno.EINVAL), value)

    @fuse_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        names = await self.layer.listxattr(self.inodes.gfid(inode))
        return [n.encode("utf-8") for n in names]

    @fuse_handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.check_writable()
        await self.layer.removexattr(self.inodes.gfid(inode), _name(name, pyfuse3.ENOATTR))
